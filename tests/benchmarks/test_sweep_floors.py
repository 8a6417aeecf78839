"""benchmarks/sweep_floors.py: the SLQ effective-rank estimate its floors table reports."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import sweep_floors  # noqa: E402


def _effective_rank(s: torch.Tensor) -> float:
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def _with_spectrum(s: torch.Tensor, m: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=gen))
    return (u * s) @ v.T


def test_equal_singular_values_read_their_count() -> None:
    # Lanczos finds the two nodes (0 and λ), the quadratic control variate fits f there, so
    # nothing is left to the probes' noise: only float32's (the zero eigenvalues come out
    # ~1e-7·λ, and √ of that is not quite 0).
    w = _with_spectrum(torch.full((5,), 2.0), 64, 96, seed=0)
    estimate = sweep_floors.slq_effective_rank((w @ w.T).unsqueeze(0))
    assert abs(estimate.item() - 5) < 0.05


def test_a_heavy_tailed_spectrum_is_estimated_within_a_few_percent() -> None:
    k = 256
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -0.6
    w = torch.stack([_with_spectrum(s, k, 2 * k, seed) for seed in range(3)])
    estimate = sweep_floors.slq_effective_rank(w @ w.transpose(1, 2))
    exact = _effective_rank(s.double())
    assert (estimate / exact - 1).abs().max().item() < 0.03
    # and the estimate is not a constant: a flatter spectrum reads higher
    flat = _with_spectrum(torch.linspace(1.0, 0.5, k), k, 2 * k, seed=9)
    assert sweep_floors.slq_effective_rank((flat @ flat.T).unsqueeze(0)).item() > \
        estimate.max().item() * 1.2


def test_floors_are_measured_for_every_shape_group() -> None:
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 32))
    with torch.no_grad():
        figures = sweep_floors.floors(model, repeats=1)
    assert set(figures) == {"read_s", "gram32_s", "gram16_s", "eigvalsh_s", "krylov_step_s",
                            "slq_s"}
    assert all(v > 0 for v in figures.values())
    assert sweep_floors.slq_accuracy(model) < 0.05
