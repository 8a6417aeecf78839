"""Synthetic training curves with known jumps, and the scores used by benchmarks/detection.py.

Generators (numpy, seeded): each curve is a smooth trend plus one noise type plus jumps at
known sample indices, some of them spread over several samples (a linear ramp).

- family `loss`: log-loss of an exponential decay towards a floor, log(a e^{-t/tau} + c), with
  multiplicative noise; jumps are mostly cliffs (down), some up; detected after a log transform.
- family `drift`: a slow linear drift plus a slow sine (curvature), additive noise; jumps up
  and down; detected as is.
- family `rank`: an integer rank (quantised) with steps of +-1 (sometimes 2), plus glitches:
  single samples off by one (a threshold flickering), which must never count as a jump.

Noise types (scaled so that sigma is the robust scale, 1.4826 * MAD, of one sample): Gaussian;
Student-t with 3 degrees of freedom (heavy tails: SGD spikes); AR(1) with phi = 0.8
(autocorrelation from smoothing; sigma is then the marginal scale); `quantised` for ranks.
Jump sizes are drawn log-uniformly in [JUMP_MIN, JUMP_MAX] sigma.

Scores:
- `match_events`: event-level precision/recall/delay within a causal window after each true
  jump start (each alarm matches at most one jump, greedily in time order).
- `tcpd_f1`, `tcpd_cover`: the TCPDBench metrics (van den Burg & Williams 2020) as its README
  and metrics.py define them: F1 with margin 5, predictions matched one-to-one, precision
  against the union of annotators, recall averaged over annotators, index 0 counted as a change
  point on both sides; cover = segmentation covering (Arbelaez et al. 2010), averaged over
  annotators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

NOISES = ("gaussian", "student_t", "ar1")
FAMILIES = ("loss", "drift")
JUMP_MIN, JUMP_MAX = 6.0, 20.0
T3_MAD = 0.7649  # MAD of a standard Student-t with 3 degrees of freedom
AR_PHI = 0.8


@dataclass
class Curve:
    """One synthetic series: values (in series units), the transform the detector should use,
    and the true jumps (start index, width in samples, signed size in noise sigma)."""

    name: str
    family: str
    noise: str
    transform: str
    values: list[float]
    jumps: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    sizes: list[float] = field(default_factory=list)


def _noise(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Unit-scale noise (robust sigma 1) of one type."""
    if kind == "gaussian":
        return rng.standard_normal(n)
    if kind == "student_t":
        return rng.standard_t(3, n) * (0.6745 / T3_MAD)
    if kind == "ar1":
        e = rng.standard_normal(n) * math.sqrt(1 - AR_PHI**2)
        x = np.empty(n)
        x[0] = rng.standard_normal()
        for i in range(1, n):
            x[i] = AR_PHI * x[i - 1] + e[i]
        return x
    raise ValueError(kind)


def _jump_plan(rng: np.random.Generator, n: int, count: int, first: int = 150,
               spacing: int = 100) -> list[int]:
    """`count` jump starts in [first, n - 60], at least `spacing` apart."""
    starts: list[int] = []
    lo = first
    for k in range(count):
        hi = n - 60 - (count - 1 - k) * spacing
        if hi <= lo:
            break
        t = int(rng.integers(lo, min(hi, lo + 2 * spacing) + 1))
        starts.append(t)
        lo = t + spacing
    return starts


def _step_profile(n: int, start: int, width: int) -> np.ndarray:
    """0 before `start`, 1 from start+width-1 on, a linear ramp in between."""
    t = np.arange(n)
    return np.clip((t - start + 1) / width, 0.0, 1.0)


def make_curve(rng: np.random.Generator, family: str, noise: str, n: int = 1000,
               jumps: bool = True, name: str = "") -> Curve:
    """One curve of a family with one noise type; `jumps=False` gives a jump-free curve."""
    t = np.arange(n, dtype=float)
    starts = _jump_plan(rng, n, int(rng.integers(2, 5))) if jumps else []
    widths = [1 if rng.random() < 0.6 else int(rng.integers(2, 9)) for _ in starts]
    if family == "rank":
        level = np.full(n, float(rng.integers(1, 10)))
        sizes = []
        for s in starts:
            step = float(rng.choice([1, 1, 1, 2])) * (1 if rng.random() < 0.7 else -1)
            if level[s] + step < 0:
                step = -step
            level[s:] += step
            sizes.append(step)
        glitch = rng.random(n) < 0.02  # single-sample flicker by one
        level[glitch] += rng.choice([-1.0, 1.0], size=int(glitch.sum()))
        level = np.maximum(level, 0.0)
        return Curve(name or f"rank/quantised", "rank", "quantised", "identity",
                     [float(v) for v in level], starts, [1] * len(starts), sizes)
    eps = _noise(rng, noise, n)
    if family == "loss":
        a, c = rng.uniform(1.0, 3.0), rng.uniform(0.05, 0.5)
        tau = rng.uniform(150, 600)
        sigma = rng.uniform(0.01, 0.05)  # relative noise of the loss
        base = np.log(a * np.exp(-t / tau) + c)
        down_share = 0.75  # loss cliffs are mostly drops
    elif family == "drift":
        sigma = rng.uniform(0.2, 2.0)
        base = (rng.uniform(-5, 5) * sigma * t / n
                + 3 * sigma * np.sin(2 * math.pi * t / rng.uniform(300, 900) + rng.uniform(0, 6)))
        base += rng.uniform(-10, 10)
        down_share = 0.5
    else:
        raise ValueError(family)
    y = base + sigma * eps
    sizes = []
    for s, w in zip(starts, widths):
        size = math.exp(rng.uniform(math.log(JUMP_MIN), math.log(JUMP_MAX)))
        size *= -1 if rng.random() < down_share else 1
        y += size * sigma * _step_profile(n, s, w)
        sizes.append(size)
    if family == "loss":
        return Curve(name or f"loss/{noise}", family, noise, "log", [float(v) for v in np.exp(y)],
                     starts, widths, sizes)
    return Curve(name or f"drift/{noise}", family, noise, "identity", [float(v) for v in y],
                 starts, widths, sizes)


def synthetic_set(seed: int, per_cell: int, n: int = 1000, jumps: bool = True) -> list[Curve]:
    """`per_cell` curves for every (family, noise) cell plus as many quantised rank curves."""
    rng = np.random.default_rng(seed)
    curves = []
    for family in FAMILIES:
        for noise in NOISES:
            for k in range(per_cell):
                curves.append(make_curve(rng, family, noise, n, jumps, f"{family}/{noise}/{k}"))
    for k in range(per_cell):
        curves.append(make_curve(rng, "rank", "quantised", n, jumps, f"rank/quantised/{k}"))
    return curves


# ---------------------------------------------------------------------------------------------
# Event-level scores on synthetic curves.

@dataclass
class EventScore:
    true_positives: int = 0
    false_positives: int = 0
    misses: int = 0
    delays: list[int] = field(default_factory=list)

    def add(self, other: "EventScore") -> None:
        self.true_positives += other.true_positives
        self.false_positives += other.false_positives
        self.misses += other.misses
        self.delays += other.delays

    @property
    def precision(self) -> float:
        n = self.true_positives + self.false_positives
        return self.true_positives / n if n else 1.0

    @property
    def recall(self) -> float:
        n = self.true_positives + self.misses
        return self.true_positives / n if n else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match_events(truth: Sequence[int], alarms: Sequence[int], window: int) -> EventScore:
    """Match alarms (sample indices) to true jump starts: an alarm at a in [t, t + window]
    detects the jump starting at t; each alarm and each jump is used at most once (earliest
    alarm first). Delay = a - t samples."""
    score = EventScore()
    used = [False] * len(truth)
    for a in sorted(alarms):
        hit = None
        for k, t in enumerate(truth):
            if not used[k] and t <= a <= t + window:
                hit = k
                break
        if hit is None:
            score.false_positives += 1
        else:
            used[hit] = True
            score.true_positives += 1
            score.delays.append(a - truth[hit])
    score.misses = used.count(False)
    return score


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (NaN for no values)."""
    if not values:
        return float("nan")
    return float(np.quantile(np.asarray(values, dtype=float), q))


# ---------------------------------------------------------------------------------------------
# TCPDBench metrics (re-implemented from the definitions; doctest values from TCPDBench).

def _true_positives(truth: Iterable[int], predictions: Iterable[int], margin: int) -> int:
    """Annotations matched one-to-one to the closest unused prediction within `margin`."""
    left = set(predictions)
    count = 0
    for tau in truth:
        close = sorted((abs(tau - x), x) for x in left if abs(tau - x) <= margin)
        if close:
            left.remove(close[0][1])
            count += 1
    return count


def tcpd_f1(annotations: Mapping[str, Iterable[int]], predictions: Iterable[int],
            margin: int = 5) -> tuple[float, float, float]:
    """(F1, precision, recall) per TCPDBench: 0 added to every annotator's set and to the
    predictions; precision = |TP against the union of annotators| / |predictions|; recall =
    mean over annotators of |TP_k| / |T_k|; F1 = 2PR / (P + R)."""
    sets = [set(v) | {0} for v in annotations.values()]
    x = set(predictions) | {0}
    union = set().union(*sets)
    precision = _true_positives(union, x, margin) / len(x)
    recall = sum(_true_positives(tk, x, margin) / len(tk) for tk in sets) / len(sets)
    f1 = precision * recall / (0.5 * recall + 0.5 * precision) if precision + recall else 0.0
    return f1, precision, recall


def _partition(locations: Iterable[int], n_obs: int) -> list[range]:
    cuts = sorted({c for c in locations if 0 < c < n_obs})
    bounds = [0, *cuts, n_obs]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _cover_single(prediction: list[range], truth: list[range], n_obs: int) -> float:
    """Covering of the true segmentation by the predicted one: sum over true segments R of
    |R| * max over predicted R' of Jaccard(R, R'), divided by n (segments are intervals)."""
    total = 0.0
    for r in truth:
        best = 0.0
        for p in prediction:
            inter = max(0, min(r.stop, p.stop) - max(r.start, p.start))
            if inter:
                best = max(best, inter / (len(r) + len(p) - inter))
        total += len(r) * best
    return total / n_obs


def tcpd_cover(annotations: Mapping[str, Iterable[int]], predictions: Iterable[int],
               n_obs: int) -> float:
    """Mean over annotators of the covering of their segmentation by the predicted one."""
    pred = _partition(predictions, n_obs)
    covers = [_cover_single(pred, _partition(a, n_obs), n_obs) for a in annotations.values()]
    return sum(covers) / len(covers)
