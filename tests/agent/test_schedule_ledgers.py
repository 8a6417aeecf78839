"""The cheap and the full tier on their own ledgers (issue #15): a full sample's publisher work
is the full tier's, representations come with full samples only, a costly full sample does not
starve the cheap refresh; and the cheap tier's faster products keep their values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from symwatch_agent.agent import Agent
from symwatch_agent.measure import spectra
from symwatch_agent.measure.indicators import COL, IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP, FULL, TierScheduler
from torch import nn

import symwatch
from symwatch.core import protocol


def test_a_full_samples_publisher_work_is_charged_to_the_full_ledger():
    """Under a budget (the agent's first sample cheap) the first full sample is charged like
    every later one, and its publisher-thread seconds with it: the next full sample waits
    until the full share has earned training + publisher cost, not the training part only."""

    def next_full(publisher_s: float) -> int:
        now = [0.0]
        sched = TierScheduler(0.01, full_share=0.5, clock=lambda: now[0])
        sched.first = CHEAP
        assert sched.choose() == CHEAP
        sched.record(CHEAP, 0.001)
        assert sched.choose() == FULL  # the full tier's first sample: the next one
        sched.record(FULL, 0.1)
        sched.charge_extra(publisher_s)  # as the publisher thread does
        assert sched.host_seconds() == pytest.approx(0.1 + publisher_s)
        for second in range(1, 1000):  # one sample a second
            now[0] = float(second)
            tier = sched.choose()
            sched.record(tier, 0.1 if tier == FULL else 0.001)
            if tier == FULL:
                return second
        raise AssertionError("no second full sample")

    # full share 0.5 × 1 % = 5 ms a second. Spent 0.1 s and one more expected (0.1 s): 40 s;
    # with 0.2 s of publisher work per full sample, spent 0.3 and 0.3 expected: 120 s
    # (± 1 s: 0.005 × t against the sums in float)
    assert 40 <= next_full(0.0) <= 41
    assert 120 <= next_full(0.2) <= 121


def test_the_first_full_sample_is_a_free_warm_up_only_when_the_run_starts_with_it():
    now = [0.0]
    sched = TierScheduler(0.01, full_share=0.5, clock=lambda: now[0])
    assert sched.choose() == FULL
    sched.record(FULL, 0.5)
    assert sched.full_spent == 0.0 and sched.full_host_s == 0.5  # not charged, but counted


def classifier_task(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    x = torch.randn(n, 32, generator=gen) + 3 * F.one_hot(y, 32).float()
    return x, y


def watched_classifier() -> tuple[torch.Tensor, torch.Tensor, nn.Module,
                                  torch.optim.Optimizer, Agent]:
    """A small ReLU classifier on classifier_task, watched with no budget limit: a sample
    every 5 steps, a full one every third (steps 1, 15, 30)."""
    torch.manual_seed(0)
    x, y = classifier_task()
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=5, budget=1.0,
                           full_every=3, heartbeat_interval=0.05)
    return x, y, model, opt, agent


def test_representations_are_captured_and_decoded_for_full_samples_only(collector):
    """full_every=3 with no time limit: samples at steps 1, 5, …, 30, full at 1, 15 and 30.
    Only those carry the activation ranks and NC1 (and the layer detail, the full tier's),
    and no forward hook was left armed for the cheap ones."""
    x, y, model, opt, agent = watched_classifier()
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    armed_at = []
    for step in range(1, 31):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if agent._reps.armed:  # set after this step: the next forward is copied
            armed_at.append(step + 1)
    sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 30)
    agent.close()
    metrics = sub.of_kind(protocol.METRICS)
    assert [m.step for m in metrics] == [1, 5, 10, 15, 20, 25, 30]
    full = [m.step for m in metrics if "detail" in m.payload]
    with_reps = [m.step for m in metrics if "act_erank" in m.payload["values"].get("0", {})]
    with_nc1 = [m.step for m in metrics if "nc1" in m.payload["values"].get("2", {})]
    assert full == with_reps == with_nc1 == [1, 15, 30]
    assert armed_at == [15, 30]  # step 1's capture is armed by watch() itself


def test_a_full_samples_capture_is_charged_to_the_full_ledger(collector):
    """Arming the capture and its hooks run on the training thread for a full sample: their
    seconds go to the full tier's ledger with the sample's publisher work (charge_extra), so
    the cheap ledger, which leaves the full tier's host seconds out, does not pay them. A
    cheap sample has no capture to charge."""
    x, y, model, opt, agent = watched_classifier()
    charged: list[float] = []
    sched = agent.engine.scheduler
    real_charge = sched.charge_extra
    sched.charge_extra = lambda seconds: (charged.append(seconds), real_charge(seconds))[1]
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    capture_s = {}
    for step in range(1, 16):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 14:  # armed for step 15's full sample: as if arming had taken 0.5 s more
            assert agent._reps.armed and agent._armed_s > 0.0
            agent._armed_s += 0.5
        if step in (10, 15):
            capture_s[step] = agent._capture_s  # set by this step's sample
    sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 15)
    try:
        assert capture_s[10] == 0.0  # cheap: nothing armed
        assert capture_s[15] > 0.5  # full: arming at step 14 and the hooks at step 15
        assert len(charged) == 2  # the full samples of steps 1 and 15
        assert charged[1] >= capture_s[15]  # with the sample's publisher work
        assert sched.host_seconds() >= sum(charged)
    finally:
        agent.close()


def test_a_costly_full_sample_comes_out_of_the_full_share_not_the_cheap_one(collector):
    """The agent's ledger: a full sample's host seconds are left out of what the cheap tier
    may spend. With the whole cheap share already spent by a full sample, the cheap tier
    still affords its next sample; the same spend outside the full tier does not."""
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", budget=0.01)
    try:
        sched = agent.engine.scheduler
        training_s = 100.0  # plan PLANNED_SHARE_OF_BUDGET × 1 %, a quarter the full tier's
        cheap_share = (agent._planned - sched.full_share * sched.budget) * training_s
        assert cheap_share == pytest.approx(0.75 * agent._planned * training_s)
        spent_by_publisher = agent._publisher_spent_s()
        agent._sample_cost_s = 0.001
        agent._budgeted_cost_s = cheap_share - spent_by_publisher  # the cheap share, all spent
        assert not agent._affords_sample(training_s)
        sched.samples[CHEAP] = 1
        sched.record(FULL, 0.8 * cheap_share)  # … of which a full sample's training-thread part
        sched.charge_extra(0.2 * cheap_share)  # and its publisher work
        assert agent._affords_sample(training_s)
        assert sched.full_spent == pytest.approx(cheap_share)  # the full ledger holds it
    finally:
        agent.close()


@pytest.mark.parametrize("width", [16, 768])
@pytest.mark.parametrize("scale", [1e-3, 1.0])  # tiny init, PyTorch's default init
def test_the_cheap_tiers_products_keep_their_values(width, scale):
    """σ₁ (warm power iteration with W v taken as vᵀWᵀ) and the outgoing Σw² (summed squares
    rather than vector_norm²) against float64 references: the cheap tier's stable_rank,
    weight_norm and balance at a balanced (symmetric) pair, slightly off it and far from it,
    at tiny and at default init."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
        model[0].bias.zero_()
        # balanced: each hidden unit's outgoing column as long as its incoming row
        rows = model[0].weight.norm(dim=1)
        model[2].weight.mul_(rows / model[2].weight.norm(dim=0).clamp_min(1e-30))
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    engine.attach({"": model}, observe=False)
    for off in (0.0, 0.01, 3.0):  # at the balanced state, slightly off it, far from it
        with torch.no_grad():
            model[2].weight.mul_(1 + off)
        for _ in range(12):  # warm power iteration from the Lanczos start
            rows = engine.compute(CHEAP)
        w1 = model[0].weight.detach().double()
        w2 = model[2].weight.detach().double()
        s1 = torch.linalg.matrix_norm(w1, 2)
        fro2 = w1.square().sum()
        got = {name: rows[0, COL[name]].item()
               for name in ("weight_norm", "stable_rank", "balance", "balance_norm")}
        in2 = w1.square().sum(1)
        out2 = w2.square().sum(0)
        balance = (in2 - out2).sum().item()
        norm = ((in2 - out2) / (in2 + out2)).mean().item()
        assert got["weight_norm"] == pytest.approx(fro2.sqrt().item(), rel=1e-5)
        # a random matrix has no gap under σ₁: 12 warm iterations after Lanczos, within 1 %
        assert got["stable_rank"] == pytest.approx((fro2 / s1 ** 2).item(), rel=1e-2)
        assert got["balance"] == pytest.approx(balance, rel=1e-4, abs=1e-6 * in2.sum().item())
        assert got["balance_norm"] == pytest.approx(norm, rel=1e-4, abs=1e-5)
        if off == 0.0:
            assert abs(got["balance_norm"]) < 1e-5  # the symmetric state reads 0


@pytest.mark.parametrize("shape", [(4, 16, 16), (2, 768, 3072), (1, 4096, 1024)])
def test_power_iteration_times_the_transposed_view_like_the_column_product(shape):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=gen)
    v = torch.randn(shape[0], shape[2], generator=gen)
    column = torch.bmm(w.double(), v.double().unsqueeze(2)).squeeze(2)
    row = spectra._times(w, v).squeeze(1).double()
    scale = w.double().norm(dim=(1, 2)) * v.double().norm(dim=1)
    assert ((row - column).norm(dim=1) / scale).max() < 1e-6
    # planted gap: σ₁ = 3× the bulk edge; warm power iteration finds it within float32
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    s = torch.linspace(1, 0.1, min(shape[1:])).expand(shape[0], -1).clone()
    s[:, 0] = 3.0
    planted = u @ torch.diag_embed(s) @ vh
    s1, _ = spectra.power_sigma1(planted, v, 30)
    assert torch.allclose(s1, torch.full_like(s1, 3.0), rtol=1e-4)


def test_a_cold_samples_rate_is_replaced_by_the_first_warm_one():
    """A layer's first σ₁ is a Lanczos start (~6× a warm power iteration): its sample's rate
    sizes the slices only until a warm sample measures the steady one, which replaces it
    outright (an average would keep the slices at one chunk through the first round)."""
    from symwatch_agent.measure.schedule import LayerSlices

    slices = LayerSlices([[0], [1], [2], [3], [4], [5]], {CHEAP: [1.0] * 6, FULL: [1.0] * 6})
    assert slices.take(CHEAP, 3.0) == [0]  # no rate yet: one chunk
    slices.record(CHEAP, [0], 6.0, step=1, provisional=True)
    assert slices.per_unit[CHEAP] == 6.0
    assert slices.take(CHEAP, 3.0) == [1]  # 6 s a chunk: still one
    slices.record(CHEAP, [1], 6.0, step=2, provisional=True)  # cold again: no average
    slices.record(CHEAP, [0], 1.0, step=3)  # warm: the steady rate, outright
    assert slices.per_unit[CHEAP] == 1.0
    assert slices.take(CHEAP, 3.0) == [2, 3, 4]
    slices.record(CHEAP, [2, 3, 4], 6.0, step=4, provisional=True)  # a late cold one: ignored
    slices.record(CHEAP, [5], 2.0, step=5)  # warm ones average as before
    assert slices.per_unit[CHEAP] == pytest.approx(0.7 * 1.0 + 0.3 * 2.0)


def test_a_sliced_sample_waits_for_the_whole_models_cost_up_to_a_cap():
    """A sliced cheap sample's fixed cost (snapshot pass, order parameters, the publisher's
    wake-up and decoding: ~1.5–2 ms on a GPT-style model) was paid for one or two layers at a
    time while the ledger held only what `every` steps earn (then for a quarter of the
    model). It now waits until the cheap ledger holds MIN_SLICE_SHARE (the whole model) of
    its expected cost, capped at MAX_SLICE_WAIT_S; nothing to wait for before slicing starts
    or without a budget."""
    from symwatch_agent import watch
    from symwatch_agent.agent import MAX_SLICE_WAIT_S, MIN_SLICE_SHARE

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    agent = watch(model, opt, register=False, budget=0.01, every=10**6)
    try:
        slices = agent.engine._slices()
        assert agent._least_slice_s() == 0.0  # no sliced sample yet: no rate to go by
        slices.sliced = True
        whole = sum(slices.weights[CHEAP])
        cost = 0.8 * MAX_SLICE_WAIT_S / MIN_SLICE_SHARE  # the whole model, under the cap
        slices.per_unit[CHEAP] = cost / whole
        least = MIN_SLICE_SHARE * cost
        assert agent._least_slice_s() == pytest.approx(least)
        agent._sample_cost_s = 1e-4  # a one-chunk sample's cost: no longer the bar
        spent = agent._budgeted_cost_s + agent._publisher_spent_s()
        plan = agent._planned - agent.engine.scheduler.full_share * agent.engine.scheduler.budget
        # the ledger holds half, then twice, what it waits for (margins of 10 ms and more:
        # the publisher's CPU, which the ledger counts, may grow meanwhile)
        under = (spent + 0.5 * least) / plan
        over = (spent + 2.0 * least) / plan
        assert not agent._affords_sample(under)
        assert agent._affords_sample(over)
        slices.per_unit[CHEAP] = 10.0 / whole  # a huge model: never more than the cap
        assert agent._least_slice_s() == MAX_SLICE_WAIT_S
    finally:
        agent.close()


def test_each_steps_bookkeeping_and_the_backward_wrapper_are_charged_to_the_budget():
    """Between samples the agent's hook still runs every step, and the loss capture wraps
    every `backward`: a few µs a step, 0.3 % of a 1 ms step. Both are charged to the budget's
    ledger, so that it holds at any step time (they were not: a run that never sampled
    charged nothing)."""
    from symwatch_agent.hooks import loss_capture

    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", budget=0.01,
                           every=10**6, stats_interval=1e6, register=False)
    try:
        x = torch.randn(8, 4)

        def step() -> None:
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()  # the first step always samples (and is not budgeted)
        charged0, wrapper0 = agent._budgeted_cost_s, loss_capture.spent_s
        for _ in range(500):
            step()
        wrapper = loss_capture.spent_s - wrapper0
        charged = agent._budgeted_cost_s - charged0
        assert agent.samples == 1  # nothing else was charged: no sample, no STATS
        assert wrapper > 0
        assert charged > wrapper + 500 * 0.1e-6  # the wrapper, and the hook's own time
    finally:
        agent.close()
