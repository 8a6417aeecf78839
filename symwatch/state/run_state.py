"""RunState: the observer's plain-Python model of one watched run, folded from protocol Messages."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from symwatch.core import protocol
from symwatch.core.downsample import NAN, VIEWER, Downsample, TieredSeries
from symwatch.core.protocol import Message
from symwatch.state import numbers, optimizer
from symwatch.state.ranks import RankTable
from symwatch.state.shards import ShardCombiner, is_sharded

WAITING, LIVE, STALE, FINISHED = "waiting", "live", "stale", "finished"
CONNECTION_STATES = (WAITING, LIVE, STALE, FINISHED)
# Not RunState's (it never sees sockets): the view's, when its source says the connection to
# the agent dropped and is being retried (symwatch.transport.subscriber.Subscriber.connected is False).
RECONNECTING = "reconnecting"

# Per series: the newest samples kept whole, the rest of the run downsampled (bounded).
DEFAULT_HISTORY = VIEWER
DEFAULT_MAX_EVENTS = 200
# Transitions of the current run, kept exactly (not downsampled) for the history charts'
# markers: bounded too, for a run that flaps for a week.
MAX_TRANSITIONS = 20_000
# Agents send a heartbeat once a second, so three silent seconds means something is wrong.
DEFAULT_STALE_AFTER = 3.0
# STATS `loss_nonfinite` as the views print it in place of the number
NONFINITE_TEXT = {"nan": "NaN", "inf": "inf", "-inf": "-inf"}
# A METRICS message is folded in slices of this many layers (`RunState.fold_steps`): the
# TUI handles keys between slices, so 1,000 layers (15,000 series, ~20 ms) never hold a key.
FOLD_SLICE_LAYERS = 50

Value = float | None  # None is "N/A": never drawn or counted as 0
_INF = math.inf


def history_policy(history: Downsample | int) -> Downsample:
    """A Downsample as is; an int: that many recent samples whole, the viewer's tiers after."""
    if isinstance(history, Downsample):
        return history
    return replace(VIEWER, recent=int(history))


def _finite(value: Any) -> Value:
    """A number as float, or None for null/NaN/inf/non-numbers (belt and braces: decode already
    rejects non-finite values, but RunState may be fed from other places, e.g. recordings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Series:
    """One indicator of one layer (or the loss): its latest value, and the whole run's history
    in bounded memory (symwatch.core.downsample: the recent samples whole, older ones merged in
    tiers keeping min/max/last)."""

    __slots__ = ("current", "step", "store")

    def __init__(self, history: Downsample | int = DEFAULT_HISTORY, phase: int = 0) -> None:
        self.current: Value = None
        self.step: int | None = None
        # phase: when its history merges, among the run's other series (TieredSeries)
        self.store = TieredSeries(history_policy(history), phase)

    def add(self, step: int, value: Any) -> None:
        if type(value) is float and -_INF < value < _INF:  # the common case, cheaply
            self.current = value
        else:
            value = self.current = _finite(value)
            if value is None:
                value = NAN
        self.step = step
        self.store.append(step, value)

    @property
    def history(self) -> list[tuple[int, Value]]:
        """The recent samples, whole, as (step, value), oldest first."""
        return self.store.recent()

    def values(self) -> list[Value]:
        """The recent samples' values, oldest first (what the sparklines draw)."""
        return self.store.recent_values()


@dataclass
class LayerState:
    """A layer's row: what META said about it (if anything) and its indicator series."""

    name: str
    type: str = "?"
    shape: tuple[int, ...] | None = None
    params: int | None = None
    announced: bool = False  # listed in META; False for layers only seen in METRICS
    nonfinite: bool = False  # the agent reported NaN/inf in this layer's latest sample
    step: int | None = None
    updates: int = 0  # METRICS samples folded, so views can tell a row changed
    indicators: dict[str, Series] = field(default_factory=dict)
    flag: Flag | None = None  # the latest transition this layer took part in
    # the latest full-tier METRICS `detail` of this layer (spectrum, unit facts; not history)
    # and the step it is from
    detail: dict[str, Any] | None = None
    detail_step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # its META row (heads, extra fields)

    def value(self, indicator: str) -> Value:
        series = self.indicators.get(indicator)
        return series.current if series else None


# A layer's row stays flagged for this many of its samples after a transition: counted in
# samples rather than seconds so that a replay and a live view flag the same rows.
FLAG_SAMPLES = 20


@dataclass(frozen=True)
class Flag:
    """A transition seen in a layer: which way, in which indicator, when."""

    direction: str  # "up" or "down"
    metric: str
    step: int
    at_update: int  # the layer's `updates` count when the transition arrived

    def active(self, layer: LayerState) -> bool:
        return layer.updates - self.at_update <= FLAG_SAMPLES


@dataclass(frozen=True)
class EventRecord:
    """One EVENT message (or a notice symwatch itself adds, e.g. an agent restart)."""

    step: int
    time: float
    message: str
    severity: str = "info"
    layer: str | None = None
    metric: str | None = None
    before: Value = None
    after: Value = None
    history: bool = False  # from the agent's history (a late join), not live: never notified
    layers: tuple[str, ...] = ()  # every layer the transition's grouped jumps name
    # An optimizer settings change (EVENT `changes`): (name, before, after) of each
    changes: tuple[tuple[str, float, float], ...] = ()


class RunState:
    """Everything the views show about the run on one endpoint. Feed it with `fold`; read the
    attributes; ask `connection(now)` for waiting/live/stale/finished. No UI code here."""

    def __init__(self, *, history: Downsample | int = DEFAULT_HISTORY,
                 max_events: int = DEFAULT_MAX_EVENTS,
                 stale_after: float = DEFAULT_STALE_AFTER) -> None:
        self.history = history_policy(history)
        self.stale_after = stale_after
        self.events: deque[EventRecord] = deque(maxlen=max_events)
        self.events_total = 0  # events ever added; `events` keeps only the latest max_events
        self.messages = 0  # valid messages folded, all runs
        self.restarts = 0  # times a new run id replaced the one shown
        self.ignored = 0  # messages of runs already replaced by a newer one
        self.last_rx: float | None = None  # local monotonic time of the latest message
        self.revision = 0  # bumped on every fold, so views can skip redrawing unchanged state
        # Filled from the source by the view (state never touches sockets).
        self.garbage = 0
        self.last_error: str | None = None
        self._extra_indicators: list[str] = []
        self._retired: set[str] = set()
        self._reset_run(None)

    # -- per-run data --------------------------------------------------------------------------

    def _reset_run(self, run_id: str | None) -> None:
        # The loss of the run this one replaces (a restart seen on this source, or a view that
        # followed the restart to another source), so the loss chart can show both with the
        # boundary marked; None for the first run, or one that replaced a run without loss.
        previous = getattr(self, "loss", None)
        self.previous_loss: Series | None = (previous if previous is not None
                                              and previous.store.count else None)
        self.run_id = run_id
        # "nan", "inf" or "-inf" while the latest loss is not finite (STATS `loss_nonfinite`):
        # shown as such, not as N/A (no value), which hid a run that had diverged; a new run
        # starts without it
        self.loss_nonfinite: str | None = None
        self.name: str | None = None
        self.host: str | None = None
        self.pid: int | None = None
        self.command: list[str] = []
        self.started: float | None = None
        self.every: int | None = None
        self.world_size: int | None = None
        self.device: str | None = None
        self.meta: dict[str, Any] = {}
        self.layers: dict[str, LayerState] = {}
        self.step: int | None = None
        self.transitions: deque[EventRecord] = deque(maxlen=MAX_TRANSITIONS)
        self.loss = Series(self.history)
        self._series_made = 1  # series of this run so far (the loss is the first)
        self.steps_per_s: Value = None
        self.step_time: Value = None
        self.overhead: Value = None  # fraction of wall time spent in the agent (0.01 = 1 %)
        self.scalars: dict[str, Value] = {}
        # STATS `sampling`: the interval between samples and what limits it ("budget" or
        # "every"), with `every` and `budget` (docs/protocol.md); None until a STATS has it
        self.sampling: dict[str, Any] | None = None
        # STATS `optimizer`: every param group's lr, weight decay, … (state/optimizer.py);
        # [] until a STATS has it. `setting_changes`: the notices of changes, for chart marks.
        self.optimizer: list[dict[str, Any]] = []
        self.setting_changes: deque[EventRecord] = deque(maxlen=MAX_TRANSITIONS)
        self.samples: int | None = None
        self.gpu: dict[str, Any] | None = None
        self.goodbye_reason: str | None = None
        self.exit_code: int | None = None
        self.agent_dropped_by: dict[tuple[int, int], int] = {}  # (rank, restart) -> counter
        self.gap_dropped = 0
        self._last_seq: dict[tuple[int, int], int] = {}
        self._ranks: set[int] = set()
        self._ranks_done: set[int] = set()
        # Every rank's own figures (symwatch/state/ranks.py); the run-level ones above are the
        # primary rank's. FSDP shards are combined into whole-layer metrics (shards.py).
        self.ranks = RankTable()
        self.shards = ShardCombiner()
        self._stats_rate_seen = False
        self._loss_per_step = False  # STATS carried `per_step` losses: `loss` adds no point
        self._rate_anchor: tuple[float, int] | None = None

    @property
    def agent_dropped(self) -> int:
        return sum(self.agent_dropped_by.values())

    @property
    def dropped(self) -> int:
        """Messages lost: what the agent could not send plus gaps in the sequence numbers."""
        return self.agent_dropped + self.gap_dropped

    @property
    def finished(self) -> bool:
        return bool(self._ranks) and self._ranks_done >= self._ranks

    def loss_text(self) -> str:
        """The latest loss as the views print it: its number, or what it was when it was not
        finite (`NaN`, `inf`), never N/A for a run that diverged."""
        if self.loss_nonfinite is not None:
            return NONFINITE_TEXT.get(self.loss_nonfinite, self.loss_nonfinite)
        return numbers.compact(self.loss.current)

    def connection(self, now: float | None = None) -> str:
        """waiting (nothing yet), live, stale (silent > stale_after s) or finished (GOODBYE)."""
        if self.last_rx is None:
            return WAITING
        if self.finished:
            return FINISHED
        now = time.monotonic() if now is None else now
        return STALE if now - self.last_rx > self.stale_after else LIVE

    def silent_for(self, now: float | None = None) -> float | None:
        if self.last_rx is None:
            return None
        return max(0.0, (time.monotonic() if now is None else now) - self.last_rx)

    def indicator_names(self) -> list[str]:
        """Display order: the standard indicators, then any others in the order first seen."""
        return list(protocol.INDICATORS) + self._extra_indicators

    def _note_indicator(self, name: str) -> None:
        if name not in protocol.INDICATORS and name not in self._extra_indicators:
            self._extra_indicators.append(name)

    def _layer(self, name: str) -> LayerState:
        layer = self.layers.get(name)
        if layer is None:
            layer = self.layers[name] = LayerState(name)
        return layer

    # -- folding -------------------------------------------------------------------------------

    def fold_all(self, messages: list[Message], now: float | None = None) -> None:
        for msg in messages:
            self.fold(msg, now)

    def series_count(self) -> int:
        """Series of every layer's indicators, plus the loss."""
        return 1 + sum(len(layer.indicators) for layer in self.layers.values())

    def fold(self, msg: Message, now: float | None = None) -> None:
        """Apply one message. Never raises on a validated message; anything odd is skipped."""
        for _ in self.fold_steps(msg, now):
            pass

    def fold_steps(self, msg: Message, now: float | None = None) -> Iterator[None]:
        """`fold`, one slice at a time: each `next()` does a bounded piece of the work (a
        METRICS message yields every FOLD_SLICE_LAYERS layers). Between slices the state is
        consistent, with part of the message's layers updated; a view may draw it."""
        if msg.run in self._retired:
            self.ignored += 1
            return
        if self.run_id is None:
            self.run_id = msg.run
        elif msg.run != self.run_id:
            # The agent restarted (new run id): start afresh in the same view, and say so.
            self._retired.add(self.run_id)
            old = self.name or self.run_id
            self._reset_run(msg.run)
            self.restarts += 1
            self._add_event(EventRecord(msg.step, msg.time, f"new run {msg.run} replaces "
                                        f"{old} (agent restarted)", "notice"))
        now = time.monotonic() if now is None else now
        self.last_rx = now
        self.messages += 1
        self.revision += 1
        self._ranks.add(msg.rank)
        self._count_gap(msg)
        if self.step is None or msg.step > self.step:
            self.step = msg.step
        if msg.kind != protocol.GOODBYE and self.ranks.restarted_after_goodbye(msg):
            self._ranks_done.discard(msg.rank)  # torchrun restarted this rank: live again
        self.ranks.fold(msg, now)
        if is_sharded(msg):  # one shard of FSDP layers: folded once every shard has come
            combined = self.shards.add(msg)
            if combined is None:
                return
            msg = combined
        handler = getattr(self, f"_fold_{msg.kind}", None)
        if handler is not None:
            try:
                slices = handler(msg)
                if slices is not None:  # a generator: a large message, folded in slices
                    for _ in slices:
                        yield
            except (TypeError, ValueError, KeyError, AttributeError):
                pass  # validated upstream; a surprise here must cost one message, not the view
        if not self._stats_rate_seen and msg.kind != protocol.GOODBYE and not msg.from_history:
            self._estimate_rate(now, msg.step)

    def _count_gap(self, msg: Message) -> None:
        key = (msg.rank, msg.restart)
        last = self._last_seq.get(key)
        if msg.snapshot_seq is not None:
            # A history snapshot is a thinned selection: its own gaps are not losses. What
            # counts is whether live messages follow on from the snapshot's end.
            self._last_seq[key] = max(msg.snapshot_seq, last if last is not None else -1)
            return
        if last is not None and msg.seq > last + 1:
            self.gap_dropped += msg.seq - last - 1
        if last is None or msg.seq > last:
            self._last_seq[key] = msg.seq

    def _estimate_rate(self, now: float, step: int) -> None:
        # Only when the agent sends no steps_per_s: local receive times over >= 2 s windows.
        if self._rate_anchor is None:
            self._rate_anchor = (now, step)
            return
        t0, s0 = self._rate_anchor
        if now - t0 >= 2.0:
            self.steps_per_s = max(0.0, (step - s0) / (now - t0))
            self._rate_anchor = (now, step)

    def _fold_meta(self, msg: Message) -> None:
        if not self.ranks.is_primary(msg.rank):
            return  # another rank's host, pid, layers: in self.ranks
        p = msg.payload
        self.meta = dict(p)
        self.name, self.host, self.pid = p["name"], p["host"], p["pid"]
        self.command, self.started, self.every = list(p["command"]), p["started"], p["every"]
        self.world_size = p.get("world_size")
        self.device = p.get("device")
        ordered: dict[str, LayerState] = {}
        for row in p["layers"]:
            layer = self.layers.get(row["name"]) or LayerState(row["name"])
            layer.type = row["type"]
            layer.shape = tuple(int(d) for d in row["shape"] if isinstance(d, int))
            layer.params = row["params"]
            layer.meta = dict(row)
            layer.announced = True
            ordered[layer.name] = layer
        # META's order first; layers only ever seen in METRICS keep their place after.
        for name, layer in self.layers.items():
            ordered.setdefault(name, layer)
        self.layers = ordered
        for name in p["indicators"]:
            self._note_indicator(name)

    def _fold_metrics(self, msg: Message) -> Iterator[None]:
        nonfinite = {str(x) for x in msg.get("nonfinite", []) or []}
        for layer_name, entry in (msg.get("detail") or {}).items():
            layer = self._layer(layer_name)
            layer.detail, layer.detail_step = entry, msg.step
        for n, (layer_name, values) in enumerate(msg.payload["values"].items(), 1):
            if n % FOLD_SLICE_LAYERS == 0:
                yield
            layer = self._layer(layer_name)
            layer.step = msg.step
            layer.updates += 1
            layer.nonfinite = layer_name in nonfinite
            series_of = layer.indicators
            step = msg.step
            for name, value in values.items():  # 15,000 a message for 1,000 layers: kept lean
                series = series_of.get(name)
                if series is None:
                    self._note_indicator(name)
                    # each series of the run its own phase: their merges spread over steps
                    series = series_of[name] = Series(self.history, self._series_made)
                    self._series_made += 1
                series.add(step, value)

    def _fold_stats(self, msg: Message) -> None:
        p = msg.payload
        if not self.ranks.is_primary(msg.rank):  # its loss, speed, memory: in self.ranks
            if "dropped" in p:
                self._agent_dropped(msg, p["dropped"])
            return
        per_step = p.get("per_step") or {}
        losses = per_step.get("loss")
        if isinstance(losses, dict):  # every step's loss since the previous STATS
            self._loss_per_step = True
            last = self.loss.step
            for step, value in zip(losses.get("steps", ()), losses.get("values", ())):
                if last is None or step > last:
                    self.loss.add(step, value)
                    last = step
        elif "loss" in p and (not self._loss_per_step or self.loss.step is None
                              or msg.step > self.loss.step):
            # an agent sending every step's loss repeats its latest here: not a new point
            self.loss.add(msg.step, p["loss"])
        if "loss" in p:  # the latest loss NaN or ±inf (its value is null on the wire)
            nonfinite = p.get("loss_nonfinite")
            self.loss_nonfinite = nonfinite if isinstance(nonfinite, str) else None
        if isinstance(p.get("sampling"), dict):
            self.sampling = dict(p["sampling"])
        if "optimizer" in p:
            self.optimizer = optimizer.groups_of(p["optimizer"])
        if "steps_per_s" in p:
            self._stats_rate_seen = True
            self.steps_per_s = _finite(p["steps_per_s"])
        if "step_time" in p:
            self.step_time = _finite(p["step_time"])
        if "overhead" in p:
            self.overhead = _finite(p["overhead"])
        if "dropped" in p:
            self._agent_dropped(msg, p["dropped"])
        for name, value in (p.get("scalars") or {}).items():
            self.scalars[str(name)] = _finite(value)

    def _fold_heartbeat(self, msg: Message) -> None:
        self._agent_dropped(msg, msg.payload["dropped"])
        if not self.ranks.is_primary(msg.rank):
            return
        self.samples = msg.payload["samples"]
        if "overhead" in msg.payload:
            self.overhead = _finite(msg.payload["overhead"])

    def _agent_dropped(self, msg: Message, count: int) -> None:
        # A cumulative counter per publisher: keep the largest seen, messages may reorder.
        key = (msg.rank, msg.restart)
        self.agent_dropped_by[key] = max(self.agent_dropped_by.get(key, 0), count)

    def _fold_gpu(self, msg: Message) -> None:
        if self.ranks.is_primary(msg.rank):  # every node's report: self.ranks.gpu_reports()
            self.gpu = dict(msg.payload)

    def _fold_event(self, msg: Message) -> None:
        p = msg.payload
        self._add_event(EventRecord(
            step=msg.step, time=msg.time, message=p["message"], severity=p["severity"],
            layer=p.get("layer"), metric=p.get("metric"),
            before=_finite(p.get("before")), after=_finite(p.get("after")),
            history=msg.from_history,
            layers=tuple(dict.fromkeys(j["layer"] for j in p.get("jumps") or ()
                                       if isinstance(j.get("layer"), str))),
            changes=optimizer.changes_of(p.get("changes"))))
        if p["severity"] == "transition":
            self._flag_layers(msg)

    def _flag_layers(self, msg: Message) -> None:
        p = msg.payload
        jumps = p.get("jumps") or [{"layer": p.get("layer"), "metric": p.get("metric"),
                                    "direction": p.get("direction")}]
        for jump in reversed(jumps):  # the top jump (first) wins where a layer has several
            layer = self.layers.get(jump.get("layer") or "")
            if layer is not None and isinstance(jump.get("metric"), str):
                layer.flag = Flag(str(jump.get("direction") or "up"), jump["metric"],
                                  msg.step, layer.updates)

    def _add_event(self, event: EventRecord) -> None:
        self.events.append(event)
        self.events_total += 1
        if event.severity == "transition":
            self.transitions.append(event)
        if event.changes:
            self.setting_changes.append(event)

    def _fold_goodbye(self, msg: Message) -> None:
        self._ranks_done.add(msg.rank)
        self.goodbye_reason = msg.payload["reason"]
        self.exit_code = msg.get("exit_code")
