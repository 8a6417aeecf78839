"""Matching events to ground-truth transitions, and the scores (no torch: the test drives it on
hand-made lists).

An event matches a truth when its onset lies in the truth's window [start − tol, end + tol]
and its layers fit: a truth that names layers needs a jump on one of them, or a jump of a
run-level series (the loss, layer None) when the transition shows in the loss; a truth that
names none takes any event. Each matching event is assigned to one truth: the one whose step
is nearest its onset. Precision = matched events / events (several events on one truth all
count as matched: the duplicates are reported apart); recall = truths with an assigned event /
truths; delay = the first assigned event's detection step minus the truth's step (negative:
flagged before the transition's midpoint), and its onset error the same with its onset.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from .common import Event, RunResult, Truth


def matches(event: Event, truth: Truth, tol: int) -> bool:
    if not truth.start - tol <= event.onset <= truth.end + tol:
        return False
    if truth.layers is None:
        return True
    return any(layer in truth.layers if layer is not None else truth.in_loss
               for layer in event.layers)


@dataclass
class Score:
    events: int = 0
    matched_events: int = 0
    duplicates: int = 0  # matched events beyond the first on each truth
    exogenous: int = 0  # events labelled exogenous (optimizer change)
    truths: int = 0
    detected: int = 0
    delays: list[int] = field(default_factory=list)  # detection step − truth step
    onset_errors: list[int] = field(default_factory=list)  # onset − truth step
    steps: int = 0
    missed: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return self.matched_events / self.events if self.events else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.truths if self.truths else None

    @property
    def median_delay(self) -> float | None:
        return statistics.median(self.delays) if self.delays else None

    @property
    def median_onset_error(self) -> float | None:
        return statistics.median(self.onset_errors) if self.onset_errors else None

    @property
    def false_per_1000(self) -> float | None:
        unmatched = self.events - self.matched_events
        return 1000 * unmatched / self.steps if self.steps else None

    def add(self, other: Score) -> None:
        for name in ("events", "matched_events", "duplicates", "exogenous", "truths",
                     "detected", "steps"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.delays += other.delays
        self.onset_errors += other.onset_errors
        self.missed += other.missed
        self.false_alarms += other.false_alarms


def score(truths: Iterable[Truth], events: Iterable[Event], tol: int, steps: int = 0) -> Score:
    truths, events = list(truths), sorted(events, key=lambda e: (e.onset, e.detected))
    out = Score(events=len(events), truths=len(truths), steps=steps,
                exogenous=sum(e.exogenous is not None for e in events))
    # Each event goes to one truth only: of those it matches, the one whose step is nearest its
    # onset (the earlier on a tie). Overlapping windows (a staircase's modes) would otherwise
    # let one event detect several transitions, and a truth's delay be another's event.
    assigned: list[list[Event]] = [[] for _ in truths]
    for e in events:
        fits = [i for i, t in enumerate(truths) if matches(e, t, tol)]
        if not fits:
            out.false_alarms.append(f"{e.onset}: {e.message}")
            continue
        out.matched_events += 1
        assigned[min(fits, key=lambda i: (abs(e.onset - truths[i].step), truths[i].step))].append(e)
    for truth, hit in zip(truths, assigned):
        if not hit:
            out.missed.append(f"{truth.step}: {truth.label}")
            continue
        out.detected += 1
        out.duplicates += len(hit) - 1
        first = min(hit, key=lambda e: e.detected)
        out.delays.append(first.detected - truth.step)
        out.onset_errors.append(first.onset - truth.step)
    return out


def score_run(result: RunResult) -> Score:
    return score(result.truths, result.events, result.tol, result.steps)
