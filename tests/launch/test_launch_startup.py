"""Start-up under `symwatch run` (issue #15): the training thread never waits for the agent's
preparation. The bootstrap (loaded under another name, its global hooks registered as at
torch's import) runs in this process over a real model, optimizer and subscriber; the search
for the models is held on its thread by an event, so that a training thread waiting for it
would be caught, not timed."""

from __future__ import annotations

import gc
import threading

import pytest

torch = pytest.importorskip("torch")
from symwatch_agent.hooks import models as model_search
from test_launch import bootstrap_module
from torch import nn
from waiting import until

from symwatch.core import protocol
from symwatch.core.processes import free_port
from symwatch.core.recording import RecordingReader

HOLD_S = 60.0  # a held search is let go after this, and the test then fails (see _Held)


class _Held:
    """Wraps hooks/models.live_objects and _scan: records which thread ran each pass, and holds
    the passes made off the main thread until `release()` (or HOLD_S, noted as a failure)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.timed_out = False
        self.searches: list[str] = []  # thread names of live_objects calls
        self.scans: list[str] = []  # thread names of every pass over gc.get_objects()
        live_objects, scan = model_search.live_objects, model_search._scan

        def held_live_objects(*args, **kwargs):
            self.searches.append(threading.current_thread().name)
            if (threading.current_thread() is not threading.main_thread()
                    and not self.gate.wait(HOLD_S)):
                self.timed_out = True
            return live_objects(*args, **kwargs)

        def recorded_scan(*args, **kwargs):
            self.scans.append(threading.current_thread().name)
            return scan(*args, **kwargs)

        monkeypatch.setattr(model_search, "live_objects", held_live_objects)
        monkeypatch.setattr(model_search, "_scan", recorded_scan)

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def launched(monkeypatch, tmp_path):
    """The bootstrap, its hooks registered by the test (`boot._on_torch()`, as at torch's
    import), with a loopback endpoint and a recording (what was published, whoever
    listened); everything removed afterwards."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SYMWATCH_LAUNCH", "1")
    monkeypatch.setenv("SYMWATCH_QUIET", "1")
    monkeypatch.setenv("SYMWATCH_ENDPOINT", endpoint)
    monkeypatch.setenv("SYMWATCH_RECORD", str(tmp_path / "run.sqlite"))
    boot = bootstrap_module()
    held = _Held(monkeypatch)
    try:
        yield boot, held, endpoint
    finally:
        held.release()
        for key in ("forward_hook", "step_hook"):
            handle = boot._state.get(key)
            if handle is not None:
                handle.remove()
        boot._stop_loss_capture()
        agent = boot._state.get("agent")
        if agent is not None:
            agent.close()
        done = boot._state.get("search_done")
        if done is not None:
            done.wait(HOLD_S)


def _model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _train_step(model, opt, x, y) -> None:
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _steps_until_started(boot, step, most: int = 10) -> int:
    """Train until the agent starts (at most `most` steps); how many steps that took. The
    test waits for each search thread before a step, so that the count is deterministic
    (the early search, then the one at the first backward after it); the hook never does."""
    for n in range(1, most + 1):
        done = boot._state["search_done"]
        if done is not None:
            done.wait(HOLD_S)
        step()
        if boot._state["agent"] is not None:
            return n
    raise AssertionError(f"no agent after {most} steps")


def test_steps_go_on_while_the_models_are_searched_for_and_the_agent_starts_after(launched):
    boot, held, _ = launched
    boot._on_torch()
    model, opt = _model_and_optimizer()
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    # The preload thread imports the agent (already imported here: at once), then captures
    # the loss; the first backward after that starts the search, which is held.
    for step in range(1, 6):
        _train_step(model, opt, x, y)
        assert boot._state["agent"] is None, step  # not ready: the step did not wait
    assert not held.timed_out  # the steps went on while the search was held
    assert held.searches and all(name != "MainThread" for name in held.searches)
    held.release()
    started = 5 + _steps_until_started(boot, lambda: _train_step(model, opt, x, y))
    agent = boot._state["agent"]
    assert agent.steps == started  # the optimizer's own step count
    # every pass over the live objects ran on the search thread (two when this process holds
    # other optimizers, garbage or not: a collection, then a second pass)
    assert held.scans and set(held.scans) == {"symwatch-find-models"}
    assert [layer.name for layer in agent.layers] == ["sequential.0", "sequential.2"]
    agent.close()  # the recording holds all it published (ZeroMQ may drop the first ones)
    recorded = list(RecordingReader(agent.recording).messages())
    first = next(m for m in recorded if m.kind == protocol.METRICS)
    assert first.step == started  # the first sample, at the step the agent started
    # a cheap first sample under the default budget: no rows of the forward were copied
    assert not any("act_erank" in values for values in first.payload["values"].values())
    losses = [m.payload["loss"] for m in recorded
              if m.kind == protocol.STATS and m.payload.get("loss") is not None]
    assert losses and losses[0] > 0  # that step's loss, kept from its .backward()


def test_a_search_that_does_not_end_is_finished_by_a_later_step(launched, monkeypatch):
    boot, held, _ = launched
    monkeypatch.setattr(boot, "ARM_WAIT_STEPS", 3)
    boot._on_torch()
    model, opt = _model_and_optimizer()
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    for step in range(1, 4):
        _train_step(model, opt, x, y)
        assert boot._state["agent"] is None, step
    # Step 4: the first optimizer waited ARM_WAIT_STEPS steps; this one searches itself, so a
    # short script is still watched.
    _train_step(model, opt, x, y)
    agent = boot._state["agent"]
    assert agent is not None and agent.steps == 4
    assert "MainThread" in held.scans
    assert [layer.name for layer in agent.layers] == ["sequential.0", "sequential.2"]


def test_another_optimizers_step_starts_it_when_the_first_has_stopped(launched):
    # A learning-rate finder's optimizer steps first, then training proper uses another: the
    # agent still starts (at a step of the second), counting the first one's steps as before.
    boot, held, _ = launched
    boot._on_torch()
    model, finder = _model_and_optimizer()
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    for _ in range(2):
        _train_step(model, finder, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _train_step(model, opt, x, y)
    assert boot._state["agent"] is None  # the search is held
    held.release()
    _steps_until_started(boot, lambda: _train_step(model, opt, x, y))
    agent = boot._state["agent"]
    assert agent._optimizers[0] is finder
    assert agent.steps == 2  # the finder's two steps; its next one would be the agent's first
    assert any(o is opt for o in agent._optimizers)  # the live second optimizer, found too


def test_a_model_built_before_the_agents_import_ends_is_watched_from_step_1(launched):
    # The usual script: model and optimizer built, then data loaded for a while. The early
    # search (when the import ends) finds them; step 1 starts the agent and searches nothing.
    boot, held, _ = launched
    held.release()
    gc.collect()
    model, opt = _model_and_optimizer()
    if any(issubclass(type(o), torch.optim.Optimizer) and o is not opt
           for o in gc.get_objects()):
        pytest.skip("this process holds other optimizers (a fixture's)")
    boot._on_torch()  # torch's import: the agent's import, then the early search
    assert until(lambda: boot._state["search_done"] is not None, timeout=HOLD_S)
    assert boot._state["search_done"].wait(HOLD_S)
    _train_step(model, opt, torch.randn(8, 16), torch.randint(0, 4, (8,)))
    agent = boot._state["agent"]
    assert agent is not None and agent.steps == 1
    assert held.scans == ["symwatch-find-models"]  # the early pass only, on its thread


def test_the_switch_interval_is_short_while_the_agent_prepares_and_the_scripts_after(launched):
    """While the agent's import and the search run on their threads the interpreter switches
    threads every 0.5 ms, not 5 ms (the training thread waited up to the interval for the
    GIL after each torch op); once they have ended the script has its own interval back."""
    import sys

    boot, held, _ = launched
    script_interval = 0.004  # the script's own setting, not the default
    previous = sys.getswitchinterval()
    sys.setswitchinterval(script_interval)
    try:
        boot._on_torch()  # the preload thread, then the early search: held by the test
        model, opt = _model_and_optimizer()
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        assert until(lambda: held.searches, timeout=HOLD_S)  # a search is running (held)
        assert sys.getswitchinterval() == boot.QUIET_SWITCH_INTERVAL_S
        _train_step(model, opt, x, y)
        assert sys.getswitchinterval() == boot.QUIET_SWITCH_INTERVAL_S  # still searching
        held.release()
        _steps_until_started(boot, lambda: _train_step(model, opt, x, y))
        assert until(lambda: boot._state["quiet"] == 0, timeout=HOLD_S)
        assert sys.getswitchinterval() == script_interval
    finally:
        sys.setswitchinterval(previous)


def test_a_switch_interval_the_script_sets_meanwhile_is_left_alone(launched):
    import sys

    boot, held, _ = launched
    previous = sys.getswitchinterval()
    try:
        boot._on_torch()
        assert until(lambda: held.searches, timeout=HOLD_S)
        sys.setswitchinterval(0.002)  # the script's, during the agent's preparation
        held.release()
        assert until(lambda: boot._state["quiet"] == 0, timeout=HOLD_S)
        assert sys.getswitchinterval() == 0.002
    finally:
        sys.setswitchinterval(previous)
