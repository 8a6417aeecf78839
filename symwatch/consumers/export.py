"""Flat records from a recording, for scripts and notebooks: one record per line (JSON Lines)
or per row (CSV). The record shapes are a contract; docs/export.md describes them.

Missing values are null in JSON and empty in CSV, never 0.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from symwatch.core import protocol
from symwatch.core.names import display
from symwatch.core.protocol import Message

# `label`: the indicator as the screen names it (core/names.py: `weight norm` for the wire's
# `weight_norm`); a run-level scalar's label is its own name, as the header shows it
# `run`, `restart`: which run (and agent start) of the file a record is from: runs appended to
# one recording share its steps (a pivot by step alone would average them together)
RUN_FIELDS = ("run", "restart")
METRIC_FIELDS = ("kind", "time", "rank", "step", "layer", "metric", "value", "label",
                 *RUN_FIELDS)
EVENT_FIELDS = ("kind", "time", "rank", "step", "layer", "metric", "direction", "before",
                "after", "score", "message", *RUN_FIELDS)
GPU_FIELDS = ("kind", "time", "rank", "step", "index", "name", "util", "mem_used", "mem_total",
              "temp", "power", "power_limit", "sm_clock_mhz", "sm_clock_max_mhz", "throttle",
              *RUN_FIELDS)
_GPU_NUMBERS = ("util", "mem_used", "mem_total", "temp", "power", "power_limit", "sm_clock_mhz",
                "sm_clock_max_mhz")

FIELDS = {"metrics": METRIC_FIELDS, "events": EVENT_FIELDS, "gpu": GPU_FIELDS}
# `--kind all` in CSV: the union of the columns, in this order.
# Fields are only ever added at the end: `label` (added after the GPU clocks), then `run` and
# `restart`.
ALL_FIELDS = tuple(dict.fromkeys(METRIC_FIELDS[:-3] + EVENT_FIELDS[:-2] + GPU_FIELDS[:-2]
                                 + ("label",) + RUN_FIELDS))
KIND_CHOICES = ("metrics", "events", "gpu", "all")

# Run-level scalars of a STATS message exported as metrics (layer null), in this order; then
# every entry of its `scalars` object (what the script passed to `handle.log`).
STATS_SCALARS = ("loss", "step_time", "steps_per_s", "overhead")


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    # Unpaired surrogates are valid JSON but not UTF-8; never let one break the export.
    return value.encode("utf-8", "replace").decode("utf-8")


def _reasons(value: Any) -> str | None:
    """A device's clock-throttle reasons as one text ("power cap, sw thermal"; "" when none is
    active); None when NVML could not say or the agent did not send them."""
    if not isinstance(value, list):
        return None
    return ", ".join(t for t in (_text(r) for r in value) if t is not None)


def records(messages: Iterable[Message], kind: str = "all") -> Iterator[dict[str, Any]]:
    """The export records of `messages` (recorded order), for `kind` in KIND_CHOICES."""
    want_metrics = kind in ("metrics", "all")
    want_events = kind in ("events", "all")
    want_gpu = kind in ("gpu", "all")
    # (run, restart, rank, metric) -> the last exported value: each run's first is exported
    settings: dict[tuple[str, int, int, str], float | int | None] = {}
    for msg in messages:
        for rec in _records_of(msg, want_metrics, want_events, want_gpu, settings):
            rec["run"], rec["restart"] = _text(msg.run), msg.restart
            yield rec


def _records_of(msg: Message, want_metrics: bool, want_events: bool, want_gpu: bool,
                settings: dict[tuple[str, int, int, str], float | int | None]
                ) -> Iterator[dict[str, Any]]:
    """One message's records, without the run fields (`records` adds them)."""
    head = {"time": msg.time, "rank": msg.rank, "step": msg.step}
    p = msg.payload
    if msg.kind == protocol.METRICS and want_metrics:
        for layer, values in p.get("values", {}).items():
            if not isinstance(values, dict):
                continue
            for metric, value in values.items():
                yield {"kind": "metric", **head, "layer": _text(layer),
                       "metric": _text(metric), "value": _number(value),
                       "label": display(str(metric))}
    elif msg.kind == protocol.STATS and want_metrics:
        # every step's loss and scalars (`per_step`), one record per step; the message's
        # own latest value of such a series would repeat one of them
        per_step = p.get("per_step") if isinstance(p.get("per_step"), dict) else {}
        for name, series in per_step.items():
            if not isinstance(series, dict):
                continue
            for step, value in zip(series.get("steps") or (), series.get("values") or ()):
                yield {"kind": "metric", "time": msg.time, "rank": msg.rank, "step": step,
                       "layer": None, "metric": _text(name), "value": _number(value),
                       "label": _text(name)}
        for name in STATS_SCALARS:
            if name in p and name not in per_step:
                yield {"kind": "metric", **head, "layer": None, "metric": name,
                       "value": _number(p[name]), "label": name}
        scalars = p.get("scalars")
        if isinstance(scalars, dict):
            for name, value in scalars.items():
                if name not in per_step:
                    yield {"kind": "metric", **head, "layer": None,
                           "metric": _text(name), "value": _number(value),
                           "label": _text(name)}
        # the optimizers' settings (`optimizer`): a record where one is first seen or
        # changes, not one per message (they are resent in every `stats`)
        for metric, value in _settings(p.get("optimizer")):
            where = (msg.run, msg.restart, msg.rank, metric)
            if settings.get(where, math.nan) != value:
                settings[where] = value
                yield {"kind": "metric", **head, "layer": None, "metric": metric,
                       "value": value, "label": metric}
    elif msg.kind == protocol.EVENT and want_events:
        yield {"kind": "event", **head, "layer": _text(p.get("layer")),
               "metric": _text(p.get("metric")), "direction": _text(p.get("direction")),
               "before": _number(p.get("before")), "after": _number(p.get("after")),
               "score": _number(p.get("score")), "message": _text(p.get("message"))}
    elif msg.kind == protocol.GPU and want_gpu:
        for dev in p.get("devices", []):
            if not isinstance(dev, dict):
                continue
            yield {"kind": "gpu", **head, "index": _number(dev.get("index")),
                   "name": _text(dev.get("name")),
                   **{k: _number(dev.get(k)) for k in _GPU_NUMBERS},
                   "throttle": _reasons(dev.get("throttle"))}


def _settings(groups: Any) -> Iterator[tuple[str, float | int | None]]:
    """STATS `optimizer` as (metric, value): `optimizer.<o>.<g>.<setting>`, e.g.
    `optimizer.0.0.weight_decay` (optimizer 0, param group 0)."""
    for group in groups if isinstance(groups, list) else ():
        if not isinstance(group, dict):
            continue
        where = f"optimizer.{_number(group.get('optimizer'))}.{_number(group.get('group'))}"
        for name, value in group.items():
            if name not in ("optimizer", "group", "type") and isinstance(name, str):
                yield f"{where}.{_text(name)}", _number(value)


def write_jsonl(recs: Iterable[dict[str, Any]], out: TextIO) -> int:
    n = 0
    for rec in recs:
        out.write(json.dumps(rec, allow_nan=False) + "\n")
        n += 1
    return n


def write_csv(recs: Iterable[dict[str, Any]], out: TextIO, kind: str = "all") -> int:
    columns = ALL_FIELDS if kind == "all" else FIELDS[kind]
    writer = csv.DictWriter(out, fieldnames=columns, restval="", extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    n = 0
    for rec in recs:
        # None -> "" (csv does that already); floats keep full precision (repr).
        writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
        n += 1
    return n
