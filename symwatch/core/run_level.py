"""The run-level series (the loss, each scalar passed to `agent.log`) followed at step
resolution, for a run sampled under a time budget (docs/alerts.md, "The loss under a time
budget"). The agent feeds it every step's values on its publisher thread
(symwatch_agent.publish.transitions); `symwatch detect` feeds it a recording's STATS
`per_step`, so that both find the same run-level events. Stdlib only, like the detector."""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from symwatch.core.detection import (
    LOSS_KEY,
    LOSS_KINDS,
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
        self._nonfinite: dict[str, bool] = {}  # each loss series: non-finite at its latest
        self._costs: deque[float] = deque(maxlen=COST_WINDOW)

    def update_cost_s(self) -> float:
        """The median CPU seconds per update of the latest feeds (the whole feed's time over
        its updates: reading the batch included); a prior before any."""
        if not self._costs:
            return UPDATE_COST_PRIOR_S
        ordered = sorted(self._costs)
        return max(ordered[len(ordered) // 2], 1e-7)  # a coarse clock can read 0

    def _size(self, step_time: float | None) -> None:
        if self.max_cost_s is None or step_time is None or step_time <= 0:
            return
        per_s = self.max_cost_s / self.update_cost_s()  # updates a second within the cost
        times = math.ceil(1.0 / (step_time * self.every * per_s))
        self.stride = max(self.stride, self.every * times)

    def feed(self, per_step: PerStep, step_time: float | None = None,
             stride: int | None = None,
             before: Callable[[int, bool], None] | None = None) -> list[Transition]:
        """Every step's values since the last call ({name: (steps, values)}, steps ascending,
        NaN and ±inf kept where known); `step_time`: the seconds a step takes now (None:
        unknown, or the run's end: the cadence stays); `stride`: the cadence to use (a replay:
        the one the live run published); `before(step, diverged)`: called before each update
        (the agent notes the optimizer's settings up to that step).

        At every multiple of the stride each series' latest value is fed, as a sample there
        would read it, also where a series was not logged at that very step (a loss logged
        every 7 steps); a value for a step already fed (logged after that step's STATS was
        cut) still becomes its series' latest. A loss turning non-finite is fed at its own
        step, once (not at every later step it stays so). The work is per update, not per
        step: a batch of thousands of steps costs a bisection per series and update."""
        began = time.thread_time()
        if stride is not None and stride > 0:
            self.stride = int(stride)
        else:
            self._size(step_time)
        series = {name: (list(steps), list(values))
                  for name, (steps, values) in per_step.items()
                  if detected_scalar(name) and len(steps) == len(values) and steps}
        if not series:
            return []
        last = self.detector.last_step
        end = max(steps[-1] for steps, _ in series.values())
        first_due = (max(last, 0) // self.stride + 1) * self.stride
        updates: dict[int, bool] = {step: False for step in range(first_due, end + 1,
                                                                   self.stride)}
        for name, (steps, values) in series.items():  # where a loss turns non-finite
            if family(name) != "loss":
                continue
            was = self._nonfinite.get(name, False)
            for step, value in zip(steps, values):
                now = value is not None and value - value != 0.0  # NaN or ±inf
                if now and not was and step > last:
                    updates[step] = True
                was = now if value is not None else was
            self._nonfinite[name] = was
        out: list[Transition] = []
        fed_any = 0
        for step in sorted(updates):
            diverged = updates[step]
            off_stride = step % self.stride != 0
            here = set()  # the series logged at this very step
            for name, (steps, values) in series.items():
                k = bisect.bisect_right(steps, step)
                if k:
                    self._latest[name] = values[k - 1]
                    if steps[k - 1] == step:
                        here.add(name)
            # at the stride every series' latest (earlier batches' too); off it, only the
            # losses that turned non-finite at this step
            values_at = {series_key(name): value for name, value in self._latest.items()
                         if not off_stride or (name in here and family(name) == "loss")}
            if not values_at:
                continue
            if before is not None:
                before(step, diverged)
            out += self.detector.update(step, values_at)
            fed_any += 1
        for name, (steps, values) in series.items():  # what came after the last update
            self._latest[name] = values[-1]
        if fed_any:
            self._costs.append((time.thread_time() - began) / fed_any)
        return out


def series_key(name: str) -> SeriesKey:
    """A run-level series' key: the loss's own (LOSS_KEY), any other (None, name)."""
    return LOSS_KEY if name == "loss" else (None, name)


class OneEventPerChange:
    """The two detectors of a budgeted run (the samples' and the run-level one) can each see
    one change: a loss falling, and a layer's weights growing with it. One detector would
    have grouped them into one event; split, the first report stands and the second is not
    published. Two transitions are one change when their windows overlap (each from the
    last step before its earliest onset to its last alarm) and they share a layer among
    their jumps and what moved, or, where one is the run-level detector's and names no layer
    (the layers' samples did not cover its window), the other quotes that series moving the
    same way over its own window. A spike or a divergence always stands."""

    def __init__(self, keep: int = 32) -> None:
        self._seen: dict[str, deque[Transition]] = {"samples": deque(maxlen=keep),
                                                     "run_level": deque(maxlen=keep)}
        self.held_back = 0  # transitions not published: the other detector's already

    def admit(self, transition: Transition, source: str) -> bool:
        """Whether `transition`, found by `source` ("samples" or "run_level"), is published."""
        other = "run_level" if source == "samples" else "samples"
        if transition.kind not in LOSS_KINDS and any(
                _same_change(transition, seen) for seen in self._seen[other]):
            self.held_back += 1
            return False
        self._seen[source].append(transition)
        return True


def _layers(t: Transition) -> set[str]:
    keys = [j.key for j in t.jumps] + [m.key for m in t.movers]
    return {k[0] for k in keys if isinstance(k, tuple) and k[0] is not None}


def _window(t: Transition) -> tuple[int, int]:
    # from the last step before the change (a sparse series' onset is its first sample after)
    start = min(min(j.onset, j.before_steps[1]) for j in t.jumps)
    return start, max(j.step for j in t.jumps)


def _quotes(t: Transition, run_level: Transition) -> bool:
    """Whether `t` quotes a run-level transition's series moving its way (its context)."""
    names = {_series_name(j.key): j.direction for j in run_level.jumps}
    return any(name in names and (after < before) == (names[name] == "down") and after != before
               for name, before, after in t.context)


def _series_name(key: SeriesKey) -> str:
    return str(key[1]) if isinstance(key, tuple) and len(key) == 2 else str(key)


def _same_change(a: Transition, b: Transition) -> bool:
    (a0, a1), (b0, b1) = _window(a), _window(b)
    if not (a0 <= b1 and b0 <= a1):
        return False
    if _layers(a) & _layers(b):
        return True
    # a run-level event that names no layer: the other event quotes its series moving so
    return (not _layers(a) and _quotes(b, a)) or (not _layers(b) and _quotes(a, b))
