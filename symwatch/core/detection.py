"""Online transition detection over a run's series (standard library only).

Shared by the agent (inside a training process: torch and pyzmq only) and by observers (no
numpy, no torch). Accuracy, false-alarm rate, calibration and cost are measured in
docs/benchmarks.md ("Detection"); `benchmarks/detection.py` reproduces them.

- `JumpDetector` (from `symwatch.core.jumps`): one series, the multi-scale robust jump statistic;
  its module docstring has the formulas.
- `TransitionDetector`: many series keyed by (layer, metric), layer None for run-level series
  such as the loss. Each series gets its own JumpDetector on first sight (log transform for
  the loss and norms, identity for fractions and ranks). Jumps that fire within
  `group_samples` samples form one `Transition`, ranked by score, with a sentence a person can
  read. Transitions that coincide with a registered exogenous change (`mark_exogenous`: a
  learning-rate boundary, the end of warm-up, a resume) carry `exogenous=reason`.
- `to_event_payload`: the payload of a protocol EVENT message for a transition.

Sensitivity is one number, the per-series |z| threshold. By default it follows the number of
series N seen so far, theta(N) = `calibrated_threshold(N)`, so that the whole run stays within
`RUN_BUDGET` false transitions per sample (one per 10,000 samples), whatever N is.

Usage::

    det = TransitionDetector()
    det.mark_exogenous(1000, "learning-rate drop")
    for step, sample, loss in run:
        for t in det.update_metrics(step, sample, loss=loss):
            publish(to_event_payload(t))
"""

from __future__ import annotations

import math
import time as _time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping

from symwatch.core.jumps import (DEFAULT_SCALES, RUN_BUDGET, Jump, JumpDetector, calibrated_threshold,
                            default_transform, mad_sorted, median_sorted)

SeriesKey = Hashable  # (layer, metric) for TransitionDetector.update_metrics; any key works
LOSS_KEY: tuple[None, str] = (None, "loss")

# Indicators not followed by default. Δ_G and `broken` are functions of the other indicators: a
# jump in them is already a jump in their source (and would outrank it in the message).
# `numerical_rank` counts singular values above float32's resolution of σ₁: under weight decay
# directions at that resolution come and go, so its steps are the arithmetic's, not the
# training's; `modes` counts what was learned.
NOT_DETECTED = frozenset({"broken", "numerical_rank"})


def detected(metric: str) -> bool:
    """Whether a change of this indicator can be a transition (see NOT_DETECTED)."""
    return metric not in NOT_DETECTED and not metric.startswith("delta_")


@dataclass(frozen=True)
class Transition:
    """Jumps in one or more series within one grouping window.

    `step` is the top jump's estimated onset (when it happened); `detected` the step at which
    the group closed and the transition was emitted; `jumps` sorted by score, highest first."""

    step: int
    time: float
    jumps: tuple[Jump, ...]
    message: str
    detected: int
    exogenous: str | None = None

    @property
    def top(self) -> Jump:
        """The jump with the largest score."""
        return self.jumps[0]


class TransitionDetector:
    """Jump detection over many series, grouped into transitions.

    `threshold`: the per-series |z| threshold; None (default) = calibrated to `budget` false
    transitions per sample for the whole run, re-derived whenever a new series appears.
    `group_samples`: jumps whose alarms fall within this many consecutive samples form one
    transition, emitted when the window closes (so up to group_samples-1 samples late).
    `transforms`: metric name -> "log"/"identity" (or a function of the metric name);
    `default_transform` otherwise. `exogenous_slack`: a mark explains a transition when it lies
    between (the earliest onset minus this many samples) and the last alarm. Other keyword
    arguments go to every JumpDetector. A sample is one distinct step: feed all series of a
    sample (the loss included) in one call.
    """

    def __init__(self, threshold: float | None = None, *, budget: float = RUN_BUDGET,
                 group_samples: int = 5,
                 transforms: Mapping[str, str] | Callable[[str], str] | None = None,
                 exogenous_slack: int = 5, **options: Any) -> None:
        self.budget = budget
        self.group_samples = max(1, group_samples)
        self.exogenous_slack = exogenous_slack
        self._fixed = threshold
        self._transforms = transforms
        self._options = options
        self._detectors: dict[SeriesKey, JumpDetector] = {}
        self._threshold = calibrated_threshold(1, budget) if threshold is None else float(threshold)
        self._steps: deque[int] = deque(maxlen=256)  # recent sample steps, oldest first
        self._last_step: int | None = None
        self._sample = -1
        self._open: list[Jump] = []
        self._open_sample = 0
        self._open_time = 0.0
        self._marks: deque[tuple[int, str]] = deque(maxlen=256)

    # -- configuration --------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        """The per-series threshold in force (depends on the number of series when auto)."""
        return self._threshold

    @property
    def series(self) -> dict[SeriesKey, JumpDetector]:
        return self._detectors

    def _transform_for(self, key: SeriesKey) -> str:
        metric = key[1] if isinstance(key, tuple) and len(key) == 2 else str(key)
        metric = str(metric)
        if callable(self._transforms):
            return self._transforms(metric)
        if self._transforms is not None and metric in self._transforms:
            return self._transforms[metric]
        return default_transform(metric)

    def _detector(self, key: SeriesKey) -> JumpDetector:
        det = JumpDetector(key, threshold=self._threshold, transform=self._transform_for(key),
                           **self._options)
        self._detectors[key] = det
        if self._fixed is None:
            # The run now has one more series: raise every series' threshold so that the
            # run-level budget still holds (theta grows like N ** (1/K)).
            self._threshold = calibrated_threshold(len(self._detectors), self.budget)
            for other in self._detectors.values():
                other.threshold = self._threshold
        return det

    def mark_exogenous(self, step: int, reason: str) -> None:
        """Register a known external change at `step` (a schedule boundary, warm-up end, a
        resume): transitions it explains are labelled with `reason` instead of discoveries."""
        self._marks.append((int(step), str(reason)))

    # -- feeding --------------------------------------------------------------------------------

    def update(self, step: int, values: Mapping[SeriesKey, float | int | None],
               time: float | None = None) -> list[Transition]:
        """Feed one sample of any number of series; returns the transitions that closed."""
        if step != self._last_step:
            self._last_step = step
            self._sample += 1
            self._steps.append(step)
        now = _time.time() if time is None else time
        for key, value in values.items():
            det = self._detectors.get(key)
            if det is None:
                det = self._detector(key)
            jump = det.update(step, value)
            if jump is not None:
                if not self._open:
                    self._open_sample, self._open_time = self._sample, now
                self._open.append(jump)
        if self._open and self._sample - self._open_sample >= self.group_samples - 1:
            return [self._close(step)]
        return []

    def update_metrics(self, step: int, metrics: Mapping[str, Mapping[str, float | int | None]],
                       loss: float | None = None, time: float | None = None,
                       scalars: Mapping[str, float | int | None] | None = None
                       ) -> list[Transition]:
        """Feed a METRICS-shaped sample ({layer: {indicator: value}}) plus the run's loss and
        other run-level scalars (keyed (None, name))."""
        values: dict[SeriesKey, float | int | None] = {
            (layer, name): v for layer, row in metrics.items() for name, v in row.items()}
        if loss is not None:
            values[LOSS_KEY] = loss
        for name, v in (scalars or {}).items():
            values[(None, name)] = v
        return self.update(step, values, time)

    def flush(self) -> list[Transition]:
        """Close the open group now (end of the run)."""
        return [self._close(self._last_step or 0)] if self._open else []

    # -- grouping and labelling -----------------------------------------------------------------

    def _close(self, step: int) -> Transition:
        jumps = tuple(sorted(self._open, key=lambda j: -j.score))
        self._open = []
        top = jumps[0]
        reason = self._explained_by(jumps)
        message = describe(jumps, self._detectors.get(LOSS_KEY), reason)
        return Transition(step=top.onset, time=self._open_time, jumps=jumps, message=message,
                          detected=step, exogenous=reason)

    def _explained_by(self, jumps: Iterable[Jump]) -> str | None:
        jumps = list(jumps)
        if not self._marks:
            return None
        first = min(j.onset for j in jumps)
        last = max(j.step for j in jumps)
        # `first` moved back by exogenous_slack samples: onsets are estimates, and an external
        # change can show one or two samples before the step it was registered at.
        steps = list(self._steps)
        lo = first
        for k in range(len(steps) - 1, -1, -1):
            if steps[k] <= first:
                lo = steps[max(0, k - self.exogenous_slack)]
                break
        reasons = [reason for mark, reason in self._marks if lo <= mark <= last]
        # every external change in the window, once each, in the order they were registered
        return "; ".join(dict.fromkeys(reasons)) or None


# ---------------------------------------------------------------------------------------------
# Messages.

def _name(key: SeriesKey) -> tuple[str | None, str]:
    if isinstance(key, tuple) and len(key) == 2:
        return (None if key[0] is None else str(key[0])), str(key[1])
    return None, str(key)


def fmt_value(value: float, metric: str = "") -> str:
    """Integers as integers, fractions as percentages, otherwise 4 significant digits."""
    if not math.isfinite(value):
        return "N/A"
    if metric.endswith("fraction"):
        return f"{100 * value:.3g} %"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def fmt_relative(change: float) -> str:
    """A relative change as a signed percentage with a real minus sign: '−41 %', '+3.2 %'."""
    pct = 100 * change
    digits = f"{abs(pct):.0f}" if abs(pct) >= 10 else f"{abs(pct):.2g}"
    return f"{'−' if pct < 0 else '+'}{digits} %"


def describe_jump(jump: Jump) -> str:
    """'fc1: modes 2 → 3' or 'loss 0.52 → 0.31 (−41 %)'."""
    layer, metric = _name(jump.key)
    text = f"{metric} {fmt_value(jump.before, metric)} → {fmt_value(jump.after, metric)}"
    if jump.transform == "log" and jump.before > 0:
        text += f" ({fmt_relative(jump.change)})"
    return f"{layer}: {text}" if layer is not None else text


def _brief(jump: Jump) -> str:
    """'fc2 stable_rank 3.1 → 4.2' or 'fc2 weight_norm +12 %' for the list of other series."""
    layer, metric = _name(jump.key)
    who = f"{layer} {metric}" if layer is not None else metric
    if jump.transform == "log" and jump.before > 0:
        return f"{who} {fmt_relative(jump.change)}"
    return f"{who} {fmt_value(jump.before, metric)} → {fmt_value(jump.after, metric)}"


def describe(jumps: tuple[Jump, ...], loss: JumpDetector | None = None,
             exogenous: str | None = None) -> str:
    """One sentence for a group of jumps (highest score first): the top jump, the loss change
    over the same window (from the loss series when it did not jump itself), the other series,
    and the exogenous label."""
    top = jumps[0]
    parts = [f"{describe_jump(top)} at step {top.onset}"]
    if top.key != LOSS_KEY:
        loss_jump = next((j for j in jumps if j.key == LOSS_KEY), None)
        if loss_jump is not None and loss_jump.before > 0:
            parts.append(f"loss {fmt_relative(loss_jump.change)} "
                         f"(jumped at step {loss_jump.onset})")
        elif loss is not None:
            before = loss.level_between(*top.before_steps)
            after = loss.level_between(*top.after_steps)
            if before and after and before > 0:
                parts.append(f"loss {fmt_relative(after / before - 1)} over the same window")
    others = [j for j in jumps[1:] if j.key != LOSS_KEY or top.key == LOSS_KEY]
    if others:
        shown = ", ".join(_brief(j) for j in others[:3])
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        parts.append(f"also {shown}{more}")
    text = "; ".join(parts)
    if exogenous:
        text += f" [exogenous: {exogenous}]"
    return text


# ---------------------------------------------------------------------------------------------
# Protocol EVENT payload.

def _wire_number(value: float | None) -> float | int | None:
    """Finite numbers only (JSON has no NaN); whole numbers as integers (ranks read 2, not 2.0)."""
    if value is None or not math.isfinite(value):
        return None
    if value == int(value) and abs(value) < 2**53:
        return int(value)
    return float(value)


def to_event_payload(transition: Transition) -> dict[str, Any]:
    """The payload of a protocol v1 EVENT message (severity "transition") for a transition:
    its top jump in the flat fields, every grouped jump in "jumps", the exogenous label (or
    null). Send it with the header step = `transition.step`."""
    top = transition.top
    layer, metric = _name(top.key)
    payload: dict[str, Any] = {
        "message": transition.message, "severity": "transition", "layer": layer,
        "metric": metric, "direction": top.direction, "before": _wire_number(top.before),
        "after": _wire_number(top.after), "score": _wire_number(round(top.score, 3))}
    payload["exogenous"] = transition.exogenous
    payload["onset"] = top.onset
    payload["jumps"] = [
        {"layer": _name(j.key)[0], "metric": _name(j.key)[1], "direction": j.direction,
         "before": _wire_number(j.before), "after": _wire_number(j.after),
         "score": _wire_number(round(j.score, 3)), "step": j.step, "onset": j.onset}
        for j in transition.jumps]
    return payload


__all__ = ["DEFAULT_SCALES", "Jump", "JumpDetector", "LOSS_KEY", "RUN_BUDGET", "Transition",
           "TransitionDetector", "calibrated_threshold", "default_transform", "describe",
           "describe_jump", "fmt_relative", "fmt_value", "mad_sorted", "median_sorted",
           "to_event_payload"]
