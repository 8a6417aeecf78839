"""Transition detection inside the agent, so that transitions are part of the stream (and of
every recording) and alerts fire with nobody watching.

The detector itself is the shared, stdlib-only `symwatch.core.detection.TransitionDetector`. This
module feeds it each sample on the publisher thread (never the training thread) and labels
changes of the optimizer's hyper-parameters (a learning-rate schedule boundary, weight decay
switched on) as exogenous, so they are reported as explained rather than as discoveries. A
smooth schedule's small change between two samples is not a boundary (`BOUNDARY_CHANGE`).

Under a time budget the samples come further apart than `every` steps (on the GPT-style
benchmark at the defaults, every ~220 steps instead of 10), and the detector, which counts
samples (its warm-up is ~30 of them), would see the loss that rarely too: no loss event for
the first ~6,600 steps, none on a run shorter than that (docs/benchmarks.md, the event corpus
at the defaults). Every step's loss and logged scalars reach the publisher anyway (STATS
`per_step`), so there the run-level series get a detector of their own (`run_level`), fed at
every `every`-th step from those values, the cadence the samples would have without a
budget: the same series the detector sees with no budget, whatever the budget does to the
layers. The samples' detector still follows them, for the layers' events (a count
corroborated by the loss, the loss quoted beside them), and raises nothing on them itself.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import torch

from symwatch.core.detection import (
    Transition,
    TransitionDetector,
    detected,
    detected_scalar,
    family,
    to_event_payload,
)
from symwatch.core.run_level import OneEventPerChange, RunLevelFeed, series_key

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
    """One per agent; `update` (each sample) and `per_step` (each STATS batch of every step's
    values) return EVENT payloads, with their steps, to publish. `every`: the agent samples
    under a time budget at most every `every` steps; the run-level series then have their own
    detector at that cadence (see the module's docstring), stretched where it would cost more
    than `max_cost_s` (symwatch.core.run_level). None: no budget, the samples come every
    `every` steps, one detector follows everything."""

    def __init__(self, threshold: float | None = None, every: int | None = None,
                 max_cost_s: float | None = None) -> None:
        self.detector = TransitionDetector(threshold, run_level_triggers=every is None)
        self.run_level = (None if every is None else
                          TransitionDetector(threshold, layers_from=self.detector))
        # max_cost_s: what the run-level detector may spend, CPU seconds a second of training
        self._feed = (None if self.run_level is None else
                      RunLevelFeed(self.run_level, every, max_cost_s))
        self._last: dict[tuple[str, int], float] = {}
        self._run_level_last: dict[tuple[str, int], float] = {}  # the settings, as run_level saw them
        self._one_event = OneEventPerChange()  # under a budget: one change, one event

    @property
    def stride(self) -> int | None:
        """run_level's cadence in steps (`every`, or a multiple of it); None: no run_level."""
        return None if self._feed is None else self._feed.stride

    def mark(self, step: int, reason: str) -> None:
        """A user's `mark()`: an external change, for every detector."""
        self.detector.mark_exogenous(step, reason)
        if self.run_level is not None:
            self.run_level.mark_exogenous(step, reason)

    def settings(self, step: int, hyperparameters: Hyperparameters) -> None:
        """The optimizer's settings as the training thread read them at `step` (every `every`
        steps, where they changed): run_level's marks, at the step of the change. The samples'
        detector notes them itself, at its samples."""
        if self.run_level is not None:
            self._note_hyperparameters(step, hyperparameters, self.run_level,
                                       self._run_level_last)
            self.run_level.weight_decay = _weight_decay(hyperparameters)

    def update(self, step: int, values: dict[str, dict[str, float | None]],
               loss: float | None, hyperparameters: Hyperparameters,
               time: float | None = None, scalars: dict[str, Any] | None = None
               ) -> list[tuple[int, dict[str, Any]]]:
        """Feed one sample: the layers' indicators, the loss, and every scalar passed to
        `agent.log` (each model's loss on its own; settings such as a logged learning rate are
        left out, their changes are marks)."""
        self._note_hyperparameters(step, hyperparameters, self.detector, self._last)
        self.detector.weight_decay = _weight_decay(hyperparameters)
        primary = {layer: {m: v for m, v in row.items() if detected(m)}
                   for layer, row in values.items()}
        logged = {k: v for k, v in (scalars or {}).items()
                  if detected_scalar(k) and k != "loss"}
        transitions = self.detector.update_metrics(step, primary, loss=loss, time=time,
                                                   scalars=logged)
        if self.run_level is None:
            return [(t.step, to_event_payload(t)) for t in transitions]
        self.run_level.recalibrate(len(self.detector.series))  # one run, one false-alarm budget
        return self._published(transitions, "samples")

    def per_step(self, per_step: dict[str, tuple[list[int], list[float | None]]],
                 hyperparameters: Hyperparameters = (), step_time: float | None = None,
                 settings: Sequence[tuple[int, Hyperparameters]] = ()
                 ) -> list[tuple[int, dict[str, Any]]]:
        """Every step's values since the last call (STATS `per_step`, host floats, NaN and ±inf
        kept). Under a budget: the run-level series to `run_level` at every `stride`-th step
        (symwatch.core.run_level: `every`, stretched where `step_time`, the seconds a step
        takes now, would make that cost more than `max_cost_s`; each series' latest value
        there, as a sample would read it), and a non-finite loss at the step it happened;
        `settings`, the optimizer's settings where the training thread saw them change
        ((step, settings), in step order), are marked up to each step before it is fed, and
        `hyperparameters` (the settings now) at a non-finite loss's step (a learning rate
        raised just before the blow-up, which the training thread reads only every `every`
        steps). Without a budget: only a non-finite loss (`non_finite`)."""
        if self._feed is None:
            return self.non_finite(per_step, hyperparameters)
        pending = collections.deque(settings)

        def before(step: int, diverged: bool) -> None:
            while pending and pending[0][0] <= step:
                self.settings(*pending.popleft())
            if diverged:
                self.settings(step, hyperparameters)

        self._feed.detector.recalibrate(len(self.detector.series))
        found = self._feed.feed(per_step, step_time, before=before)
        while pending:
            self.settings(*pending.popleft())
        return self._published(found, "run_level")

    def flush(self) -> list[tuple[int, dict[str, Any]]]:
        """The run ends: the open groups as events now (each detector holds a group until its
        window of samples closes, which a run that ends does not wait for), the samples'
        first, then the run-level one's, under the one-event rule as during the run."""
        found = self.detector.flush()
        if self.run_level is None:
            return [(t.step, to_event_payload(t)) for t in found]
        return self._published(found, "samples") + self._published(self.run_level.flush(),
                                                                   "run_level")

    def _published(self, found: list[Transition], source: str
                   ) -> list[tuple[int, dict[str, Any]]]:
        """The payloads of what one of a budgeted run's two detectors found, less what the
        other already reported as the same change (symwatch.core.run_level.OneEventPerChange)."""
        out = []
        for t in found:
            if self._one_event.admit(t, source):
                out.append((t.step, to_event_payload(t)))
            else:
                self.detector.suppressed += 1
        return out

    def non_finite(self, per_step: dict[str, tuple[list[int], list[float | None]]],
                   hyperparameters: Hyperparameters = ()) -> list[tuple[int, dict[str, Any]]]:
        """Every step's loss values (STATS `per_step`, host floats, NaN and ±inf kept): the
        first non-finite value of each loss series goes to the detector at once, so that a
        divergence is reported within a STATS interval instead of at the next sample,
        explained by `hyperparameters` (the optimizer's settings now) where they changed
        since the last sample. The samples' loss still feeds it too; the detector reports a
        divergence once per series. A step the detector has already passed (a sample came
        after it) is left to the samples: its series stays in step order."""
        out: list[tuple[int, dict[str, Any]]] = []
        for name, (steps, values) in per_step.items():
            if family(name) != "loss":  # an accuracy or a setting: not a divergence
                continue
            for step, value in zip(steps, values):
                if value is None or value - value == 0.0:  # finite (NaN or ±inf: not 0)
                    continue
                if step <= self.detector.last_step:
                    break
                self._note_hyperparameters(step, hyperparameters, self.detector, self._last)
                out += [(t.step, to_event_payload(t))
                        for t in self.detector.update(step, {series_key(name): value})]
                break
        return out

    @staticmethod
    def _note_hyperparameters(step: int, hyperparameters: Hyperparameters,
                              detector: TransitionDetector,
                              last: dict[tuple[str, int], float]) -> None:
        changes = []
        for name, group, value in hyperparameters:
            previous = last.get((name, group))
            if previous is not None and previous != value and \
                    abs(value - previous) > BOUNDARY_CHANGE * max(abs(value), abs(previous)):
                changes.append(f"{name} {previous:g} → {value:g}")
            last[(name, group)] = value
        if changes:
            detector.mark_exogenous(step, "optimizer " + ", ".join(sorted(set(changes))))


def _weight_decay(hyperparameters: Hyperparameters) -> float:
    return max((v or 0.0 for name, _, v in hyperparameters if name == "weight_decay"),
               default=0.0)
