"""The wide-layer path (agent/symwatch_agent/measure/wide.py) against exact float64 spectra,
and its cost per layer: the tables in docs/metrics.md, *Wide layers*.

    .venv/bin/python benchmarks/wide_spectra.py               # accuracy + cost (minutes)
    .venv/bin/python benchmarks/wide_spectra.py --no-llm      # skip the 4096 × 11008 cost
    .venv/bin/python benchmarks/wide_spectra.py --quick       # fewer cases, one timing each
    .venv/bin/python benchmarks/wide_spectra.py --cost-only --exact-llm   # the cost table only

Accuracy: each case is one layer measured by the same IndicatorEngine twice, once with
max_svd_dim at the layer's width (the exact path: float64 spectra, within 1e-3 of a float64
SVD, tests/agent/test_spectra_accuracy.py) and once with max_svd_dim = 1024 (the wide path);
the table gives the wide path's relative error per rank indicator and both `modes` and
numerical_rank counts, at the first (cold) sample. Cost: the median of REPEATS timings of a
cold and a warm (second sample after an update of ~1 % of the weights) wide spectrum, side
by side with the exact path's Gram + eigvalsh on the same machine, and the bulk.py tables'
one-time cost (cached per shape). Threads: 2 (the agent's CPU share is the training's).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "agent"))

from symwatch_agent.measure import bulk, spectra, wide
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import FULL

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
RANKS = ("effective_rank", "participation_ratio", "stable_rank")
CASES = ("default init", "tiny init", "bulk + 8 modes", "mostly learned", "1/i", "rank 8",
         "rank 8 + noise")
REPEATS = 3


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64)).Q


def _modes(m: int, n: int, strengths: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    r = strengths.numel()
    return ((_orthonormal(m, r, gen) * strengths) @ _orthonormal(n, r, gen).T).float()


def weights(kind: str, m: int, n: int, seed: int = 1) -> torch.Tensor:
    """The test spectra of tests/agent/test_wide_spectra.py, at any shape (m ≤ n)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    edge = (math.sqrt(m) + math.sqrt(n)) / math.sqrt(3 * n)  # the default init's bulk edge

    def init() -> torch.Tensor:  # nn.Linear's own: U(±1/√n)
        return (torch.rand(m, n, generator=gen) * 2 - 1) / math.sqrt(n)

    if kind == "default init":
        return init()
    if kind == "tiny init":
        return torch.randn(m, n, generator=gen) * 1e-4
    if kind == "bulk + 8 modes":
        return init() + _modes(m, n, torch.linspace(6, 2, 8, dtype=torch.float64) * edge, gen)
    if kind == "mostly learned":
        return init() + _modes(m, n, torch.linspace(8, 3, 48, dtype=torch.float64) * edge, gen)
    if kind == "1/i":  # dense left singular vectors, a signed choice of k columns on the right
        s = 1 / torch.arange(1, k + 1, dtype=torch.float64)
        u = _orthonormal(m, k, gen)
        cols = torch.randperm(n, generator=gen)[:k]
        signs = torch.randint(0, 2, (k,), generator=gen).double() * 2 - 1
        w = torch.zeros(m, n, dtype=torch.float64)
        w[:, cols] = u * (s * signs)
        return w.float()
    base = _modes(m, n, torch.linspace(2, 1, 8, dtype=torch.float64), gen)
    if kind == "rank 8":
        return base
    if kind == "rank 8 + noise":
        return base + torch.randn(m, n, generator=gen) * (0.01 / (math.sqrt(m) + math.sqrt(n)))
    raise ValueError(kind)


def engine_for(w: torch.Tensor, max_svd_dim: int) -> IndicatorEngine:
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    layers, _ = discover({"": nn.Sequential(layer)})
    return IndicatorEngine(layers, max_svd_dim=max_svd_dim, budget=1.0)


def sample(engine: IndicatorEngine) -> dict[str, float | None]:
    return engine.decode(engine.compute(FULL).tolist())[0]["0"]


def accuracy(m: int, n: int, kinds: tuple[str, ...], progress: Progress) -> list[str]:
    task = progress.add_task(f"accuracy {m} × {n}", total=len(kinds))
    rows = []
    for kind in kinds:
        w = weights(kind, m, n)
        exact = sample(engine_for(w, max_svd_dim=min(m, n)))
        est = sample(engine_for(w, max_svd_dim=1024))
        errs = [f"{(est[name] / exact[name] - 1) * 100:+.3f} %" for name in RANKS]
        rows.append(f"| {m} × {n} | {kind} | " + " | ".join(errs)
                    + f" | {est['modes']} / {exact['modes']}"
                    + f" | {est['numerical_rank']} / {exact['numerical_rank']} |")
        progress.console.log(rows[-1])
        progress.advance(task)
    return rows


def median_time(fn, repeats: int | None = None) -> float:
    times = []
    for _ in range(repeats or REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cost(m: int, n: int, progress: Progress, exact: bool) -> str:
    task = progress.add_task(f"cost {m} × {n}", total=4 + bool(exact))
    w = weights("bulk + 8 modes", m, n).unsqueeze(0)
    gen = torch.Generator().manual_seed(5)
    moved = w + torch.randn(w.shape, generator=gen) * (0.01 / math.sqrt(n))
    start = time.perf_counter()
    bulk._tables.cache_clear()
    bulk.edges_by_count(torch.ones(1, min(m, n)), m, n)
    tables = time.perf_counter() - start
    progress.advance(task)
    cold = median_time(lambda: wide.spectrum(w, None))
    progress.advance(task)
    first = wide.spectrum(w, None)
    warm = median_time(lambda: wide.spectrum(moved, first.vectors))
    progress.advance(task)
    flops = wide.cost_flops(m, n, wide.WARM_DEPTH)
    exact_s = median_time(lambda: spectra.gram_eigvals(w), repeats=1) if exact else float("nan")
    progress.advance(task, 1 + bool(exact))
    ratio = f"{exact_s / warm:.1f}×" if exact else "—"
    exact_txt = f"{exact_s:.1f} s" if exact else "not run"
    row = (f"| {m} × {n} | {cold:.2f} s | {warm:.2f} s | {flops / 1e9:.0f} | {exact_txt} | "
           f"{ratio} | {tables:.1f} s |")
    progress.console.log(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-llm", action="store_true", help="skip the 4096 × 11008 cost")
    parser.add_argument("--exact-llm", action="store_true",
                        help="also time the exact path at 4096 × 11008 (minutes)")
    parser.add_argument("--quick", action="store_true",
                        help="one timing each, one case at 2048 × 5504, no 2048 cost (a "
                             "loaded machine)")
    parser.add_argument("--cost-only", action="store_true", help="skip the accuracy tables")
    args = parser.parse_args()
    global REPEATS
    if args.quick:
        REPEATS = 1
    console = Console(stderr=True)
    with Progress(console=console) as progress:
        acc = [] if args.cost_only else accuracy(1536, 4096, CASES, progress)
        if not args.cost_only:
            acc += accuracy(2048, 5504, ("bulk + 8 modes",) if args.quick else (
                "default init", "bulk + 8 modes", "1/i", "rank 8"), progress)
        costs = [cost(1536, 4096, progress, exact=True)]
        if not args.quick:
            costs.append(cost(2048, 5504, progress, exact=True))
        if not args.no_llm:
            costs.append(cost(4096, 11008, progress, exact=args.exact_llm))
    print(f"Wide path vs exact (float64) spectrum, cold sample; TOP = {wide.TOP}, "
          f"{wide.PROBES} probes × {wide.STEPS} steps, depth {wide.COLD_DEPTH} cold / "
          f"{wide.WARM_DEPTH} warm; torch threads {torch.get_num_threads()}\n")
    print("| shape | spectrum | effective rank | participation ratio | stable rank "
          "| modes (wide / exact) | numerical rank (wide / exact) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(acc))
    print("\nCost per layer (median of "
          f"{REPEATS}; GFLOP: the warm sample's products with W, 2 per multiply-add)\n")
    print("| shape | wide, cold | wide, warm | GFLOP (warm) | exact Gram + eigvalsh "
          "| exact / warm | bulk.py tables (once per shape) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(costs))


if __name__ == "__main__":
    main()
