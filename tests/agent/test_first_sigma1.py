"""The cheap tier's first visit to a layer (issue #15): each CPU layer's σ₁ start vector is
found on the warm-up thread at watch() (Lanczos, ~5 ms a 256 × 256 layer), so that the first
sample of each layer is a warm power iteration on the training thread, and still within 1 %
of the exact σ₁ at PyTorch's default init (a random matrix: no gap below σ₁), after training
moved the weights away from those the vector was found on. And every later visit: 12 Lanczos
steps from the layer's previous vector (2 power iterations from it read σ₁ up to 30 % low once
the weights had moved on), at small and at default init, at widths 64 to 1024."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from symwatch_agent import watch
from symwatch_agent.measure.indicators import EXACT_SIGMA1_DIM
from symwatch_agent.measure.schedule import CHEAP
from waiting import until


def _mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width),
                         nn.ReLU(), nn.Linear(width, 10))


def _exact_stable_rank(layer) -> float:
    w = layer.matrix().detach().double()
    return (w.square().sum() / torch.linalg.matrix_norm(w, ord=2) ** 2).item()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    x, y = torch.randn(32, model[0].in_features), torch.randint(0, 10, (32,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_the_first_sigma1_comes_from_the_warm_up_thread_and_is_exact_enough() -> None:
    model = _mlp(256)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    agent = watch(model, opt, register=False, budget=0.01, every=10**6)
    try:
        engine = agent.engine
        ranked = [i for i, layer in enumerate(agent.layers) if layer.has_rank]
        assert ranked
        # the last layer (256 → 10) is narrow: its σ₁ is exact from its Gram, no vector
        searched = [i for i in ranked
                    if min(agent.layers[i].matrix_shape) > EXACT_SIGMA1_DIM]
        assert searched and len(searched) < len(ranked)
        assert until(lambda: all(i in engine._power_vec for i in searched), 60)
        _train(model, opt, 20)  # the weights move on from those the vectors came from
        rows = engine.compute(CHEAP)
        assert not engine._cold  # no layer needed Lanczos on the training thread
        values, _ = engine.decode(rows.tolist())
        for i in ranked:
            layer = agent.layers[i]
            exact = _exact_stable_rank(layer)
            got = values[layer.name]["stable_rank"]
            assert abs(got / exact - 1) < 0.01, (layer.name, got, exact)
    finally:
        agent.close()


def _warm_up_finished(agent) -> None:
    """Wait for the agent's warm-up thread (its bulk tables, then its start vectors) to end."""
    assert agent._warm_thread is not None
    agent._warm_thread.join(60)
    assert not agent._warm_thread.is_alive()


def test_without_a_budget_the_warm_up_leaves_sigma1_to_the_samples() -> None:
    """No budget (the demo, the event corpus): the samples must not depend on the machine,
    so no start vector races the first sample."""
    model = _mlp(64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    agent = watch(model, opt, register=False, budget=1.0, every=10**6)
    try:
        _warm_up_finished(agent)
        assert agent.engine._power_vec == {}
    finally:
        agent.close()


@pytest.mark.parametrize("width", [64, 256, 1024])
@pytest.mark.parametrize("make_opt, steps", [
    (lambda p: torch.optim.AdamW(p, lr=1e-3), 200),
    (lambda p: torch.optim.AdamW(p, lr=1e-4), 1000),
    (lambda p: torch.optim.SGD(p, lr=0.1), 200)], ids=["adamw-1e-3", "adamw-1e-4", "sgd-0.1"])
@pytest.mark.parametrize("init", ["default", "small"])
def test_a_layer_revisited_after_training_moved_it_reads_sigma1_within_0_1_percent(
        width, make_opt, steps, init) -> None:
    """Two cheap visits of each layer, `steps` training steps apart (a sliced sample comes back
    every ~200 steps at a 1 % budget): the second σ₁ from the first visit's vector, within
    0.1 % of the exact σ₁ (2 warm power iterations were up to 30 % low here)."""
    torch.manual_seed(1)
    model = _mlp(width)
    if init == "small":
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1e-3)
    opt = make_opt(model.parameters())
    agent = watch(model, opt, register=False, budget=1.0, every=10**6)
    try:
        engine = agent.engine
        engine.compute(CHEAP)  # the first visit: every layer's vector
        _train(model, opt, steps)
        values, _ = engine.decode(engine.compute(CHEAP).tolist())
        for layer in agent.layers:
            if not layer.has_rank:
                continue
            exact = _exact_stable_rank(layer)
            got = values[layer.name]["stable_rank"]
            assert abs(got / exact - 1) < 2e-3, (layer.name, got, exact)  # σ₁² within 0.1 %
    finally:
        agent.close()


@pytest.mark.parametrize("init", ["default", "small", "rank-1"])
def test_a_narrow_layers_sigma1_is_exact_without_lanczos(init) -> None:
    """Layers with a short side of at most EXACT_SIGMA1_DIM (a position embedding, LoRA-like
    adapters, a 10-class head) take σ₁ from their Gram matrix: exact at PyTorch's default
    init, at a tiny one and at a symmetric (rank-1, duplicated rows) state, and no Lanczos
    vector is kept for them."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(1024, 8), nn.Linear(8, 1024), nn.Linear(1024, 32),
                          nn.Linear(32, 10))
    with torch.no_grad():
        for p in model.parameters():
            if init == "small":
                p.mul_(1e-3)
            if init == "rank-1" and p.dim() == 2:
                p.copy_(p[:1].expand_as(p))  # every unit the same: σ₂ = … = 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    agent = watch(model, opt, register=False, budget=1.0, every=10**6)
    try:
        values, _ = agent.engine.decode(agent.engine.compute(CHEAP).tolist())
        for layer in agent.layers:
            exact = _exact_stable_rank(layer)
            got = values[layer.name]["stable_rank"]
            assert abs(got / exact - 1) < 1e-5, (layer.name, got, exact)
        assert agent.engine._power_vec == {}
    finally:
        agent.close()


def test_under_a_budget_the_warm_up_finds_vectors_for_wide_layers_only() -> None:
    """The warm-up thread's start vectors (under a budget) are for the layers Lanczos
    measures: none for a narrow one (short side ≤ EXACT_SIGMA1_DIM), whose σ₁ the samples
    take from its Gram; every other ranked layer gets one."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(512, 16), nn.Linear(16, 512), nn.Linear(512, 256))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    agent = watch(model, opt, register=False, budget=0.01, every=10**6)
    try:
        _warm_up_finished(agent)
        narrow = {i for i, layer in enumerate(agent.layers)
                  if layer.has_rank and min(layer.matrix_shape) <= EXACT_SIGMA1_DIM}
        wide = {i for i, layer in enumerate(agent.layers)
                if layer.has_rank and min(layer.matrix_shape) > EXACT_SIGMA1_DIM}
        assert len(narrow) == 2 and len(wide) == 1
        assert set(agent.engine._power_vec) == wide
    finally:
        agent.close()


class _CountProducts(torch.overrides.TorchFunctionMode):
    """Counts the Lanczos steps of a run: each makes one product u·W (and one q·Wᵀ)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w, self.products = w, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.bmm and len(args) > 1 and args[1] is self.w:
            self.products += 1
        return func(*args, **(kwargs or {}))


def _lanczos(w, v, steps, tol=None):
    from symwatch_agent.measure import spectra
    with _CountProducts(w) as counter:
        s1, vec = spectra.lanczos_sigma1(w, v, steps, tol=tol)
    return s1, vec, counter.products


def test_lanczos_stops_once_sigma1_is_known_and_not_before() -> None:
    """From a recent vector σ₁ is known in a few steps; a random matrix from a random start
    (no gap below σ₁) needs many more, and gets them: the test stops on the residual, not on
    a fixed count. 12 fixed steps (the previous rule) are worse there."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(1, 256, 1024, generator=gen) / 32
    exact = torch.linalg.matrix_norm(w[0].double(), 2).item()
    start = torch.randn(1, 1024, generator=gen)
    s1, vec, steps = _lanczos(w, start, 30, tol=1e-4)
    assert abs((s1.item() / exact) ** 2 - 1) < 1e-3
    assert steps > 12  # a random spectrum's top is not resolved in 12 steps ...
    fixed, _, _ = _lanczos(w, start, 12)
    assert abs((fixed.item() / exact) ** 2 - 1) > abs((s1.item() / exact) ** 2 - 1)
    # ... and a small move later the old vector gives it back in a few
    moved = w + 1e-3 * torch.randn(w.shape, generator=gen) / 32
    exact = torch.linalg.matrix_norm(moved[0].double(), 2).item()
    again, _, steps = _lanczos(moved, vec, 30, tol=1e-4)
    assert abs((again.item() / exact) ** 2 - 1) < 1e-4
    assert steps <= 6
    # a learned mode standing above the bulk: found at once from a random start
    u, v = torch.randn(256, 1, generator=gen), torch.randn(1, 1024, generator=gen)
    spiked = w + 3 * (u / u.norm()) @ (v / v.norm())
    exact = torch.linalg.matrix_norm(spiked[0].double(), 2).item()
    s1, _, steps = _lanczos(spiked, start, 30, tol=1e-4)
    assert abs((s1.item() / exact) ** 2 - 1) < 1e-4
    assert steps <= 6


def test_lanczos_with_a_tolerance_stops_at_an_exhausted_space_and_reads_zero_for_zero() -> None:
    low = torch.zeros(2, 40, 50)
    low[0, 0, 0], low[0, 1, 1] = 3.0, 1.0
    s1, vec, steps = _lanczos(low, torch.ones(2, 50), 30, tol=1e-4)
    assert s1.tolist() == pytest.approx([3.0, 0.0], abs=1e-5)
    assert torch.isfinite(vec).all()
    assert steps <= 4  # rank 2: nothing more to find (4: the least the test waits)


def test_a_batch_whose_matrices_converge_at_different_steps_gives_each_its_own_answer() -> None:
    """Matrices done early leave the batch (the rest go on with a copy of their weights):
    each σ₁ and Ritz vector lands in its own row, as if each had been run alone."""
    from symwatch_agent.measure import spectra

    gen = torch.Generator().manual_seed(5)
    bulk = torch.randn(6, 128, 256, generator=gen) / 16
    u, v = torch.randn(6, 128, 1, generator=gen), torch.randn(6, 1, 256, generator=gen)
    spiked = bulk + 4 * (u / u.norm(dim=1, keepdim=True)) @ (v / v.norm(dim=2, keepdim=True))
    w = torch.stack([spiked[0], bulk[1], spiked[2], spiked[3], bulk[4], spiked[5]])
    start = torch.randn(6, 256, generator=gen)
    s1, vec = spectra.lanczos_sigma1(w, start, 30, tol=1e-4)
    exact = torch.linalg.matrix_norm(w.double(), 2)
    assert torch.allclose(s1.double().square(), exact.square(), rtol=1e-3)
    for i in range(6):
        alone, alone_vec = spectra.lanczos_sigma1(w[i:i + 1], start[i:i + 1], 30, tol=1e-4)
        assert s1[i].item() == pytest.approx(alone.item(), rel=1e-4)
        cos = torch.nn.functional.cosine_similarity(vec[i], alone_vec[0], dim=0).abs()
        assert cos.item() > 0.99


def test_the_cpu_tests_bookkeeping_matches_the_device_loops() -> None:
    """The tested CPU loop keeps T on the host in float64; the device loop (GPU: no test)
    keeps it as a tensor. Made to run the same steps (a tolerance nothing meets), they must
    give the same σ₁ and the same Ritz vector, up to float32 rounding and its sign."""
    from symwatch_agent.measure import spectra

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 200, 300, generator=gen)
    w[1] *= 0.01  # a small-init matrix beside default-scale ones
    start = torch.randn(3, 300, generator=gen)
    for steps in (5, 12):
        fixed, fixed_vec = spectra.lanczos_sigma1(w, start, steps)
        tested, tested_vec = spectra.lanczos_sigma1(w, start, steps, tol=0.0)
        assert torch.allclose(tested, fixed, rtol=1e-5)
        cos = torch.nn.functional.cosine_similarity(tested_vec, fixed_vec, dim=1).abs()
        assert cos.min() > 1 - 1e-4
        exact = torch.linalg.svdvals(w.double())[:, 0]
        assert (tested.double() <= exact * (1 + 1e-5)).all()  # a Ritz value: never above σ₁
