"""`symwatch run -- COMMAND`: the agent injected at start-up into unmodified scripts. Real
subprocesses and a real subscriber; every wait has a deadline, nothing asserts on timing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from symwatch.core import protocol
from symwatch.core.processes import free_port
from symwatch.launch.run import LaunchError, build_env, check_command, execute, plan

FIXTURES = Path(__file__).parents[1] / "fixtures"
TRAIN = str(FIXTURES / "thirdparty_train.py")
SYMWATCH_RUN = [sys.executable, "-m", "symwatch", "run"]
DEADLINE_S = 100  # a cold torch import on a loaded machine can take a while
WATCHING = "symwatch: watching"


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=DEADLINE_S, **kwargs)


@contextmanager
def _training(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A `symwatch run` child with its output piped; killed on the way out if still running
    (a failed assertion must not leave a training process behind)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def bootstrap_module():
    """The bootstrap loaded under another name, so its start-up code does not run here (a
    fresh module each call: tests/launch/test_launch_startup.py uses it too)."""
    path = Path(__file__).parents[2] / "agent/symwatch_agent/entry/bootstrap/sitecustomize.py"
    spec = importlib.util.spec_from_file_location("_symwatch_bootstrap_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the acceptance test: a third-party script, unmodified --------------------------------------

def test_third_party_script_is_watched_and_unchanged(collector, tmp_path):
    # The script trains 30 steps (printing), then on quietly until `stop` exists: the watched
    # run lasts until the subscriber has seen everything, with the same stdout.
    stop = tmp_path / "stop"
    args = ["--steps", "30", "--sleep", "0.02", "--until", str(stop)]
    stop.touch()
    plain = _run([sys.executable, TRAIN, *args])
    assert plain.returncode == 3, plain.stderr.decode()
    stop.unlink()

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = collector(endpoint)  # connect before the run binds: ZeroMQ reconnects until it does
    with _training([*SYMWATCH_RUN, "--endpoint", endpoint, "--every", "1", "--budget", "1",
                    "--", sys.executable, TRAIN, *args]) as proc:
        # every Linear/Conv layer, and the attention block itself (its per-head QK/VO ranks),
        # named after the script's model variable, `net`
        expected = {f"net.{name}" for name in ("conv", "proj", "attn", "attn.q", "attn.k",
                                               "attn.v", "attn.out_proj", "head")}
        meta = sub.wait_for(lambda m: m.kind == protocol.META, timeout=DEADLINE_S)
        assert {row["name"] for row in meta.payload["layers"]} == expected
        metrics = sub.wait_for(lambda m: m.kind == protocol.METRICS
                               and set(m.payload["values"]) == expected, timeout=DEADLINE_S)
        assert all(metrics.payload["values"][name] for name in expected)
        assert "qk_rank" in metrics.payload["values"]["net.attn"]
        stats = sub.wait_for(lambda m: m.kind == protocol.STATS
                             and m.payload.get("loss") is not None, timeout=DEADLINE_S)
        assert 0 < stats.payload["loss"] < 10
        stop.touch()
        out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 3, err.decode()
    assert out == plain.stdout  # byte for byte: symwatch writes only to stderr
    assert err.decode().count(WATCHING) == 1


def test_full_every_from_the_command_line_spaces_the_full_tier(collector, tmp_path):
    """`symwatch run --every 1 --budget 1 --full-every 3`: every step sampled, and exactly
    one sample in three is full (spectra and unit detail), the others cheap."""
    stop = tmp_path / "stop"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = collector(endpoint)
    with _training([*SYMWATCH_RUN, "--endpoint", endpoint, "--every", "1", "--budget", "1",
                    "--full-every", "3", "--quiet", "--", sys.executable, TRAIN, "--steps",
                    "40", "--sleep", "0.02", "--until", str(stop)]) as proc:
        sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step >= 20, timeout=DEADLINE_S)
        stop.touch()
        _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 3, err.decode()
    sub.drain()
    metrics = sorted(sub.of_kind(protocol.METRICS), key=lambda m: m.step)
    steps = [m.step for m in metrics]
    assert steps == list(range(steps[0], steps[0] + len(steps))), steps  # every step sampled
    full = [m.step for m in metrics if "detail" in m.payload]
    assert len(full) >= 6 and {b - a for a, b in zip(full, full[1:])} == {3}, full
    cheap = [m for m in metrics if m.step not in full]
    assert all(m.payload["values"]["net.proj"].get("effective_rank") is None for m in cheap)
    assert all(m.payload["values"]["net.proj"]["effective_rank"] is not None
               for m in metrics if m.step in full)


@pytest.mark.parametrize("context, workers", [("fork", ["2"]), ("spawn", ["1", "--persistent"])],
                         ids=["fork", "spawn"])
def test_dataloader_workers_start_no_agent(context, workers):
    # Forked workers inherit the hooks, spawned ones run the bootstrap afresh: neither steps
    # an optimizer, so the only agent is the main process's. One run per case, each under its
    # own timeout (the two in one test took 67 s, and 157 s, on a loaded 2-core machine: past
    # the 120 s limit). 8 steps are two epochs: the second epoch's workers are forked from a
    # process whose agent is running, as a rule. A spawned worker imports torch (seconds
    # under load): kept for both epochs, one is spawned, not two (it starts the same way
    # whenever it is spawned).
    result = _run([*SYMWATCH_RUN, "--", sys.executable, TRAIN, "--steps", "8",
                   "--workers", *workers, "--context", context])
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert err.count(WATCHING) == 1, err
    assert "Traceback" not in err


def test_module_form_with_two_models_named(collector, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(FIXTURES))
    stop = tmp_path / "stop"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = collector(endpoint)
    with _training([*SYMWATCH_RUN, "--endpoint", endpoint, "--every", "1", "--name", "gan",
                    "--", sys.executable, "-m", "gan_train", str(stop)]) as proc:
        meta = sub.wait_for(lambda m: m.kind == protocol.META, timeout=DEADLINE_S)
        stop.touch()
        out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err.decode()
    assert out == b"gan done\n"
    assert meta.payload["name"] == "gan"
    names = {row["name"] for row in meta.payload["layers"]}
    assert names == {"G.0", "G.2", "D.0", "D.2"}


# -- start-up: chaining, refusals, pass-through --------------------------------------------------

def test_existing_sitecustomize_still_runs(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text("MARK = 'chained'\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    code = ("import sys, sitecustomize; print(sitecustomize.MARK); "
            "print('_symwatch_bootstrap' in sys.modules)")
    result = _run([*SYMWATCH_RUN, "--", sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"chained\nTrue\n"


def test_failing_sitecustomize_is_reported_like_python_does(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text("raise RuntimeError('broken customisation')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = _run([*SYMWATCH_RUN, "--", sys.executable, "-c", "print('still runs')"])
    assert result.returncode == 0
    assert result.stdout == b"still runs\n"
    assert "RuntimeError: broken customisation" in result.stderr.decode()


def test_isolated_python_is_refused_clearly_and_still_runs():
    result = _run([*SYMWATCH_RUN, "--", sys.executable, "-I", "-c", "print('ran')"])
    err = result.stderr.decode()
    assert result.returncode == 0
    assert result.stdout == b"ran\n"
    assert "cannot inject the agent" in err and "-I" in err


@pytest.mark.parametrize("command, code", [(["true"], 0), (["sh", "-c", "exit 5"], 5)])
def test_non_python_command_runs_with_its_exit_status(command, code):
    result = _run([*SYMWATCH_RUN, "--", *command])
    assert result.returncode == code
    assert result.stdout == b""
    assert "not a Python interpreter" in result.stderr.decode()


def test_signals_and_stdin_pass_through():
    killed = _run([*SYMWATCH_RUN, "--", "sh", "-c", "kill -TERM $$"])
    assert killed.returncode == -15  # the command itself died of the signal
    echoed = _run([*SYMWATCH_RUN, "--quiet", "--", sys.executable, "-c",
                   "import sys; sys.stdout.write(sys.stdin.read().upper())"], input=b"abc\n")
    assert echoed.returncode == 0 and echoed.stdout == b"ABC\n"


def test_missing_command_and_usage_errors():
    missing = _run([*SYMWATCH_RUN, "--", "no-such-command-symwatch"])
    assert missing.returncode == 127
    assert b"command not found" in missing.stderr
    empty = _run(SYMWATCH_RUN)
    assert empty.returncode == 2 and empty.stderr.startswith(b"symwatch run: no command given")
    bad = _run([*SYMWATCH_RUN, "--budget", "2", "--", "true"])
    assert bad.returncode == 2 and b"fraction" in bad.stderr


# -- units: what the launcher decides, without running anything --------------------------------

@pytest.mark.parametrize("argv, injected", [
    (["python", "train.py"], True),
    (["python3.11", "-u", "-m", "pkg.train"], True),
    (["python", "-X", "dev", "-W", "ignore", "train.py", "-I"], True),  # -I is the script's
    (["python", "-c", "import x", "-E"], True),
    (["python", "-I", "train.py"], False),
    (["python", "-uE", "train.py"], False),
    (["/usr/bin/python3", "-S", "train.py"], False),
])
def test_check_command_reads_interpreter_options(argv, injected):
    ok, note = check_command(argv)
    assert ok is injected
    assert (note is None) is injected


def test_check_command_follows_python_shebangs(tmp_path):
    script = tmp_path / "trainer"
    script.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    script.chmod(0o755)
    assert check_command([str(script)]) == (True, None)
    isolated = tmp_path / "isolated"
    isolated.write_text("#!/usr/bin/python3 -I\n")
    isolated.chmod(0o755)
    assert check_command([str(isolated)])[0] is False
    shell = tmp_path / "run.sh"
    shell.write_text("#!/bin/sh\npython train.py\n")
    shell.chmod(0o755)
    ok, note = check_command([str(shell)])
    assert not ok and "inherit PYTHONPATH" in note
    with pytest.raises(LaunchError, match="no command"):
        check_command([])


def test_build_env_puts_the_bootstrap_first_and_sets_only_given_options(tmp_path):
    env = build_env({"PYTHONPATH": "/mine", "SYMWATCH_EVERY": "7", "KEEP": "1"},
                    {"name": "x", "budget": 0.5, "every": None}, tmp_path, ["/agent"])
    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path), "/mine"])
    assert env["SYMWATCH_NAME"] == "x" and env["SYMWATCH_BUDGET"] == "0.5"
    assert env["SYMWATCH_EVERY"] == "7" and env["KEEP"] == "1"
    assert env["SYMWATCH_LAUNCH"] == "1" and env["SYMWATCH_AGENT_PATH"] == "/agent"
    again = build_env(env, {}, tmp_path)  # a nested `symwatch run`: one bootstrap entry
    assert again["PYTHONPATH"] == env["PYTHONPATH"]


def test_plan_strips_the_separator_and_execute_reports_failures(capsys):
    p = plan(["--", "sh", "-c", "exit 0"], {})
    assert p.argv == ["sh", "-c", "exit 0"] and not p.injected
    calls = []
    assert execute(p, execvpe=lambda *a: calls.append(a)) == 0
    assert calls[0][1] == ["sh", "-c", "exit 0"]

    def denied(*_):
        raise PermissionError(13, "Permission denied")

    assert execute(p, execvpe=denied) == 126
    assert "Permission denied" in capsys.readouterr().err


def test_rank_endpoints_do_not_collide():
    boot = bootstrap_module()
    assert boot.rank_endpoint("tcp://127.0.0.1:5555", 2) == "tcp://127.0.0.1:5557"
    assert boot.rank_endpoint("tcp://127.0.0.1:0", 2) == "tcp://127.0.0.1:0"
    assert boot.rank_endpoint("ipc:///tmp/run.sock", 1) == "ipc:///tmp/run.sock.1"
    assert boot.rank_endpoint("tcp://127.0.0.1:60{rank}", 3) == "tcp://127.0.0.1:603"
    assert "sitecustomize" not in sys.modules or sys.modules["sitecustomize"] is not boot


@pytest.mark.parametrize("value, expected", [("4", 4), ("0", None), ("often", None), ("", None)])
def test_bootstrap_reads_full_every_and_ignores_a_bad_value(monkeypatch, capsys, value, expected):
    boot = bootstrap_module()
    monkeypatch.setenv("SYMWATCH_FULL_EVERY", value)
    assert boot._options().get("full_every") == expected
    err = capsys.readouterr().err
    assert ("ignoring $SYMWATCH_FULL_EVERY" in err) == (value in ("0", "often"))


def test_the_first_stderr_line_says_what_sets_the_sampling_interval():
    result = _run([*SYMWATCH_RUN, "--every", "7", "--", sys.executable, TRAIN, "--steps", "8"])
    err = result.stderr.decode()
    line = next(text for text in err.splitlines() if WATCHING in text)
    assert "sampling at most every 7 steps" in line and "1 % time budget" in line, line
    assert "--every N --budget 1 forces a cadence" in line, line
