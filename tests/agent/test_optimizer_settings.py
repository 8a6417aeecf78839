"""The optimizers' settings are always visible (issue #16, point 5): the agent publishes every
param group's lr and weight decay (STATS `optimizer`), announces each boundary change (a notice
EVENT with `changes`) and samples densely after it, whatever the time budget's thinning.
Real torch training through the agent, a real SUB socket on loopback, the observer's RunState."""

from __future__ import annotations

import pytest
import torch
from symwatch_agent.publish.hyperparameters import (
    FOLLOW_SAMPLES,
    changes,
    notice,
    read_settings,
    wire_groups,
)
from torch import nn
from waiting import until

import symwatch
from symwatch.cli.main import main
from symwatch.consumers import export
from symwatch.core import protocol, runtime
from symwatch.core.recording import RecordingReader
from symwatch.state.optimizer import change_text, groups_of, settings_text, short
from symwatch.state.run_state import RunState

EVERY = 5
SWITCH = 400  # the step whose optimizer.step() first runs with weight decay 5
STEPS = 700
BUDGET = 0.01  # --budget: 1 % of training time


def _classifier() -> nn.Module:
    # A default-init (PyTorch's Kaiming-uniform) 3-layer MLP, the case.
    return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 4))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(32, 4, generator=gen)
    for step in steps:
        if step == SWITCH:
            for group in opt.param_groups:
                group["weight_decay"] = 5.0
        x = torch.randn(512, 32, generator=gen)
        loss = nn.functional.cross_entropy(model(x), (x @ teacher).argmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_weight_decay_switch_is_seen_announced_and_sampled_densely(collector, tmp_path,
                                                                     capsys):
    torch.manual_seed(0)
    model = _classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    # A budget small enough that it, not `every`, sets the cadence on any machine (a sample
    # of this model costs milliseconds, a step about one), large enough that the budget
    # allows a sample now and then (the run: one every ~90 steps at `--every 5`).
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.5,
                           every=EVERY, budget=BUDGET, name="wd-switch",
                           record=str(tmp_path / "run.symwatch"))
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    try:
        _train(model, opt, range(1, STEPS + 1))
        limit = agent.sampling()["limit"]
        # the registry entry (refreshed every 2 s) carries them: `symwatch ls` lists them
        assert until(lambda: "wd 5" in settings_text(groups_of(
            runtime.live_runs()[0].extra.get("optimizer")))), "the registry's optimizer"
        capsys.readouterr()
        assert main(["ls"]) == 0
        assert "lr 3e-4 · wd 5" in capsys.readouterr().out
    finally:
        agent.close()
    sub.wait_for(lambda m: m.kind == protocol.GOODBYE)
    state = RunState()
    state.fold_all(sub.messages)

    # the recording holds them, and `symwatch export` gives one record per value taken
    with RecordingReader(tmp_path / "run.symwatch") as reader:
        exported = [(r["step"], r["value"]) for r in export.records(reader.messages())
                    if r["metric"] == "optimizer.0.0.weight_decay"]
    assert [v for _, v in exported] == [0.0, 5.0]
    assert exported[1][0] >= SWITCH

    # the viewer holds the new settings, per group, as plain numbers
    assert state.optimizer, "no STATS `optimizer` reached the viewer"
    assert {g["weight_decay"] for g in state.optimizer} == {5.0}
    assert {g["lr"] for g in state.optimizer} == {3e-4}
    assert state.optimizer[0]["type"] == "AdamW"
    assert state.optimizer[0]["beta1"] == 0.9 and state.optimizer[0]["beta2"] == 0.999
    assert settings_text(state.optimizer) == "lr 3e-4 · wd 5"

    # one notice, at the step of the change, in the events log and among the chart's marks
    (mark,) = state.setting_changes
    assert mark.step == SWITCH and mark.severity == "notice"
    assert mark.changes == (("weight_decay", 0.0, 5.0),)
    assert mark in state.events
    assert change_text(mark.changes) == "wd 0 → 5"
    assert mark.message == f"optimizer: weight_decay 0 → 5 at step {SWITCH}"

    # the budget thinned `every` before the switch; right after it the next FOLLOW_SAMPLES
    # steps `every` allows were all sampled
    assert limit == "budget"
    sampled = sorted({m.step for m in sub.of_kind(protocol.METRICS)})
    window = FOLLOW_SAMPLES * EVERY
    before = [s for s in sampled if SWITCH - window <= s < SWITCH]
    after = [s for s in sampled if SWITCH <= s < SWITCH + window]
    assert after == list(range(SWITCH, SWITCH + window, EVERY)), (before, after)
    assert len(after) > len(before), (before, after)
    # and the overdraft is paid back: the steps after the burst are thinned again
    later = [s for s in sampled if SWITCH + window <= s < SWITCH + 2 * window]
    assert len(later) < len(after), later


def test_a_smooth_schedule_is_shown_never_announced(collector):
    torch.manual_seed(0)
    model = _classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # a smooth schedule: the lr moves at every sample, never by a boundary's 25 %
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4 * STEPS)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           every=EVERY, budget=1.0, stats_interval=0.05, name="smooth")
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    gen = torch.Generator().manual_seed(2)
    try:
        for _ in range(200):
            x = torch.randn(64, 32, generator=gen)
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    finally:
        agent.close()
    sub.wait_for(lambda m: m.kind == protocol.GOODBYE)
    state = RunState()
    state.fold_all(sub.messages)
    assert not state.setting_changes
    assert not [e for e in state.events if "optimizer:" in e.message]
    (group,) = state.optimizer
    assert group["type"] == "SGD" and group["momentum"] == 0.9
    assert group["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=0.05)
    assert settings_text(state.optimizer) == f"lr {short(group['lr'])} · wd 0 · mom 0.9"


def _optimizer(**group: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(nn.Linear(2, 2).parameters(), **group)


@pytest.mark.parametrize("before, after, announced", [
    (0.0, 5.0, True),          # weight decay switched on
    (0.01, 0.0, True),         # switched off
    (0.01, 0.01, False),       # unchanged
    (0.01, 0.0102, False),     # a smooth schedule's small move
    (0.01, 0.0074, True),      # just past the 25 % boundary
    (0.01, 0.0076, False),     # just inside it
    (1e-12, 2e-12, True),      # relative, whatever the scale
])
def test_which_changes_are_announced(before, after, announced):
    opt = _optimizer(weight_decay=before)
    first = read_settings([opt])
    opt.param_groups[0]["weight_decay"] = after
    found = changes(first, read_settings([opt]))
    assert bool(found) is announced, found
    if announced:
        assert found == [{"name": "weight_decay", "optimizer": 0, "group": 0,
                          "before": before, "after": after}]


def test_a_tensor_lr_is_skipped_not_synchronised():
    opt = _optimizer(lr=torch.tensor(1e-3), weight_decay=0.1)
    names = {name for name, _, _ in read_settings([opt])}
    assert "lr" not in names and "weight_decay" in names


def test_groups_and_optimizers_on_the_wire_and_in_the_header():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    adam = torch.optim.AdamW([{"params": a.parameters(), "lr": 1e-3},
                              {"params": b.parameters(), "lr": 1e-4}], weight_decay=0.01)
    sgd = torch.optim.SGD(nn.Linear(4, 4).parameters(), lr=0.1, momentum=0.9)
    groups = wire_groups(read_settings([adam, sgd]), [adam, sgd])
    protocol.encode(protocol.STATS, run="r", rank=0, restart=0, seq=0, time=1.0, step=1,
                    payload={"optimizer": groups})  # validates as the wire would
    assert [(g["optimizer"], g["group"], g["type"]) for g in groups] == \
        [(0, 0, "AdamW"), (0, 1, "AdamW"), (1, 0, "SGD")]
    assert settings_text(groups) == "AdamW lr 1e-3/1e-4 · wd 0.01 | SGD lr 0.1 · wd 0 · mom 0.9"
    # the same change in both groups of one optimizer: one notice, said once in the mark
    before = read_settings([adam])
    for group in adam.param_groups:
        group["weight_decay"] = 0.5
    found = changes(before, read_settings([adam]))
    payload = notice(10, found, 1)
    protocol.encode(protocol.EVENT, run="r", rank=0, restart=0, seq=1, time=1.0, step=10,
                    payload=payload)
    state = RunState()
    assert len(payload["changes"]) == 2
    assert change_text(tuple((c["name"], c["before"], c["after"]) for c in found)) == \
        "wd 0.01 → 0.5"
    assert state.optimizer == []  # nothing known before a STATS: the header shows nothing
    assert settings_text([]) == ""
    assert payload["message"] == "optimizer: weight_decay 0.01 → 0.5 (2 groups) at step 10"
