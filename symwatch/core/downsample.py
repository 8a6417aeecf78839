"""How symwatch keeps a long run short: one downsampling scheme, used by recordings on disk and
by the viewer's history in memory (stdlib only; the agent imports it through recording.py).

The scheme: the newest `recent` samples of a series are kept whole. Older samples go into
tiers; tier j (j = 1, 2, ...) holds about `tier_size` entries, each standing for 2^j
consecutive samples, aligned on multiples of 2^j (sample indices k·2^j ... (k+1)·2^j − 1),
so a sample that leaves one tier falls into exactly one entry of the next. Tier j therefore
covers the samples aged `recent + tier_size·(2^j − 2)` to `recent + tier_size·(2^(j+1) − 2)`:
dense near now, ever coarser towards the start.

Two users, two ways to stand for 2^j samples:

- Recordings (`symwatch.core.recording.Recorder`) keep the one row of each aligned block whose
  index is a multiple of 2^j (`Downsample.ranges` says which rows to delete), with
  `tier_size == recent` and as many tiers as the run needs: about
  recent × (1 + log2(T / recent)) rows for T samples.
- The viewer (`TieredSeries`, under `symwatch.state.run_state.Series`) merges the block into one entry
  that keeps the minimum, the maximum and the last value, so a one-sample spike or a step stays
  visible at any age. Its number of tiers is capped (`max_tiers`): the oldest tier, once full,
  merges its own entries pairwise (its stride doubles), so a series holds at most
  2·recent + 2·tier_size·max_tiers entries however long the run is.

Transitions (EVENT messages) are never downsampled by either: they are separate records.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Iterator

NAN = math.nan


@dataclass(frozen=True)
class Downsample:
    """The policy (see the module docstring). `recent` samples are kept whole; tier j >= 1
    holds about `tier_size` entries (default: `recent`) of 2^j samples each; `max_tiers`
    caps the tiers (None: as many as the run needs, what recordings use)."""

    recent: int = 1000
    every_rows: int = 0  # recordings: run a thinning pass after this many new rows (0: recent/2)
    tier_size: int = 0  # 0: the same as `recent`
    max_tiers: int | None = None

    def __post_init__(self) -> None:
        if self.recent < 1:
            raise ValueError("Downsample.recent must be >= 1")
        if self.tier_size < 0 or (self.max_tiers is not None and self.max_tiers < 1):
            raise ValueError("Downsample.tier_size must be >= 0 and max_tiers >= 1")

    @property
    def size(self) -> int:
        return self.tier_size or self.recent

    def ranges(self, newest: int) -> Iterator[tuple[int, int, int]]:
        """(low, high, stride) of sample indices: of the samples with low < index <= high only
        those with index % stride == 0 are kept (tier j: stride 2^j). Strides are powers of
        two, so a sample dropped at one age is never wanted later."""
        j = 1
        while self.max_tiers is None or j <= self.max_tiers:
            high = newest - self.recent - self.size * (2 ** j - 2)
            if high < 0:
                return
            low = newest - self.recent - self.size * (2 ** (j + 1) - 2)
            yield low, high, 2 ** j
            j += 1

    def max_entries(self) -> int | None:
        """The most entries one `TieredSeries` holds under this policy (None: unbounded)."""
        if self.max_tiers is None:
            return None
        return 2 * _even(self.recent) + 2 * _even(self.size) * self.max_tiers


# The viewer's policy: 64 samples whole (the table's sparklines, the live charts), then five
# tiers of 32-64 entries (strides 2 to 32, the last one growing coarser): at most 448 entries,
# about 9 KiB a series, for a run of any length.
VIEWER = Downsample(recent=64, tier_size=32, max_tiers=5)


def _even(n: int) -> int:
    return max(2, n + (n & 1))


def _fmin(a: float, b: float) -> float:
    return b if (a != a or b < a) else a  # NaN (N/A) loses to any number


def _fmax(a: float, b: float) -> float:
    return b if (a != a or b > a) else a


class TieredSeries:
    """One series in bounded memory (see the module docstring): the recent samples as
    (step, value) in two `array('d')`, each tier one `array('d')` of interleaved entries
    (last step, min, max, last value). N/A is stored as NaN. Steps are expected in order
    (as a run sends them); an entry's step is the step of its last sample."""

    __slots__ = ("policy", "_steps", "_values", "_tiers", "count", "_first", "_group",
                 "_pending", "_pending_n", "_limit", "_stagger")

    def __init__(self, policy: Downsample = VIEWER, phase: int = 0) -> None:
        """`phase`: where this series' merges fall among other series' (see `_retire_recent`);
        series appended at the same steps (a run's layers) should have different phases."""
        self.policy = policy
        self._steps = array("d")
        self._values = array("d")
        self._tiers: list[array[float]] = []  # tier j + 1 at index j
        self.count = 0  # samples ever appended
        self._first: int | None = None  # the step of the first sample, once it left `_steps`
        self._limit = 2 * _even(policy.recent)  # recent samples that trigger a retirement
        # The oldest tier (when tiers are capped): entries arriving from the tier before it are
        # merged `_group` at a time (into the one entry `_pending`, `_pending_n` of them so
        # far), so all of its entries stand for the same number of samples; when it is full
        # its entries merge pairwise and `_group` doubles. It starts at the run's first sample.
        self._group = 1
        self._pending = array("d")
        self._pending_n = 0
        # Samples the second retirement leaves out (an even number below `recent`): it shifts
        # every later retirement and tier merge of this series by that many samples.
        half = _even(policy.recent) // 2
        self._stagger = 2 * (phase % half) if half > 1 else 0

    # -- writing -------------------------------------------------------------------------------

    def append(self, step: int, value: float) -> None:
        # Called 150,000 times a second for 1,000 layers at 10 Hz: as little as possible here.
        steps = self._steps
        steps.append(step)
        self._values.append(value)
        self.count += 1
        if len(steps) >= self._limit:
            self._retire_recent()

    def _retire_recent(self) -> None:
        """The oldest `recent` samples become recent/2 entries of tier 1.

        Staggered: series appended at the same steps (the 15,000 series of 1,000 layers) would
        otherwise retire, and merge their tiers all the way down to the oldest one, at the same
        step, a second of the viewer's time every 512 steps. The second retirement of a series
        takes `_stagger` samples fewer, so its later merges come that many steps earlier than a
        series of phase 0, spread over `recent`/2 steps. Only when they happen moves: every
        retirement still leaves at least `recent` samples whole and takes an even number (so
        tier entries stay aligned on their 2^j samples), and the first one is the same for all
        (a short run looks the same whatever the phase)."""
        n = _even(self.policy.recent)
        if self._first is None:
            self._first = int(self._steps[0])
        elif self._stagger:
            n -= self._stagger
            self._stagger = 0
        steps, values = self._steps[:n], self._values[:n]
        del self._steps[:n], self._values[:n]
        a, b = values[0::2], values[1::2]
        if _has_nan(a) or _has_nan(b):
            lo = array("d", map(_fmin, a, b))
            hi = array("d", map(_fmax, a, b))
        else:
            lo, hi = array("d", map(min, a, b)), array("d", map(max, a, b))
        self._push(0, _interleave(steps[1::2], lo, hi, b))

    def _push(self, index: int, entries: array[float]) -> None:
        cap = self.policy.max_tiers
        if cap is not None and index + 1 >= cap:
            self._push_oldest(index, entries)
            return
        if index == len(self._tiers):
            self._tiers.append(array("d"))
        tier = self._tiers[index]
        tier.extend(entries)
        size = _even(self.policy.size)
        if len(tier) >= 8 * size:  # its oldest `size` entries: size/2 entries of the next tier
            old = tier[:4 * size]
            del tier[:4 * size]
            self._push(index + 1, _merge_entries(old))

    def _push_oldest(self, index: int, entries: array[float]) -> None:
        """Entries into the oldest tier, `_group` at a time merged into one; when it is full, its
        entries merge pairwise and `_group` doubles. Whole groups go in one slice each, not one
        entry at a time (this ran for every series at the same step: see `_retire_recent`)."""
        while len(self._tiers) <= index:
            self._tiers.append(array("d"))
        tier = self._tiers[index]
        full = 8 * _even(self.policy.size)
        k, end = 0, len(entries)
        while k < end:
            group = self._group
            if not self._pending_n:
                room = (full - len(tier)) // 4  # entries before the tier is full: at least 1
                whole = min((end - k) // (4 * group), room)
                if whole:
                    block = entries[k:k + 4 * group * whole]
                    k += len(block)
                    tier.extend(block if group == 1 else _merge_groups(block, group))
                    self._merge_if_full(tier, full)
                    continue
            # the rest of the entries: part of a group, held in `_pending` until it is whole
            take = min(group - self._pending_n, (end - k) // 4)
            block = entries[k:k + 4 * take]
            k += 4 * take
            if self._pending_n:
                block = _merge_all(self._pending + block)
            elif take > 1:
                block = _merge_all(block)
            self._pending_n += take
            if self._pending_n < group:
                self._pending = block
                continue
            tier.extend(block)
            self._pending, self._pending_n = array("d"), 0
            self._merge_if_full(tier, full)

    def _merge_if_full(self, tier: array[float], full: int) -> None:
        if len(tier) >= full:  # full: pairs merge, the stride doubles
            merged = _merge_entries(tier)
            del tier[:]
            tier.extend(merged)
            self._group *= 2

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Entries stored (recent samples plus tier entries): bounded by the policy."""
        return (len(self._steps) + (sum(len(t) for t in self._tiers) + len(self._pending)) // 4)

    @property
    def first_step(self) -> int | None:
        if self._first is not None:
            return self._first
        return int(self._steps[0]) if self._steps else None

    @property
    def last_step(self) -> int | None:
        return int(self._steps[-1]) if self._steps else self._newest_tier_step()

    def _stored(self) -> list[array[float]]:
        """The tiers oldest first, with the oldest tier's pending entries in their place."""
        tiers = self._tiers[::-1]
        if self._pending:
            tiers.insert(1, self._pending)
        return tiers

    def _newest_tier_step(self) -> int | None:
        for tier in reversed(self._stored()):
            if tier:
                return int(tier[-4])
        return None

    def recent(self) -> list[tuple[int, float | None]]:
        """The recent samples, whole, oldest first; N/A as None."""
        return [(int(s), None if v != v else v) for s, v in zip(self._steps, self._values)]

    def recent_values(self) -> list[float | None]:
        return [None if v != v else v for v in self._values]

    def entries(self, first: int | None = None,
                last: int | None = None) -> Iterator[tuple[int, float, float, float]]:
        """(step, min, max, last value) of every stored entry with first <= step <= last,
        oldest first; a recent sample is an entry with min = max = last. NaN is N/A."""
        lo = -math.inf if first is None else first
        hi = math.inf if last is None else last
        for tier in self._stored():
            steps = tier[0::4]
            i, j = bisect_left(steps, lo), bisect_right(steps, hi)
            for k in range(4 * i, 4 * j, 4):
                yield int(tier[k]), tier[k + 1], tier[k + 2], tier[k + 3]
        i, j = bisect_left(self._steps, lo), bisect_right(self._steps, hi)
        for k in range(i, j):
            v = self._values[k]
            yield int(self._steps[k]), v, v, v

    def at(self, step: int) -> tuple[int, float | None] | None:
        """(step, value) of the newest stored sample or entry at or before `step` (an entry's
        last value is exactly the value of its last sample); where `step` lies inside the
        oldest entry, that entry's. None before the first sample."""
        first = self.first_step
        if first is None or step < first:
            return None
        k = bisect_right(self._steps, step)
        if k:
            v = self._values[k - 1]
            return int(self._steps[k - 1]), (None if v != v else v)
        covering: tuple[int, float] | None = None
        for tier in reversed(self._stored()):  # newest tier first
            steps = tier[0::4]
            k = bisect_right(steps, step)
            if k:
                v = tier[4 * (k - 1) + 3]
                return int(steps[k - 1]), (None if v != v else v)
            if steps:
                covering = int(steps[0]), tier[3]
        if covering is None and self._steps:
            covering = int(self._steps[0]), self._values[0]
        if covering is None:
            return None
        return covering[0], (None if covering[1] != covering[1] else covering[1])

    def step_after(self, step: int) -> int | None:
        """The first stored step (a sample's, or an entry's last) at or after `step`."""
        for entry_step, _, _, _ in self.entries(step, None):
            return entry_step
        return None

    def columns(self, first: int, last: int, width: int) -> list[float | None]:
        """The steps first..last as `width` chart columns, oldest left. A column shows the min
        or the max of what fell in it (see below), so a spike or a step merged into a coarse
        entry still shows; a column no entry falls in (old history coarser than a column)
        repeats the entry that covers it. None: nothing known there (before the first sample,
        after the newest, or N/A)."""
        if width <= 0:
            return []
        span = max(1, last - first + 1)
        cols: list[list[float] | None] = [None] * width
        beyond: list[float] | None = None  # the entry covering the window's right end
        for step, lo, hi, val in self.entries(first, None):
            if step > last:
                beyond = [lo, hi, val]
                break
            x = min(width - 1, (step - first) * width // span)
            cell = cols[x]
            if cell is None:
                cols[x] = [lo, hi, val]
            else:
                cell[0], cell[1], cell[2] = _fmin(cell[0], lo), _fmax(cell[1], hi), val
        # a column with no entry of its own shows the next entry to its right
        following = beyond  # None right of the newest sample: nothing there yet
        for x in range(width - 1, -1, -1):
            if cols[x] is None:
                cols[x] = following
            else:
                following = cols[x]
        start = self.first_step
        if start is not None and start > first:  # nothing known before the first sample
            for x in range(min(width, (start - first) * width // span)):
                cols[x] = None
        # Each column: its min or its max, whichever lies farther from the column before, so
        # a spike shows its tip and a step its new level (a ramp keeps its shape).
        out: list[float | None] = [None] * width
        before: float | None = None
        for x, cell in enumerate(cols):
            if cell is None:
                before = None
                continue
            if x and cell is cols[x - 1]:  # one coarse entry over several columns: one value
                out[x] = out[x - 1]
                continue
            lo, hi, val = cell
            ref = val if before is None else before
            if lo != lo or hi != hi:
                pick = None if val != val else val
            elif ref != ref:
                pick = hi
            else:
                pick = hi if abs(hi - ref) >= abs(ref - lo) else lo
            out[x] = pick
            before = pick if pick is not None else before
        return out


def _has_nan(values: array[float]) -> bool:
    # The sum is NaN whenever a value is (and, without one, only for +inf and -inf together):
    # one pass in C instead of a Python loop over every value, on every merge.
    total = sum(values)
    return total != total and any(v != v for v in values)


def _interleave(steps: array[float], lo: array[float], hi: array[float],
                last: array[float]) -> array[float]:
    out = array("d", bytes(8 * 4 * len(steps)))
    out[0::4], out[1::4], out[2::4], out[3::4] = steps, lo, hi, last
    return out


def _merge_all(flat: array[float]) -> array[float]:
    """Interleaved entries merged into one."""
    lo, hi = flat[1::4], flat[2::4]
    if _has_nan(lo) or _has_nan(hi):
        known_lo = [v for v in lo if v == v]
        known_hi = [v for v in hi if v == v]
        low = min(known_lo) if known_lo else NAN
        high = max(known_hi) if known_hi else NAN
    else:
        low, high = min(lo), max(hi)
    return array("d", (flat[-4], low, high, flat[-1]))


def _merge_groups(flat: array[float], group: int) -> array[float]:
    """Interleaved entries merged `group` at a time (len(flat) a multiple of 4·group)."""
    out = array("d")
    step = 4 * group
    for i in range(0, len(flat), step):
        out.extend(_merge_all(flat[i:i + step]))
    return out


def _merge_entries(flat: array[float]) -> array[float]:
    """Adjacent pairs of interleaved entries merged into one (an odd last one kept as is)."""
    pairs = len(flat) // 8
    even = flat[:8 * pairs]
    a_lo, b_lo = even[1::8], even[5::8]
    a_hi, b_hi = even[2::8], even[6::8]
    if _has_nan(a_lo) or _has_nan(b_lo) or _has_nan(a_hi) or _has_nan(b_hi):
        lo, hi = array("d", map(_fmin, a_lo, b_lo)), array("d", map(_fmax, a_hi, b_hi))
    else:
        lo, hi = array("d", map(min, a_lo, b_lo)), array("d", map(max, a_hi, b_hi))
    out = _interleave(even[4::8], lo, hi, even[7::8])
    out.extend(flat[8 * pairs:])
    return out
