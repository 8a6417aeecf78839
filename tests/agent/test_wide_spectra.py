"""Layers wider than max_svd_dim (measure/wide.py): the estimated rank family, `modes` and
numerical_rank against the engine's exact path (float64 spectra, itself within 1e-3 of a
float64 SVD: test_spectra_accuracy.py) on the same weights, and a real training run that
publishes every rank indicator of such a layer through the agent.

The wide path is taken at small sizes by lowering `max_svd_dim` (the engine's option, as a user
would): every spectrum at GPT-2-small width (768 × 2048, max_svd_dim 512), two at a width
between GPT-2 large and XL (1536 × 4096, the default max_svd_dim 1024). The 4096 × 11008 cost
and the error table are in benchmarks/wide_spectra.py (docs/metrics.md, *Wide layers*).
"""

from __future__ import annotations

import math

import pytest
import torch
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import FULL
from torch import nn

import symwatch
from symwatch.core import protocol

RANKS = ("effective_rank", "stable_rank", "participation_ratio")
SMALL = (768, 2048, 512)  # (M, N, max_svd_dim): the layer is Linear(N → M), weight M × N
LARGE = (1536, 4096, 1024)


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64)).Q


def _with_spectrum(s: torch.Tensor, m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """An M × N matrix with singular values s (k of them): dense random left singular
    vectors, the right ones a random signed choice of k coordinates (orthonormal rows; the
    estimators work on the k-side, and a k × k QR costs a fraction of an N × k one)."""
    k = s.numel()
    u = _orthonormal(m, k, gen)
    cols = torch.randperm(n, generator=gen)[:k]
    signs = torch.randint(0, 2, (k,), generator=gen).double() * 2 - 1
    w = torch.zeros(m, n, dtype=torch.float64)
    w[:, cols] = u * (s * signs)
    return w.float()


def _modes(m: int, n: int, strengths: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Σ strengths_j u_j v_jᵀ over random orthonormal pairs (m × n)."""
    r = strengths.numel()
    u, v = _orthonormal(m, r, gen), _orthonormal(n, r, gen)
    return ((u * strengths) @ v.T).float()


def _default_init(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """nn.Linear's own initialisation (Kaiming uniform, bound 1/√fan_in): a random bulk."""
    return (torch.rand(m, n, generator=gen) * 2 - 1) / math.sqrt(n)


def weights(kind: str, m: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    k = min(m, n)
    edge = (math.sqrt(m) + math.sqrt(n)) / math.sqrt(3 * n)  # the default init's bulk edge
    if kind == "default init":
        return _default_init(m, n, gen)
    if kind == "tiny init":  # σ = 1e-4: the rank family is scale-free, `modes` must read 0
        return torch.randn(m, n, generator=gen) * 1e-4
    if kind == "bulk + 8 modes":
        return _default_init(m, n, gen) + _modes(
            m, n, torch.linspace(6, 2, 8, dtype=torch.float64) * edge, gen)
    if kind == "mostly learned":  # 48 modes holding ~90 % of ‖W‖²_F over the init's bulk
        return _default_init(m, n, gen) + _modes(
            m, n, torch.linspace(8, 3, 48, dtype=torch.float64) * edge, gen)
    if kind == "1/i":  # heavy tail, no bulk
        return _with_spectrum(1 / torch.arange(1, k + 1, dtype=torch.float64), m, n, gen)
    rank8 = _modes(m, n, torch.linspace(2, 1, 8, dtype=torch.float64), gen)
    if kind == "rank 8":  # the rotation symmetry's fixed set: rank deficient
        return rank8
    if kind == "rank 8 + noise":  # slightly off it: a bulk at 1 % of the modes
        return rank8 + torch.randn(m, n, generator=gen) * (0.01 / (math.sqrt(m) + math.sqrt(n)))
    raise ValueError(kind)


def measure(w: torch.Tensor, max_svd_dim: int, samples: int = 1
            ) -> tuple[dict[str, float | None], IndicatorEngine]:
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    layers, _ = discover({"": nn.Sequential(layer)})
    engine = IndicatorEngine(layers, max_svd_dim=max_svd_dim, budget=1.0)
    for _ in range(samples):
        values, _ = engine.decode(engine.compute(FULL).tolist())
    return values["0"], engine


KINDS = ("default init", "tiny init", "bulk + 8 modes", "mostly learned", "1/i", "rank 8",
         "rank 8 + noise")
EXPECTED_MODES = {"default init": 0, "tiny init": 0, "bulk + 8 modes": 8, "mostly learned": 48,
                  "rank 8": 8, "rank 8 + noise": 8}


CASES = [pytest.param(SMALL, kind, id=f"768-{kind}") for kind in KINDS] + [
    pytest.param(LARGE, kind, id=f"1536-{kind}") for kind in ("bulk + 8 modes", "1/i")]


# The exact reference (a float64 Gram + eigvalsh) plus the wide path: on the 2-core machine
# shared by many runs these took 40–120 s each, at the suite's 120 s default.
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("shape", "kind"), CASES)
def test_wide_estimates_match_the_exact_spectrum(shape, kind):
    m, n, max_svd_dim = shape
    w = weights(kind, m, n)
    exact, _ = measure(w, max_svd_dim=m)  # k = m: the exact path
    est, engine = measure(w, max_svd_dim=max_svd_dim)  # the wide path
    assert engine._wide_vec, "the wide path was not taken"
    for name in RANKS:
        assert est[name] == pytest.approx(exact[name], rel=0.01), name
    if kind == "1/i":
        # no gap anywhere: bulk.py's edge lands inside a continuous spectrum (the exact path
        # counts ~650 of 1536), where the quantile estimates move the count by ~1 %
        assert est["modes"] == pytest.approx(exact["modes"], rel=0.02)
    else:
        assert est["modes"] == exact["modes"]
    if kind in EXPECTED_MODES:  # the exact path itself reads what was built in
        assert exact["modes"] == EXPECTED_MODES[kind]
    # numerical rank: exact where no σ sits near its tolerance (σ₁·n·eps₃₂); the 1/i tail
    # ends near it (1/k vs n·1.2e-7), where the quantiles' interpolation may move a few
    if kind == "1/i":
        assert est["numerical_rank"] == pytest.approx(exact["numerical_rank"], rel=0.01)
    else:
        assert est["numerical_rank"] == exact["numerical_rank"]
    assert est["delta_rank"] == pytest.approx(exact["delta_rank"], rel=0.01, abs=1e-6)


def test_symmetric_state_reads_its_rank_exactly():
    """At the fixed set (rank 8, equal σ) every rank indicator reads 8, as the exact path."""
    gen = torch.Generator().manual_seed(2)
    m, n, max_svd_dim = SMALL
    est, _ = measure(_modes(m, n, torch.ones(8, dtype=torch.float64), gen),
                     max_svd_dim=max_svd_dim)
    for name in (*RANKS, "numerical_rank", "modes"):
        assert est[name] == pytest.approx(8, rel=1e-3), name


@pytest.mark.timeout(600)
def test_warm_start_after_a_step_stays_exact():
    """The second sample starts from the first one's top vectors (WARM_DEPTH blocks instead
    of COLD_DEPTH) after the weights moved: still within 1 % of the exact spectrum."""
    m, n, max_svd_dim = SMALL
    w = weights("bulk + 8 modes", m, n)
    _, engine = measure(w, max_svd_dim=max_svd_dim)
    first = engine._wide_vec[0].clone()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an update of ~1 % of the weights' norm
        engine.layers[0].weight.add_(torch.randn(m, n, generator=gen) * (0.01 / math.sqrt(n)))
    est, _ = engine.decode(engine.compute(FULL).tolist())
    exact, _ = measure(engine.layers[0].weight.detach().clone(), max_svd_dim=m)
    for name in RANKS:
        assert est["0"][name] == pytest.approx(exact[name], rel=0.01), name
    assert est["0"]["modes"] == exact["modes"] == 8
    moved = engine._wide_vec[0]
    # the kept subspace followed the weights: same top-8 span, new vectors
    overlap = torch.linalg.svdvals(first[:, :8].T @ moved[:, :8])
    assert overlap.min() > 0.99 and not torch.equal(first, moved)


def test_small_width_wide_path():
    """Small width: a 320 × 800 layer with max_svd_dim = 256 (TOP = 64 exact σ, SLQ on the
    other 256)."""
    gen = torch.Generator().manual_seed(4)
    bulk = (torch.rand(320, 800, generator=gen) * 2 - 1) / math.sqrt(800)
    u = torch.linalg.qr(torch.randn(320, 4, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(800, 4, generator=gen)).Q
    w = bulk + (u * torch.tensor([4.0, 3.5, 3.0, 2.5])) @ v.T
    exact, _ = measure(w, max_svd_dim=320)
    est, _ = measure(w, max_svd_dim=256)
    for name in RANKS:
        assert est[name] == pytest.approx(exact[name], rel=0.01), name
    assert est["modes"] == exact["modes"] == 4
    assert est["numerical_rank"] == exact["numerical_rank"] == 320


def test_training_run_publishes_every_rank_indicator_of_a_wide_layer(collector):
    """A real training loop through the agent, max_svd_dim lowered so the 384-wide hidden
    layer takes the wide path: its rank indicators are published (not null) at each full
    sample, and agree with the exact path on the final weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 384), nn.ReLU(), nn.Linear(384, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           every=1, budget=1.0, max_svd_dim=256)
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    x = torch.randn(64, 512)
    y = torch.randint(0, 10, (64,))
    steps = 5
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == steps, timeout=60)
    rank_names = (*RANKS, "numerical_rank", "modes", "delta_rank")
    published = [m.payload["values"]["0"] for m in sub.of_kind(protocol.METRICS)]
    assert len(published) == steps
    for values in published:  # budget 1: every sample is full
        for name in rank_names:
            assert values.get(name) is not None, name
    assert 0 in agent.engine._wide_vec  # the wide layer, warm-started after the first sample
    last = published[-1]
    exact, _ = measure(model[0].weight.detach().clone(), max_svd_dim=384)
    for name in RANKS:
        # k = 384: 320 values left to SLQ, whose probe noise is larger than at k = 1536
        assert last[name] == pytest.approx(exact[name], rel=0.02), name
    assert last["modes"] == exact["modes"]
    assert last["numerical_rank"] == exact["numerical_rank"] == 384
    agent.close()

