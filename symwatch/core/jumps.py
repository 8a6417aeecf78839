"""Online jump detection in one series (standard library only); see `symwatch.core.detection`.

The multi-scale robust jump statistic of shared/docs/DETECTION.md. For a series y (after an
optional log transform) and each scale (h, m), m odd, h >= m::

    M_m(t) = median(y[t-m+1 .. t])                  # median filter: a spike shorter than
                                                    # (m+1)/2 samples is invisible
    s_t    = M_m(t) - M_m(t-h)                      # level change between two disjoint windows
    c_t    = median(S_t)                            # S_t: recent past values of s, skipping
    d_t    = max(1.4826 MAD(S_t), q90|S_t - c_t| / 1.645)   # the newest h+m (a change in
                                                    # progress must not inflate its own scale)
    z_t    = (s_t - c_t) / max(d_t, floor_t)

Subtracting c_t (the typical level change over h samples) removes smooth trends: on a decaying
log-loss s is about h times the local slope, and so is c_t. Two spread estimates because MAD
alone is 0 as soon as more than half of the s values are equal (a rank that mostly sits still,
a loss logged with few digits), while the 90 % quantile of |s - c| still sees the flicker;
for Gaussian s both estimate the standard deviation. `floor_t` handles series with no spread
at all (see `JumpDetector._floor`). Measured choices, each against the literal DETECTION.md
configuration (docs/benchmarks.md, "Detection"):

- scales (5,5), (10,7), (20,9) instead of (3,3), (5,5), (20,9): a median of 3 passes clusters of
  two heavy-tailed spikes, which dominated the false alarms under Student-t noise;
- the history keeps every stride-th s value, stride = round((h+m)/4): neighbouring s values
  share most of their windows, so 64 consecutive ones hold only a few independent values and
  under-estimate the spread of autocorrelated noise (AR(1) false alarms);
- an alarm needs |z| >= threshold on two consecutive samples of the same scale and sign.

Cost per update: the median filters sort at most 9 values per distinct m; per scale, one
insertion and one deletion in a sorted array of `history` doubles (a C memmove) and, only when
the history changed (every stride-th sample), an exact O(log history) median, MAD and quantile
(`kth_deviation`). Memory is constant per series (about 17 KiB, measured). No allocation grows
with the run.
"""

from __future__ import annotations

import itertools
import math
from array import array
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from numbers import Real
from statistics import NormalDist

DEFAULT_SCALES: tuple[tuple[int, int], ...] = ((5, 5), (10, 7), (20, 9))
MAD_TO_SIGMA = 1.4826  # 1.4826 * MAD estimates the standard deviation of Gaussian data

# ---------------------------------------------------------------------------------------------
# Calibration of the threshold to a false-alarm budget per run. Measured by
# `benchmarks/detection.py` (docs/benchmarks.md, "Calibration"): the per-series false-alarm
# rate r(theta), in alarms per sample, on 12 million samples of jump-free curves (trends plus
# Gaussian, Student-t(3) or AR(1) noise), taking at each theta the noise type with the most
# alarms (Student-t), so that the budget holds for the worst of them. Its tail is a power law,
# as heavy-tailed noise makes it (an exponential fit over the whole range under-estimates the
# rate at high theta and would under-protect large runs):
#
#     r(theta) ~= C * theta**(-K)      fitted where r <= 3e-5 (theta >= 5.5) with >= 3 alarms.
#
# A run of N series raises about N * r(theta) false alarms per sample. Keeping that below a
# budget B (false transitions per sample for the whole run) gives
#
#     theta(N) = (C * N / B) ** (1 / K).
#
# B = 1e-4: at most one false transition per 10,000 samples, i.e. r <= 1e-6 per series and
# sample for 100 series: theta(100) = 7.44, where the measured rate is about 1.1e-6 (between
# 1.7e-6 at 7.0 and 1.0e-6 at 7.5, from 7 and 4 alarms: the budget holds within counting
# noise). Grouping the jumps of one sample into one transition only lowers the count. Above
# theta = 8 (r < 1e-7) theta(N) extrapolates the fit. Quantised series (ranks) are not in the
# fit: a one-quantum move scores a fixed multiple of theta and is gated by median length
# instead (see `JumpDetector._floor`).
RUN_BUDGET = 1e-4
CAL_C = 1.29e3
CAL_K = 10.45
THRESHOLD_MIN = 6.0  # DETECTION.md's working range; also the single-series default
THRESHOLD_MAX = 12.0


def calibrated_threshold(n_series: int = 1, budget: float = RUN_BUDGET) -> float:
    """Per-series |z| threshold for a run of `n_series` series to stay within `budget` false
    transitions per sample: (C * n / budget) ** (1 / K), clipped to
    [THRESHOLD_MIN, THRESHOLD_MAX]."""
    n = max(1, int(n_series))
    theta = (CAL_C * n / budget) ** (1.0 / CAL_K)
    return min(THRESHOLD_MAX, max(THRESHOLD_MIN, theta))


# ---------------------------------------------------------------------------------------------
# Transforms: log for positive series whose changes are relative (loss, norms: a 40 % drop is
# the same event at loss 2.0 and at 0.02); identity for fractions and ranks (rank 2 -> 3 is +1
# at any level; 0 is a legitimate fraction).

TRANSFORMS: dict[str, tuple[Callable[[float], float | None], Callable[[float], float]]] = {
    "identity": (lambda v: v, lambda v: v),
    # A non-positive value cannot be logged: it is skipped like NaN (and counted).
    "log": (lambda v: math.log(v) if v > 0.0 else None, math.exp),
}


# No alarm before a series has this many samples (JumpDetector's `warmup`): its noise and its
# floors are estimated from them. The viewer says so while a run's layers have fewer.
WARMUP_SAMPLES = 30

# An integer series counts as a staircase while its last STEPWISE_CHANGES lasting level
# changes span at least STEPWISE_CHANGES × STEPWISE_SPACING samples (one per 30 on average).
STEPWISE_CHANGES = 4
STEPWISE_SPACING = 30


def default_transform(metric: str) -> str:
    """log for the loss and norms (positive, relative changes), identity otherwise.
    `balance_norm` is a normalised balance in [-1, 1], not a norm: identity."""
    name = metric.lower()
    positive = name.endswith("loss") or (name.endswith("norm") and not name.startswith("balance"))
    return "log" if positive or name == "effective_lr" else "identity"


# ---------------------------------------------------------------------------------------------
# Exact order statistics of a sorted list in O(log n). The absolute deviations from a center c
# form two sorted runs (walking left and right from c); their k-th smallest is found by a
# binary search on how many to take from each run.

def median_sorted(a: Sequence[float]) -> float:
    """Median of a sorted, non-empty list (mean of the two middle values for even length)."""
    n = len(a)
    mid = n // 2
    return a[mid] if n % 2 else 0.5 * (a[mid - 1] + a[mid])


def kth_deviation(a: Sequence[float], center: float, k: int, split: int | None = None) -> float:
    """k-th smallest (0-based) of |a_i - center| for sorted `a`.

    With split = bisect_left(a, center): left run L_i = center - a[split-1-i], right run
    R_j = a[split+j] - center, both ascending. Take the smallest i in range with L_i >= R_{k-i}
    (monotone in i); the answer is max(L_{i-1}, R_{k-i})."""
    if split is None:
        split = bisect_left(a, center)
    n_left, n_right = split, len(a) - split
    lo, hi = max(0, k + 1 - n_right), min(k + 1, n_left)
    while lo < hi:
        i = (lo + hi) // 2
        j = k + 1 - i
        if j > 0 and i < n_left and center - a[split - 1 - i] < a[split + j - 1] - center:
            lo = i + 1
        else:
            hi = i
    i, j = lo, k + 1 - lo
    best = -math.inf
    if i > 0:
        best = center - a[split - i]
    if j > 0:
        best = max(best, a[split + j - 1] - center)
    return best


def mad_sorted(a: Sequence[float], center: float | None = None) -> float:
    """Median absolute deviation (from the median unless `center` is given) of a sorted list."""
    if center is None:
        center = median_sorted(a)
    n, split = len(a), bisect_left(a, center)
    if n % 2:
        return kth_deviation(a, center, n // 2, split)
    return 0.5 * (kth_deviation(a, center, n // 2 - 1, split)
                  + kth_deviation(a, center, n // 2, split))


# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Jump:
    """One detected jump in one series.

    `step` is the sample at which the alarm fired and `onset` the estimated step of the first
    sample after the change (`delay` samples earlier). `before`/`after` are the medians of the
    firing scale's two windows in the series' own units (their first and last steps in
    `before_steps`/`after_steps`); `score` is |z|; `scale` is the (h, m) that fired."""

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
        """after/before - 1 for log-transformed series (relative), else after - before."""
        if self.transform == "log" and self.before:
            return self.after / self.before - 1.0
        return self.after - self.before


class _Scale:
    """State of one (h, m) scale: the delay line of recent s values and the sorted history."""

    __slots__ = (
        "armed",
        "blocked_until",
        "count",
        "h",
        "head",
        "m",
        "pending",
        "ring",
        "sorted",
        "stats",
        "streak",
        "stride",
        "z",
    )

    def __init__(self, h: int, m: int, stride: int, history: int) -> None:
        self.h, self.m, self.stride = h, m, stride
        self.count = 0
        self.pending: deque[float] = deque()  # the newest h+m values of s, not yet in history
        # The history twice, as C doubles (8 bytes a value, not a 32-byte float object): in
        # arrival order in a ring (to know what to evict), and sorted.
        self.ring = array("d", bytes(8 * history))
        self.head = 0  # ring slot of the oldest value once the ring is full
        self.sorted = array("d")
        self.blocked_until = -1  # sample index before which this scale neither re-arms nor learns
        self.armed = True
        self.z: float | None = None
        self.streak = 0  # signed count of consecutive samples with |z| >= threshold
        self.stats: tuple[float, float] | None = None  # cached (center, spread) of the history


class JumpDetector:
    """Multi-scale robust jump detector for one series: `update(step, value)` once per sample.

    Alarm rule at sample i (accepted samples only):
      * warm-up: no alarm before `warmup` samples; a scale takes part once its history holds
        `min_history` values of s (after about 50, 100 and 170 samples for the default
        scales), or at once if the series sat exactly still for its first `warmup` samples;
      * a scale fires when it is armed and |z| >= threshold on `confirm` consecutive samples
        with the same sign; the alarm reports the firing scale with the largest |z|;
      * hysteresis: an alarm at i0 disarms every scale; scale (h, m) re-arms at the first
        sample i >= i0 + h + m with |z| < rearm * threshold, so a step held for a long time
        fires once; s values whose windows straddle the change (i0-h-m+1 .. i0+h+m-1) never
        enter its history, so the old yardstick stays valid for the next jump;
      * no two alarms closer than `min_gap` samples.
    None, NaN, +-inf, non-numbers and (for the log transform) non-positive values are skipped:
    they do not advance the sample count; `skipped` counts them.
    """

    def __init__(self, key: Hashable = None, *, threshold: float | None = None,
                 transform: str = "identity", scales: tuple[tuple[int, int], ...] = DEFAULT_SCALES,
                 history: int = 64, min_history: int = 16, warmup: int = WARMUP_SAMPLES,
                 min_gap: int = 5,
                 rearm: float = 0.5, confirm: int = 2, decorrelate: float = 4.0,
                 tail_q: float = 0.9, quantum_margin: float = 1.5, quantum_min_m: int = 7,
                 rel_floor: float = 1e-6) -> None:
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose from {sorted(TRANSFORMS)}")
        if not scales or any(h < 1 or m < 1 or m % 2 == 0 for h, m in scales):
            raise ValueError("scales must be (h >= 1, odd m >= 1) pairs")
        if not 3 <= min_history <= history:
            raise ValueError("need 3 <= min_history <= history")
        self.key = key
        self.threshold = calibrated_threshold(1) if threshold is None else float(threshold)
        self.transform = transform
        self._forward, self._inverse = TRANSFORMS[transform]
        self.history, self.min_history, self.warmup = history, min_history, warmup
        self.min_gap, self.rearm, self.confirm = min_gap, rearm, max(1, confirm)
        self.tail_q = tail_q
        self._tail_z = NormalDist().inv_cdf(0.5 + tail_q / 2) if tail_q > 0 else 1.0
        self.quantum_margin, self.quantum_min_m, self.rel_floor = (quantum_margin, quantum_min_m,
                                                                   rel_floor)
        self._scales = [_Scale(h, m, max(1, round((h + m) / decorrelate)) if decorrelate else 1,
                               history) for h, m in scales]
        span = max(h + m for h, m in scales)
        self._max_m = max(m for _, m in scales)
        # Recent transformed values and their steps: every window, plus slack so that a
        # transition message can still quote this series over another series' windows.
        self._y: deque[float] = deque(maxlen=span + 32)
        self._steps: deque[int] = deque(maxlen=span + 32)
        # Median-filter outputs per window length m, kept long enough to look back h samples.
        self._med: dict[int, deque[float]] = {
            m: deque(maxlen=max(h for h, mm in scales if mm == m) + 1)
            for m in sorted({m for _, m in scales})}
        self._quantum = math.inf  # smallest nonzero |y_t - y_{t-1}| seen (quantised series)
        # True while every value is an integer (ranks, counts of units). Such a series moves
        # only when something happened: its spread comes from the MAD alone, so that earlier
        # steps in the history do not mask the next one. Fractions measured on sampled batches
        # (k/n, e.g. units inactive on a batch) flicker, and keep the tail-robust spread.
        self._lattice = self.transform == "identity"
        # A noiseless lattice series needs no long warm-up: two of the long median windows.
        self._lattice_warmup = min(self.warmup, 2 * self.quantum_min_m + 2)
        self._still = 0  # length of the initial run of identical values
        self._run = 0  # length of the current run of identical values
        self._settled = 0  # length of the run before the latest change
        # Where the last few lasting level changes happened (flickers not counted): an integer
        # series that changes level rarely is a staircase; one that changes often (a rank
        # drifting in a wide layer) is a trend, and keeps the tail-robust spread.
        self._level_changes: deque[int] = deque(maxlen=STEPWISE_CHANGES)
        self._i = -1  # index of the latest accepted sample
        self._last_alarm = -(10**9)
        self._last_after: float | None = None  # the level (transformed) the last alarm reported
        self.skipped = 0
        self.alarms = 0
        self.last_z: float | None = None  # signed z of the scale with the largest |z|

    @property
    def samples(self) -> int:
        """Number of accepted samples."""
        return self._i + 1

    def update(self, step: int, value: float | None) -> Jump | None:
        """Feed one sample; returns the Jump when this sample raised an alarm, else None."""
        y = None
        kind = type(value)
        if kind is float or kind is int or (isinstance(value, Real) and kind is not bool):
            v = float(value)  # numpy scalars are Real too
            if math.isfinite(v):
                y = self._forward(v)
        if y is None:
            self.skipped += 1
            return None
        if self._y and y != self._y[-1]:
            self._quantum = min(self._quantum, abs(y - self._y[-1]))
            self._settled, self._run = self._run, 0
            if self._settled >= self.quantum_min_m:
                self._level_changes.append(self._i + 1)
        self._run += 1
        if self._lattice:
            self._lattice = abs(y - round(y)) <= 1e-9 * max(1.0, abs(y))
        self._i += 1
        i = self._i
        if self._quantum == math.inf:
            self._still = i + 1  # length of the initial run of identical values
        self._y.append(y)
        self._steps.append(step)
        n = len(self._y)
        recent = list(itertools.islice(self._y, max(0, n - self._max_m), n))
        for m, meds in self._med.items():
            if n >= m:
                meds.append(sorted(recent[-m:])[m // 2])

        best: _Scale | None = None
        best_abs = -1.0
        self.last_z = None
        stepwise = self._stepwise()
        floor_long, floor_short = self._floor()
        threshold = self.threshold
        for sc in self._scales:
            meds = self._med[sc.m]
            sc.z = None
            if len(meds) <= sc.h:
                continue  # s is not defined before h+m samples
            s = meds[-1] - meds[-1 - sc.h]
            hist = sc.sorted
            floor = floor_long if sc.m >= self.quantum_min_m else floor_short
            if len(hist) >= self.min_history:
                z: float | None = self._z(sc, s, floor)
            elif ((self._still >= self.warmup and (not hist or hist[0] == 0.0 == hist[-1]))
                  or (stepwise and self._settled >= self._lattice_warmup)):
                # A series that sat exactly still for its first `warmup` samples (a rank, a
                # frozen layer) has only ever produced s = 0: score it against center 0 and the
                # floor at once, so its first step is not lost to the ~100-sample warm-up.
                # Likewise a lattice series (a rank staircase) whose previous level held still
                # long enough: each step of an early staircase is found, not just the later.
                z = s / floor
            else:
                z = None
            if z is not None:
                sc.z = z
                if self.last_z is None or abs(z) > abs(self.last_z):
                    self.last_z = z
                if not sc.armed and i >= sc.blocked_until and (
                        abs(z) < self.rearm * threshold
                        # an integer series that left the level its last alarm reported for a
                        # new one: a second step soon after the first, not the first again
                        or (stepwise and meds[-1 - sc.h] == self._last_after != meds[-1])):
                    sc.armed = True
                if abs(z) >= threshold:
                    sign = 1 if z > 0 else -1
                    sc.streak = sc.streak + sign if sc.streak * sign > 0 else sign
                else:
                    sc.streak = 0
                if sc.armed and abs(sc.streak) >= self.confirm and abs(z) > best_abs:
                    best, best_abs = sc, abs(z)
            self._learn(sc, s, i)
        warmup = self._lattice_warmup if stepwise else self.warmup
        if best is None or i < warmup or i - self._last_alarm < self.min_gap:
            return None
        return self._alarm(best, step, i)

    def _z(self, sc: _Scale, s: float, floor: float) -> float:
        if sc.stats is None:
            # The history changes only every stride-th sample: cache its center and spread.
            a = sc.sorted
            center = median_sorted(a)
            split = bisect_left(a, center)
            n = len(a)
            mad = (kth_deviation(a, center, n // 2, split) if n % 2 else
                   0.5 * (kth_deviation(a, center, n // 2 - 1, split)
                          + kth_deviation(a, center, n // 2, split)))
            spread = MAD_TO_SIGMA * mad
            if self.tail_q > 0 and not self._stepwise():
                k = min(n - 1, max(0, math.ceil(self.tail_q * n) - 1))
                spread = max(spread, kth_deviation(a, center, k, split) / self._tail_z)
            sc.stats = (center, spread)
        center, spread = sc.stats
        return (s - center) / max(spread, floor)

    def _learn(self, sc: _Scale, s: float, i: int) -> None:
        # The newest h+m values of s wait in `pending` before they join the history; values
        # whose windows straddle a detected change (blocked) are dropped instead.
        if i < sc.blocked_until:
            return
        sc.pending.append(s)
        if len(sc.pending) <= sc.h + sc.m:
            return
        old = sc.pending.popleft()
        # Decorrelate: neighbouring s values share most of their windows, so keep every
        # stride-th; the history then spans history*stride samples of nearly independent values
        # (consecutive ones under-estimate the spread of autocorrelated noise).
        sc.count += 1
        if sc.count % sc.stride:
            return
        sc.stats = None
        a = sc.sorted
        if len(a) == self.history:  # full: the new value replaces the oldest
            del a[bisect_left(a, sc.ring[sc.head])]
            sc.ring[sc.head] = old
            sc.head = (sc.head + 1) % self.history
        else:
            sc.ring[len(a)] = old
        insort(a, old)

    def _floor(self) -> tuple[float, float]:
        """Lower bounds on the z denominator in transformed units: (m >= quantum_min_m, shorter).

        A quantised series (integer ranks, k/n fractions) that sits still has no spread at all.
        A move of one quantum q (the smallest nonzero step seen so far) then scores
        quantum_margin * threshold on the long windows, so a +1 rank step fires, with a score
        independent of the level. Short windows cannot tell a one-quantum move from a cluster
        of flickers ((m+1)/2 same-sign glitches move a median of m), so there one quantum
        scores 1. For continuous series q is tiny and both terms vanish. The relative term keeps
        float round-off in a constant series (a frozen layer's norm) from scoring: changes below
        about rel_floor * threshold of the level (after log: of 1) are never jumps."""
        level = abs(self._y[-1]) if self.transform == "identity" else 1.0
        base = self.rel_floor * max(level, 1e-12)
        q = self._quantum
        if q == math.inf:
            return base, base
        return max(q / (self.quantum_margin * self.threshold), base), max(q, base)

    def _stepwise(self) -> bool:
        """An integer series whose level changes rarely (at most STEPWISE_CHANGES lasting
        changes per STEPWISE_CHANGES × STEPWISE_SPACING samples): each change is an event."""
        changes = self._level_changes
        return self._lattice and (len(changes) < STEPWISE_CHANGES
                                  or self._i - changes[0] >= STEPWISE_CHANGES * STEPWISE_SPACING)

    def _alarm(self, sc: _Scale, step: int, i: int) -> Jump:
        self._last_alarm = i
        self.alarms += 1
        self._last_after = sorted([self._y[k] for k in range(len(self._y) - sc.m,
                                                             len(self._y))])[sc.m // 2]
        for other in self._scales:
            other.armed = False
            other.blocked_until = i + other.h + other.m
            other.pending.clear()  # their windows contain the change
        h, m = sc.h, sc.m
        n = len(self._y)
        before = sorted([self._y[k] for k in range(n - h - m, n - h)])[m // 2]
        after = sorted([self._y[k] for k in range(n - m, n)])[m // 2]
        k = self._onset(n - h - m, n, before, after)
        inv = self._inverse
        return Jump(key=self.key, step=step, direction="up" if (sc.z or 0.0) > 0 else "down",
                    before=inv(before), after=inv(after), score=abs(sc.z or 0.0), scale=(h, m),
                    onset=self._steps[k], delay=n - 1 - k, transform=self.transform,
                    before_steps=(self._steps[n - h - m], self._steps[n - h - 1]),
                    after_steps=(self._steps[n - m], self._steps[n - 1]))

    def _onset(self, lo: int, hi: int, before: float, after: float) -> int:
        """Index of the first sample after the change within y[lo:hi]: the split maximising
        sqrt(k (n-k)) |mean(left) - mean(right)| (the likelihood-ratio split for one mean
        change) of the values clipped to [before, after], so that spikes cannot pull it."""
        a, b = (before, after) if before <= after else (after, before)
        x = [min(b, max(a, self._y[k])) for k in range(lo, hi)]
        n, total, left = len(x), sum(x), 0.0
        best_k, best = 1, -1.0
        for k in range(1, n):
            left += x[k - 1]
            stat = abs(left / k - (total - left) / (n - k)) * math.sqrt(k * (n - k))
            if stat > best:
                best_k, best = k, stat
        return lo + best_k

    # -- public views of the series' state, for the effect-size floors and the attribution of
    # `symwatch.core.detection` ------------------------------------------------------------------

    @property
    def integer(self) -> bool:
        """True while every value so far is an integer (a count: modes, distinct units)."""
        return self._lattice and self._i >= 0

    @property
    def quantum(self) -> float:
        """Smallest nonzero step between consecutive values (transformed units; inf if none)."""
        return self._quantum

    def recent(self, n: int) -> list[float]:
        """The last n accepted values, in series units, oldest first."""
        return [self._inverse(y) for y in list(self._y)[-n:]]

    def movement_z(self, before: float, after: float,
                   scale: tuple[int, int] | None = None) -> float | None:
        """A level change before → after (series units) in units of this series' own noise:
        the change of the transformed level less the typical change over the scale's window (a
        trend), over the scale's spread (at least the quantum floor), as `update` scores its own
        jumps. None while the history is too short to know the noise."""
        yb, ya = self._forward(before), self._forward(after)
        if yb is None or ya is None:
            return None
        ready = [s for s in self._scales if len(s.sorted) >= self.min_history]
        if not ready:
            return None
        # the asked scale if it knows its noise, else the longest that does
        sc = next((s for s in ready if (s.h, s.m) == scale), ready[-1])
        floor_long, floor_short = self._floor()
        floor = floor_long if sc.m >= self.quantum_min_m else floor_short
        return self._z(sc, ya - yb, floor)

    def level_between(self, first_step: int, last_step: int) -> float | None:
        """Median (series units) of the buffered values with step in [first_step, last_step],
        or None; used to quote e.g. the loss change over another series' windows."""
        vals = sorted(y for y, s in zip(self._y, self._steps) if first_step <= s <= last_step)
        return self._inverse(median_sorted(vals)) if vals else None



# ---------------------------------------------------------------------------------------------
# Loss spikes and divergence. The jump statistic above is blind to a spike by design (its
# median filters hide anything shorter than (m+1)/2 samples), so spikes get their own rule.

@dataclass(frozen=True)
class Spike:
    """A loss spike (a rise that came back) or a divergence (non-finite, or a rise that kept
    growing). `step` is the first sample of the episode, `detected` the sample that decided it;
    `baseline` the robust level before it and `peak` the highest value in it (series units)."""

    key: Hashable
    kind: str  # "spike" or "divergence"
    step: int
    detected: int
    baseline: float
    peak: float
    samples: int  # samples spent above the baseline's band
    score: float  # (log peak − log baseline) / noise


class SpikeDetector:
    """Spikes and divergence in one positive series (a loss), on log values.

    Baseline: median and 1.4826·MAD of the last `window` values outside episodes. An episode
    starts when log y − median ≥ max(threshold·spread, log(1 + min_rise)): both large against
    the series' own noise and large in its own terms (a rise by at least `min_rise`, 50 % by
    default: a minibatch loss wanders by tens of percent). It ends (hysteresis) when the value
    falls back below half that band. The episode is then
      * a spike, reported when it ends within `max_samples` samples, or at `max_samples` if the
        value has by then fallen back at least a third of the way from the peak to the
        baseline (log scale: recovering, as after a too-large step);
      * a divergence at once on a non-finite value (warm-up or not), or at `max_samples` when
        the value is still at its peak and above the highest of the first `warmup` values
        (worse than the untrained model: a loss that fell to 1e-9 and rises ×1e9 under weight
        decay is a level change, not a divergence);
      * otherwise a lasting level change: no spike (the jump detector reports it), and the
        baseline restarts from the new level.
    One report per episode; nothing but a divergence on a non-finite value during the first
    `warmup` samples."""

    def __init__(self, key: Hashable = None, *, threshold: float = 6.0, window: int = 50,
                 min_rise: float = 0.5, max_samples: int = 10, warmup: int = 20) -> None:
        self.key = key
        self.threshold, self.window, self.max_samples = threshold, window, max_samples
        self.min_rise, self.warmup = min_rise, warmup
        self._initial = -math.inf  # the highest of the first `warmup` log values
        self._seen = 0
        self._cooling = 0  # samples since a spike reported before it came back (0: none)
        self._recent: deque[float] = deque(maxlen=warmup)
        self._base: deque[float] = deque(maxlen=window)
        self._stats: tuple[float, float] | None = None
        self._episode: list[tuple[int, float]] = []  # (step, log y) of the current episode
        self._start = 0
        self._diverged = False
        self.reports = 0

    def _band(self) -> tuple[float, float]:
        if self._stats is None:
            a = sorted(self._base)
            center = median_sorted(a)
            self._stats = (center, MAD_TO_SIGMA * mad_sorted(a, center))
        center, spread = self._stats
        return center, max(self.threshold * spread, math.log1p(self.min_rise))

    def update(self, step: int, value: float | None) -> Spike | None:
        """Feed one sample; returns a Spike when this sample decided an episode."""
        if value is None or isinstance(value, bool) or not isinstance(value, Real):
            return None
        v = float(value)
        if not math.isfinite(v):
            if self._diverged:
                return None
            self._diverged = True  # once: every later value may be NaN too
            # At once, warm or not: a NaN or infinite loss needs no noise model to be read,
            # and a run that blows up in its first samples (a learning rate far too high;
            # at a 1 % budget the first ~20 samples can be thousands of steps) is the one most
            # worth an alert. The baseline is what was seen, if anything (NaN: nothing).
            center = self._band()[0] if len(self._base) >= self.warmup else (
                median_sorted(sorted(self._base)) if self._base else math.nan)
            first = self._episode[0][0] if self._episode else step
            return self._report("divergence", first, step, center, math.inf, math.inf,
                                len(self._episode) + 1)
        if v <= 0.0:
            return None
        y = math.log(v)
        self._seen += 1
        if self._seen <= self.warmup:
            self._initial = max(self._initial, y)
        if len(self._base) < self.warmup:
            self._learn(y)
            return None
        center, band = self._band()
        rise = y - center
        if self._cooling:
            # after a spike reported while still falling back: no new episode until the value
            # is back in the band; if it never comes back, the level moved (restart there)
            self._cooling += 1
            self._recent.append(y)
            if rise < band / 2:
                self._cooling = 0
                self._learn(y)
            elif self._cooling > self.window:
                self._cooling = 0
                self._base.clear()
                for ye in list(self._recent)[-self.warmup:]:
                    self._learn(ye)
            return None
        if not self._episode:
            if rise >= band:
                self._episode = [(step, y)]
                return None
            self._learn(y)
            return None
        self._episode.append((step, y))
        peak = max(p for _, p in self._episode)
        spread = self._stats[1] if self._stats else 0.0
        score = (peak - center) / max(spread, 1e-12)
        first = self._episode[0][0]
        n = len(self._episode) - 1  # samples above the band
        if rise < band / 2:  # came back: a spike
            self._episode = []
            self._learn(y)
            return self._report("spike", first, step, center, peak, score, n)
        if len(self._episode) < self.max_samples:
            return None
        episode, self._episode = self._episode, []
        if y <= peak - (peak - center) / 3:  # falling back (a third of the way): a spike
            self._cooling, self._recent = 1, deque(maxlen=self.warmup)
            return self._report("spike", first, step, center, peak, score, n + 1)
        if y >= self._initial and y >= peak - 1e-12 and not self._diverged:
            self._diverged = True
            return self._report("divergence", first, step, center, peak, score, n + 1)
        # a lasting level change, not a spike: restart the baseline from the new level
        self._base.clear()
        self._stats = None
        for _, ye in episode[-self.warmup:]:
            self._learn(ye)
        return None

    def _learn(self, y: float) -> None:
        self._base.append(y)
        self._stats = None

    def _report(self, kind: str, first: int, step: int, center: float, peak: float,
                score: float, samples: int) -> Spike:
        self.reports += 1
        return Spike(key=self.key, kind=kind, step=first, detected=step,
                     baseline=math.exp(center),
                     peak=math.exp(peak) if math.isfinite(peak) else math.inf,
                     samples=max(1, samples), score=score)


# ---------------------------------------------------------------------------------------------
# A loss falling off a plateau. The jump statistic z-scores a change against the spread of the
# series' past changes, so on a staircase loss (Saxe et al.: a plateau, a drop by a large
# factor as a mode is learned, the next plateau) the early drops inflate the spread and the
# later ones never score (measured on the event corpus: the staircase's modes 3 and 4, each a
# fall of the loss by a factor 3 to 10, gave no alarm). A drop off a plateau is judged in the
# loss's own terms instead: over the latest h samples the (median-filtered, log) loss fell by
# at least ln(1/(1 − min_fall)), at least `accel` times as fast as over the h samples before
# (a plateau, or a slower fall: the steady exponential tail of a converging loss falls at a
# constant rate and never qualifies), and by at least `threshold` times its own sample noise.
# After a drop the detector waits until the fall has slowed to a third (the next plateau)
# before it can fire again: one drop, one report.

class DropDetector:
    """Plateau-to-drop transitions of one positive series (a loss), on log values."""

    def __init__(self, key: Hashable = None, *, scales: Sequence[int] = (5, 10, 20),
                 m: int = 5, min_fall: float = 0.3, accel: float = 1.5,
                 threshold: float = 6.0) -> None:
        self.key = key
        self.scales, self.m = tuple(scales), m
        self.min_fall, self.accel, self.threshold = min_fall, accel, threshold
        size = 2 * max(self.scales) + m + 1
        self._y: deque[float] = deque(maxlen=size)  # log values
        self._steps: deque[int] = deque(maxlen=size)
        self._medians: deque[float] = deque(maxlen=size)
        self._armed = True
        self._count = 0  # samples with all scales' windows filled
        self._since = 0  # the sample at which the detector was last re-armed
        self._fired_fall = 0.0  # the fall (log) at the last report, for re-arming
        self._residuals: deque[float] = deque(maxlen=64)  # |second difference| / √6

    def update(self, step: int, value: float | None) -> Jump | None:
        if value is None or isinstance(value, bool) or not isinstance(value, Real):
            return None
        v = float(value)
        if not math.isfinite(v) or v <= 0.0:
            return None
        y = math.log(v)
        self._y.append(y)
        self._steps.append(step)
        if len(self._y) < max(self.m, 3):
            return None
        med = median_sorted(sorted(list(self._y)[-self.m:]))
        self._medians.append(med)
        # the sample noise from second differences (a smooth curve's are ~0, so a full-batch
        # loss's curvature is not taken for noise): y_t − 2y_{t−1} + y_{t−2} has 6σ² variance
        self._residuals.append(abs(y - 2 * self._y[-2] + self._y[-3]) / math.sqrt(6))
        n = len(self._medians)
        falls = []
        for h in self.scales:
            if n < 2 * h + 1:
                continue
            now, mid, old = self._medians[-1], self._medians[-1 - h], self._medians[-1 - 2 * h]
            falls.append((h, now - mid, mid - old))
        if not falls:
            return None
        self._count += 1
        if not self._armed:
            # re-arm once the fall over the shortest window has slowed to a third of what it
            # was (the next plateau); from then on only windows that start after it count
            if -falls[0][1] <= self._fired_fall / 3:
                self._armed, self._since = True, self._count
            return None
        noise = MAD_TO_SIGMA * median_sorted(sorted(self._residuals)) if self._residuals else 0.0
        for h, fall, before in falls:
            if self._count - h < self._since:  # the window holds the last drop's tail
                continue
            if fall > -math.log(1 / (1 - self.min_fall)):
                continue
            if before < 0 and fall > self.accel * before:  # not faster than the fall before
                continue
            if -fall < self.threshold * noise:  # noise: one sample's, a median's is smaller
                continue
            self._armed, self._fired_fall = False, -fall
            return self._jump(step, h, fall)
        return None

    def _jump(self, step: int, h: int, fall: float) -> Jump:
        meds, steps, ys = list(self._medians), list(self._steps), list(self._y)
        after, before = meds[-1], meds[-1 - h]
        # onset: the first sample of the window whose value is past half the fall
        half = before + fall / 2
        window = list(zip(steps[-h - 1:], ys[-h - 1:]))
        onset = next((s for s, y in window if y <= half), steps[-1])
        return Jump(key=self.key, step=step, direction="down", before=math.exp(before),
                    after=math.exp(after), score=-fall / max(1e-12, math.log1p(self.min_fall)),
                    scale=(h, self.m), onset=onset, delay=sum(1 for s, _ in window if s > onset),
                    transform="log", before_steps=(steps[-2 * h - 1], steps[-h - 1]),
                    after_steps=(steps[-h], steps[-1]))
