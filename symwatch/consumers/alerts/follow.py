"""Staying subscribed to a run across restarts, and the loop that feeds alerts to a Dispatcher.

A restarted training process gets a new run id and, by default, a new Unix socket; only its
name stays the same. So when `symwatch alert` follows a run by name and the subscription goes
silent (no message, not even a heartbeat, for `stale_after` seconds) or the run says goodbye,
`RunFollower` looks the name up in the registry again and moves its SUB socket to the newest
live run of that name. With an explicit endpoint there is nothing to look up: ZeroMQ keeps
reconnecting to it by itself.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from symwatch.core import protocol, runtime
from symwatch.consumers.alerts.rules import Dispatcher
from symwatch.transport.subscriber import EndpointError, Subscriber
from symwatch.core.protocol import Message
from symwatch.core.runtime import RunEntry

WAITING, LIVE, STALE, ENDED = "waiting", "live", "stale", "ended"
DEFAULT_STALE_AFTER = 5.0  # heartbeats come once a second; allow a few to go missing
RESOLVE_INTERVAL = 1.0  # how often a silent follower reads the registry


class RunFollower:
    """A Subscriber that follows `name` (re-resolved through the registry when silent), or a
    fixed endpoint when `name` is None. With `any_run`, the first run that registers is
    followed by its name from then on. Use from one thread; every wait is bounded."""

    def __init__(self, endpoint: str | None, name: str | None = None, *, any_run: bool = False,
                 stale_after: float = DEFAULT_STALE_AFTER,
                 status: Callable[[str], None] | None = None, curve: Any = None,
                 list_runs: Callable[[], Sequence[RunEntry]] = runtime.live_runs,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.any_run = any_run and name is None
        self.stale_after = stale_after
        self.state = WAITING
        self.switches = 0  # times the subscription moved to another endpoint
        self.run_id: str | None = None  # of the latest message
        self._status = status or (lambda line: None)
        self._list_runs = list_runs
        self._clock = clock
        self._curve = curve  # CurveZMQ client settings (transport.keys.CurveClient), or None
        self._sub: Subscriber | None = None
        self._since = clock()  # last message, or when the current subscription began
        self._next_resolve = 0.0
        if endpoint is not None:
            self._connect(endpoint)

    @property
    def endpoint(self) -> str | None:
        return self._sub.endpoint if self._sub is not None else None

    @property
    def follows_name(self) -> bool:
        return self.name is not None or self.any_run

    @property
    def garbage(self) -> int:
        return self._sub.garbage if self._sub is not None else 0

    def _connect(self, endpoint: str) -> None:
        new = Subscriber(endpoint, curve=self._curve)  # raises EndpointError; the old one stays in use then
        if self._sub is not None:
            self._sub.close()
            self.switches += 1
        self._sub = new
        self._since = self._clock()
        self._set_state(WAITING, None)

    def _set_state(self, state: str, line: str | None) -> None:
        if state != self.state and line:
            self._status(line)
        self.state = state

    def poll(self, timeout_ms: int = 200) -> list[Message]:
        """Messages ready now, waiting at most `timeout_ms`; re-resolves the name when due."""
        if self._sub is None:
            self._maybe_resolve()
            if self._sub is None:
                time.sleep(max(0, timeout_ms) / 1000)
                return []
        messages = self._sub.poll(timeout_ms)
        now = self._clock()
        if messages:
            self._since = now
            self._observe(messages)
        elif self.state in (WAITING, LIVE) and now - self._since > self.stale_after:
            what = ("no message yet" if self.state == WAITING else
                    f"no message for {now - self._since:.0f} s")
            then = ("; looking for a restarted run of that name" if self.follows_name
                    else "; ZeroMQ keeps reconnecting")
            self._set_state(STALE, f"{self._prefix()}{what} from {self.endpoint}{then}")
        if self.follows_name and self.state in (STALE, ENDED):
            self._maybe_resolve()
        return messages

    def _observe(self, messages: list[Message]) -> None:
        for message in messages:
            if message.run != self.run_id:
                self.run_id = message.run
                self.state = WAITING  # a new run on the same endpoint: say so once it is live
            if message.kind == protocol.META and self.any_run and self.name is None:
                self.name = str(message.payload.get("name") or "") or None
            if message.kind == protocol.GOODBYE:
                reason = message.payload.get("reason")
                self._set_state(ENDED, f"{self._prefix()}run {message.run} ended ({reason})"
                                + ("; waiting for a restart" if self.follows_name else ""))
            elif self.state != LIVE:
                self._set_state(LIVE, f"{self._prefix()}receiving from run {message.run} at "
                                      f"{self.endpoint}")

    def _maybe_resolve(self) -> None:
        now = self._clock()
        if now < self._next_resolve:
            return
        self._next_resolve = now + min(RESOLVE_INTERVAL, self.stale_after)
        try:
            runs = list(self._list_runs())
        except OSError as exc:
            self._status(f"cannot read the run registry: {exc}")
            return
        newest = runtime.newest_run(runs, self.name)
        if newest is None:
            return
        if newest.endpoint == self.endpoint:
            return  # the same socket: ZeroMQ reconnects on its own
        if self.name is None:
            self.name = newest.name  # --wait without a target: lock onto the first run
        try:
            self._connect(newest.endpoint)
        except EndpointError as exc:
            self._status(f"{self._prefix()}cannot follow run {newest.run_id}: {exc}")
            return
        self._status(f"{self._prefix()}following run {newest.run_id} at {newest.endpoint}")

    def _prefix(self) -> str:
        return f"{self.name}: " if self.name else ""

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None


def run_alerts(follower: RunFollower, dispatcher: Dispatcher, *, max_alerts: int | None = None,
               timeout: float | None = None, should_stop: Callable[[], bool] = lambda: False,
               poll_ms: int = 200,
               clock: Callable[[], float] = time.monotonic) -> str:
    """Feed the follower's messages to the dispatcher until `max_alerts` alerts went out
    ("max-alerts"), `timeout` seconds passed ("timeout") or `should_stop()` ("stopped").
    The dispatcher is not closed here: its caller decides how long sinks may drain."""
    deadline = None if timeout is None else clock() + timeout
    while True:
        if should_stop():
            return "stopped"
        wait = poll_ms
        if deadline is not None:
            wait = max(0, min(poll_ms, int((deadline - clock()) * 1000)))
        messages = follower.poll(wait)
        dispatcher.name_hint = follower.name
        left = None if max_alerts is None else max(0, max_alerts - dispatcher.counts.dispatched)
        dispatcher.feed(messages, limit=left)
        dispatcher.tick()
        if max_alerts is not None and dispatcher.counts.dispatched >= max_alerts:
            return "max-alerts"
        if deadline is not None and clock() >= deadline:
            return "timeout"
