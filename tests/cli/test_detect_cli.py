"""`symwatch detect`: transitions re-detected over a real recording of the demo run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("rec") / "demo.db")
    env = {**os.environ, "SYMWATCH_RECORD": path}
    subprocess.run([sys.executable, "-m", "symwatch_agent.entry.demo", "--steps", "360", "--delay",
                    "0", "--every", "1", "--endpoint", "tcp://127.0.0.1:0"], env=env,
                   check=True, capture_output=True, timeout=300)
    return path


def _detect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "symwatch", "detect", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_recorded_staircase_is_found_again(recording):
    result = _detect(recording, "--layer", "linear.0", "--metric", "modes", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [(j["onset"], j["before"], j["after"]) for e in events for j in e["jumps"]
             if j["layer"] == "linear.0"]
    # `modes` leaves the tiny bulk at steps 7, 9, 19, 48, 61 (seed 0); rises inside the
    # detector's warm-up are not found, each one found is a +1 at one of those steps
    assert steps and all(after == before + 1 and any(abs(onset - s) <= 2
                                                     for s in (7, 9, 19, 48, 61))
                         for onset, before, after in steps), steps


def _live_events(path: str) -> list[tuple[int, str | None]]:
    from symwatch.core import protocol
    from symwatch.core.recording import RecordingReader

    with RecordingReader(path) as reader:
        return [(m.step, m.payload.get("layer")) for m in reader if m.kind == protocol.EVENT
                and m.payload.get("severity") == "transition"]


def test_the_loss_events_are_found_at_the_steps_the_live_run_found_them(recording):
    """A sample reads the loss logged before its step ended (the demo logs it before
    `optimizer.step()`, keyed a step earlier); the replay fed each sample the latest STATS'
    loss instead, one step late, and found every loss event a step after the live run."""
    live = [step for step, layer in _live_events(recording) if layer is None]
    result = _detect(recording, "--json")
    assert result.returncode == 0, result.stderr
    again = [e["step"] for e in map(json.loads, result.stdout.splitlines()) if e["layer"] is None]
    assert len(live) >= 3 and again == live, (again, live)


CAPTURED_RUN = """
import sys, torch
sys.path.insert(0, sys.argv[2])
import symwatch
from linear_teacher import linear_teacher
model, target = linear_teacher([4.0, 1.5], 1e-3)
opt = torch.optim.SGD(model.parameters(), lr=0.02)
with symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=1, budget=1.0,
                    record=sys.argv[1], register=False):
    for step in range(300):
        loss = 0.5 * (model(torch.eye(16)).T - target).square().sum()
        opt.zero_grad()
        loss.backward()  # the loss captured from .backward(), never logged
        opt.step()
"""


def test_a_loss_captured_from_backward_is_replayed_at_the_live_steps_too(tmp_path):
    """A loss captured from `.backward()` is kept a step later than one logged before
    `optimizer.step()` (per_step cannot tell them apart): each sample now carries the loss
    its detector read (METRICS `loss`), and the replay uses it."""
    path = str(tmp_path / "captured.db")
    tests = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", CAPTURED_RUN, path, tests], check=True,
                   capture_output=True, timeout=300)
    live = [step for step, layer in _live_events(path) if layer is None]
    result = _detect(path, "--json")
    assert result.returncode == 0, result.stderr
    again = [e["step"] for e in map(json.loads, result.stdout.splitlines()) if e["layer"] is None]
    assert live and again == live, (again, live)


def test_a_file_of_two_runs_is_replayed_run_by_run(recording, tmp_path):
    """Runs appended to one recording (`record -o` onto a file, an agent restarted): each
    starts fresh detectors, as its agent did. Fed as one run, the second run's start read as
    the first one's modes lost (a mode lost ... at step 1, the weights −100 %)."""
    from symwatch.core import protocol
    from symwatch.core.recording import Recorder, RecordingReader

    with RecordingReader(recording) as reader:
        messages = list(reader)

    def as_run(m: protocol.Message, run: str) -> protocol.Message:
        return protocol.Message(m.kind, run, m.rank, m.restart, m.seq, m.time, m.step,
                                m.payload)

    one = _detect(recording, "--json")
    once = [(e["step"], e["message"]) for e in map(json.loads, one.stdout.splitlines())]
    assert one.returncode == 0 and once, one.stderr
    # one after the other (appended), and interleaved message by message (a relay's
    # recording of two jobs: a replay that restarted at each change of run found nothing)
    for name, order in (("appended", [as_run(m, r) for r in ("first", "second")
                                      for m in messages]),
                        ("interleaved", [as_run(m, r) for m in messages
                                         for r in ("first", "second")])):
        both = str(tmp_path / f"{name}.db")
        with Recorder(both) as out:
            for m in order:
                out.submit_message(m)
        two = _detect(both, "--json")
        assert two.returncode == 0, two.stderr
        assert [(e["step"], e["message"]) for e in map(json.loads, two.stdout.splitlines())] \
            == once * 2, name


def test_a_higher_threshold_finds_fewer_transitions(recording):
    default = _detect(recording)
    strict = _detect(recording, "--threshold", "40")
    assert default.returncode == strict.returncode == 0
    count = lambda r: len(r.stdout.splitlines())  # noqa: E731
    assert count(default) >= count(strict)
    assert "linear.0 modes " in default.stdout
    # what a very high threshold leaves are `modes` steps: a one-mode step scores a fixed
    # multiple of any threshold (symwatch/core/jumps.py), the continuous series' jumps do not;
    # and the linear network's loss falling off its plateaus (jumps.DropDetector: falls of
    # hundreds of times the loss's sample noise, over any threshold; the layers that moved
    # with it may headline the message, the jumps are the loss's)
    strict_json = _detect(recording, "--threshold", "40", "--json")
    jumps = [(j["layer"], j["metric"]) for line in strict_json.stdout.splitlines()
             for j in json.loads(line)["jumps"]]
    assert jumps and all(metric == "modes" or (layer is None and metric.endswith("loss"))
                         for layer, metric in jumps), jumps
    assert re.search(r"(^|: )\S+ modes \d", strict.stdout), strict.stdout


def test_bad_arguments_and_missing_files_are_clear_errors(tmp_path):
    result = _detect(str(tmp_path / "nope.db"))
    assert result.returncode == 1 and "no such recording" in result.stderr
    result = _detect(str(tmp_path / "nope.db"), "--threshold", "-3")
    assert result.returncode == 2 and "expected a number > 0" in result.stderr


# the run of tests/agent/test_transitions.py::test_a_run_under_a_budget_gets_its_loss_events_from_every_step,
# up to its two loss falls (weight decay, from step 500, gives an exogenous label, not replayed)
BUDGETED_RUN = ("import sys; sys.path.insert(0, sys.argv[2]); "
                "from linear_teacher import budgeted_staircase; "
                "budgeted_staircase(sys.argv[1], steps=480)")


def test_a_budgeted_runs_loss_events_are_found_again_from_its_per_step_losses(tmp_path):
    """A run under a time budget found its loss falls in every step's loss (docs/alerts.md,
    "The loss under a time budget": tests/agent/test_transitions.py, the same run); replayed
    from the recording's STATS `per_step` at the cadence it published, the same events at
    the same steps (before: the replay fed the loss at the samples only)."""
    from symwatch.core import protocol
    from symwatch.core.recording import RecordingReader

    path = str(tmp_path / "budget.db")
    tests = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", BUDGETED_RUN, path, tests], check=True,
                   capture_output=True, timeout=300)
    with RecordingReader(path) as reader:
        live = [(m.step, m.payload["message"]) for m in reader if m.kind == protocol.EVENT
                and m.payload.get("severity") == "transition"]
    result = _detect(path, "--json")
    assert result.returncode == 0, result.stderr
    again = [json.loads(line) for line in result.stdout.splitlines()]
    # the two loss falls (one event each: the loss's, or a layer's that quotes it, whichever
    # detector closed first, as the budget's samples fell on this machine)
    assert len(live) == 2 and 60 <= live[0][0] <= 95 and 160 <= live[1][0] <= 220, live
    assert [(e["step"], e["message"]) for e in again] == live, (again, live)
