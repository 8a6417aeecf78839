"""Online detection of transition-like jumps in training series (standard library only).

Shared by the agent (inside a training process: torch and pyzmq only) and by observers (no
numpy, no torch), so nothing here imports more than the standard library. docs/benchmarks.md
("Detection") has the measured accuracy, false-alarm rate and cost; `benchmarks/detection.py`
reproduces them.

Design (the multi-scale robust jump statistic of shared/docs/DETECTION.md, the one that held up
on trends, heavy-tailed and autocorrelated noise). For a series y (after an optional log
transform) and each scale (h, m), with m odd::

    M_m(t) = median(y[t-m+1 .. t])                    # median filter: spikes shorter than
                                                      # (m+1)/2 samples are invisible
    s_t    = M_m(t) - M_m(t-h)                        # level change over h samples
    c_t    = median(S_t),  d_t = 1.4826 * MAD(S_t)    # S_t: the last `history` values of s,
                                                      # *excluding* the newest h+m, so that a
                                                      # change in progress cannot inflate
                                                      # its own yardstick
    z_t    = (s_t - c_t) / max(d_t, floor_t)

Subtracting c_t (the typical level change) removes smooth trends: on a decaying log-loss,
s is about h times the local slope and c_t is the same. `floor_t` keeps z finite where the MAD
is 0 (quantised series: an integer rank that sits still), see `JumpDetector._floor`. A jump
fires when |z| >= threshold on any scale that is armed; see `JumpDetector.update` for the
hysteresis, the minimum gap and the warm-up.

Cost per update: O(sum over distinct m of m log m) for the median filters (m <= 9), and per
scale one insertion and one deletion in a sorted list of `history` values (a C memmove) plus
an O(log(history)) exact median/MAD. No allocation proportional to the run length. Measured in
docs/benchmarks.md (about 1e4-1e5 updates/s on one core, so 1000 series cost a few
milliseconds to tens of milliseconds per sample).

Transitions over many series (`TransitionDetector`), their message and their protocol EVENT
payload live in `symwatch.transitions` and are re-exported here.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Hashable

# The default scales (h, m) from DETECTION.md: (3,3) reacts within 1-2 samples to clean steps,
# (5,5) to noisier ones, (20,9) to small or slow (ramp-like) level changes.
DEFAULT_SCALES: tuple[tuple[int, int], ...] = ((3, 3), (5, 5), (20, 9))

# 1.4826 * MAD estimates the standard deviation of Gaussian data.
MAD_TO_SIGMA = 1.4826

# ---------------------------------------------------------------------------------------------
# Calibration of the threshold to a false-alarm budget per run (see docs/benchmarks.md,
# "Calibration", and `benchmarks/detection.py --calibrate`, which measured these constants).
#
# The per-series false-alarm rate r(theta) (alarms per sample on jump-free curves: trends plus
# Gaussian, Student-t, AR(1) and quantised noise, pooled) falls roughly exponentially in theta
# over the measured range: r(theta) ~= A * exp(-theta / TAU). A run of N series then raises
# about N * r(theta) false alarms per sample; keeping that below a budget B gives
#
#     theta(N) = TAU * ln(A * N / B) = THETA_1 + TAU * ln(N),   THETA_1 = TAU * ln(A / B).
#
# B = 1e-4 per sample means at most one false transition per 10,000 samples for the whole run
# (for 100 series: r <= 1e-6 per series and sample). The fit is conservative: jumps in several
# series at the same sample are grouped into one transition, and most runs' series are smoother
# than the pooled mix.
RUN_BUDGET = 1e-4  # false transitions per sample, for the whole run
CAL_A = 0.0  # fitted prefactor of r(theta); set from the calibration run
CAL_TAU = 1.0  # fitted decay length of r(theta) in units of z
THRESHOLD_MIN = 6.0  # never below DETECTION.md's working range, even for one series
THRESHOLD_MAX = 16.0


def calibrated_threshold(n_series: int = 1, budget: float = RUN_BUDGET) -> float:
    """Per-series threshold on |z| such that a run of `n_series` series stays within `budget`
    false transitions per sample: theta = TAU * ln(A * n / budget), clipped to
    [THRESHOLD_MIN, THRESHOLD_MAX]."""
    n = max(1, int(n_series))
    theta = CAL_TAU * math.log(max(CAL_A, 1e-300) * n / budget)
    return min(THRESHOLD_MAX, max(THRESHOLD_MIN, theta))


# ---------------------------------------------------------------------------------------------
# Transforms: the detector works on log(y) for positive series whose changes are relative
# (loss, norms: a 40 % drop is the same event at loss 2.0 and at 0.02), on y itself for
# fractions and ranks (a rank 2 -> 3 is +1 whatever the level; 0 is a legitimate fraction).

TRANSFORMS: dict[str, tuple[Callable[[float], float | None], Callable[[float], float]]] = {
    "identity": (lambda v: v, lambda v: v),
    # Non-positive values cannot be logged: they are skipped like NaN and counted.
    "log": (lambda v: math.log(v) if v > 0.0 else None, math.exp),
}


def default_transform(metric: str) -> str:
    """The transform for an indicator name: log for the loss and norms (positive, relative
    changes), identity for everything else (fractions, ranks, balances that can be <= 0)."""
    name = metric.lower()
    if name == "loss" or name.endswith("loss") or name.endswith("norm"):
        return "log"
    return "identity"


# ---------------------------------------------------------------------------------------------
# Exact median and MAD of a sorted list in O(log n): the absolute deviations from the median
# are two sorted runs (walking left and right from the median), and the MAD is the middle
# element of their merge, found by a binary search on how many to take from each run.

def median_sorted(a: list[float]) -> float:
    """Median of a sorted, non-empty list (mean of the two middle values for even length)."""
    n = len(a)
    mid = n // 2
    return a[mid] if n % 2 else 0.5 * (a[mid - 1] + a[mid])


def _kth_deviation(a: list[float], med: float, split: int, k: int) -> float:
    """k-th smallest (0-based) of |a_i - med| for sorted `a`, with a[:split] < med <= a[split:].

    Left run L_i = med - a[split-1-i] (ascending in i), right run R_j = a[split+j] - med
    (ascending). Find the smallest i (taken from L) with L_i >= R_{k-i} (or i at its bound);
    the answer is then max(L_{i-1}, R_{k-i})."""
    n_left, n_right = split, len(a) - split
    lo, hi = max(0, k + 1 - n_right), min(k + 1, n_left)
    while lo < hi:
        i = (lo + hi) // 2
        j = k + 1 - i
        # predicate: i == n_left, j == 0 or L_i >= R_{j-1}; monotone in i.
        if j > 0 and i < n_left and (med - a[split - 1 - i]) < (a[split + j - 1] - med):
            lo = i + 1
        else:
            hi = i
    i, j = lo, k + 1 - lo
    best = -math.inf
    if i > 0:
        best = med - a[split - i]
    if j > 0:
        best = max(best, a[split + j - 1] - med)
    return best


def mad_sorted(a: list[float], med: float | None = None) -> float:
    """Median absolute deviation of a sorted, non-empty list (same even-length convention)."""
    if med is None:
        med = median_sorted(a)
    n = len(a)
    split = bisect_left(a, med)
    if n % 2:
        return _kth_deviation(a, med, split, n // 2)
    return 0.5 * (_kth_deviation(a, med, split, n // 2 - 1) + _kth_deviation(a, med, split, n // 2))


# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Jump:
    """One detected jump in one series.

    `before`/`after` are the medians of the firing scale's two windows, in the series' own
    units; `score` is |z|; `onset` is the estimated step of the first sample after the change
    (the alarm `step` comes `delay` samples later); `before_steps`/`after_steps` are the first
    and last steps of the two windows."""

    key: Hashable
    step: int
    direction: str  # "up" or "down"
    before: float
    after: float
    score: float
    scale: tuple[int, int]
    onset: int
    delay: int
    transform: str = "identity"
    before_steps: tuple[int, int] = (0, 0)
    after_steps: tuple[int, int] = (0, 0)

    @property
    def change(self) -> float:
        """Relative change (after/before - 1) for log-transformed series, else after - before."""
        if self.transform == "log" and self.before:
            return self.after / self.before - 1.0
        return self.after - self.before


class _Scale:
    """State of one (h, m) scale: the delay line of recent s values and the sorted history."""

    __slots__ = ("h", "m", "stride", "count", "pending", "fifo", "sorted", "blocked_until",
                 "armed", "z", "s", "streak")

    def __init__(self, h: int, m: int, stride: int) -> None:
        self.h, self.m = h, m
        self.stride, self.count = stride, 0
        self.pending: deque[float] = deque()  # the newest h+m values of s, not yet in history
        self.fifo: deque[float] = deque()  # history in arrival order (to know what to evict)
        self.sorted: list[float] = []  # the same history, sorted (median/MAD in O(log n))
        self.blocked_until = -1  # sample index before which this scale neither fires nor learns
        self.armed = True
        self.z: float | None = None
        self.s = 0.0
        self.streak = 0  # consecutive samples with |z| >= threshold, same sign (signed count)


class JumpDetector:
    """Multi-scale robust jump detector for one series; `update(step, value)` per sample.

    Alarm rule, per sample i (counting accepted samples only):
      * warm-up: no alarm before `warmup` samples, and a scale takes part only once its history
        holds `min_history` values of s;
      * a scale fires when it is armed and |z| >= threshold; the alarm reports the firing scale
        with the largest |z|;
      * after an alarm at sample i0 every scale is disarmed; scale (h, m) re-arms at the first
        sample i >= i0 + h + m where |z| < rearm * threshold (hysteresis: a held step fires
        once), and the s values whose windows straddle the change (samples i0-h-m+1 .. i0+h+m-1)
        never enter its history (the old yardstick stays valid for the next jump);
      * and no two alarms are closer than `min_gap` samples.
    None, NaN, +-inf and (for the log transform) non-positive values are skipped: they do not
    advance the sample count, and `skipped` counts them.
    """

    def __init__(self, key: Hashable = None, *, threshold: float | None = None,
                 transform: str = "identity", scales: tuple[tuple[int, int], ...] = DEFAULT_SCALES,
                 history: int = 64, min_history: int = 24, warmup: int = 30, min_gap: int = 5,
                 rearm: float = 0.5, quantum_margin: float = 1.5, rel_floor: float = 1e-6,
                 decorrelate: float = 0.0, confirm: int = 1, tail_q: float = 0.0,
                 quantum_min_m: int = 7) -> None:
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose from {sorted(TRANSFORMS)}")
        if not scales or any(h < 1 or m < 1 or m % 2 == 0 for h, m in scales):
            raise ValueError("scales must be (h >= 1, odd m >= 1) pairs")
        if min_history < 3 or history < min_history:
            raise ValueError("need 3 <= min_history <= history")
        self.key = key
        self.threshold = calibrated_threshold(1) if threshold is None else float(threshold)
        self.transform = transform
        self._forward, self._inverse = TRANSFORMS[transform]
        self.history, self.min_history = history, min_history
        self.warmup, self.min_gap, self.rearm = warmup, min_gap, rearm
        self.quantum_margin, self.rel_floor = quantum_margin, rel_floor
        self.confirm = confirm
        self.quantum_min_m = quantum_min_m
        self.tail_q = tail_q
        self.tail_z = NormalDist().inv_cdf(0.5 + tail_q / 2) if tail_q > 0 else 1.0
        self._scales = [_Scale(h, m, max(1, round((h + m) / decorrelate)) if decorrelate else 1)
                        for h, m in scales]
        self._ms = sorted({m for _, m in scales})
        self._span = max(h + m for h, m in scales)
        # Raw (transformed) values and their steps, long enough for every window.
        self._y: deque[float] = deque(maxlen=self._span)
        self._steps: deque[int] = deque(maxlen=self._span)
        # Median-filter outputs per window length m, long enough to look back h samples.
        self._med: dict[int, deque[float]] = {
            m: deque(maxlen=max(h for h, mm in scales if mm == m) + 1) for m in self._ms}
        self._quantum = math.inf  # smallest nonzero |y_t - y_{t-1}| seen (quantised series)
        self._i = -1  # index of the latest accepted sample
        self._last_alarm = -(10**9)
        self.samples = 0
        self.skipped = 0
        self.alarms = 0
        self.last_z: float | None = None  # signed z of the scale with the largest |z|

    # -- the update -----------------------------------------------------------------------------

    def update(self, step: int, value: float | int | None) -> Jump | None:
        """Feed one sample; returns the Jump if this sample raised an alarm, else None."""
        if value is None or isinstance(value, bool):
            self.skipped += 1
            return None
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.skipped += 1
            return None
        y = self._forward(v) if math.isfinite(v) else None
        if y is None:
            self.skipped += 1
            return None
        if self._y and y != self._y[-1]:
            self._quantum = min(self._quantum, abs(y - self._y[-1]))
        self._i += 1
        i = self._i
        self.samples += 1
        self._y.append(y)
        self._steps.append(step)
        n = len(self._y)
        for m, meds in self._med.items():
            if n >= m:
                window = sorted(self._y[k] for k in range(n - m, n))
                meds.append(window[m // 2])

        best: _Scale | None = None
        best_abs = -1.0
        self.last_z = None
        floor, quantum_floor = self._floor()
        for sc in self._scales:
            meds = self._med[sc.m]
            sc.z = None
            if len(meds) <= sc.h:
                continue  # s not defined yet: fewer than h+m samples
            s = meds[-1] - meds[-1 - sc.h]
            sc.s = s
            if len(sc.sorted) >= self.min_history:
                center = median_sorted(sc.sorted)
                spread = self._spread(sc.sorted, center)
                z = (s - center) / max(spread, floor if sc.m >= self.quantum_min_m else quantum_floor)
                sc.z = z
                if self.last_z is None or abs(z) > abs(self.last_z):
                    self.last_z = z
                if not sc.armed and i >= sc.blocked_until and abs(z) < self.rearm * self.threshold:
                    sc.armed = True
                if abs(z) >= self.threshold:
                    sign = 1 if z > 0 else -1
                    sc.streak = sc.streak + sign if sc.streak * sign > 0 else sign
                else:
                    sc.streak = 0
                if sc.armed and abs(sc.streak) >= self.confirm and abs(z) > best_abs:
                    best, best_abs = sc, abs(z)
            self._learn(sc, s, i)

        if best is None or i < self.warmup or i - self._last_alarm < self.min_gap:
            return None
        return self._alarm(best, step, i)

    def _learn(self, sc: _Scale, s: float, i: int) -> None:
        # The newest h+m values of s wait in `pending` before joining the history; values whose
        # windows straddle a detected change (blocked) are dropped instead.
        if i < sc.blocked_until:
            return
        sc.pending.append(s)
        if len(sc.pending) > sc.h + sc.m:
            old_s = sc.pending.popleft()
            # Decorrelate: s values overlap for h+m samples, so keep only every stride-th
            # (the history then spans history*stride samples and holds nearly independent
            # values for the same memory; an early history of overlapping values would
            # underestimate the spread of autocorrelated noise).
            sc.count += 1
            if sc.count % sc.stride:
                return
            sc.fifo.append(old_s)
            insort(sc.sorted, old_s)
            if len(sc.fifo) > self.history:
                gone = sc.fifo.popleft()
                del sc.sorted[bisect_left(sc.sorted, gone)]

    def _spread(self, a: list[float], center: float) -> float:
        n = len(a)
        split = bisect_left(a, center)
        mad = mad_sorted(a, center)
        if self.tail_q <= 0:
            return MAD_TO_SIGMA * mad
        k = min(n - 1, max(0, math.ceil(self.tail_q * n) - 1))
        q = _kth_deviation(a, center, split, k)
        return max(MAD_TO_SIGMA * mad, q / self.tail_z)

    def _floor(self) -> tuple[float, float]:
        """Lower bounds on the z denominator, in transformed units: (long windows, short ones).

        A quantised series (integer ranks, k/n fractions) can have MAD 0: then a change of one
        quantum q (the smallest nonzero step seen so far) scores quantum_margin * threshold on
        scales with m >= quantum_min_m, so a +1 rank step in a still series fires and its score
        does not depend on the level. Shorter windows cannot tell a one-quantum move from a
        cluster of flickers ((m+1)/2 same-sign glitches move a median of m), so there one
        quantum scores 1 and only a move of many quanta fires. For continuous series q is tiny
        and both terms vanish. The relative term keeps float round-off in a constant series
        (a frozen layer's norm) from scoring as a jump: changes below about
        rel_floor * threshold of the level (or, after log, of 1) are not jumps."""
        level = abs(self._y[-1]) if self.transform == "identity" else 1.0
        base = self.rel_floor * max(level, 1e-12)
        if self._quantum == math.inf:
            return base, base
        q = self._quantum
        return max(q / (self.quantum_margin * self.threshold), base), max(q, base)

    def _alarm(self, sc: _Scale, step: int, i: int) -> Jump:
        self._last_alarm = i
        self.alarms += 1
        for other in self._scales:
            other.armed = False
            other.blocked_until = i + other.h + other.m
            other.pending.clear()  # their windows contain the change
        h, m = sc.h, sc.m
        n = len(self._y)
        before_vals = [self._y[k] for k in range(n - h - m, n - h)]
        after_vals = [self._y[k] for k in range(n - m, n)]
        before = sorted(before_vals)[m // 2]
        after = sorted(after_vals)[m // 2]
        onset_k = self._onset(n - h - m, n, before, after)
        inv = self._inverse
        return Jump(key=self.key, step=step, direction="up" if sc.z > 0 else "down",
                    before=inv(before), after=inv(after), score=abs(sc.z), scale=(h, m),
                    onset=self._steps[onset_k], delay=n - 1 - onset_k, transform=self.transform,
                    before_steps=(self._steps[n - h - m], self._steps[n - h - 1]),
                    after_steps=(self._steps[n - m], self._steps[n - 1]))

    def _onset(self, lo: int, hi: int, before: float, after: float) -> int:
        """Index of the first sample after the change within y[lo:hi]: the split that maximises
        sqrt(k (n-k)) |mean(left) - mean(right)| (a CUSUM/likelihood-ratio split) of the values
        clipped to [before, after], so spikes cannot pull it. O(h+m), only on alarms."""
        a, b = (before, after) if before <= after else (after, before)
        x = [min(b, max(a, self._y[k])) for k in range(lo, hi)]
        n = len(x)
        total = sum(x)
        left = 0.0
        best_k, best = 1, -1.0
        for k in range(1, n):
            left += x[k - 1]
            stat = abs(left / k - (total - left) / (n - k)) * math.sqrt(k * (n - k))
            if stat > best:
                best_k, best = k, stat
        return lo + best_k

    # -- helpers for messages -------------------------------------------------------------------

    def level_between(self, first_step: int, last_step: int) -> float | None:
        """Median of the recent values (series units) whose step lies in [first, last], or None
        when none is still buffered; used to report e.g. the loss change over a window."""
        vals = sorted(y for y, s in zip(self._y, self._steps) if first_step <= s <= last_step)
        if not vals:
            return None
        return self._inverse(median_sorted(vals))



__all__ = ["DEFAULT_SCALES", "Jump", "JumpDetector", "Transition", "TransitionDetector",
           "calibrated_threshold", "default_transform", "to_event_payload", "median_sorted",
           "mad_sorted", "RUN_BUDGET"]
