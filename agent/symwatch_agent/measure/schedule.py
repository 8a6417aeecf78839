"""Which indicator tier a sample computes, so that the expensive tier fits the time budget.

Two tiers:

- **cheap** (every sample): one pass over the weights. weight_norm, stable_rank (σ₁ by
  Lanczos warm-started from the layer's previous vector), dead_fraction, relu_dead, balance,
  balance_norm, softmax_translation, angular_update, effective_lr, and the Δ_G of those
  families. Cost O(params · warm_lanczos_steps).
- **full**: everything, with exact spectra (eigvalsh of the smaller Gram matrix): adds
  effective_rank, participation_ratio, numerical_rank, exact stable_rank, duplicate_fraction,
  distinct_units, mirror_rank. Cost O(Σ m·n·min(m, n)) plus O(units²·128) for duplicates.

The agent already skips whole samples while its cost exceeds `budget × elapsed`. Inside that,
the scheduler gives the full tier its own ledger: a full sample runs only when the full samples'
measured cost so far plus one more (an average of the past ones) stays within
`full_share × budget × elapsed`; otherwise the sample is cheap. So the cheap tier keeps its
cadence and the full tier runs as often as the rest of the budget allows. The first sample is
full (it also pays one-off library warm-up, which is not charged), unless `first` says
cheap: the agent's choice under a budget, so that step 1 pays no spectra (the full tier's
first sample then comes with the next sample, charged to its ledger like every later one: its
warm-up, the bulk tables, is computed on a thread at start, IndicatorEngine.warm_up). The
agent keeps the full tier's host seconds (`full_host_s`) out of the cheap tier's ledger, so a
costly full sample delays the next full one, never the cheap refresh. A budget of 1 or more
means "no limit": every sample is full (the demo and the tests use it, so that which sample
is full does not depend on the machine's speed).

`full_every` = K caps the full tier's cadence by count instead: at most one full sample in
every K (the first, then the K-th after each full one), whatever the budget allows. With an
unlimited budget that makes a fixed plan (cheap every sample, full every K-th): the per-step
monitor a user who samples every step wants, with spectra and duplicates every K steps.

On CUDA the work is queued on a side stream, so the training thread's clock sees only the
launch time; CUDA events around each full sample feed its real GPU time back once it is done.

What a full sample costs outside its engine work is charged to the full ledger too
(`charge_extra`, from the publisher thread): its decoding there (its layer detail, the
representations captured for it) and, on the training thread, arming and filling that
capture (the rows' copies, the heads' max-logit: ~2 ms a full sample on a GPT-style model),
so that the full tier cannot spend what it does not see and starve the cheap refresh (the
capture's time was the cheap ledger's before: ~12 % of it on that model once full samples
grew frequent).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

CHEAP, FULL = "cheap", "full"


class TierScheduler:
    def __init__(self, budget: float = 0.01, *, full_share: float = 0.5,
                 full_every: int | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if full_every is not None and full_every < 1:
            raise ValueError(f"full_every must be a positive number of samples, got {full_every}")
        self.budget = budget
        self.full_share = full_share
        self.full_every = full_every
        self._since_full = 0  # samples since the last full one
        self._clock = clock
        self._start = clock()
        self.full_cost: float | None = None  # running average of one full sample, seconds
        self.full_spent = 0.0
        # Host seconds of every full sample (the training thread's and the publisher's, the
        # warm-up included; no GPU time): the part of the agent's whole ledger that is the full
        # tier's, which the agent leaves out of the cheap tier's (Agent._affords_sample).
        self.full_host_s = 0.0
        self.samples = {CHEAP: 0, FULL: 0}
        self._pending: list[tuple[Any, Any, float]] = []  # CUDA (start, end, cpu seconds)
        # A full sample's seconds outside its engine work (charge_extra), appended on the
        # publisher thread (deque.append is atomic), charged by choose() on the training
        # thread; and their running average per sample.
        self._extra: collections.deque[float] = collections.deque()
        self.extra_cost: float | None = None
        # The tier of the very first sample. CHEAP (the agent's choice under a budget): step 1
        # then pays no spectra, and the full tier's warm-up comes with the next sample.
        self.first = FULL

    @property
    def unlimited(self) -> bool:
        return self.budget >= 1.0

    def choose(self) -> str:
        """The tier of the next sample. No side effect but charging what other threads
        reported since: the agent may ask one step ahead (to arm the representations' capture
        only for a full sample) and again at the sample."""
        self._collect_gpu_times()
        self._collect_extra()
        if self.samples[FULL] == 0:
            return self.first if self.samples[CHEAP] == 0 else FULL
        if self.full_every is not None and self._since_full + 1 < self.full_every:
            return CHEAP
        if self.unlimited:
            return FULL
        allowed = self.full_share * self.budget * (self._clock() - self._start)
        expected = (self.full_cost or 0.0) + (self.extra_cost or 0.0)
        return FULL if self.full_spent + expected <= allowed else CHEAP

    def host_seconds(self) -> float:
        """`full_host_s` with what was reported since (the agent's cheap ledger reads it at
        every check, between samples too)."""
        self._collect_extra()
        return self.full_host_s

    def charge_extra(self, seconds: float) -> None:
        """A full sample cost `seconds` of host CPU outside its engine work: the publisher's
        decoding and the training thread's capture for it (called once per full sample, on
        the publisher thread)."""
        self._extra.append(seconds)

    def _collect_extra(self) -> None:
        while self._extra:
            seconds = self._extra.popleft()
            self.full_spent += seconds
            self.full_host_s += seconds
            old = self.extra_cost
            self.extra_cost = seconds if old is None else 0.7 * old + 0.3 * seconds

    def record(self, tier: str, seconds: float, events: tuple[Any, Any] | None = None) -> None:
        """A sample of `tier` cost `seconds` on the calling thread (and, on CUDA, ran between
        the two events on the side stream)."""
        self.samples[tier] += 1
        self._since_full = 0 if tier == FULL else self._since_full + 1
        if tier != FULL:
            return
        self.full_host_s += seconds
        # warm-up: not charged, but a (high) first estimate. Only where the first sample of
        # the run is full: after a cheap first one (the agent under a budget) the libraries
        # were warmed on a thread (IndicatorEngine.warm_up), and the first full sample is
        # charged like the others, so its cost cannot come out of the cheap tier's share.
        if self.samples[FULL] == 1 and self.first == FULL:
            self.full_cost = seconds
            return
        self._charge(seconds)
        if events is not None:
            self._pending.append((events[0], events[1], seconds))

    def _charge(self, seconds: float) -> None:
        self.full_spent += seconds
        self.full_cost = seconds if self.full_cost is None else 0.7 * self.full_cost + 0.3 * seconds

    def _collect_gpu_times(self) -> None:
        still = []
        for start, end, cpu in self._pending:
            try:
                if not end.query():
                    still.append((start, end, cpu))
                    continue
                gpu = start.elapsed_time(end) / 1000.0
            except Exception:  # noqa: BLE001, S112 (an event CUDA cannot time: not charged)
                continue
            if gpu > cpu:  # charge the difference: the GPU was busy longer than the launch
                self._charge(gpu - cpu)
        self._pending = still


class LayerSlices:
    """Which layers a sample measures: a slice, round-robin over the model, so that every
    layer is refreshed often even where measuring the whole model at once costs more than
    `every` steps earn of the budget.

    The layers are cut into *chunks* that are always measured together (an attention module's
    q/k/v/o projections: its per-head row needs all four from the same sample); a sample takes
    chunks from where the previous sample of its tier stopped (one cursor per tier, so the
    rarer full tier also visits every layer in turn, whatever the cheap samples do) until the
    sample's expected cost reaches `target_s`, at least one chunk, at most the whole model.
    The expected cost is the chunk's cost weight (tier-dependent: m·n for the cheap tier,
    m·n·min(m, n) for the full one, what their dominant operations scale as) times the tier's
    measured seconds per weight unit (an average of the past samples of that tier).

    `target_s` None means no slicing (every layer, every sample): the agent passes None with an
    unlimited budget, so the demo and the tests see whole samples, as before. With a budget it
    passes at least what `every` steps earn of it, so a sample fits the budget at the `every`
    cadence and the per-layer refresh interval is `every` × the number of slices; for a cheap
    sample more when its ledger holds more (samples it skipped), so that a sample's fixed
    cost is paid once for them (Agent._slice_target_s). A sample too costly for that still
    measures one chunk, and the agent's own ledger stretches the interval.

    The ledger of refreshes (`last`, `gaps`: the steps between a layer's refreshes, the latest
    ones) is what STATS `sampling` reports as the per-layer refresh interval.
    """

    GAPS_KEPT = 8  # per layer: the latest intervals between refreshes (median and max of these)

    def __init__(self, chunks: list[list[int]], weights: dict[str, list[float]]) -> None:
        self.chunks = [list(c) for c in chunks if c]
        self.weights = weights  # tier -> cost weight of each chunk
        self.total = {tier: sum(w) for tier, w in weights.items()}  # the whole model's
        self.layers = sorted(i for c in self.chunks for i in c)
        self.sliced = False  # a sample measured a slice, not the whole model (STATS says so)
        self._cursor = {CHEAP: 0, FULL: 0}
        self.per_unit: dict[str, float | None] = {CHEAP: None, FULL: None}  # seconds / weight
        self._provisional = {CHEAP: False, FULL: False}  # per_unit from a cold sample only
        self.last: dict[int, int] = {}  # layer -> step of its latest refresh (any tier)
        self.gaps: dict[int, list[int]] = {}  # layer -> latest steps between its refreshes
        self.last_full: dict[int, int] = {}
        self.gaps_full: dict[int, list[int]] = {}

    def take(self, tier: str, target_s: float | None) -> list[int] | None:
        """The layers of this sample (sorted), or None: all of them."""
        taken = self._plan(tier, target_s)
        if taken is None:
            return None
        self._cursor[tier] = (self._cursor[tier] + len(taken)) % len(self.chunks)
        if len(taken) == len(self.chunks):
            return None
        self.sliced = True
        return sorted(i for c in taken for i in self.chunks[c])

    def peek(self, tier: str, target_s: float | None) -> int | None:
        """How many layers take() would return now (None: all of them), moving nothing: the
        agent sizes the next full sample's activation capture by it one step ahead."""
        taken = self._plan(tier, target_s)
        if taken is None or len(taken) == len(self.chunks):
            return None
        return sum(len(self.chunks[c]) for c in taken)

    def _plan(self, tier: str, target_s: float | None) -> list[int] | None:
        """The chunks a sample of `tier` would take from its cursor (None: no slicing)."""
        if target_s is None or len(self.chunks) <= 1:
            return None
        rate = self.per_unit.get(tier)
        weights = self.weights[tier]
        n = len(self.chunks)
        start = self._cursor[tier] % n
        taken: list[int] = []
        cost = 0.0
        for k in range(n):
            c = (start + k) % n
            expected = cost + (rate * weights[c] if rate is not None else float("inf"))
            if taken and expected > target_s:
                break
            taken.append(c)
            cost = expected
        return taken

    def record(self, tier: str, layers: list[int] | None, seconds: float, step: int | None,
               charge: bool = True, provisional: bool = False) -> None:
        """A sample of `tier` measured `layers` (None: all) in `seconds`, at `step`. `charge`
        False: a warm-up sample, whose time says nothing about the steady cost. `provisional`:
        a sample that paid one-off work (a layer's first σ₁): its rate is used only until a
        steady sample replaces it outright."""
        measured = self.layers if layers is None else layers
        if charge:
            index = {i: c for c, chunk in enumerate(self.chunks) for i in chunk}
            weight = sum(self.weights[tier][c] for c in {index[i] for i in measured
                                                          if i in index})
            if weight > 0:
                rate = seconds / weight
                old = self.per_unit.get(tier)
                if old is None or (self._provisional[tier] and not provisional):
                    self.per_unit[tier] = rate
                    self._provisional[tier] = provisional
                elif not provisional:
                    self.per_unit[tier] = 0.7 * old + 0.3 * rate
        if step is None:
            return
        for i in measured:
            _note(self.last, self.gaps, i, step, self.GAPS_KEPT)
            if tier == FULL:
                _note(self.last_full, self.gaps_full, i, step, self.GAPS_KEPT)

    def interval(self, full: bool = False) -> tuple[float | None, int | None]:
        """(median over layers of each layer's median steps between refreshes, the largest
        such gap of any layer), or (None, None) before a layer was refreshed twice."""
        gaps = self.gaps_full if full else self.gaps
        medians = [sorted(g)[len(g) // 2] for g in gaps.values() if g]
        if not medians:
            return None, None
        medians.sort()
        return float(medians[len(medians) // 2]), max(max(g) for g in gaps.values() if g)


def _note(last: dict[int, int], gaps: dict[int, list[int]], i: int, step: int,
          kept: int) -> None:
    before = last.get(i)
    last[i] = step
    if before is not None and step > before:
        row = gaps.setdefault(i, [])
        row.append(step - before)
        del row[:-kept]
