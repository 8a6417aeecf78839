"""Which estimate of a layer's random bulk counts learned modes right (the `modes` indicator).

Each case is a layer sampled along a trajectory: its initialisation (bulk only), modes
growing on that same noise, then the modes and the bulk moving to their final state (weight
decay shrinking both, or noise growing the bulk). Each estimator counts the singular values above its estimate of the bulk's
edge; the table prints the count per case next to the truth (the planted modes; every planted
mode stands clearly above the bulk of what it is planted on, so the truth is unambiguous).

    .venv/bin/python benchmarks/modes_estimators.py            # the table in docs/metrics.md

Estimators:
- rel 0.3·σ₁max: the old numerical_rank (0.3 × the largest σ₁ seen, floored at 0.1);
- Gavish–Donoho: τ = ω(β)·median(σ) (optimal hard threshold, unknown noise);
- MP median: the Marchenko–Pastur edge s(√m + √n), s from the median of all σ;
- iterative MP: the same with the r counted modes removed, (m − r) × (n − r), to a fixed point;
- init ref: the first sample's bulk top, carried (× the known weight decay);
- max(ref, iter): the larger of the two;
- modes: symwatch's rule (bulk.py): the iterative estimate where the spectrum shows its bulk,
  else the lower of it and the carried reference; counted with hysteresis from the first
  sample's count.
Median of 5 seeds (SEEDS=…) per case (the table) and, in brackets, the range where it is not one value.
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "agent"))

from symwatch_agent.measure import bulk, spectra

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def gd_omega(beta: float) -> float:
    return 0.56 * beta ** 3 - 0.95 * beta ** 2 + 1.82 * beta + 1.43


def svals(w: torch.Tensor) -> torch.Tensor:
    """As the engine computes them: float32 Gram + eigvalsh (spectra.py)."""
    return spectra.singular_values(w.unsqueeze(0))


def noise(m: int, n: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """PyTorch's default Linear init U(±1/√n), times `scale`."""
    return (torch.rand(m, n, generator=gen) * 2 - 1) / math.sqrt(n) * scale


def planted(m: int, n: int, sigmas: list[float], gen: torch.Generator) -> torch.Tensor:
    u, _ = torch.linalg.qr(torch.randn(m, len(sigmas), generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, len(sigmas), generator=gen))
    return u @ torch.diag(torch.tensor(sigmas)) @ v.T


def edge_of(m: int, n: int, scale: float) -> float:
    return scale * (math.sqrt(m) + math.sqrt(n)) / math.sqrt(3 * n)


# name, shape, init scale, modes at the first sample (× edge), modes now (× edge of the
# init bulk), bulk factor now (weight decay < 1, noise growth > 1), decay known to the rule
CASES = [
    ("bulk only, default init, 64×64", (64, 64), 1.0, [], [], 1.0, 1.0),
    ("bulk only, init σ 1e-3·, 64×64", (64, 64), 1e-3, [], [], 1.0, 1.0),
    ("bulk only, default init, 768×3072", (768, 3072), 1.0, [], [], 1.0, 1.0),
    ("3 modes over bulk, 64×64", (64, 64), 1.0, [], [3.0, 2.0, 1.5], 1.0, 1.0),
    ("3 modes over tiny bulk, 64×64", (64, 64), 1e-3, [], [3000.0, 2000.0, 1500.0], 1.0, 1.0),
    ("narrow 4×64, 4 modes (σ 3.36…1.36, edge 1.25)", (4, 64), 1.0, [],
     [2.44, 1.68, 1.12, 0.67], 1.0, 1.0),
    ("narrow 10×784, 10 modes", (10, 784), 1.0, [], [6, 5, 4, 3.5, 3, 2.5, 2.2, 2, 1.8, 1.6],
     1.0, 1.0),
    ("square 16×16, 12 modes", (16, 16), 1.0, [], [8, 7, 6, 5, 4.5, 4, 3.5, 3, 2.6, 2.3, 2, 1.8],
     1.0, 1.0),
    ("wide 64×512, 5 modes", (64, 512), 1.0, [], [4, 3, 2, 1.6, 1.3], 1.0, 1.0),
    ("LLM 768×3072, 20 modes", (768, 3072), 1.0, [], [6 - 0.2 * i for i in range(20)], 1.0, 1.0),
    ("weight decay: bulk ×0.3, 3 of 5 modes left, 64×64", (64, 64), 1.0, [3, 2.5, 2, 1.8, 1.5],
     [0.9, 0.75, 0.6], 0.3, 0.3),
    ("weight decay: 4×64, bulk ×0.5, 2 of 4 left", (4, 64), 1.0, [2.44, 1.68, 1.12, 0.67],
     [1.2, 0.8], 0.5, 0.5),
    ("weight decay: 16×16, bulk ×0.5, 10 modes", (16, 16), 1.0, [8, 7, 6, 5, 4.5, 4, 3.5, 3],
     [4, 3.5, 3, 2.5, 2.2, 2, 1.75, 1.5, 1.3, 1.1], 0.5, 0.5),
    ("noise growth: bulk ×3, 2 modes, 256×256", (256, 256), 1.0, [], [9.0, 6.0], 3.0, 1.0),
    ("noise growth: bulk ×3, 2 modes, 4×64", (4, 64), 1.0, [], [9.0, 6.0], 3.0, 1.0),
]


def count_gd(sv: torch.Tensor, m: int, n: int) -> int:
    beta = min(m, n) / max(m, n)
    return int((sv > gd_omega(beta) * sv.median()).sum())


def count_mp(sv: torch.Tensor, m: int, n: int) -> int:
    edges, margin = bulk.edges_by_count(sv, m, n)
    return int((sv > edges[0, 0] * (1 + margin[0])).sum())


def iterative(sv: torch.Tensor, m: int, n: int) -> tuple[float, float, int]:
    """(entry threshold, bulk top, count) of the iterative estimate from r = 0."""
    enter, _, top = bulk.bulk_edge(sv, m, n)
    return float(enter[0]), float(top[0]), int((sv > enter[0]).sum())


STEPS = 8  # samples per stage of a trajectory
GROWTH_SAMPLES = 400  # the noise-growth stage (×3 in 400 samples)


def run_case(case: tuple, seed: int) -> dict[str, int]:
    """The trajectory the engine would sample: the init (bulk only), `first` modes growing in
    STEPS samples, then in STEPS more the modes moving to `now` (same directions) while the
    bulk is scaled to `factor`. The single-spectrum estimators read only the last sample; the
    init reference the first one (× the known decay); `modes` every sample, as the engine."""
    _, (m, n), scale, first, now, factor, known = case
    gen = torch.Generator().manual_seed(seed)
    e = edge_of(m, n, scale)
    base = noise(m, n, scale, gen)
    width = max(len(first), len(now))
    u, _ = torch.linalg.qr(torch.randn(m, width, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, width, generator=gen))
    grown = noise(m, n, scale * math.sqrt(max(factor ** 2 - 1, 0.0)), gen)

    def weights(strengths: list[float], bulk_scale: float, grow: float) -> torch.Tensor:
        w = base * bulk_scale + grow * grown
        if width:
            s = torch.tensor([x * e for x in strengths] + [0.0] * (width - len(strengths)))
            w = w + u @ torch.diag(s) @ v.T
        return w

    path = [weights([], 1.0, 0.0)]
    for t in range(1, STEPS + 1):
        path.append(weights([x * t / STEPS for x in first], 1.0, 0.0))
    stage2 = []
    slow = GROWTH_SAMPLES if factor > 1 else STEPS  # noise grows a bulk slowly
    for t in range(1, slow + 1):
        a = t / slow
        strengths = [(1 - a) * (first[i] if i < len(first) else 0.0)
                     + a * (now[i] if i < len(now) else 0.0) for i in range(width)]
        shrink = factor ** a if factor < 1 else 1.0
        stage2.append(weights(strengths, shrink, a if factor > 1 else 0.0))
    path += stage2
    spectra_ = [svals(w) for w in path]
    sv0, sv1 = spectra_[0], spectra_[-1]
    _, top0, _ = iterative(sv0, m, n)
    enter1, _, it = iterative(sv1, m, n)
    tw = bulk.edges_by_count(sv1, m, n)[1][0]
    ref_enter = top0 * known * (1 + float(tw) / 3)
    # symwatch's rule, as the engine runs it: every sample, the reference carried between
    step_decay = known ** (1 / STEPS)
    count, ref, top1 = None, torch.tensor([float("nan")]), 0.0
    for t, sv in enumerate(spectra_):
        carried = ref * step_decay if t > STEPS else ref
        top1 = max(top1, float(sv[0, 0]))
        enter, stay, ref = bulk.bulk_edge(sv, m, n, count, carried)
        count = bulk.hysteresis(sv, enter, stay, count)
    seen = max(float(sv[0, 0]) for sv in spectra_)
    return {
        "rel 0.3·σ₁max": int((sv1 > max(0.3 * seen, 0.1)).sum()),
        "Gavish–Donoho": count_gd(sv1, m, n),
        "MP median": count_mp(sv1, m, n),
        "iterative MP": it,
        "init ref": int((sv1 > ref_enter).sum()),
        "max(ref, iter)": int((sv1 > max(ref_enter, enter1)).sum()),
        "modes": int(count[0]),
    }


def main() -> None:
    seeds = int(os.environ.get("SEEDS", "5"))
    names = None
    rows = []
    for case in CASES:
        results = [run_case(case, seed) for seed in range(seeds)]
        names = list(results[0])
        truth = len(case[4])
        cells = []
        for key in names:
            vals = sorted(r[key] for r in results)
            med = vals[len(vals) // 2]
            cell = str(med) if vals[0] == vals[-1] else f"{med} [{vals[0]}–{vals[-1]}]"
            ok = vals[0] == vals[-1] == truth
            cells.append(cell if ok else f"**{cell}**")
        rows.append((case[0], truth, cells))
    assert names is not None
    print("| case | truth | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for name, truth, cells in rows:
        print(f"| {name} | {truth} | " + " | ".join(cells) + " |")
    print(f"\n{seeds} seeds per case; **bold**: not the truth on every seed.")


if __name__ == "__main__":
    main()
