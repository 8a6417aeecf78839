"""The run-level series (the loss, each scalar passed to `agent.log`) followed at step
resolution, for a run sampled under a time budget (docs/alerts.md, "The loss under a time
budget"). The agent feeds it every step's values on its publisher thread
(symwatch_agent.publish.transitions); `symwatch detect` feeds it a recording's STATS
`per_step`, so that both find the same run-level events. Stdlib only, like the detector."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from symwatch.core.detection import (
    LOSS_KEY,
    SeriesKey,
    Transition,
    TransitionDetector,
    detected_scalar,
    family,
)

# A detector update's CPU seconds until the feed has measured its own (~27 µs for the loss
# alone, ~70 µs with two logged scalars beside it, on the machine of docs/benchmarks.md).
UPDATE_COST_PRIOR_S = 30e-6
# How many of the latest updates' costs the cadence is sized by (their median).
COST_WINDOW = 64

PerStep = Mapping[str, tuple[Sequence[int], Sequence[float | None]]]


class RunLevelFeed:
    """Feeds `detector` (the run-level series only) each series' latest value at every
    `stride`-th step, and a non-finite loss at the step it happened (a divergence, at once).

    `stride` is `every` (the cadence of a run sampled every `every` steps with no budget)
    unless that would cost more than `max_cost_s` CPU seconds a second of training: each
    update costs the publisher ~27 µs that the budget counts, so a run of 10,000 steps a second
    at every 10 would spend ~27 ms a second on it, several times a 1 % budget's whole plan.
    Then the stride is the multiple of `every` that keeps within it, sized by the measured
    step time and the median cost of the latest updates, and never shortened again (a
    series' cadence changes a few times at most, never back and forth). The agent publishes
    it (STATS `sampling.run_level_every`) so that a replay (`symwatch detect`) feeds the
    recording at the same steps: `feed(..., stride=...)`."""

    def __init__(self, detector: TransitionDetector, every: int,
                 max_cost_s: float | None = None) -> None:
        self.detector = detector
        self.every = max(1, int(every))
        self.max_cost_s = max_cost_s
        self.stride = self.every
        self._latest: dict[str, float | None] = {}
        self._costs: deque[float] = deque(maxlen=COST_WINDOW)

    def update_cost_s(self) -> float:
        """The median CPU seconds of the latest detector updates (a prior before any)."""
        if not self._costs:
            return UPDATE_COST_PRIOR_S
        ordered = sorted(self._costs)
        return ordered[len(ordered) // 2]

    def _size(self, step_time: float | None) -> None:
        if self.max_cost_s is None or step_time is None or step_time <= 0:
            return
        per_s = self.max_cost_s / self.update_cost_s()  # updates a second within the cost
        times = math.ceil(1.0 / (step_time * self.every * per_s))
        self.stride = max(self.stride, self.every * times)

    def feed(self, per_step: PerStep, step_time: float | None = None,
             stride: int | None = None,
             before: Callable[[int, bool], None] | None = None) -> list[Transition]:
        """Every step's values since the last call ({name: (steps, values)}, NaN and ±inf
        kept where known); `step_time`: the seconds a step takes now (None: unknown, or the
        run's end: the cadence stays); `stride`: the cadence to use (a replay: the one the
        live run published); `before(step, diverged)`: called before each update (the agent
        notes the optimizer's settings up to that step).

        At every multiple of the stride each series' latest value is fed, as a sample there
        would read it, also where a series was not logged at that very step (a loss logged
        every 7 steps). A value for a step already fed (logged after the step's STATS was
        cut) still becomes its series' latest."""
        if stride is not None and stride > 0:
            self.stride = int(stride)
        else:
            self._size(step_time)
        series = {name: dict(zip(steps, values)) for name, (steps, values) in per_step.items()
                  if detected_scalar(name)}
        logged = {s for by_step in series.values() for s in by_step}
        if not logged:
            return []
        last = self.detector.last_step
        first_due = (max(last, 0) // self.stride + 1) * self.stride
        due = set(range(first_due, max(logged) + 1, self.stride))
        out: list[Transition] = []
        for step in sorted(logged | due):
            broken: dict[SeriesKey, float] = {}
            for name, by_step in series.items():
                if step in by_step:
                    value = self._latest[name] = by_step[step]
                    if family(name) == "loss" and value is not None and value - value != 0.0:
                        broken[series_key(name)] = value  # NaN or ±inf: a divergence, at once
            if step <= last:
                continue  # fed already: the value waits, as its series' latest
            if step in due and self._latest:
                fed = {series_key(name): value for name, value in self._latest.items()}
            elif broken:
                fed = broken
            else:
                continue
            if before is not None:
                before(step, bool(broken))
            began = time.thread_time()
            out += self.detector.update(step, fed)
            self._costs.append(time.thread_time() - began)
        return out


def series_key(name: str) -> SeriesKey:
    """A run-level series' key: the loss's own (LOSS_KEY), any other (None, name)."""
    return LOSS_KEY if name == "loss" else (None, name)
