"""Counting learned modes: singular values standing above a layer's random bulk (`modes`).

A weight matrix in training is a few learned modes (outliers) on top of a random bulk (what is
left of the initialisation, plus gradient noise). The bulk of an m × n matrix with i.i.d.
entries of variance s² has its singular values inside the Marchenko–Pastur (MP) law, top edge
s(√m + √n); a mode counts when it stands above that edge. ../shared/docs/SCIENCE.md
("Counting learned modes") and docs/metrics.md (the estimator table, from
`benchmarks/modes_estimators.py`) give the reasons for each choice below.

The edge, per layer and sample, from the spectrum itself (scale-free: right at any init scale):

- **Bulk estimate with r modes removed** (`edges_by_count`): if r modes stand out, what is left
  is about an (m − r) × (n − r) random matrix (the modes take r directions on each side). Its
  noise level s is a least-squares fit of the lower half (FIT) of σ_{r+1..k} to the expected
  singular values of such a matrix at those ranks (Marchenko–Pastur quantiles of ratio
  β_r = (k − r)/(N − r), k = min(m, n), N = max(m, n)); its edge s(√(m − r) + √(n − r)).
  The lower half, not the median (Gavish–Donoho's statistic): it stays in the bulk while up to
  half of the σ it looks at are modes. A table over every r (one small matmul per sample).
- **Self-consistent count** (`bulk_edge`): r ← #{σ above edge_r·(1 + margin)}, iterated from
  the larger of the previous sample's count and what the carried reference counts (modes
  come and go a few at a time, so the fixed point found is the one next to the last).
- **Carried reference** for spectra that show (almost) no bulk: a narrow layer (4 × 64: every
  σ a mode once learned) or a mostly-learned square one. While the spectrum shows its bulk
  (at least half of its σ, and at least MIN_BULK = 16, under the edge: fewer fit low) its own estimate counts
  and its bulk's observed top becomes the layer's reference (rising by at most one
  Tracy–Widom width per sample: noise grows a bulk slowly; modes that cross the edge between
  two samples must not drag it up). Otherwise the count is against the reference, carried from
  the last sample that showed the bulk and shrunk by the optimizer's known weight decay,
  (1 − lr·wd) per step (`decay_factor`). A layer with k < 32 never shows its bulk: its
  reference is its first sample's bulk top. Missed, by design: a bulk that grows (gradient
  noise) or shrinks by an unknown decay (Adam's coupled L2) while it is not shown.

Under weight decay, a second condition (`under_decay`): a mode also carries at least
SHARE_STAY·σ₁ to stay counted (0.25 % of the top mode's energy) and SHARE_ENTER·σ₁ to enter.
Weight decay is the force that drives an unsupported mode to its symmetric state, σ = 0, but
only exponentially (rate η(γ − s) in a linear net); without gradient noise it shrinks the
bulk faster (rate ηγ) than the mode, so a restored mode never re-enters the bulk: the demo's
smallest mode falls 1 → 0.07 in 200 steps while the bulk falls 0.0066 → 1.5e-5. Counted
against σ₁, it is restored at step ~550 (5 → 4). Only under weight decay: while modes grow
out of a tiny initialisation their shares of σ₁ dip far below any fixed fraction (a teacher
10, 8, 6, 4: σ₄/σ₁ falls to 0.008 while the first mode is learned) and recover, and a
count that dropped there would report a restoration that is not happening. At PyTorch's
default init the bulk edge is the binding level (0.1σ₁ lies inside the bulk).

Flicker: a mode enters above edge·(1 + margin) and leaves below edge·(1 + ¾ margin)
(hysteresis, `hysteresis`). The margin is 3 Tracy–Widom widths of the bulk's top singular
value, t = ½(1/√m + 1/√n)^{1/3}/(√m + √n) relative (Johnstone 2001's scale for the top
eigenvalue, halved for σ; 2 % at 64 × 64, 0.2 % at 768 × 3072); against the carried
reference, which is the observed top itself, one width. A pure bulk's σ₁ stays under
edge·(1 + 3t) (100 draws per shape, the fit's own error included, 16 × 16 once above), and a
mode sitting on the edge does not flip the count every sample.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

ITERATIONS = 6  # fixed-point steps for the count (from the previous count: 1–2 suffice)
TW_WIDTHS = 3.0  # Tracy–Widom widths in the entry margin
STAY = 0.75  # a counted mode stays while above edge·(1 + STAY·margin)
FIT = 0.5  # the lower share of the bulk's σ the noise level is fit to
SHARE_ENTER = 0.1  # under weight decay a mode enters only once σ ≥ SHARE_ENTER·σ₁
SHARE_STAY = 0.05  # and stays while σ ≥ SHARE_STAY·σ₁ (see `under_decay`)
MIN_BULK = 16  # bulk values the spectrum must show for its own estimate to be trusted alone


def mp_quantiles(beta: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Quantiles (float64) of the Marchenko–Pastur law: row i of `probs` (R, P) for ratio
    `beta[i]` ∈ (0, 1] (eigenvalues of XXᵀ/N for a k × N matrix X of unit-variance entries,
    β = k/N), by integrating the density on a grid dense near the edges."""
    beta = beta.double().clamp(1e-9, 1.0)[:, None]
    lo, hi = (1 - beta.sqrt()) ** 2, (1 + beta.sqrt()) ** 2
    steps = 2000
    theta = torch.linspace(0, math.pi, steps + 1, dtype=torch.float64)[None, :]
    x = lo + (hi - lo) * (1 - torch.cos(theta)) / 2
    dens = torch.sqrt(((hi - x) * (x - lo)).clamp_min(0)) / (
        2 * math.pi * beta * x.clamp_min(1e-300))
    cdf = torch.cumsum(dens * (hi - lo) * torch.sin(theta) / 2 * (math.pi / steps), 1)
    cdf = cdf / cdf[:, -1:]
    j = torch.searchsorted(cdf.contiguous(), probs.double().contiguous()).clamp(max=steps)
    return x.expand_as(cdf).gather(1, j)


def mp_median(beta: float) -> float:
    """Median of the Marchenko–Pastur law of ratio β."""
    return float(mp_quantiles(torch.tensor([beta]), torch.tensor([[0.5]]))[0, 0])


@lru_cache(maxsize=64)
def _tables(m: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per r = 0..k−1 (rows): the weights that fit the noise level s to the lower FIT share of
    σ_{r+1..k} (least squares against the expected σ of an (m − r) × (n − r) random matrix
    of unit-variance entries at those ranks; 0 elsewhere), its edge √(m − r) + √(n − r), and
    the relative entry margin (TW_WIDTHS Tracy–Widom widths). One batched pass: ~0.1 s at
    k = 768."""
    k, big = min(m, n), max(m, n)
    r = torch.arange(k, dtype=torch.float64)
    kr, nr = k - r, big - r
    first = r + torch.minimum(kr - 1, (kr * (1 - FIT)).floor())  # the lowest σ of σ_{r+1..k}
    j = torch.arange(k, dtype=torch.float64)[None, :]
    used = j >= first[:, None]
    probs = (1 - (j - r[:, None] + 0.5) / kr[:, None]).clamp(0, 1)  # rank j ↔ MP quantile
    q = (nr[:, None] * mp_quantiles(kr / nr, probs)).sqrt() * used
    weights = q / q.square().sum(1, keepdim=True).clamp_min(1e-300)
    ms, ns = (m - r).sqrt(), (n - r).sqrt()
    edge = ms + ns
    margin = TW_WIDTHS * 0.5 * (1 / ms + 1 / ns) ** (1 / 3) / edge
    return weights.float(), edge.float(), margin.float()


def edges_by_count(sv: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For descending singular values sv (B, k) of m × n matrices: the bulk edge (B, k) and
    the relative entry margin (k,) assuming r = 0..k−1 modes stand out."""
    weights, edge, margin = (t.to(sv.device, sv.dtype) for t in _tables(m, n))
    s = sv @ weights.T  # (B, k): the noise level fit with r modes removed
    return s * edge, margin


def bulk_edge(sv: torch.Tensor, m: int, n: int, start: torch.Tensor | None = None,
              reference: torch.Tensor | None = None,
              table: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where a mode enters (B,) and where a counted one leaves (B,), and the layer's new
    reference (B,) to carry to its next sample. `start`: the previous count per matrix
    (float, NaN or None: none); `reference`: the carried reference, already shrunk by weight
    decay (NaN or None: none).

    Shown bulk (or no reference yet): enter above edge·(1 + margin), the spectrum's own edge;
    the reference becomes the bulk's observed top, σ_{r+1} (risen by at most one Tracy–Widom
    width per sample). Otherwise: enter above reference·(1 + one width) — the bulk is where
    it was (less weight decay), so only its jitter between samples needs a margin; the
    reference is carried unchanged. (Not the lower of the two: in a square layer whose
    spectrum is mostly modes, the fit to its last few σ has spurious fixed points at large r
    that read bulk values as modes.)

    `table`: the bulk edges (B, k) and margins (k,) by count of another random law (an
    attention head's product of two random factors, heads.py), in place of
    Marchenko–Pastur's `edges_by_count`."""
    k = sv.shape[1]
    edges, margin = table if table is not None else edges_by_count(sv, m, n)
    r = torch.zeros(sv.shape[0], dtype=torch.long, device=sv.device)
    if start is not None:
        r = torch.nan_to_num(start, nan=0.0).clamp(0, k - 1).long()
    if reference is not None:  # or from what the carried reference counts, if more
        ref_r = (sv > torch.nan_to_num(reference, nan=float("inf"))[:, None]).sum(1)
        r = torch.maximum(r, ref_r.clamp(max=k - 1))
    for _ in range(ITERATIONS):
        edge = edges.gather(1, r[:, None]).squeeze(1)
        above = (sv > (edge * (1 + margin[r]))[:, None]).sum(1)
        r = above.clamp(max=k - 1)
    edge = edges.gather(1, r[:, None]).squeeze(1)
    mr = margin[r]
    # never below numerical_rank's tolerance (σ₁·max(m, n)·eps₃₂): a bulk that weight decay
    # removed leaves rounding, not modes
    floor = sv[:, 0] * max(m, n) * torch.finfo(torch.float32).eps
    enter = torch.maximum(edge * (1 + mr), floor)
    stay = torch.maximum(edge * (1 + STAY * mr), floor)
    shown = (k - r) >= max(MIN_BULK, (k + 1) // 2)
    if reference is None:
        return enter, stay, edge
    own = shown | torch.isnan(reference)
    ref = torch.nan_to_num(reference, nan=0.0)
    jitter = margin[0] / 3  # one Tracy–Widom width of the whole bulk's top
    # own estimate, but never under the reference: a bulk that training itself deformed (a
    # linear net's GD shrinks its lower σ, not its top) fits low, and its top would count
    ref_enter = torch.maximum(ref * (1 + jitter), floor)
    enter = torch.where(own, torch.where(torch.isnan(reference), enter,
                                         torch.maximum(enter, ref_enter)), ref_enter)
    # a counted mode also stays while above the reference's stay level: a fit lifted by modes
    # just under the edge must not drop one already counted
    held = torch.maximum(ref * (1 + STAY * jitter), floor)
    stay = torch.where(own, torch.where(torch.isnan(reference), stay,
                                        torch.minimum(stay, held)), held)
    # The new reference: the first time, the bulk's observed top; then it rises only with the
    # fitted edge (by at most one width per sample: noise grows a bulk slowly), never with
    # the largest uncounted σ, which may be a mode on its way up; it falls to that σ when the
    # bulk's top drops below it (weight decay, or training deforming the bulk).
    top = (sv * (sv <= enter[:, None])).amax(1)  # the largest σ not counted
    first = torch.isnan(reference)
    rise = torch.minimum(edge, ref * (1 + jitter))
    moved = torch.where(edge > ref, rise, torch.minimum(ref, top))
    new_ref = torch.where(first, top, torch.where(own, moved, ref))
    return enter, stay, new_ref


def under_decay(sv: torch.Tensor, enter: torch.Tensor, stay: torch.Tensor,
                decaying: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entry and stay levels (B,) of the matrices whose optimizer applies weight decay
    (`decaying`, bool (B,)) raised to SHARE_ENTER·σ₁ and SHARE_STAY·σ₁ (descending sv
    (B, k)): a mode that weight decay shrinks to a negligible share of the top one is
    restored, though still above a bulk that decay shrank faster."""
    top = sv[:, 0]
    return (torch.where(decaying, torch.maximum(enter, SHARE_ENTER * top), enter),
            torch.where(decaying, torch.maximum(stay, SHARE_STAY * top), stay))


def hysteresis(sv: torch.Tensor, enter: torch.Tensor, stay: torch.Tensor,
               previous: torch.Tensor | None) -> torch.Tensor:
    """#{σ above the bulk} per matrix (float, (B,)): a mode enters above `enter` and leaves
    below `stay`; `previous` (NaN or None: no previous sample) picks between the two counts."""
    up = (sv > enter[:, None]).sum(1).to(sv.dtype)
    down = (sv > stay[:, None]).sum(1).to(sv.dtype)
    if previous is None:
        return up
    held = torch.minimum(torch.maximum(previous, up), down)
    return torch.where(torch.isnan(previous), up, held)


def decay_factor(lr: float | None, weight_decay: float | None, steps: int) -> float:
    """How much weight decay shrank the weights (and so the bulk) over `steps` optimizer
    steps: (1 − lr·wd)^steps, decoupled (AdamW) or coupled L2 under SGD (momentum ignored);
    1 when either is unknown."""
    if not lr or not weight_decay or steps <= 0:
        return 1.0
    return max(0.0, 1.0 - float(lr) * float(weight_decay)) ** steps
