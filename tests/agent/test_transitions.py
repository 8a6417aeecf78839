"""Transitions detected inside the agent and published in the stream (real training, real
sockets): the demo's rank staircase, every step found once, none invented."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from linear_teacher import budgeted_staircase, linear_teacher
from symwatch_agent.entry import demo
from symwatch_agent.publish.publisher import Publisher
from symwatch_agent.publish.transitions import TransitionWatch, read_hyperparameters
from torch import nn
from waiting import until

import symwatch
from symwatch.core import protocol
from symwatch.core.detection import effect
from symwatch.core.names import display
from symwatch.core.recording import RecordingReader

# Where the demo's linear.0 numerical rank steps up (seed 0; see symwatch_agent.entry.demo).
MODES_STEPS = [7, 9, 19, 48, 61]  # where `modes` of linear.0 rises (seed 0)


def _free_endpoint() -> str:
    probe = Publisher("tcp://127.0.0.1:0", run="probe", report=lambda *_: None)
    endpoint = probe.start()
    probe.close()
    return endpoint


def test_every_rank_step_of_the_staircase_is_one_transition(collector):
    endpoint = _free_endpoint()
    sub = collector(endpoint)
    thread = threading.Thread(target=demo.run, kwargs={
        "steps": 380, "delay": 0.01, "every": 1, "budget": 1.0, "endpoint": endpoint, "name": "t"}, daemon=True)
    thread.start()
    thread.join(180)
    assert not thread.is_alive()
    sub.drain(0.5)
    events = [m for m in sub.of_kind(protocol.EVENT) if m.payload["severity"] == "transition"]
    rank_jumps = [(m.step, j) for m in events for j in m.payload["jumps"]
                  if (j["layer"], j["metric"]) == ("linear.0", "modes")]
    found = [(j["onset"], j["before"], j["after"]) for _, j in rank_jumps]
    # `modes` leaves the tiny bulk at steps 7, 9, 19, 48, 61 (seed 0), ahead of the loss
    # drops; the rises inside the detector's warm-up samples are not reported. Each reported
    # one is a +1 at one of those steps.
    assert found and all(after == before + 1 and any(abs(onset - s) <= 2 for s in MODES_STEPS)
                         for onset, before, after in found), found
    first = next(m for m in events if m.step == rank_jumps[0][0])
    assert "linear.0" in first.payload["message"] and "modes" in first.payload["message"]
    assert all(m.payload["exogenous"] is None for m in events)
    # the demo's noise events (issue 16) no longer fire: every event's headline moved by at
    # least its family's floor, and none is a near-constant series' tiny move or a one-unit
    # ReLU flicker, nor a float32-resolution count
    for m in events:
        head = m.payload["movers"][0] if m.payload["movers"] else None
        assert head is None or head["effect"] >= 1, m.payload["message"]
        named = {(j["layer"], j["metric"]) for j in m.payload["jumps"]}
        assert not {metric for _, metric in named} & {"numerical_rank", "mirror_rank"}, named
        for j in m.payload["jumps"]:
            if j["metric"] in ("balance_norm", "relu_dead", "stable_rank", "balance"):
                assert effect(j["metric"], j["before"], j["after"], quantum=1 / 64) >= 1, j
    assert first.payload["what"] == "a mode learned"
    # each model's loss is detected on its own and quoted in the same window
    assert all({w["metric"] for w in m.payload["in_window"]} <= {"loss", "linear_loss",
                                                                "mlp_loss"} for m in events)


def test_optimizer_changes_are_labelled_exogenous():
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = TransitionWatch()
    for step in range(1, 200):
        if step == 150:
            opt.param_groups[0]["lr"] = 0.01
        # four modes learned, the loss falling with them (a count alone is no event)
        level, loss = (1.0, 1.0) if step < 150 else (5.0, 0.3)
        events = watch.update(step, {"fc": {"modes": level}}, loss,
                              read_hyperparameters([opt]))
        if events:
            (event_step, payload), = events
            assert payload["exogenous"] == "optimizer lr 0.1 → 0.01"
            assert event_step == 150
            return
    raise AssertionError("the step at 150 was not reported")


@pytest.mark.parametrize("metric, found", [("modes", True), ("numerical_rank", False),
                                           ("delta_rank", False), ("broken", False)])
def test_only_indicators_of_the_training_are_detected(metric, found):
    """numerical_rank's steps come from float32's resolution, Δ_G and broken repeat their
    sources: the same lasting step in them is no transition; in `modes` it is."""
    watch = TransitionWatch()
    # the loss falls at the same step: what is asked is whether the indicator is among the
    # event's series (a lone count is no event at all: see test_detection.py)
    metrics = [j["metric"] for s in range(1, 200)
               for _, p in watch.update(s, {"fc": {metric: 3.0 if s < 120 else 8.0}},
                                        1.0 if s < 120 else 0.3, ())
               for j in p["jumps"]]
    assert "loss" in metrics and (metric in metrics) is found, metrics


def test_detection_can_be_switched_off(collector):
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", detect=False)
    assert agent._transitions is None
    agent.close()


def test_a_mark_and_a_resume_label_what_they_explain(collector):
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", register=False,
                           heartbeat_interval=0.05)
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    agent.steps = 150
    agent.mark("data switched to the hard split")
    opt.load_state_dict(opt.state_dict())  # what resuming from a checkpoint does
    assert [r for _, r in agent._marks] == [
        "data switched to the hard split", "resumed from a checkpoint (optimizer state loaded)"]
    for step in range(1, 200):  # the publisher thread's work, done here deterministically
        level, loss = (1.0, 1.0) if step < 150 else (5.0, 0.3)
        agent._detect_transitions(step, {"fc": {"modes": level}}, loss, ())
    assert not agent._marks  # consumed by the detector
    event = sub.wait_for(lambda m: m.kind == protocol.EVENT)
    assert event.step == 150 and "data switched to the hard split" in event.payload["exogenous"]
    agent.close()


# -- one test per kind of event, each on a real small training run through the agent ----------
# The run records every message (a subscriber could miss the first ones while it joins); the
# test reads the transitions back from the recording.

def _transitions(recording) -> list[tuple[int, dict]]:
    with RecordingReader(recording) as reader:
        return [(m.step, m.payload) for m in reader if m.kind == protocol.EVENT
                and m.payload.get("severity") == "transition"]


def _relu_classifier_run(recording, *, steps: int = 250, burst: tuple[int, int] | None = None,
                         factor: float = 50.0, diverge_at: int | None = None,
                         every: int = 1) -> list[tuple[int, dict]]:
    """A ReLU MLP (16-64-64-4, PyTorch's default init) learning a random ReLU teacher's arg-max
    with SGD, next to a linear regression whose loss (≈ 50) dominates the total: each model's
    loss is passed to `log` as its own scalar. Inside [burst), the MLP's learning rate is
    multiplied by `factor`: the injected loss spike. From `diverge_at` on, the regression's
    learning rate is 5, far above gradient descent's stability limit 2/λ_max (λ_max ≈ 2.25 for
    a batch of 64 Gaussian inputs in 16 dimensions): its loss grows about 100× a step until it
    overflows."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    mlp = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 4))
    regression = nn.Linear(16, 16)
    target = torch.randn(16, 16) * 3
    opt = torch.optim.SGD([{"params": mlp.parameters(), "lr": 0.05},
                           {"params": regression.parameters(), "lr": 1e-3}])
    with symwatch.watch({"mlp": mlp, "reg": regression}, opt, endpoint="tcp://127.0.0.1:0",
                        every=every, budget=1.0, record=str(recording),
                        register=False) as agent:
        for step in range(steps):
            hot = burst is not None and burst[0] <= step < burst[1]
            opt.param_groups[0]["lr"] = 0.05 * (factor if hot else 1.0)
            if diverge_at is not None and step >= diverge_at:
                opt.param_groups[1]["lr"] = 5.0
            x = torch.randn(64, 16)
            mlp_loss = nn.functional.cross_entropy(mlp(x), teacher(x).argmax(1))
            reg_loss = 0.5 * (regression(x) - x @ target.T).square().sum(1).mean()
            opt.zero_grad()
            (mlp_loss + reg_loss).backward()
            agent.log(loss=mlp_loss + reg_loss, mlp_loss=mlp_loss, reg_loss=reg_loss)
            opt.step()
    return _transitions(recording)


def test_an_injected_loss_spike_is_an_event_naming_the_layers_and_the_units_it_killed(tmp_path):
    events = _relu_classifier_run(tmp_path / "spike.db", burst=(150, 153))
    spikes = [(s, p) for s, p in events if p.get("what") == "a loss spike"]
    # the MLP's own loss spiked (×5); the total, dominated by the regression's loss, did not
    # cross the spike floor: only a loss series detected on its own shows it
    assert [(p["metric"], 150 <= s <= 154) for s, p in spikes] == [("mlp_loss", True)], events
    spike = spikes[0][1]
    assert spike["after"] > 3 * spike["before"] and spike["exogenous"].startswith("optimizer lr")
    assert spike["movers"] and {m["layer"] for m in spike["movers"][:3]} <= {"mlp.0", "mlp.2",
                                                                             "mlp.4"}
    assert "moved most: mlp." in spike["message"]
    died = [(s, p) for s, p in events if p.get("what") == "units died"]
    assert died and 150 <= died[0][0] <= 156, events
    head = died[0][1]["headline"]
    assert head["layer"].startswith("mlp.") and head["metric"] in ("relu_dead", "dead_fraction")
    assert died[0][1]["message"].startswith(
        f"units died: {head['layer']} {display(head['metric'])} ")  # the table's name


def test_the_same_run_without_the_spike_has_no_spike_and_no_dead_units(tmp_path):
    events = _relu_classifier_run(tmp_path / "calm.db")
    assert not [p for _, p in events if p.get("what") in ("a loss spike", "divergence",
                                                          "units died")], events


def test_divergence_is_an_event(tmp_path):
    events = _relu_classifier_run(tmp_path / "nan.db", steps=190, diverge_at=150)
    diverged = [(s, p) for s, p in events if p.get("what") == "divergence"]
    # the total and the regression's own loss diverge; the MLP's does not
    assert sorted(p["metric"] for _, p in diverged) == ["loss", "reg_loss"], events
    assert all(150 <= s <= 190 for s, _ in diverged)
    assert not [p for _, p in events if p.get("what") == "a loss spike"], events
    assert all(p["movers"] and p["movers"][0]["layer"] == "reg" for _, p in diverged), diverged


def _weight_decay_switched_on(recording, steps: int):
    """A two-layer linear network (small init) learning a rank-3 teacher (σ = 3, 2, 0.6) from
    noisy minibatches, every step sampled and recorded; weight decay 1.0 from step 200.
    Returns the recording's path."""
    model, target = linear_teacher([3.0, 2.0, 0.6], 1e-2)
    d = target.shape[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=1, budget=1.0,
                        record=str(recording), register=False) as agent:
        for step in range(steps):
            opt.param_groups[0]["weight_decay"] = 1.0 if step >= 200 else 0.0
            x = torch.randn(32, d)
            loss = 0.5 * (model(x) - x @ target.T - 0.3 * torch.randn(32, d)).square().sum(1).mean()
            opt.zero_grad()
            loss.backward()
            agent.log(loss=loss)
            opt.step()
    return recording


def test_a_mode_learned_then_lost_to_weight_decay(tmp_path):
    """A two-layer linear network (small init) learns a rank-3 teacher (σ = 3, 2, 0.6) from
    noisy minibatches; at step 200 weight decay 1.0 > 0.6 is switched on and the weakest mode
    is restored into the noise bulk (SCIENCE.md: a mode survives weight decay γ only if its
    σ exceeds γ)."""
    events = _transitions(_weight_decay_switched_on(tmp_path / "modes.db", 400))
    learned = [(s, p) for s, p in events if p["what"] == "a mode learned"]
    assert learned and all(s < 200 and p["headline"]["metric"] == "modes" for s, p in learned)
    lost = [(s, p) for s, p in events if p["what"] == "a mode lost to weight decay"]
    assert len(lost) == 1 and lost[0][0] > 200, events
    assert lost[0][1]["message"].startswith("a mode lost to weight decay: ")
    assert lost[0][1]["headline"] == {"layer": lost[0][1]["headline"]["layer"], "metric": "modes"}
    # the switch itself is a transition, its cause said, not dropped
    switch = [p for s, p in events if 200 <= s <= 206]
    assert switch and switch[0]["what"] == "weights shrank under weight decay"
    assert switch[0]["exogenous"] == "optimizer weight_decay 0 → 1"


def test_a_transition_in_the_runs_last_samples_is_published_when_it_closes(tmp_path):
    """The same run, ended at step 205: weight decay switched on at 200 shrinks the weights
    from 201 on, and the detector's group for it is still open (its window of 5 samples) when
    the run ends. Before, such a group was never published: a run's last transition missing
    from the screen and from the recording."""
    recording = _weight_decay_switched_on(tmp_path / "ends.db", 205)
    events = _transitions(recording)
    last = [(s, p["what"], p["exogenous"]) for s, p in events if s >= 200]
    assert last == [(201, "weights shrank under weight decay", "optimizer weight_decay 0 → 1")], events
    with RecordingReader(recording) as reader:
        kinds = [m.kind for m in reader]
    assert kinds[-1] == protocol.GOODBYE  # the flushed event went out before it


def _evaluated_now_and_then(recording, between) -> list[tuple[int, dict]]:
    """A regression trained with SGD, its loss logged every step and a validation loss every
    25 steps; `between` is what is logged as `val_loss` at the other steps."""
    torch.manual_seed(0)
    model, target = nn.Linear(8, 8), torch.randn(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    held_out = torch.randn(256, 8)
    with symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=1, budget=1.0,
                        record=str(recording), register=False) as agent:
        for step in range(150):
            x = torch.randn(32, 8)
            loss = (model(x) - x @ target.T).square().mean()
            opt.zero_grad()
            loss.backward()
            if step % 25 == 0:
                with torch.no_grad():
                    val = (model(held_out) - held_out @ target.T).square().mean()
            agent.log(loss=loss, val_loss=val if step % 25 == 0 else between)
            opt.step()
    return _transitions(recording)


def test_a_value_logged_as_none_between_evaluations_is_no_value_and_no_divergence(tmp_path):
    """`log(val_loss=None)` at the steps without an evaluation (docs/alerts.md: the way to say
    "no value"): no divergence, and the evaluations' values are the series. A NaN in its
    place is read as the loss blowing up, once (what the docs warn of)."""
    events = _evaluated_now_and_then(tmp_path / "none.db", None)
    assert not [p for _, p in events if p.get("what") == "divergence"], events
    with RecordingReader(tmp_path / "none.db") as reader:
        logged = [v for m in reader if m.kind == protocol.STATS
                  for v in m.payload.get("per_step", {}).get("val_loss", {}).get("values", [])]
    assert len([v for v in logged if v is not None]) == 6, logged  # steps 0, 25, …, 125
    events = _evaluated_now_and_then(tmp_path / "nan.db", float("nan"))
    assert [p["metric"] for _, p in events if p.get("what") == "divergence"] == ["val_loss"]


def test_a_run_that_blows_up_in_its_first_samples_is_a_divergence(tmp_path):
    """The regression's loss overflows ~25 steps in; sampled every 3 steps, that is within
    the spike rule's 20-sample warm-up: reported all the same (a run that blows up early is
    the one most worth an alert; at a 1 % budget its first 20 samples can span thousands of
    steps). Before, no divergence was ever reported for it."""
    events = _relu_classifier_run(tmp_path / "early.db", steps=45, diverge_at=0, every=3)
    diverged = [(s, p) for s, p in events if p.get("what") == "divergence"]
    assert sorted(p["metric"] for _, p in diverged) == ["loss", "reg_loss"], events
    assert all(s <= 3 * 15 for s, _ in diverged), diverged  # within the first 15 samples


def test_a_non_finite_loss_between_samples_is_a_divergence_at_its_step(tmp_path):
    """Samples every 1,000 steps (none but the first in this run, as a budget-stretched
    interval can be): the loss turning NaN at step 30 is still reported, at step 30, from
    every step's loss (STATS `per_step`), not at the next sample hundreds of steps on; and
    once, though every later loss is NaN too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    recording = tmp_path / "nan.db"
    with symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=1000, budget=1.0,
                        record=str(recording), register=False, stats_interval=0.05):
        for step in range(1, 61):  # the agent's step numbers
            loss = model(torch.randn(16, 8)).square().mean()
            if step >= 30:
                loss = loss * float("nan")
            opt.zero_grad()
            loss.backward()
            opt.step()
            time.sleep(0.005)  # a few STATS during the run, the last one at close
    events = _transitions(recording)
    diverged = [(s, p["metric"]) for s, p in events if p.get("what") == "divergence"]
    assert diverged == [(30, "loss")], events
    with RecordingReader(recording) as reader:  # no budget: no run-level detector
        assert not [m for m in reader if m.kind == protocol.STATS
                    and "run_level_every" in m.payload.get("sampling", {})]


def test_a_divergence_between_samples_is_explained_by_the_change_before_it():
    """The per-step path reads the optimizer's settings as a sample would: a learning rate
    raised just before the loss turns NaN explains the divergence (exogenous). A NaN at a
    step a sample has already passed is left to the samples (the series stays in step
    order)."""
    watch = TransitionWatch()
    for step in range(10, 401, 10):  # a warm detector, lr 0.1
        watch.update(step, {"fc": {"weight_norm": 1.0}}, 1.0 + 0.01 * (step % 3),
                     (("lr", 0, 0.1),))
    found = watch.non_finite({"loss": ([404, 405, 406], [0.9, float("nan"), float("nan")])},
                             (("lr", 0, 10.0),))
    assert [(s, p["what"]) for s, p in found] == [(405, "divergence")], found
    assert found[0][1]["exogenous"] == "optimizer lr 0.1 → 10", found[0][1]
    assert watch.non_finite({"loss": ([300], [float("nan")])}) == []  # behind the samples


def test_the_registry_names_a_divergence_found_between_samples(tmp_path):
    """The Runs screen lists a run's latest transition (`_last_transition`): a divergence
    found in the per-step losses is one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=1000, budget=1.0,
                        register=False, stats_interval=0.05) as agent:
        for step in range(1, 41):
            loss = model(torch.randn(16, 8)).square().mean() * (float("nan") if step >= 20
                                                                 else 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            time.sleep(0.005)
        assert until(lambda: agent._last_transition is not None, 10)
        assert agent._last_transition["step"] == 20
        assert agent._last_transition["message"].startswith("divergence: loss")


# -- under a time budget: the run-level series at step resolution ----------------------------

def _plateau_then_drop(steps: range, drop_at: int, seed: int = 0) -> list[float]:
    """A noisy loss plateau at 1.0 falling to 0.2 at `drop_at` (a mode learned)."""
    gen = torch.Generator().manual_seed(seed)
    noise = 1 + 0.02 * torch.randn(len(steps), generator=gen)
    return [float((1.0 if s < drop_at else 0.2) * n) for s, n in zip(steps, noise)]


@pytest.mark.parametrize("gap", [250, 20])
def test_under_a_budget_the_loss_is_followed_every_every_steps_not_at_the_samples(gap):
    """Samples 250 steps apart (a budget-stretched interval) would give the loss's detector
    a handful of points in 1,000 steps, none of its jumps; the per-step losses at every
    `every`-th step find the drop, once, at its step. The samples' detector, fed the same
    loss, raises nothing on it: with samples 20 steps apart, which would find the drop
    themselves, it is still one event, not two."""
    watch = TransitionWatch(every=10)
    steps = range(1, 1001)
    losses = _plateau_then_drop(steps, 600)
    found = []
    for start in range(0, 1000, 20):  # one STATS batch a second: 20 steps
        batch = list(steps[start:start + 20])
        found += watch.per_step({"loss": (batch, losses[start:start + 20])})
        if batch[-1] % gap == 0:
            found += watch.update(batch[-1], {"fc": {"weight_norm": 1.0}},
                                  losses[batch[-1] - 1], (("lr", 0, 0.1),))
    falls = [(s, p["message"]) for s, p in found if p["metric"] == "loss"]
    assert len(found) == 1 and len(falls) == 1, found
    assert 590 <= falls[0][0] <= 610 and falls[0][1].startswith("loss fell"), falls


def test_under_a_budget_a_loss_fall_at_the_runs_end_is_published_by_the_flush():
    """The run ends 20 steps after the drop at 600: the run-level detector's group (5 updates
    from its first jump, every 10 steps) is still open, and the agent's close-time flush
    publishes it, once, with the samples' detector, which saw the same loss, adding nothing."""
    watch = TransitionWatch(every=10)
    steps = range(1, 621)
    losses = _plateau_then_drop(range(1, 1001), 600)[:620]
    found = []
    for start in range(0, 620, 20):
        batch = list(steps[start:start + 20])
        found += watch.per_step({"loss": (batch, losses[start:start + 20])})
        if batch[-1] % 20 == 0:
            found += watch.update(batch[-1], {"fc": {"weight_norm": 1.0}},
                                  losses[batch[-1] - 1], (("lr", 0, 0.1),))
    assert not found, found  # still open
    flushed = watch.flush()
    assert len(flushed) == 1 and flushed[0][1]["metric"] == "loss", flushed
    assert 590 <= flushed[0][0] <= 610 and flushed[0][1]["message"].startswith("loss fell")
    assert watch.flush() == []  # flushed once


def test_without_a_budget_the_per_step_losses_only_say_divergence():
    """No budget: the samples come every `every` steps and carry the loss; the per-step
    values add nothing but a non-finite loss (one detector, as before)."""
    watch = TransitionWatch()
    steps = range(1, 1001)
    losses = _plateau_then_drop(steps, 600)
    assert watch.run_level is None
    assert watch.per_step({"loss": (list(steps), losses)}) == []


def test_a_budgeted_run_level_event_is_explained_by_a_setting_changed_before_it():
    """The settings as the training thread read them at each `every`-th step, where they
    changed: the run-level detector's marks, at the step of the change (not at the next
    sample, hundreds of steps on)."""
    watch = TransitionWatch(every=10)
    steps = range(1, 1001)
    losses = _plateau_then_drop(steps, 600)
    watch.settings(10, (("lr", 0, 0.1),))
    watch.settings(600, (("lr", 0, 1.0),))
    found = watch.per_step({"loss": (list(steps), losses)})
    assert [p["exogenous"] for _, p in found] == ["optimizer lr 0.1 → 1"], found


def test_a_run_under_a_budget_gets_its_loss_events_from_every_step(tmp_path):
    """A real run under a time budget: a two-layer linear net from a small initialisation
    learns a rank-2 teacher, each mode after a plateau (Saxe et al.), then weight decay is
    switched on. Its loss falls are events found in every step's loss (STATS `per_step`) at
    the run's `every`, by the run-level detector (the samples' detector raises nothing on the
    loss under a budget), whatever the layers' samples; the rise after the switch is labelled
    with it (the settings the training thread read, handed to the publisher's detector); the
    cadence is published (`run_level_every`). A budget of
    0.9 keeps that cadence at `every` on any machine (its cost share allows thousands of
    updates a second); at the 1 % default a run this fast would have it stretched."""
    recording = tmp_path / "budget.db"
    agent = budgeted_staircase(str(recording))
    events = _transitions(recording)
    # the premise first: the cadence stayed at `every` (a stretched one moves the events)
    with RecordingReader(recording) as reader:
        strides = {m.payload["sampling"].get("run_level_every") for m in reader
                   if m.kind == protocol.STATS and "sampling" in m.payload}
    assert strides == {2}, strides
    # the loss falls from ~15 steps before a mode's strength is half its target's (steps 87
    # and 213, seed 0) to ~15 after; each fall is one event, at its onset; then the rise
    assert [(p["metric"], p["message"][:9]) for _, p in events][:2] == [("loss", "loss fell")] * 2, \
        events
    assert 60 <= events[0][0] <= 95 and 160 <= events[1][0] <= 220, events
    # then the rise after the switch: one change, one event, whichever detector closed it
    # first (the loss's, or a layer's that quotes the loss rising), labelled with the switch
    after = [(s, p["exogenous"]) for s, p in events[2:]]
    assert after and all(s >= 500 and e == "optimizer weight_decay 0 → 2" for s, e in after), \
        events
    # the switch reached the run-level detector at the step the training thread read it
    assert [(s, r) for s, r in agent._transitions.run_level._marks if s >= 500] == [
        (502, "optimizer weight_decay 0 → 2")], agent._transitions.run_level._marks


def test_a_run_level_event_names_the_layers_that_moved_with_it_when_they_were_sampled():
    """Under a budget that still allows every sample, the run-level detector's loss fall
    names the layer whose norm grew with it (the samples' detector's series, `layers_from`),
    as one detector did before; a layer that did not move is not named."""
    watch = TransitionWatch(every=10)
    steps = range(1, 1001)
    losses = _plateau_then_drop(steps, 600)
    gen = torch.Generator().manual_seed(1)
    found = []
    for start in range(0, 1000, 10):  # each batch's losses before the sample at its end
        batch = list(steps[start:start + 10])
        step = batch[-1]
        found += watch.per_step({"loss": (batch, losses[start:start + 10])})
        found += watch.update(step, {
            "fc1": {"weight_norm": (1.0 if step < 600 else 3.0)
                    * (1 + 0.01 * float(torch.randn(1, generator=gen)))},
            "fc2": {"weight_norm": 1 + 0.01 * float(torch.randn(1, generator=gen))}},
            losses[step - 1], (("lr", 0, 0.1),))
    # one change, one event: the loss fall naming fc1, not also fc1's own jump at the samples
    assert [p["metric"] for _, p in found] == ["loss"], found
    assert [m["layer"] for m in found[0][1]["movers"]] == ["fc1"], found[0][1]


def test_under_a_budget_a_non_finite_loss_is_a_divergence_at_its_step_once():
    """The run-level detector takes a non-finite loss at the step it happened, between its
    `every`-th steps, and reports it once; the samples' NaN loss after it adds nothing."""
    watch = TransitionWatch(every=10)
    steps = list(range(1, 421))
    losses = [1.0 + 0.01 * (s % 3) if s < 405 else float("nan") for s in steps]
    found = watch.per_step({"loss": (steps, losses)})
    found += watch.update(420, {"fc": {"weight_norm": 1.0}}, float("nan"), ())
    assert [(s, p["what"]) for s, p in found] == [(405, "divergence")], found


def test_a_fast_run_level_cadence_is_stretched_to_keep_its_cost_within_its_share():
    """At 10,000 steps a second, every 10 steps would be 1,000 detector updates a second
    (~27 ms of the publisher's CPU, several times a 1 % budget's plan): the cadence becomes
    the multiple of `every` whose updates cost at most `max_cost_s` a second, by their
    measured cost, and the drop is found all the same. At 20 steps a second it stays
    `every`."""
    steps = range(1, 200_001)
    losses = _plateau_then_drop(steps, 120_000)
    fast = TransitionWatch(every=10, max_cost_s=1e-3)
    found = []
    for start in range(0, len(steps), 10_000):  # a STATS batch a second
        found += fast.per_step({"loss": (list(steps[start:start + 10_000]),
                                         losses[start:start + 10_000])}, step_time=1e-4)
    stride = fast.stride
    assert stride % 10 == 0 and stride >= 100, stride  # ≤ 100 updates a second, not 1,000
    assert [(p["metric"], 119_000 <= s <= 121_000) for s, p in found] == [("loss", True)], found
    slow = TransitionWatch(every=10, max_cost_s=1e-3)
    slow.per_step({"loss": ([1, 2], [1.0, 1.0])}, step_time=0.05)
    assert slow.stride == 10



def test_a_layers_jump_found_first_keeps_the_loss_fall_naming_it_from_a_second_event():
    """The other order: the layer's jump at the samples is reported first (the run-level
    detector groups over more steps); the loss fall naming that layer, over the same window,
    is the same change and is not published again. A loss fall naming no such layer is."""
    watch = TransitionWatch(every=10)
    steps = range(1, 1001)
    losses = _plateau_then_drop(steps, 600)
    gen = torch.Generator().manual_seed(1)
    found = []
    for start in range(0, 1000, 40):  # STATS every 40 steps, after the samples in them
        batch = list(steps[start:start + 40])
        for step in batch[9::10]:
            found += watch.update(step, {
                "fc1": {"weight_norm": (1.0 if step < 600 else 3.0)
                        * (1 + 0.01 * float(torch.randn(1, generator=gen)))}},
                losses[step - 1], ())
        found += watch.per_step({"loss": (batch, losses[start:start + 40])})
    assert len(found) == 1 and found[0][1]["layer"] == "fc1", found
    assert watch._one_event.held_back == 1  # the run-level detector's loss fall


def test_under_a_budget_a_divergence_is_explained_by_the_settings_at_its_step():
    """The training thread reads the settings every `every` steps: a learning rate raised at
    step 401 is read at 410, after the loss is NaN at 403. The settings at the NaN's step
    (read on the publisher thread, as without a budget) explain it all the same."""
    watch = TransitionWatch(every=10)
    steps = list(range(1, 421))
    losses = [1.0 + 0.01 * (s % 3) if s < 403 else float("nan") for s in steps]
    found = watch.per_step({"loss": (steps, losses)}, (("lr", 0, 10.0),),
                           settings=[(10, (("lr", 0, 0.1),)), (410, (("lr", 0, 10.0),))])
    assert [(s, p["what"], p["exogenous"]) for s, p in found] == [
        (403, "divergence", "optimizer lr 0.1 → 10")], found


def test_a_series_logged_now_and_then_is_fed_its_latest_value_at_every_stride():
    """A loss logged every 7 steps (and a value logged for a step already fed) reaches the
    run-level detector at every multiple of `every`, as a sample there would read it."""
    watch = TransitionWatch(every=10)
    logged = list(range(7, 701, 7))
    watch.per_step({"loss": (logged, [1.0] * len(logged))})
    fed = watch.run_level.series[(None, "loss")].samples
    assert fed == 70, fed  # steps 10, 20, …, 700
    watch.per_step({"val_loss": ([695], [2.0])})  # late: step 695 was fed already
    watch.per_step({"loss": ([710], [1.0])})
    assert watch.run_level.series[(None, "val_loss")].recent(1) == [2.0]



def test_with_layers_sampled_far_apart_a_loss_fall_and_the_layers_jump_are_one_event():
    """Samples 220 steps apart (the GPT benchmark at the defaults): the run-level detector's
    loss fall closes before any sample covers its window, so it names no layer; the layer's
    jump comes with the next samples and quotes the loss falling over its window. One
    change: published once."""
    watch = TransitionWatch(every=10)
    gen = torch.Generator().manual_seed(2)
    steps = range(1, 20_001)
    losses = _plateau_then_drop(steps, 15_000)
    found = []
    for start in range(0, 20_000, 20):
        batch = list(steps[start:start + 20])
        for step in batch:
            if step % 220 == 0:  # the sample's METRICS go out before the STATS after it
                noise = 1 + 0.01 * float(torch.randn(1, generator=gen))
                found += watch.update(step, {
                    "fc1": {"weight_norm": (1.0 if step < 15_000 else 2.0) * noise},
                    "fc2": {"weight_norm": 1 + 0.01 * float(torch.randn(1, generator=gen))}},
                    losses[step - 1], ())
        found += watch.per_step({"loss": (batch, losses[start:start + 20])})
    assert len(found) == 1, [(s, p["message"]) for s, p in found]
    assert watch._one_event.held_back == 1


def test_a_loss_that_stays_non_finite_is_fed_off_the_stride_once():
    """After the loss turns NaN it stays NaN: fed at the step it turned (a divergence, once),
    then only at the stride, not at every step (each update is the budget's)."""
    watch = TransitionWatch(every=10)
    steps = list(range(1, 4097))
    losses = [1.0 + 0.01 * (s % 3) if s < 103 else float("nan") for s in steps]
    found = watch.per_step({"loss": (steps, losses)})
    assert [(s, p["what"]) for s, p in found] == [(103, "divergence")], found
    assert watch.run_level.last_step == 4090
    assert watch.run_level._sample + 1 == 409 + 1  # the 409 stride steps and step 103
