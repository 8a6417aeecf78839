"""The Δ_G order parameters (docs/metrics.md, *Order parameters*) and the duplicate search.

Each Δ must read 0 at its symmetric (fixed) set and at θ = 0, the most symmetric point (so a
tiny initialisation reads ≈ 0), rise as the state moves away from that set, and read "broken"
for strong generic weights (PyTorch's default init). Each is checked at the fixed point,
slightly off it and far from it, at a small width and at an LLM width (768 × 3072). `broken`
(the mean of a layer's Δ) is checked for monotonicity on real training: the small-init linear
staircase (it must rise with each mode) and the weight-decay restoration after it (it must
fall). κ, the absolute scale units and modes are weighed against, is the engine's abs_tol (0.1).
Real torch, no mocks.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from torch import nn

WIDTHS = {"small": (12, 32, 8), "llm": (768, 3072, 768)}


def measure(model: nn.Module, **attach) -> dict[str, dict]:
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    engine.attach({"": model}, observe=False, **attach)
    return engine.decode(engine.compute().tolist())[0]


def relu_net(width: str, std: float | None = None, seed: int = 0) -> nn.Sequential:
    """n → h → ReLU → o; `std`: N(0, std²) weights and zero biases, else torch's default."""
    torch.manual_seed(seed)
    n, h, o = WIDTHS[width]
    net = nn.Sequential(nn.Linear(n, h), nn.ReLU(), nn.Linear(h, o))
    if std is not None:
        with torch.no_grad():
            for layer in (net[0], net[2]):
                layer.weight.normal_(0, std)
                layer.bias.zero_()
    return net


def linear_pair(width: str, std: float | None = None, seed: int = 0) -> nn.Sequential:
    """A factor pair with nothing in between (rotation symmetry), its hidden side the smaller:
    small 32 → 12 → 32, LLM 3072 → 768 → 3072."""
    torch.manual_seed(seed)
    n, h, _ = WIDTHS[width]
    net = nn.Sequential(nn.Linear(h, n, bias=False), nn.Linear(n, h, bias=False))
    if std is not None:
        with torch.no_grad():
            for layer in net:
                layer.weight.normal_(0, std)
    return net


def deltas(values: dict) -> dict[str, float | None]:
    return {k: v for k, v in values.items() if k.startswith("delta_") or k == "broken"}


# -- θ = 0, tiny and default initialisation ------------------------------------------------------

@pytest.mark.parametrize("width", ["small", "llm"])
def test_every_delta_reads_zero_at_theta_zero(width):
    for net in (relu_net(width, std=0.0), linear_pair(width, std=0.0)):
        got = measure(net)
        for name, layer in got.items():
            published = {k: v for k, v in deltas(layer).items() if v is not None}
            assert published, name
            assert all(v == 0 for v in published.values()), (name, published)


@pytest.mark.parametrize("width, std", [("small", 1e-3), ("llm", 1e-4)])
def test_a_tiny_initialisation_reads_nearly_symmetric(width, std):
    # the demo's case: ‖W‖ ≈ 0.02, every unit and mode far below κ
    for net in (relu_net(width, std=std), linear_pair(width, std=std)):
        got = measure(net, classifier=None)
        for name, layer in got.items():
            for key, value in deltas(layer).items():
                assert value is None or 0 <= value < 0.01, (name, key, value)


@pytest.mark.parametrize("width", ["small", "llm"])
def test_default_initialisation_reads_units_broken_and_no_learned_mode(width):
    got = measure(relu_net(width))["0"]
    assert got["delta_sign"] > 0.9  # every unit alive and well above κ
    assert got["delta_perm"] > 0.5  # random units: far from any merged state
    assert got["duplicate_fraction"] == 0 and got["distinct_units"] == WIDTHS[width][1]
    assert 0 < got["delta_rescale"] < 1
    assert got["delta_rank"] < 0.02  # a random bulk, no mode above it
    pair = measure(linear_pair(width))["0"]
    assert pair["delta_rotation"] < 0.02 and pair["delta_rank"] < 0.02
    assert pair["delta_perm"] is None  # Linear → Linear: a rotation, not a permutation


# -- each family: fixed point, slightly off, far -------------------------------------------------

def _three(make, values) -> list[float]:
    return [make(v) for v in values]


@pytest.mark.parametrize("width", ["small", "llm"])
def test_permutation_delta_is_zero_for_merged_units_and_rises_as_they_separate(width):
    base = relu_net(width)
    n, h, _ = WIDTHS[width]

    def delta(noise: float) -> float:
        net = relu_net(width)
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():  # every unit a copy of unit 0 up to a positive scale per unit
            a = torch.rand(h, generator=gen) + 0.5
            net[0].weight.copy_(a[:, None] * base[0].weight[0])
            net[0].bias.copy_(a * base[0].bias[0])
            net[2].weight.copy_(base[2].weight[:, :1] / a[None, :])
            net[0].weight.add_(noise * torch.randn(h, n, generator=gen) / n ** 0.5)
        got = measure(net)["0"]
        if noise == 0:
            assert got["duplicate_fraction"] == 1 and got["distinct_units"] == 1
        return got["delta_perm"]

    fixed, near, far = _three(delta, [0.0, 0.02, 3.0])
    assert fixed == pytest.approx(0, abs=1e-4)
    assert fixed < near < 0.05 < far


@pytest.mark.parametrize("width", ["small", "llm"])
def test_sign_delta_is_zero_for_dead_units_and_rises_with_their_strength(width):
    def delta(scale: float) -> float:
        net = relu_net(width)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
        return measure(net)["0"]["delta_sign"]

    dead, near, far = _three(delta, [0.0, 1e-2, 1.0])
    assert dead == 0 and 0 < near < 0.01 and far > 0.9


@pytest.mark.parametrize("width", ["small", "llm"])
def test_rescale_delta_is_zero_when_balanced_and_rises_with_the_imbalance(width):
    def delta(tilt: float) -> float:
        net = relu_net(width)
        with torch.no_grad():  # balance each unit (C_i = 0), then tilt it by a = tilt
            in2 = net[0].weight.square().sum(1) + net[0].bias.square()
            out2 = net[2].weight.square().sum(0)
            a = (out2 / in2) ** 0.25 * tilt
            net[0].weight.mul_(a[:, None])
            net[0].bias.mul_(a)
            net[2].weight.div_(a[None, :])
        got = measure(net)["0"]
        return got["delta_rescale"]

    balanced, near, far = _three(delta, [1.0, 1.02, 10.0])
    assert balanced == pytest.approx(0, abs=1e-5)
    assert balanced < near < 0.05 and far > 0.99


def _modes(m: int, n: int, strengths: list[float], noise: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = noise * torch.randn(m, n, generator=gen) / n ** 0.5
    for s in strengths:
        u, v = torch.randn(m, generator=gen), torch.randn(n, generator=gen)
        w += s * torch.outer(u / u.norm(), v / v.norm())
    return w


@pytest.mark.parametrize("width", ["small", "llm"])
def test_rank_delta_counts_learned_modes_above_the_bulk_by_strength(width):
    n, h, _ = WIDTHS[width]

    def delta(strengths: list[float]) -> float:
        layer = nn.Linear(h, n, bias=False)  # (n × h): 32 × 12, 3072 × 768
        with torch.no_grad():
            layer.weight.copy_(_modes(n, h, strengths, noise=1e-3))
        return measure(nn.Sequential(layer), classifier=None)["0"]["delta_rank"]

    k = min(n, h)
    none, weak, strong = _three(delta, [[], [0.05], [3.0, 2.0]])
    assert none == 0
    assert 0 < weak < 0.25 / k  # one mode, below κ: counted by its strength 0.05²/(0.05²+κ²)
    assert strong == pytest.approx((9 / 9.01 + 4 / 4.01) / k, rel=1e-2)


@pytest.mark.parametrize("width", ["small", "llm"])
def test_rotation_delta_counts_the_factor_pair_modes(width):
    def delta(strengths: list[float]) -> float:
        net = linear_pair(width, std=1e-4)
        h, n = net[0].weight.shape
        w = _modes(h, n, [s ** 0.5 for s in strengths], noise=0.0)  # W₁ = √s u vᵀ
        u, s, _ = torch.linalg.svd(w, full_matrices=False)
        gen = torch.Generator().manual_seed(1)
        q, _ = torch.linalg.qr(torch.randn(n, h, generator=gen))
        with torch.no_grad():  # a balanced pair: W₂ = Q diag(√s) Uᵀ
            net[0].weight.add_(w)
            net[1].weight.add_(q @ torch.diag(s) @ u.T)
        return measure(net, classifier=None)["0"]["delta_rotation"]

    h = WIDTHS[width][0]
    none, weak, strong = _three(delta, [[], [0.0025], [4.0, 1.0]])  # √(λ/2): 0.05; 2, 1
    assert none < 1e-3
    assert none < weak < 0.25 / h
    # √(λ/2) = √s: 2 and 1 against κ
    assert strong == pytest.approx((4 / 4.01 + 1 / 1.01) / h, rel=1e-2)


@pytest.mark.parametrize("width", ["small", "llm"])
def test_softmax_delta_is_zero_for_centred_rows_and_rises_with_their_common_part(width):
    n, _, o = WIDTHS[width]

    def delta(common: float) -> float:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(n, o))
        with torch.no_grad():
            w = net[0].weight - net[0].weight.mean(0)
            net[0].weight.copy_(w + common * torch.randn(1, n) / n ** 0.5)
        return measure(net)["0"]["delta_softmax"]

    centred, near, far = _three(delta, [0.0, 0.01, 100.0])
    assert centred == pytest.approx(0, abs=1e-4)
    assert centred < near < 0.05 and far > 0.9


# -- duplicates only where the permutation symmetry holds -----------------------------------------

@pytest.mark.parametrize("width", ["small", "llm"])
def test_relu_units_merged_up_to_a_positive_scale_read_as_duplicates(width):
    net = relu_net(width)
    h = WIDTHS[width][1]
    with torch.no_grad():  # unit 7 = unit 3 with w_in·2, b·2, w_out/2: the same function
        net[0].weight[7] = net[0].weight[3] * 2
        net[0].bias[7] = net[0].bias[3] * 2
        net[2].weight[:, 7] = net[2].weight[:, 3] / 2
    got = measure(net)["0"]
    assert got["duplicate_fraction"] == pytest.approx(2 / h)
    assert got["distinct_units"] == h - 1


def test_through_gelu_only_exact_copies_are_duplicates():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 8))
    with torch.no_grad():
        net[0].weight[7] = net[0].weight[3] * 2  # gelu(2x) ≠ 2·gelu(x): a different unit
        net[0].bias[7] = net[0].bias[3] * 2
        net[2].weight[:, 7] = net[2].weight[:, 3] / 2
        net[0].weight[9] = net[0].weight[4]  # an exact copy
        net[0].bias[9] = net[0].bias[4]
        net[2].weight[:, 9] = net[2].weight[:, 4]
    layers, _ = discover({"": net})
    engine = IndicatorEngine(layers)
    engine.attach({"": net})
    net(torch.randn(2, 12))  # the pairing pass sees the GELU
    got = engine.decode(engine.compute().tolist())[0]["0"]
    assert got["duplicate_fraction"] == pytest.approx(2 / 32)


def test_a_rank_one_linear_pair_has_no_duplicates_to_count():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8, bias=False), nn.Linear(8, 16, bias=False))
    with torch.no_grad():  # one learned mode: every hidden unit parallel to every other
        net[0].weight.copy_(torch.outer(torch.randn(8), torch.randn(16)))
        net[1].weight.copy_(torch.outer(torch.randn(16), torch.randn(8)))
    got = measure(net)["0"]
    for name in ("duplicate_fraction", "distinct_units", "delta_perm"):
        assert got[name] is None, name  # N/A: the pair's symmetry is a rotation
    assert got["delta_rank"] > 0 and got["delta_rotation"] > 0  # …measured here instead
    applicable = [v for k, v in got.items() if k.startswith("delta_") and v is not None]
    assert got["broken"] == pytest.approx(sum(applicable) / len(applicable), rel=1e-5)


@pytest.mark.parametrize("width", ["small", "llm"])
def test_a_default_init_relu_layer_has_no_duplicates(width):
    got = measure(relu_net(width, seed=3))
    assert got["0"]["duplicate_fraction"] == 0
    assert got["2"]["duplicate_fraction"] is None  # no consumer: its outputs are not permutable


# -- broken on real training -----------------------------------------------------------------------

S = (8.0, 4.0, 2.5, 1.5, 1.0)  # target singular values (the demo's)
D, SIGMA, LR, GAMMA = 16, 1e-3, 0.02, 2.0


def test_broken_rises_along_the_staircase_and_falls_under_weight_decay():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(D, D, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(D, D, generator=gen))
    target = u[:, :len(S)] @ torch.diag(torch.tensor(S)) @ v[:, :len(S)].T
    net = nn.Sequential(nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False))
    for layer in net:
        nn.init.normal_(layer.weight, std=SIGMA)
    layers, _ = discover({"": net})
    engine = IndicatorEngine(layers)
    engine.attach({"": net}, classifier=None)  # a regression: no softmax

    def train(opt: torch.optim.Optimizer, steps: int) -> list[tuple[float, float, int]]:
        series = []
        for t in range(steps):
            loss = 0.5 * (net(torch.eye(D)).T - target).square().sum()  # whitened inputs
            opt.zero_grad()
            loss.backward()
            opt.step()
            if t % 4 == 0:
                got = engine.decode(engine.compute().tolist())[0]
                # modes learned: the product's σ_i past half of the target's s_i
                sv = torch.linalg.svdvals((net[1].weight @ net[0].weight).detach())
                learned = int((sv[:len(S)] > torch.tensor(S) / 2).sum())
                series.append((got["0"]["broken"], got["1"]["broken"], learned))
        return series

    stair = train(torch.optim.SGD(net.parameters(), lr=LR), 400)
    assert stair[0][0] < 0.01 and stair[0][1] < 0.01  # tiny init: nearly symmetric
    for k in (0, 1):
        steps = [b[k] for b in stair]
        assert all(b >= a - 1e-6 for a, b in itertools.pairwise(steps)), k  # never falls
    # each mode learned comes with a clear rise
    ranks = [r for _, _, r in stair]
    assert ranks[-1] == len(S)
    at = [ranks.index(r) for r in range(1, len(S) + 1)]
    for a, b in zip([0] + at[:-1], at):
        assert stair[b][0] > stair[a][0] + 1e-3, (a, b)
    # weight decay: modes with s < γ die, the others shrink to s − γ; broken falls throughout
    decay = train(torch.optim.SGD(net.parameters(), lr=LR, weight_decay=GAMMA), 600)
    for k in (0, 1):
        steps = [stair[-1][k]] + [b[k] for b in decay]
        assert all(b <= a + 1e-6 for a, b in itertools.pairwise(steps)), k  # never rises
        assert steps[-1] < steps[0] - 0.05
