"""Which indicator tier a sample computes, so that the expensive tier fits the time budget.

Two tiers:

- **cheap** (every sample): one pass over the weights. weight_norm, stable_rank (σ₁ by
  warm-started power iteration), dead_fraction, relu_dead, balance, balance_norm,
  softmax_translation, angular_update, effective_lr, and the Δ_G of those families.
  Cost O(params · power_iters).
- **full**: everything, with exact spectra (eigvalsh of the smaller Gram matrix): adds
  effective_rank, participation_ratio, numerical_rank, exact stable_rank, duplicate_fraction,
  distinct_units, mirror_rank. Cost O(Σ m·n·min(m, n)) plus O(units²·128) for duplicates.

The agent already skips whole samples while its cost exceeds `budget × elapsed`. Inside that,
the scheduler gives the full tier its own ledger: a full sample runs only when the full samples'
measured cost so far plus one more (an average of the past ones) stays within
`full_share × budget × elapsed`; otherwise the sample is cheap. So the cheap tier keeps its
cadence and the full tier runs as often as the rest of the budget allows. The first sample is
always full (it also pays one-off library warm-up, which is not charged). A budget of 1 or more
means "no limit": every sample is full (the demo and the tests use it, so that which sample
is full does not depend on the machine's speed).

`full_every` = K caps the full tier's cadence by count instead: at most one full sample in
every K (the first, then the K-th after each full one), whatever the budget allows. With an
unlimited budget that makes a fixed plan (cheap every sample, full every K-th): the per-step
monitor a user who samples every step wants, with spectra and duplicates every K steps.

On CUDA the work is queued on a side stream, so the training thread's clock sees only the
launch time; CUDA events around each full sample feed its real GPU time back once it is done.
"""

from __future__ import annotations

import time
from typing import Any, Callable

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
        self.samples = {CHEAP: 0, FULL: 0}
        self._pending: list[tuple[Any, Any, float]] = []  # CUDA (start, end, cpu seconds)

    @property
    def unlimited(self) -> bool:
        return self.budget >= 1.0

    def choose(self) -> str:
        self._collect_gpu_times()
        if self.samples[FULL] == 0:
            return FULL
        if self.full_every is not None and self._since_full + 1 < self.full_every:
            return CHEAP
        if self.unlimited:
            return FULL
        allowed = self.full_share * self.budget * (self._clock() - self._start)
        return FULL if self.full_spent + (self.full_cost or 0.0) <= allowed else CHEAP

    def record(self, tier: str, seconds: float, events: tuple[Any, Any] | None = None) -> None:
        """A sample of `tier` cost `seconds` on the calling thread (and, on CUDA, ran between
        the two events on the side stream)."""
        self.samples[tier] += 1
        self._since_full = 0 if tier == FULL else self._since_full + 1
        if tier != FULL:
            return
        if self.samples[FULL] == 1:  # warm-up: not charged, but a (high) first estimate
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
            except Exception:
                continue
            if gpu > cpu:  # charge the difference: the GPU was busy longer than the launch
                self._charge(gpu - cpu)
        self._pending = still
