"""The update-to-weight ratio per layer (measure/updates.py, docs/metrics.md `update_ratio`):
‖W_t − W_s‖/‖W_t‖/(t − s) between a layer's consecutive samples, from a fixed random set of
at most ENTRIES entries per layer.

Against the exact ratio from full float64 copies: at rest (no update: 0, the only "symmetric"
reading it has), slightly moved, far moved, at tiny and default init, at small width (exact:
every entry read) and at LLM width (768 × 768, 4096 × 1024: the sampled estimate), for Gaussian
updates and Adam-like sign updates; then real optimizer steps through the engine and a watched
run that publishes it from its second sample on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from symwatch_agent.measure import updates
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP
from torch import nn

import symwatch
from symwatch.core import protocol
from symwatch.tui.columns import label, view_indicators


def exact(before: torch.Tensor, after: torch.Tensor, steps: int) -> float:
    b, a = before.double(), after.double()
    return float((a - b).norm() / a.norm() / steps)


def init(shape: tuple[int, int], scale: str, gen: torch.Generator) -> torch.Tensor:
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=5 ** 0.5, generator=gen)  # nn.Linear's default init
    return w * (1e-3 if scale == "tiny" else 1.0)


MOVES = {"rest": 0.0, "slightly": 1e-5, "far": 0.3}  # update size relative to the weights


@pytest.mark.parametrize("kind", ["gaussian", "sign"])
@pytest.mark.parametrize("move", list(MOVES))
@pytest.mark.parametrize("scale", ["tiny", "default"])
@pytest.mark.parametrize("shape", [(32, 16), (768, 768), (4096, 1024)])
def test_the_ratio_matches_the_exact_one(shape, scale, move, kind):
    gen = torch.Generator().manual_seed(1)
    w0 = init(shape, scale, gen)
    if kind == "gaussian":
        step = torch.randn(shape, generator=gen)
    else:  # Adam's early steps: ±lr on every entry
        step = torch.randn(shape, generator=gen).sign()
    step = step * (MOVES[move] * w0.norm() / step.norm())
    w1 = w0 + step
    tracker = updates.UpdateTracker()
    assert tracker.measure([7], w0[None], 100) is None  # the first sample has no previous
    rows, ratio = tracker.measure([7], w1[None], 105)
    want = exact(w0, w1, 5)
    assert rows == [7]
    if move == "rest":
        assert float(ratio[0]) == 0.0
        return
    small = shape[0] * shape[1] <= updates.ENTRIES
    # exact where every entry is read (float32 differences: ~1e-7 of ‖W‖, 1e-5 moves → ~1 %);
    # the sampled estimate within 5 % (its relative error ≈ √(κ/2k), 1.6 % for Gaussian)
    tol = (2e-2 if move == "slightly" else 1e-5) if small else 5e-2
    assert float(ratio[0]) == pytest.approx(want, rel=tol)


def test_the_entries_are_the_same_every_sample_and_per_step():
    """Three samples, 4 and 1 steps apart: each ratio is the move since the one before, per
    step; a layer that reappears with another shape starts again."""
    gen = torch.Generator().manual_seed(2)
    tracker = updates.UpdateTracker()
    w = [init((512, 256), "default", gen)]
    for k in range(2):
        w.append(w[-1] + 1e-3 * torch.randn(512, 256, generator=gen))
    tracker.measure([0], w[0][None], 10)
    _, r1 = tracker.measure([0], w[1][None], 14)
    _, r2 = tracker.measure([0], w[2][None], 15)
    assert float(r1[0]) == pytest.approx(exact(w[0], w[1], 4), rel=5e-2)
    assert float(r2[0]) == pytest.approx(exact(w[1], w[2], 1), rel=5e-2)
    assert tracker.measure([0], torch.randn(1, 8, 8), 16) is None


def test_real_optimizer_steps_through_the_engine():
    """An MLP trained with SGD then AdamW: the engine's published ratio equals the exact
    ‖ΔW‖/‖W‖ per step between its samples, layer by layer (768 wide: sampled entries)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 768), nn.ReLU(), nn.Linear(768, 768), nn.ReLU(),
                          nn.Linear(768, 10))
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    for opt in (torch.optim.SGD(model.parameters(), lr=0.05),
                torch.optim.AdamW(model.parameters(), lr=1e-3)):
        engine.step = 0 if engine.step is None else engine.step
        engine.compute(CHEAP)
        before = {n: m.weight.detach().clone() for n, m in model.named_children()
                  if isinstance(m, nn.Linear)}
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        engine.step += 3
        values, _ = engine.decode(engine.compute(CHEAP).tolist())
        for name, w0 in before.items():
            want = exact(w0, getattr(model, name).weight.detach(), 3)
            assert values[name]["update_ratio"] == pytest.approx(want, rel=5e-2), name
            assert want > 1e-5


def test_a_watched_run_publishes_it_from_its_second_sample(collector):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=5, budget=1.0,
                           heartbeat_interval=0.05)
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 15)
    agent.close()
    metrics = {m.step: m.payload["values"] for m in sub.of_kind(protocol.METRICS)}
    assert "update_ratio" not in metrics[1]["0"]  # nothing to compare the first sample with
    for step in (5, 10, 15):
        assert 0 < metrics[step]["0"]["update_ratio"] < 1
    assert label("update_ratio") == "update/weight"
    assert "update_ratio" in view_indicators("scale", ["weight_norm", "update_ratio"])
