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

from symwatch.cli.common import read_recording, positive_float, subparser
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
    """Feed the recorded METRICS samples (with the loss of the latest STATS at or before each)
    to `detector`, in order; returns every transition, the last group flushed.

    A run sampled under a time budget by an agent with the run-level detector (its STATS
    `sampling` has `run_level_every`) had its run-level series (the loss, logged scalars)
    followed by a detector of their own, from the STATS `per_step` values at that cadence
    (docs/alerts.md, "The loss under a time budget"): so here, with a second detector at
    `detector`'s threshold setting and the same one-event-per-change rule, so that a replay
    finds the run-level jumps the live run found. Not replayed, for either detector: the
    exogenous labels (the optimizer's settings and marks) and divergences (a non-finite value
    is null on the wire); the open groups are flushed at the end, as the live run's agent does
    when it closes.
    An older recording (no `run_level_every`) is replayed with one detector, as it ran."""
    def wanted(name: str, globs: list[str] | None) -> bool:
        return globs is None or any(fnmatch.fnmatchcase(name, g) for g in globs)

    def wanted_metric(name: str) -> bool:  # by default what the agent detects on, as it does
        return wanted(name, metrics) if metrics is not None else detected(name)

    found: list[Transition] = []
    loss: float | None = None
    scalars: dict[str, Any] = {}
    feed: RunLevelFeed | None = None
    one_event = OneEventPerChange()  # as the agent publishes a budgeted run's events
    for message in messages:
        if message.kind == protocol.STATS:
            loss = message.payload.get("loss", loss)
            # every scalar passed to `log` (each model's loss) is detected on, as the agent does
            scalars.update({k: v for k, v in (message.payload.get("scalars") or {}).items()
                            if detected_scalar(k) and k != "loss"})
            sampling = message.payload.get("sampling") or {}
            if feed is None and _budgeted(sampling) and "run_level_every" in sampling:
                detector.run_level_triggers = False
                feed = RunLevelFeed(TransitionDetector(detector.fixed_threshold,
                                                       layers_from=detector),
                                    int(sampling["every"]))
            per_step = message.payload.get("per_step")
            if feed is not None and per_step:
                feed.detector.recalibrate(len(detector.series))
                stride = sampling.get("run_level_every")  # the live run's cadence
                found += [t for t in feed.feed(
                    {name: (entry.get("steps") or [], entry.get("values") or [])
                     for name, entry in per_step.items()},
                    stride=stride if isinstance(stride, int) else None)
                    if one_event.admit(t, "run_level")]
        elif message.kind == protocol.METRICS:
            values = {layer: {m: v for m, v in row.items() if wanted_metric(m)}
                      for layer, row in message.payload["values"].items()
                      if wanted(layer, layers)}
            found += [t for t in detector.update_metrics(message.step, values, loss=loss,
                                                         time=message.time, scalars=scalars)
                      if feed is None or one_event.admit(t, "samples")]
    if feed is None:
        return found + detector.flush()
    # as the agent does at close (TransitionWatch.flush)
    return found + [t for t in detector.flush() if one_event.admit(t, "samples")] + \
        [t for t in feed.detector.flush() if one_event.admit(t, "run_level")]


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
    for t in transitions:
        if args.json:
            print(json.dumps({"step": t.step, **to_event_payload(t)}, allow_nan=False))
        else:  # an exogenous label is part of the message
            print(f"step {t.step:>9,}  {t.message}")
    if not args.json:
        print(f"{len(transitions)} transitions", file=sys.stderr)
    return 0
