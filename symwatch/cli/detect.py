"""`symwatch detect PATH`: re-run the transition detector over a recording, with other settings.

The agent detects transitions live with its defaults, and those events are in the recording.
This command replays the recorded samples (every layer's indicators and the loss, in step
order) through a fresh `TransitionDetector`, e.g. more or less sensitive, or on a subset of
layers, and prints what it finds. Older samples of long recordings are thinned
(docs/recording.md), so detections there are coarser than the live ones.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from typing import Any, Iterable

from symwatch.cli.common import positive_float, read_recording, say_unreadable_rows, subparser
from symwatch.core import protocol
from symwatch.core.detection import (Transition, TransitionDetector, detected, detected_scalar,
                                     to_event_payload)
from symwatch.core.run_level import OneEventPerChange, RunLevelFeed

EPILOG = (
    "examples:\n"
    "  symwatch detect run.db                      the default, run-calibrated sensitivity\n"
    "  symwatch detect run.db --threshold 5        more sensitive (per-series |z| threshold)\n"
    "  symwatch detect run.db --layer 'encoder.*' --metric numerical_rank\n"
    "  symwatch detect run.db --json | jq .message")


def add_detect_parser(subs: Any) -> None:
    detect = subparser(
        subs, "detect", "re-run transition detection over a recording",
        "Run the transition detector over a recording's samples with other settings than "
        "the live run used, and print the transitions it finds.", EPILOG)
    detect.add_argument("path", help="a recording (symwatch record / watch(record=...))")
    detect.add_argument("--threshold", type=positive_float, default=None,
                        help="per-series |z| threshold (default: calibrated to the number of "
                             "series, one false transition per 10,000 samples per run)")
    detect.add_argument("--layer", action="append", metavar="GLOB",
                        help="only layers matching (repeatable); the loss is always used")
    detect.add_argument("--metric", action="append", metavar="GLOB",
                        help="only indicators matching (repeatable)")
    detect.add_argument("--json", action="store_true",
                        help="one JSON event payload per line (the protocol's EVENT fields)")
    detect.set_defaults(func=cmd_detect)


def redetect(messages: Iterable[protocol.Message], detector: TransitionDetector, *,
             layers: list[str] | None = None,
             metrics: list[str] | None = None) -> list[Transition]:
    """Feed the recorded METRICS samples, each with the loss and the logged scalars the live
    agent read at that sample, to `detector`, in order; returns every transition, each run's
    last group flushed.

    A sample carries what the live detector read with it (METRICS `loss`, `scalars`), which
    is used as it is. A recording from an agent that did not send them: each series' latest
    value logged before that step ended, from STATS `per_step`, the value at the largest step
    below s (exact for a loss logged with `agent.log`, before or after `optimizer.step()`;
    one captured from `.backward()` is keyed at s and read a step late); that STATS comes
    after the sample in the recording, so the samples wait for it. Older still (no
    `per_step`): the latest STATS' loss and scalars.

    A run sampled under a time budget by an agent with the run-level detector (its STATS
    `sampling` has `run_level_every`) had its run-level series (the loss, logged scalars)
    followed by a detector of their own, from the STATS `per_step` values at that cadence
    (docs/alerts.md, "The loss under a time budget"): so here, with a second detector at
    `detector`'s threshold setting and the same one-event-per-change rule, so that a replay
    finds the run-level jumps the live run found. Not replayed, for either detector: the
    exogenous labels (the optimizer's settings and marks) and divergences (a non-finite value
    is null on the wire); the open groups are flushed at the end, as the live run's agent does
    when it closes.
    A file that holds several runs (appended recordings; an agent restarted) is replayed run
    by run: each run (id and restart) starts fresh detectors, as its agent did."""
    # one replay per run (id and restart), whether the runs follow one another in the file
    # or interleave (a relay's recording of several jobs); each run's transitions together,
    # the runs in the order they first appear
    runs: dict[tuple[str, int], _RunReplay] = {}
    for message in messages:
        key = (message.run, message.restart)
        replay = runs.get(key)
        if replay is None:
            replay = runs[key] = _RunReplay(
                detector if not runs else TransitionDetector(detector.fixed_threshold),
                layers, metrics)
        replay.message(message)
    return [t for replay in runs.values() for t in replay.finish()]


class _RunReplay:
    """redetect's state for one run: its detectors, and the samples waiting for their loss."""

    def __init__(self, detector: TransitionDetector, layers: list[str] | None,
                 metrics: list[str] | None) -> None:
        self.found: list[Transition] = []
        self._layers, self._metrics = layers, metrics
        self.detector = detector
        self.feed: RunLevelFeed | None = None
        self.one_event = OneEventPerChange()  # as the agent publishes a budgeted run's events
        self.loss: float | None = None  # the latest value read (per_step, or STATS)
        self.scalars: dict[str, Any] = {}
        self.waiting: list[protocol.Message] = []  # samples before the STATS with their loss
        self.per_step_seen = False

    def message(self, message: protocol.Message) -> None:
        if message.kind == protocol.STATS:
            self._stats(message)
        elif message.kind == protocol.METRICS:
            if self.per_step_seen:
                self.waiting.append(message)
            else:  # until a per_step says otherwise: the latest STATS' values, at once
                self._sample(message)

    def _stats(self, message: protocol.Message) -> None:
        payload = message.payload
        per_step = payload.get("per_step")
        if per_step:
            self.per_step_seen = True
            self._release(per_step, message.step)
        else:
            self._release({}, message.step)
            self.loss = payload.get("loss", self.loss)
            # every scalar passed to `log` (each model's loss) is detected on, as the agent does
            self.scalars.update({k: v for k, v in (payload.get("scalars") or {}).items()
                                 if detected_scalar(k) and k != "loss"})
        sampling = payload.get("sampling") or {}
        if self.feed is None and _budgeted(sampling) and "run_level_every" in sampling:
            self.detector.run_level_triggers = False
            self.feed = RunLevelFeed(TransitionDetector(self.detector.fixed_threshold,
                                                        layers_from=self.detector),
                                     int(sampling["every"]))
        if self.feed is not None and per_step:
            self.feed.detector.recalibrate(len(self.detector.series))
            stride = sampling.get("run_level_every")  # the live run's cadence
            self.found += [t for t in self.feed.feed(
                {name: (entry.get("steps") or [], entry.get("values") or [])
                 for name, entry in per_step.items()},
                stride=stride if isinstance(stride, int) else None)
                if self.one_event.admit(t, "run_level")]

    def _release(self, per_step: dict[str, Any], upto: int) -> None:
        """The samples of steps up to `upto` (a STATS' step: its `per_step` holds every value
        logged before), each fed the latest values logged below its step."""
        series = [(name, entry.get("steps") or [], entry.get("values") or [])
                  for name, entry in per_step.items()
                  if name == "loss" or detected_scalar(name)]
        at = {name: 0 for name, _, _ in series}
        ready = [m for m in self.waiting if m.step <= upto]
        self.waiting = [m for m in self.waiting if m.step > upto]

        def read_below(step: int) -> None:
            for name, steps, values in series:
                i = at[name]
                while i < len(steps) and i < len(values) and steps[i] < step:
                    self._read(name, values[i])
                    i += 1
                at[name] = i

        for sample in ready:
            read_below(sample.step)
            self._sample(sample)
        read_below(2 ** 62)  # the rest: the latest values for the samples that follow

    def _read(self, name: str, value: Any) -> None:
        if value is None:  # not logged at that step, or non-finite on the wire
            return
        if name == "loss":
            self.loss = value
        else:
            self.scalars[name] = value

    def _sample(self, message: protocol.Message) -> None:
        payload = message.payload
        values = {layer: {m: v for m, v in row.items() if self._wanted_metric(m)}
                  for layer, row in payload["values"].items()
                  if _wanted(layer, self._layers)}
        loss, scalars = self.loss, self.scalars
        if "loss" in payload:  # what the live detector read with this sample, as it read it
            loss = payload["loss"]
            scalars = {k: v for k, v in (payload.get("scalars") or {}).items()
                       if detected_scalar(k) and k != "loss"}
        self.found += [t for t in self.detector.update_metrics(
            message.step, values, loss=loss, time=message.time, scalars=scalars)
            if self.feed is None or self.one_event.admit(t, "samples")]

    def _wanted_metric(self, name: str) -> bool:  # by default what the agent detects on
        return _wanted(name, self._metrics) if self._metrics is not None else detected(name)

    def finish(self) -> list[Transition]:
        """The file ended: the waiting samples with the values last read, then the open
        groups, as the agent flushes them when it closes (TransitionWatch.flush); every
        transition of the run."""
        for sample in self.waiting:
            self._sample(sample)
        self.waiting = []
        if self.feed is None:
            self.found += self.detector.flush()
        else:
            self.found += [t for t in self.detector.flush()
                           if self.one_event.admit(t, "samples")]
            self.found += [t for t in self.feed.detector.flush()
                           if self.one_event.admit(t, "run_level")]
        return self.found


def _wanted(name: str, globs: list[str] | None) -> bool:
    return globs is None or any(fnmatch.fnmatchcase(name, g) for g in globs)


def _budgeted(sampling: dict[str, Any]) -> bool:
    """Whether a STATS `sampling` says the run sampled under a time budget (below 1)."""
    budget, every = sampling.get("budget"), sampling.get("every")
    return (isinstance(budget, (int, float)) and 0 < budget < 1
            and isinstance(every, int) and every > 0)


def cmd_detect(args: argparse.Namespace) -> int:
    reader = read_recording(args.path)
    try:
        transitions = redetect(reader.messages((protocol.METRICS, protocol.STATS)),
                               TransitionDetector(args.threshold),
                               layers=args.layer, metrics=args.metric)
    finally:
        reader.close()
    say_unreadable_rows("detect", reader)
    for t in transitions:
        if args.json:
            print(json.dumps({"step": t.step, **to_event_payload(t)}, allow_nan=False))
        else:  # an exogenous label is part of the message
            print(f"step {t.step:>9,}  {t.message}")
    if not args.json:
        print(f"{len(transitions)} transitions", file=sys.stderr)
    return 0
