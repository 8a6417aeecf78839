"""Transition detection inside the agent, so that transitions are part of the stream (and of
every recording) and alerts fire with nobody watching.

The detector itself is the shared, stdlib-only `symwatch.core.detection.TransitionDetector`. This
module feeds it each sample on the publisher thread (never the training thread) and labels
changes of the optimizer's hyper-parameters (a learning-rate schedule boundary, weight decay
switched on) as exogenous, so they are reported as explained rather than as discoveries. A
smooth schedule's small change between two samples is not a boundary (`BOUNDARY_CHANGE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from symwatch.core.detection import (
    LOSS_KEY,
    TransitionDetector,
    detected,
    detected_scalar,
    family,
    to_event_payload,
)

# The optimizer settings whose change explains a jump in what follows.
WATCHED_HYPERPARAMETERS = ("lr", "weight_decay", "momentum")
# Only a change by more than this fraction between two samples is a boundary: a smooth schedule
# (linear decay, cosine, the Trainer's default) moves the lr a little at every sample, and
# marking each of those would label every transition of the run exogenous. Warm-up from 0, a
# StepLR boundary, weight decay switched on, a restart of a cyclic schedule are all far above.
BOUNDARY_CHANGE = 0.25

Hyperparameters = tuple[tuple[str, int, float | None], ...]


def read_hyperparameters(optimizers: Sequence[torch.optim.Optimizer]) -> Hyperparameters:
    """The watched settings of every param group, as plain floats. Cheap (a few attribute
    reads), so it runs on the training thread at each sample; tensor-valued settings (a
    learning rate on the GPU) are skipped rather than synchronised."""
    values = []
    for o, optimizer in enumerate(optimizers):
        for g, group in enumerate(optimizer.param_groups):
            for name in WATCHED_HYPERPARAMETERS:
                value = group.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values.append((name, o * 1000 + g, float(value)))
    return tuple(values)


def host_float(value: Any) -> float | None:
    """A loss or logged scalar as a plain float for the detector, NaN and ±inf kept (a
    non-finite loss is a divergence; the wire form maps it to null, this must not). `value` is
    a number, a tensor, or a (host tensor, copy-done event) pair from the agent's async copy."""
    if isinstance(value, tuple):
        host, done = value
        done.synchronize()
        value = host
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


class TransitionWatch:
    """One detector per agent; `update` returns EVENT payloads (with their steps) to publish."""

    def __init__(self, threshold: float | None = None) -> None:
        self.detector = TransitionDetector(threshold)
        self._last: dict[tuple[str, int], float] = {}

    def update(self, step: int, values: dict[str, dict[str, float | None]],
               loss: float | None, hyperparameters: Hyperparameters,
               time: float | None = None, scalars: dict[str, Any] | None = None
               ) -> list[tuple[int, dict[str, Any]]]:
        """Feed one sample: the layers' indicators, the loss, and every scalar passed to
        `agent.log` (each model's loss on its own; settings such as a logged learning rate are
        left out, their changes are marks)."""
        self._note_hyperparameters(step, hyperparameters)
        self.detector.weight_decay = max((v or 0.0 for name, _, v in hyperparameters
                                          if name == "weight_decay"), default=0.0)
        primary = {layer: {m: v for m, v in row.items() if detected(m)}
                   for layer, row in values.items()}
        logged = {k: v for k, v in (scalars or {}).items()
                  if detected_scalar(k) and k != "loss"}
        transitions = self.detector.update_metrics(step, primary, loss=loss, time=time,
                                                   scalars=logged)
        return [(t.step, to_event_payload(t)) for t in transitions]

    def non_finite(self, per_step: dict[str, tuple[list[int], list[float | None]]],
                   hyperparameters: Hyperparameters = ()) -> list[tuple[int, dict[str, Any]]]:
        """Every step's loss values (STATS `per_step`, host floats, NaN and ±inf kept): the
        first non-finite value of each loss series goes to the detector at once, so that a
        divergence is reported within a STATS interval instead of at the next sample (on a
        budget-stretched interval, hundreds of steps later), explained by `hyperparameters`
        (the optimizer's settings now) where they changed since the last sample. The samples'
        loss still feeds it too; the detector reports a divergence once per series. A step
        the detector has already passed (a sample came after it) is left to the samples:
        its series stays in step order."""
        out: list[tuple[int, dict[str, Any]]] = []
        for name, (steps, values) in per_step.items():
            if family(name) != "loss":  # an accuracy or a setting: not a divergence
                continue
            for step, value in zip(steps, values):
                if value is None or value - value == 0.0:  # finite (NaN or ±inf: not 0)
                    continue
                if step <= self.detector.last_step:
                    break
                self._note_hyperparameters(step, hyperparameters)
                key = LOSS_KEY if name == "loss" else (None, name)
                out += [(t.step, to_event_payload(t))
                        for t in self.detector.update(step, {key: value})]
                break
        return out

    def _note_hyperparameters(self, step: int, hyperparameters: Hyperparameters) -> None:
        changes = []
        for name, group, value in hyperparameters:
            previous = self._last.get((name, group))
            if previous is not None and previous != value and \
                    abs(value - previous) > BOUNDARY_CHANGE * max(abs(value), abs(previous)):
                changes.append(f"{name} {previous:g} → {value:g}")
            self._last[(name, group)] = value
        if changes:
            self.detector.mark_exogenous(step, "optimizer " + ", ".join(sorted(set(changes))))
