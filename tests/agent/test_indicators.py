"""The indicator engine against analytic cases and the symmetries' own transformations.

Real torch, no mocks: each test builds weights whose indicator values are known exactly (or
computes them the slow obvious way in float64), runs the engine, and compares. Invariance
tests apply a symmetry's transformation to the weights and check what theory says changes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from symwatch_agent.measure import spectra
from symwatch_agent.measure.indicators import INDICATORS, IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP, FULL


def measure(model: nn.Module | dict, *, tier: str = FULL, forward=None, engine=None,
            **options) -> tuple[dict[str, dict], IndicatorEngine]:
    """One sample of `model` (optionally after one traced forward pass) → decoded values."""
    models = model if isinstance(model, dict) else {"": model}
    if engine is None:
        layers, _ = discover(models)
        engine = IndicatorEngine(layers, **options)
        engine.attach(models)
    if forward is not None:
        with torch.no_grad():
            forward()
    values, _ = engine.decode(engine.compute(tier).tolist())
    return values, engine


def with_rank(m: int, n: int, singular: list[float], seed: int = 0) -> torch.Tensor:
    """An m×n matrix with exactly these singular values (and zeros after them)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    k = len(singular)
    return u[:, :k] @ torch.diag(torch.tensor(singular)) @ v[:, :k].T


def linear_with(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def close(a: dict, b: dict, rel: float = 1e-4, abs_: float = 1e-5) -> None:
    assert set(a) == set(b)
    for key in a:
        if a[key] is None or b[key] is None:
            assert a[key] == b[key], key
        else:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=abs_), key


# -- 1. rank family --------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 3, 7])
def test_rank_r_with_equal_singular_values_reads_r_everywhere(r):
    model = nn.Sequential(linear_with(with_rank(12, 20, [2.0] * r)))
    got = measure(model)[0]["0"]
    assert got["numerical_rank"] == r
    for name in ("effective_rank", "stable_rank", "participation_ratio"):
        assert got[name] == pytest.approx(r, rel=1e-4), name
    # every mode stands above a bulk of zeros and counts σ²/(σ² + κ²), κ = abs_tol = 0.1
    assert got["delta_rank"] == pytest.approx(r / 12 * 4 / 4.01, rel=1e-4)


def test_rank_family_of_a_spread_spectrum_matches_the_formulas():
    s = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.05], dtype=torch.float64)
    model = nn.Sequential(linear_with(with_rank(10, 16, s.tolist())))
    got = measure(model)[0]["0"]
    p = s / s.sum()
    assert got["effective_rank"] == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-4)
    assert got["stable_rank"] == pytest.approx((s.square().sum() / s[0] ** 2).item(), rel=1e-4)
    assert got["participation_ratio"] == pytest.approx(
        (s.square().sum() ** 2 / s.pow(4).sum()).item(), rel=1e-4)
    # τ = σ₁·max(m, n)·eps₃₂ (matrix_rank's): every nonzero σ of the rank-5 matrix counts
    assert got["numerical_rank"] == 5


def test_the_cheap_tier_gets_stable_rank_from_power_iteration_and_leaves_spectra_out():
    torch.manual_seed(0)
    model = nn.Sequential(linear_with(with_rank(40, 60, [6.0, 3.0, 2.0, 1.0, 0.5])))
    got, engine = measure(model, tier=CHEAP)
    assert got["0"]["stable_rank"] == pytest.approx((36 + 9 + 4 + 1 + 0.25) / 36, rel=1e-4)
    for absent in ("effective_rank", "participation_ratio", "numerical_rank",
                   "duplicate_fraction", "distinct_units"):
        assert absent not in got["0"]  # not computed: absent, so a viewer keeps the last value


def test_an_all_zero_layer_publishes_none_not_a_fake_number():
    model = nn.Sequential(linear_with(torch.zeros(4, 6)))
    got = measure(model)[0]["0"]
    assert got["weight_norm"] == 0.0
    for name in ("stable_rank", "effective_rank", "participation_ratio"):
        assert got[name] is None, name
    assert got["numerical_rank"] == 0


# -- 2. rescaling balance --------------------------------------------------------------------

def _relu_pair(seed: int = 0, h: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, h), nn.ReLU(), nn.Linear(h, 3))


def _balance_direct(w1, b1, w2):
    in2 = w1.double().square().sum(1) + b1.double().square()
    out2 = w2.double().square().sum(0)
    return (in2 - out2).sum().item(), ((in2 - out2) / (in2 + out2)).mean().item()


def test_balance_matches_its_definition_and_balanced_units_read_zero():
    model = _relu_pair()
    got = measure(model)[0]["0"]
    total, norm = _balance_direct(model[0].weight, model[0].bias, model[2].weight)
    assert got["balance"] == pytest.approx(total, rel=1e-5)
    assert got["balance_norm"] == pytest.approx(norm, rel=1e-5)
    in2 = model[0].weight.double().square().sum(1) + model[0].bias.double().square()
    out2 = model[2].weight.double().square().sum(0)
    assert got["delta_rescale"] == pytest.approx(
        ((in2 - out2).abs().sum() / ((in2 + out2).sum() + 8 * 0.01)).item(), rel=1e-5)
    with torch.no_grad():  # rescale each unit so that C_i = 0: (w_in·a, b·a, w_out/a)
        in2 = model[0].weight.square().sum(1) + model[0].bias.square()
        out2 = model[2].weight.square().sum(0)
        a = (out2 / in2) ** 0.25
        model[0].weight.mul_(a[:, None])
        model[0].bias.mul_(a)
        model[2].weight.div_(a[None, :])
    got = measure(model)[0]["0"]
    assert got["balance"] == pytest.approx(0.0, abs=1e-5)
    assert got["balance_norm"] == pytest.approx(0.0, abs=1e-6)
    assert "balance" not in measure(model)[0]["2"]  # the last layer has no consumer


def test_rescaling_a_relu_unit_keeps_the_function_and_changes_balance_as_theory_says():
    model = _relu_pair()
    x = torch.randn(20, 5)
    before_out = model(x).detach()
    before, _ = measure(model)
    product = torch.linalg.svdvals(model[2].weight @ model[0].weight).detach()
    i, a = 2, 3.0
    w_in2 = model[0].weight[i].square().sum().item() + model[0].bias[i].item() ** 2
    w_out2 = model[2].weight[:, i].square().sum().item()
    with torch.no_grad():
        model[0].weight[i] *= a
        model[0].bias[i] *= a
        model[2].weight[:, i] /= a
    after, _ = measure(model)
    assert torch.allclose(model(x), before_out, atol=1e-5)  # a symmetry: same function
    assert torch.allclose(torch.linalg.svdvals(model[2].weight @ model[0].weight), product,
                          rtol=1e-4)  # the product's ranks (its singular values) unchanged
    # C_i = ‖w_in‖²+b² − ‖w_out‖² → a²(‖w_in‖²+b²) − ‖w_out‖²/a²; the other C_j stay.
    change = (a * a - 1) * w_in2 - (1 / (a * a) - 1) * w_out2
    assert after["0"]["balance"] == pytest.approx(before["0"]["balance"] + change, rel=1e-4)


# -- 3. permutation --------------------------------------------------------------------------

def test_duplicated_units_are_counted():
    model = _relu_pair(h=16)
    with torch.no_grad():  # units 1, 2 copy unit 0; unit 4 copies unit 3 (all three sides)
        for src, dst in ((0, 1), (0, 2), (3, 4)):
            model[0].weight[dst] = model[0].weight[src]
            model[0].bias[dst] = model[0].bias[src]
            model[2].weight[:, dst] = model[2].weight[:, src]
        model[0].weight[9] = 0  # a dead unit is neither a duplicate nor distinct
        model[0].bias[9] = 0
        model[2].weight[:, 9] = 0
    got = measure(model)[0]["0"]
    assert got["dead_fraction"] == pytest.approx(1 / 16)
    assert got["duplicate_fraction"] == pytest.approx(5 / 15)
    assert got["distinct_units"] == 15 - 3
    assert 0 < got["delta_perm"] < 1


def test_duplicates_in_wide_layers_survive_the_random_projection():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(600, 32), nn.ReLU(), nn.Linear(32, 500))  # d = 1101 > 256
    with torch.no_grad():
        model[0].weight[7] = model[0].weight[3] * 2  # same direction, another scale
        model[0].bias[7] = model[0].bias[3] * 2
        model[2].weight[:, 7] = model[2].weight[:, 3] * 2
    got = measure(model)[0]["0"]
    assert got["duplicate_fraction"] == pytest.approx(2 / 32)
    assert got["distinct_units"] == 31


def test_permuting_hidden_units_leaves_every_indicator_unchanged():
    model = _relu_pair(h=12)
    forward = lambda: model(torch.randn(4, 5))  # noqa: E731
    before, _ = measure(model, forward=forward)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model[0].weight.copy_(model[0].weight[perm])
        model[0].bias.copy_(model[0].bias[perm])
        model[2].weight.copy_(model[2].weight[:, perm])
    after, _ = measure(model, forward=forward)
    for name in ("0", "2"):
        close(before[name], after[name])


# -- 5. softmax translation ------------------------------------------------------------------

def test_softmax_translation_reads_zero_for_centred_rows_and_one_for_identical_rows():
    torch.manual_seed(0)
    w = torch.randn(10, 6)
    centred = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 10))
    with torch.no_grad():
        centred[1].weight.copy_(w - w.mean(0))
    assert measure(centred)[0]["1"]["softmax_translation"] == pytest.approx(0.0, abs=1e-6)
    assert "softmax_translation" not in measure(centred)[0]["0"]  # only the last Linear
    with torch.no_grad():
        centred[1].weight.copy_(torch.ones(10, 1) * torch.randn(1, 6))  # W = 1vᵀ
    assert measure(centred)[0]["1"]["softmax_translation"] == pytest.approx(1.0, rel=1e-5)
    with torch.no_grad():
        centred[1].weight.copy_(w)
    want = w.sum(0).norm() / (math.sqrt(10) * w.norm())
    got = measure(centred)[0]["1"]
    assert got["softmax_translation"] == pytest.approx(want.item(), rel=1e-5)
    want = w.sum(0).norm() / (10 * (w.square().sum() + 10 * 0.01)).sqrt()  # damped by κ
    assert got["delta_softmax"] == pytest.approx(want.item(), rel=1e-5)


def test_the_classifier_can_be_chosen_or_switched_off():
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    engine.attach({"": model}, classifier="0")
    values, _ = engine.decode(engine.compute().tolist())
    assert "softmax_translation" in values["0"] and "softmax_translation" not in values["1"]
    engine.attach({"": model}, classifier=None)
    values, _ = engine.decode(engine.compute().tolist())
    assert not any("softmax_translation" in v for v in values.values())


# -- 6. rotation / mirror spectrum -------------------------------------------------------------

def test_mirror_spectrum_is_invariant_under_rotation_but_not_under_general_linear_maps():
    torch.manual_seed(0)
    w1, w2 = torch.randn(6, 9, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    r, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    a = torch.randn(6, 6, dtype=torch.float64) + 3 * torch.eye(6, dtype=torch.float64)
    base = spectra.mirror_eigvals(w1[None], w2[None])
    rotated = spectra.mirror_eigvals((r @ w1)[None], (w2 @ r.T)[None])
    general = spectra.mirror_eigvals((a @ w1)[None], (w2 @ torch.linalg.inv(a))[None])
    assert torch.allclose(rotated, base, rtol=1e-10)  # M → RMRᵀ: same eigenvalues
    assert not torch.allclose(general, base, rtol=1e-2)  # M is not GL-invariant…
    assert torch.allclose(w2 @ torch.linalg.inv(a) @ a @ w1, w2 @ w1)  # …though W₂W₁ is


def test_mirror_rank_counts_the_modes_of_a_balanced_factor_pair_and_ignores_rotations():
    torch.manual_seed(0)
    u = with_rank(8, 8, [1.0] * 8, seed=1)  # orthogonal
    s = torch.tensor([4.0, 2.0, 1.0])
    w1 = torch.zeros(8, 10)
    w1[:3] = torch.diag(s.sqrt()) @ with_rank(3, 10, [1.0] * 3, seed=2)
    w2 = torch.zeros(5, 8)
    w2[:, :3] = with_rank(5, 3, [1.0] * 3, seed=3) @ torch.diag(s.sqrt())
    model = nn.Sequential(linear_with(u @ w1), linear_with(w2 @ u.T))  # nothing in between
    got = measure(model)[0]["0"]
    # √(λ/2) = √s for a balanced pair: 2, 1.41, 1 against τ = max(0.3·2, 0.1) = 0.6
    assert got["mirror_rank"] == 3 and got["numerical_rank"] == 3
    assert got["delta_rotation"] == pytest.approx((4 / 4.01 + 2 / 2.01 + 1 / 1.01) / 8, rel=1e-4)
    relu = nn.Sequential(linear_with(w1), nn.ReLU(), linear_with(w2))
    assert "mirror_rank" not in measure(relu)[0]["0"]  # a ReLU in between: no rotation symmetry


# -- 7. scale invariance -----------------------------------------------------------------------

def test_angular_update_and_effective_lr_before_a_layer_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers, optimizers=[opt])
    engine.attach({"": model})
    first, _ = engine.decode(engine.compute().tolist())
    assert "angular_update" not in first["0"]  # no previous sample yet
    before = torch.cat([model[0].weight.detach().flatten(), model[0].bias.detach()]).clone()
    model(torch.randn(16, 6)).square().mean().backward()
    opt.step()
    got, _ = engine.decode(engine.compute().tolist())
    after = torch.cat([model[0].weight.detach().flatten(), model[0].bias.detach()])
    angle = torch.arccos(torch.dot(before.double(), after.double()) /
                         (before.double().norm() * after.double().norm()))
    assert got["0"]["angular_update"] == pytest.approx(angle.item(), rel=1e-3)
    assert got["0"]["effective_lr"] == pytest.approx(0.05 / after.square().sum().item(), rel=1e-5)
    assert "effective_lr" not in got["2"]


def test_batch_norm_makes_effective_lr_per_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got, _ = measure(model, optimizers=[opt])
    w = model[0].weight.detach().reshape(4, -1)
    assert got["0"]["effective_lr"] == pytest.approx((0.1 / w.square().sum(1)).mean().item(),
                                                     rel=1e-5)
    assert got["1"]["balance"] == pytest.approx(  # the BN gain pairs with the next conv
        (model[1].weight.square().sum() + model[1].bias.square().sum()
         - model[3].weight.square().sum()).item(), rel=1e-5)


# -- 4. dead ReLU units ------------------------------------------------------------------------

def test_relu_dead_counts_units_never_active_on_the_next_forward_and_unhooks():
    model = _relu_pair(h=10)
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # never active on inputs of this size
    x = torch.randn(32, 5)
    got, engine = measure(model, forward=lambda: model(x))
    assert "relu_dead" not in got["0"]  # armed at this sample, read on the next forward
    assert engine.probe.armed == 1
    model(x)
    assert engine.probe.armed == 0  # the hook removed itself on that forward
    assert not model[0]._forward_hooks
    got, _ = measure(model, engine=engine)
    assert got["0"]["relu_dead"] == pytest.approx(0.3)
    assert "relu_dead" not in got["2"]  # not followed by a ReLU
    got, _ = measure(model, engine=engine)
    assert "relu_dead" not in got["0"]  # no forward since the last sample: nothing to say


# -- 8. Δ_G and broken ---------------------------------------------------------------------------

def test_deltas_are_in_the_unit_interval_and_broken_is_their_mean():
    model = _relu_pair(h=8)
    got = measure(model)[0]
    for layer in got.values():
        deltas = [v for k, v in layer.items() if k.startswith("delta_") and v is not None]
        assert deltas and all(0 <= v <= 1 for v in deltas)
        assert layer["broken"] == pytest.approx(sum(deltas) / len(deltas), rel=1e-5)


def test_broken_keeps_the_last_full_tier_deltas_between_cheap_samples():
    model = _relu_pair(h=8)
    full, engine = measure(model)
    cheap, _ = measure(model, tier=CHEAP, engine=engine)
    assert "delta_perm" not in cheap["0"] and cheap["0"]["broken"] == pytest.approx(
        full["0"]["broken"], rel=1e-6)


def test_nonfinite_weights_read_none_for_everything_computed():
    model = _relu_pair()
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    got = measure(model)[0]
    assert got["0"] and set(got["0"].values()) == {None}
    assert got["2"]["weight_norm"] is not None


def test_every_indicator_is_published_by_some_layer_of_a_mixed_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 8), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 6)
    _, engine = measure(model, forward=lambda: model(x), optimizers=[opt])
    model(x).square().mean().backward()
    opt.step()
    got, _ = measure(model, engine=engine)
    seen = {name for layer in got.values() for name in layer}
    # the attention-head family needs an attention module (tests/agent/test_heads.py)
    heads = {"qk_rank", "vo_rank", "qk_rank_min", "vo_rank_min", "dead_heads"}
    assert seen == set(INDICATORS) - heads
    got, _ = measure({"attn": nn.MultiheadAttention(16, 4)})
    assert heads <= set(got["attn"])


# -- 9. tiers ---------------------------------------------------------------------------------

def test_the_scheduler_gives_the_full_tier_its_share_of_the_budget():
    from symwatch_agent.measure.schedule import TierScheduler

    now = [0.0]
    sched = TierScheduler(0.01, full_share=0.5, clock=lambda: now[0])
    assert sched.choose() == FULL  # the first sample is always full
    sched.record(FULL, 0.5)  # warm-up: not charged, but the first estimate of a full sample
    tiers = []
    for step in range(1, 1001):  # one sample a second for 1000 s; a full one costs 0.1 s
        now[0] = float(step)
        tier = sched.choose()
        tiers.append(tier)
        sched.record(tier, 0.1 if tier == FULL else 0.001)
    full = tiers.count(FULL)
    # 0.5 × 1 % × 1000 s = 5 s for the full tier: about 50 full samples of 0.1 s
    assert 45 <= full <= 50 and sched.full_spent <= 0.5 * 0.01 * 1000
    assert TierScheduler(1.0).unlimited and TierScheduler(1.0).choose() == FULL


def test_full_every_caps_the_full_tier_by_count_whatever_the_budget():
    from symwatch_agent.measure.schedule import TierScheduler

    def plan(sched: TierScheduler, n: int, now: list[float]) -> str:
        out = ""
        for step in range(n):
            now[0] = float(step + 1)
            tier = sched.choose()
            out += "F" if tier == FULL else "c"
            sched.record(tier, 0.1 if tier == FULL else 0.001)
        return out

    now = [0.0]
    # unlimited budget: a fixed plan, the first sample and then every third one full
    assert plan(TierScheduler(1.0, full_every=3, clock=lambda: now[0]), 10, now) == "FccFccFccF"
    assert plan(TierScheduler(1.0, full_every=1, clock=lambda: now[0]), 4, now) == "FFFF"
    # a budget allowing one full sample in 20 s: a looser count changes nothing, a tighter
    # one spaces them further (and so spends less)
    def limited(full_every: int | None) -> str:
        now[0] = 0.0
        return plan(TierScheduler(0.01, full_share=0.5, full_every=full_every,
                                  clock=lambda: now[0]), 200, now)

    budget_only = limited(None)
    assert budget_only.count("F") == 11  # the warm-up, then 0.5 × 1 % × 200 s / 0.1 s
    assert limited(5) == budget_only
    tight = limited(30)
    assert tight.count("F") == 7 and min(map(len, tight.split("F")[1:-1])) == 29
    with pytest.raises(ValueError, match="full_every must be a positive"):
        TierScheduler(1.0, full_every=0)
