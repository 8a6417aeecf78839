"""Turning EVENT messages into alerts: filter, de-duplicate, rate-limit, fan out (stdlib only).

`symwatch alert` runs a `Dispatcher` over every decoded message of the run it follows. The
dispatcher keeps the run's name from META, lets through the events an `AlertRule` selects,
drops repeats of the same change (`Deduplicator`), holds the total to a budget per minute
(`RateLimiter`, the excess summarised later as one "N more ... suppressed" alert) and hands
each surviving `Alert` to every sink (symwatch.consumers.alerts.sinks). Sinks own their threads, so
nothing here ever waits on a command or an HTTP server.
"""

from __future__ import annotations

import fnmatch
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

from symwatch.core import protocol
from symwatch.core.protocol import Message

TRANSITION = "transition"
SUMMARY = "summary"  # severity of the synthetic "N more suppressed" alert
SEVERITIES = ("transition", "error", "warning", "notice", "info")
# The flat event fields every alert's JSON carries (null when the agent left them out), so a
# consumer script can index them without checking.
EVENT_FIELDS = ("message", "severity", "layer", "metric", "direction", "before", "after",
                "score", "exogenous", "onset", "what")


@dataclass(frozen=True)
class Alert:
    """One thing to tell people about: an agent EVENT (or a rate-limit summary) plus the run's
    human name. `event()` is what sinks send."""

    run: str
    run_name: str
    step: int
    time: float
    payload: dict[str, Any]
    rank: int = 0
    restart: int = 0
    seq: int = 0
    suppressed: int = 0  # for a SUMMARY alert: how many alerts it stands for

    @classmethod
    def from_message(cls, message: Message, run_name: str) -> Alert:
        return cls(run=message.run, run_name=run_name, step=message.step, time=message.time,
                   payload=dict(message.payload), rank=message.rank, restart=message.restart,
                   seq=message.seq)

    def get(self, key: str) -> Any:
        return self.payload.get(key)

    @property
    def severity(self) -> str:
        return normalized_severity(self.payload.get("severity"))

    @property
    def message(self) -> str:
        return str(self.payload.get("message", ""))

    @property
    def text(self) -> str:
        """The one-line human form: "<run name>: <message>"."""
        return f"{self.run_name}: {self.message}"

    def event(self) -> dict[str, Any]:
        """The JSON object sinks deliver: the header, the run name, every payload field as
        received (unknown ones included) and the flat event fields defaulted to null."""
        body: dict[str, Any] = {"run": self.run, "run_name": self.run_name, "rank": self.rank,
                                "restart": self.restart, "seq": self.seq, "time": self.time,
                                "step": self.step}
        body.update({name: None for name in EVENT_FIELDS})
        body.update(self.payload)
        body["severity"] = self.severity
        if self.severity == SUMMARY:
            body["suppressed"] = self.suppressed
        return body


def normalized_severity(value: Any) -> str:
    # docs/protocol.md: receivers treat an unknown severity like "info".
    if value == SUMMARY:
        return SUMMARY
    return value if value in SEVERITIES else "info"


# ---------------------------------------------------------------------------------------------
# Filter.

@dataclass
class AlertRule:
    """Which events become alerts. Globs are fnmatch patterns, case-sensitive (layer names are).

    A grouped transition names several series (its `jumps`); it passes when any one series
    matches the layer and metric globs and reaches `min_score`. `min_score` applies to
    transitions only (notices have no score); a transition without a score does not reach it.
    """

    layers: Sequence[str] = ()
    metrics: Sequence[str] = ()
    min_score: float | None = None
    # A transition with a known cause (weight decay switched on, an LR step) is still a
    # transition: the demo's first restoration is news even though the run caused it. The
    # cause is in the alert (`exogenous`); `include_exogenous=False` leaves them out.
    include_exogenous: bool = True
    severities: frozenset[str] = frozenset({TRANSITION})

    def matches(self, alert: Alert) -> bool:
        severity = alert.severity
        if severity not in self.severities:
            return False
        if severity == TRANSITION and alert.get("exogenous") and not self.include_exogenous:
            return False  # explained by a known change, and asked to leave those out
        min_score = self.min_score if severity == TRANSITION else None
        return any(self._series_matches(layer, metric, score, min_score)
                   for layer, metric, score in _series(alert))

    def _series_matches(self, layer: Any, metric: Any, score: Any,
                        min_score: float | None) -> bool:
        if self.layers and not _glob_any(layer, self.layers):
            return False
        if self.metrics and not _glob_any(metric, self.metrics):
            return False
        if min_score is not None:
            return isinstance(score, (int, float)) and score >= min_score
        return True


def _series(alert: Alert) -> list[tuple[Any, Any, Any]]:
    """(layer, metric, score) of the top series, of every grouped jump and of every mover (the
    layers that moved most in the window: a loss transition names them). A mover's score is
    its |z| against its own noise."""
    out = [(alert.get("layer"), alert.get("metric"), alert.get("score"))]
    for jump in alert.get("jumps") or ():
        if isinstance(jump, dict):
            out.append((jump.get("layer"), jump.get("metric"), jump.get("score")))
    for mover in alert.get("movers") or ():
        if isinstance(mover, dict):
            z = mover.get("z")
            out.append((mover.get("layer"), mover.get("metric"),
                        abs(z) if isinstance(z, (int, float)) else None))
    return out


def _glob_any(value: Any, patterns: Sequence[str]) -> bool:
    # A series without a layer (the loss) or an event without one never matches a layer glob.
    return isinstance(value, str) and any(fnmatch.fnmatchcase(value, p) for p in patterns)


# ---------------------------------------------------------------------------------------------
# De-duplication.

class Deduplicator:
    """One alert per (run, layer, metric, direction) within a window of steps or of seconds.

    The window runs from the last alert let through for that key, so a flapping indicator
    gives one alert per window, not one per flap. Notices are keyed by their message. Keys
    are kept for at most `max_keys` series (least recently alerted forgotten first)."""

    def __init__(self, *, steps: int | None = None, seconds: float | None = None,
                 max_keys: int = 10_000) -> None:
        self.steps = steps or None
        self.seconds = seconds or None
        self.suppressed = 0
        self._max_keys = max_keys
        self._last: OrderedDict[tuple[Any, ...], tuple[int, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.steps is not None or self.seconds is not None

    def admit(self, alert: Alert, now: float) -> bool:
        """True (and remembered) unless `alert` repeats one let through within the window."""
        if not self.enabled:
            return True
        if alert.severity == TRANSITION:
            key: tuple[Any, ...] = (alert.run, alert.get("layer"), alert.get("metric"),
                                    alert.get("direction"))
        else:
            key = (alert.run, alert.severity, alert.message)
        last = self._last.get(key)
        if last is not None:
            last_step, last_time = last
            if ((self.steps is not None and abs(alert.step - last_step) <= self.steps)
                    or (self.seconds is not None and now - last_time <= self.seconds)):
                self.suppressed += 1
                return False
        self._last[key] = (alert.step, now)
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return True


# ---------------------------------------------------------------------------------------------
# Rate limit.

class RateLimiter:
    """A token bucket: bursts of up to `per_minute` alerts, refilled at `per_minute` a minute.
    What it refuses is counted (by layer/metric) until `take_summary` reports it, so the
    people watching learn that something was held back and roughly what."""

    def __init__(self, per_minute: float | None, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.per_minute = per_minute or None  # None or 0: unlimited
        self._clock = clock
        self._tokens = float(per_minute or 0)
        self._stamp = clock()
        self.pending = 0  # refused since the last summary
        self.total_suppressed = 0
        self._what: Counter[str] = Counter()
        self.last_refused: Alert | None = None

    def _refill(self) -> None:
        now = self._clock()
        if self.per_minute is not None:
            self._tokens = min(float(self.per_minute),
                               self._tokens + (now - self._stamp) * self.per_minute / 60.0)
        self._stamp = now

    def try_take(self) -> bool:
        if self.per_minute is None:
            return True
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def admit(self, alert: Alert) -> bool:
        if self.try_take():
            return True
        self.pending += 1
        self.total_suppressed += 1
        self._what[_label(alert)] += 1
        self.last_refused = alert
        return False

    def take_summary(self, force: bool = False) -> tuple[int, list[tuple[str, int]]] | None:
        """(count, most common labels) of what was refused, once a token is free for the
        summary itself (or at once with `force`, at shutdown); None when nothing is due."""
        if self.pending == 0 or not (force or self.try_take()):
            return None
        out = (self.pending, self._what.most_common(3))
        self.pending = 0
        self._what.clear()
        return out


def _label(alert: Alert) -> str:
    layer, metric = alert.get("layer"), alert.get("metric")
    if metric:
        return f"{layer} {metric}" if layer else str(metric)
    return alert.severity


# ---------------------------------------------------------------------------------------------
# Fan-out.

class Sink(Protocol):
    """Where alerts go (symwatch.consumers.alerts.sinks). `submit` must return at once."""

    name: str

    def submit(self, alert: Alert) -> None: ...

    def close(self, deadline: float) -> int: ...


@dataclass
class DispatchCounts:
    received: int = 0  # EVENT messages seen
    filtered: int = 0  # left out by the rule
    deduplicated: int = 0
    rate_limited: int = 0
    dispatched: int = 0  # alerts handed to the sinks (summaries not included)
    summaries: int = 0


class Dispatcher:
    """Feed it decoded messages (`feed`) and call `tick` now and then; it hands alerts to every
    sink and to `on_alert` (the CLI prints one line each). Use from one thread."""

    def __init__(self, sinks: Iterable[Sink], rule: AlertRule | None = None, *,
                 dedup: Deduplicator | None = None, limiter: RateLimiter | None = None,
                 on_alert: Callable[[Alert], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sinks = list(sinks)
        self.rule = rule or AlertRule()
        self.dedup = dedup or Deduplicator()
        self.limiter = limiter or RateLimiter(None, clock=clock)
        self.on_alert = on_alert
        self.counts = DispatchCounts()
        self.name_hint: str | None = None  # from the registry, until the run's META arrives
        self._clock = clock
        self._names: dict[str, str] = {}  # run id -> name, from META

    def run_name(self, run: str) -> str:
        return self._names.get(run) or self.name_hint or run

    def feed(self, messages: Iterable[Message], limit: int | None = None) -> list[Alert]:
        """Process messages in order; returns the alerts dispatched. With `limit`, stop after
        that many (the rest of the batch is ignored: `--max-alerts` means exactly N)."""
        out: list[Alert] = []
        for message in messages:
            if limit is not None and len(out) >= limit:
                break
            if message.kind == protocol.META:
                self._names[message.run] = str(message.payload.get("name") or message.run)
            elif message.kind == protocol.EVENT:
                alert = self._consider(Alert.from_message(message, self.run_name(message.run)))
                if alert is not None:
                    out.append(alert)
        return out

    def _consider(self, alert: Alert) -> Alert | None:
        self.counts.received += 1
        if not self.rule.matches(alert):
            self.counts.filtered += 1
            return None
        if not self.dedup.admit(alert, self._clock()):
            self.counts.deduplicated += 1
            return None
        if not self.limiter.admit(alert):
            self.counts.rate_limited += 1
            return None
        self.counts.dispatched += 1
        self._send(alert)
        return alert

    def tick(self, *, force: bool = False) -> Alert | None:
        """Dispatch the "N more suppressed" summary when one is due (a token is free, or
        `force`); returns it."""
        due = self.limiter.take_summary(force=force)
        if due is None:
            return None
        count, top = due
        last = self.limiter.last_refused
        what = "alerts" if last is not None and last.severity != TRANSITION else "transitions"
        limit = self.limiter.per_minute
        detail = ", ".join(f"{label} ×{n}" for label, n in top)
        message = (f"{count} more {what} suppressed by the rate limit "
                   f"({limit:g} a minute){': ' + detail if detail else ''}")
        run = last.run if last is not None else "-"
        summary = Alert(run=run, run_name=self.run_name(run),
                        step=last.step if last is not None else 0, time=time.time(),
                        payload={"message": message, "severity": SUMMARY}, suppressed=count,
                        rank=last.rank if last else 0, restart=last.restart if last else 0)
        self.counts.summaries += 1
        self._send(summary)
        return summary

    def _send(self, alert: Alert) -> None:
        if self.on_alert is not None:
            self.on_alert(alert)
        for sink in self.sinks:
            sink.submit(alert)

    def close(self, timeout: float = 10.0) -> int:
        """Flush a pending summary, then let every sink deliver what it holds until a shared
        deadline; returns how many deliveries were abandoned."""
        self.tick(force=True)
        deadline = time.monotonic() + max(0.0, timeout)
        for sink in self.sinks:
            begin = getattr(sink, "begin_close", None)
            if begin is not None:
                begin(deadline)  # all sinks drain in parallel, not one after another
        return sum(sink.close(deadline) for sink in self.sinks)

    def abort(self) -> None:
        """Stop every sink now (a second Ctrl-C during `close`)."""
        for sink in self.sinks:
            stop = getattr(sink, "abort", None)
            if stop is not None:
                stop()
