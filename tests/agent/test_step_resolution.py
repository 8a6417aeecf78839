"""Every step's loss reaches the viewer and the recording (STATS `per_step`), and STATS
`sampling` says what sets the interval between samples. Real torch runs, a real subscriber."""

from __future__ import annotations

import time

import torch
from torch import nn

import symwatch
from symwatch.consumers import export
from symwatch.core import protocol, recording
from symwatch.state.run_state import RunState


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, log=None) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = model(torch.randn(16, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log is not None:
            log(loss)
    return losses


def _watch(model, opt, collector, **options):
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           **options)
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    return agent, sub


def test_every_steps_loss_reaches_the_run_state_and_the_recording(collector, tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "run.db"
    agent, sub = _watch(model, opt, collector, every=10_000, record=str(path))
    losses = _train(model, opt, 150)
    agent.close()
    sub.wait_for(lambda m: m.kind == protocol.GOODBYE)
    state = RunState(history=1000)  # every point kept whole (the default merges old ones)
    for msg in sub.messages:
        state.fold(msg)
    history = state.loss.history
    assert [step for step, _ in history] == list(range(1, 151))
    assert [value for _, value in history] == [
        protocol.clean_number(x) for x in torch.tensor(losses, dtype=torch.float64).tolist()]
    stats = [m for m in sub.messages if m.kind == protocol.STATS]
    assert len(stats) < 150  # batched: far fewer messages than steps

    reader = recording.RecordingReader(path)
    recorded = [r for r in export.records(reader.messages()) if r["metric"] == "loss"]
    assert [r["step"] for r in recorded] == list(range(1, 151))
    replay = RunState(history=1000)
    for msg in recording.RecordingReader(path).messages():
        replay.fold(msg)
    assert len(replay.loss.history) == 150


def test_logged_losses_and_scalars_are_kept_per_step(collector):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent, sub = _watch(model, opt, collector, every=10_000, capture_backward=False)
    _train(model, opt, 40, log=lambda loss: agent.log(loss=loss, half=loss / 2))
    agent.close()
    sub.wait_for(lambda m: m.kind == protocol.GOODBYE)
    per_step: dict[str, list[int]] = {}
    for m in sub.messages:
        if m.kind == protocol.STATS:
            for name, series in (m.payload.get("per_step") or {}).items():
                per_step.setdefault(name, []).extend(series["steps"])
    assert per_step["loss"] == list(range(1, 41))  # logged after each step: that step
    assert per_step["half"] == list(range(1, 41))


def _sampling(sub, steps: int) -> dict:
    msg = sub.wait_for(lambda m: m.kind == protocol.STATS and m.step == steps
                       and "sampling" in m.payload)
    return msg.payload["sampling"]


def test_the_budget_stretches_every_and_says_so(collector):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent, sub = _watch(model, opt, collector, every=1)  # the default 1 % budget
    _train(model, opt, 400)
    time.sleep(agent._stats_interval + 0.05)  # STATS' interval is over, whatever the load:
    _train(model, opt, 1)  # this step's STATS carries the latest sampling
    sampling = agent.sampling()
    agent.close()
    sub.wait_for(lambda m: m.kind == protocol.GOODBYE)
    assert sampling["limit"] == "budget", sampling
    assert sampling["interval"] > 1
    assert sampling["every"] == 1 and sampling["budget"] == 0.01
    published = [m.payload["sampling"] for m in sub.messages
                 if m.kind == protocol.STATS and "sampling" in m.payload]
    assert published and published[-1]["limit"] == "budget"
    assert published[-1]["interval"] > 1


def test_budget_one_samples_at_every(collector):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent, sub = _watch(model, opt, collector, every=3, budget=1.0)
    _train(model, opt, 60)
    sampling = agent.sampling()
    agent.close()
    assert sampling == {"interval": 3.0, "every": 3, "budget": 1.0, "limit": "every"}
    sub.wait_for(lambda m: m.kind == protocol.GOODBYE)
    last = [m.payload["sampling"] for m in sub.messages
            if m.kind == protocol.STATS and "sampling" in m.payload][-1]
    assert last["limit"] == "every" and last["interval"] == 3.0
