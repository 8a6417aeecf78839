"""The observer's ZeroMQ subscriber: decoded messages from one agent endpoint, never a crash."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from symwatch.core import protocol
from symwatch.core.protocol import Message, ProtocolError
from symwatch.transport.late_join import LateJoin

_TCP_RE = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]\s]+):(?P<port>\d{1,5})$")

# A drain stops after this many frames so one poll cannot run unbounded under a flood; the rest
# stays queued in ZeroMQ (bounded by its high-water mark) for the next poll.
DEFAULT_MAX_BATCH = 20_000

# After ZeroMQ reports a disconnect it normally schedules a reconnect at once (CONNECT_RETRIED).
# It does not after a protocol error (a frame over MAXMSGSIZE, a peer that is not ZMTP): the
# session is dropped for good. If no retry shows up within this grace, we reconnect ourselves.
_RETRY_GRACE_S = 0.25

_MONITOR_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_SUCCEEDED


class EndpointError(ValueError):
    """An endpoint string we cannot connect to."""


def validate_endpoint(endpoint: str) -> str:
    """Return `endpoint` stripped if it is `tcp://HOST:PORT` or `ipc://PATH`, else raise
    EndpointError with a message fit to show a user."""
    ep = endpoint.strip()
    if ep.startswith("tcp://"):
        m = _TCP_RE.match(ep)
        if m and 0 < int(m.group("port")) < 65536:
            return ep
    elif ep.startswith("ipc://") and len(ep) > len("ipc://"):
        return ep
    hint = ""
    if re.fullmatch(r"[^:/\s]*:\d{1,5}", ep):
        host, port = ep.rsplit(":", 1)
        hint = f" (did you mean tcp://{host or '127.0.0.1'}:{port}?)"
    raise EndpointError(f"expected tcp://HOST:PORT or ipc://PATH, got {endpoint!r}{hint}")


class Subscriber:
    """One SUB socket connected to one endpoint. Use it from a single thread (ZeroMQ sockets
    are not thread-safe); `BackgroundFeed` wraps it in a thread of its own."""

    def __init__(self, endpoint: str, *, context: zmq.Context[Any] | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, curve: Any = None) -> None:
        self.endpoint = validate_endpoint(endpoint)
        self.garbage = 0  # frames that were not a valid message, plus connections ZeroMQ cut
        self.last_error: str | None = None
        self.received = 0  # valid messages
        self.resets = 0  # connections we re-opened after ZeroMQ gave up on them
        # None until the first connection; then False while it is down (ZeroMQ retrying),
        # True while up. From the socket monitor, read in `poll`.
        self.connected: bool | None = None
        self.max_batch = max_batch
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        self._sock.linger = 0
        # ZeroMQ refuses larger frames before allocating them; see _RETRY_GRACE_S for the cost.
        self._sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        # Retry an absent endpoint every 20 ms, not ZeroMQ's 100 ms: a run that starts after
        # the viewer (`symwatch demo`) is joined sooner, so less of its start is missed.
        self._sock.setsockopt(zmq.RECONNECT_IVL, 20)
        if self.endpoint.startswith("tcp://["):
            self._sock.setsockopt(zmq.IPV6, 1)  # ZeroMQ refuses IPv6 literals without it
        if curve is not None:  # a symwatch.transport.keys.CurveClient: encrypted, the server key pinned
            curve.apply(self._sock)
        try:
            self._monitor: zmq.Socket[bytes] | None = self._sock.get_monitor_socket(
                _MONITOR_EVENTS)
        except zmq.ZMQError:
            self._monitor = None  # no self-healing reconnect, but receiving still works
        self._lost_at: float | None = None  # when a disconnect was seen with no retry yet
        self._closed = False
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise EndpointError(f"cannot connect to {self.endpoint}: {exc}") from None

    def poll(self, timeout_ms: int = 0) -> list[Message]:
        """Every message ready now (up to max_batch), waiting at most `timeout_ms` for the
        first. Bad input is counted in `garbage` / `last_error`, never raised."""
        if self._closed:
            return []
        self._watch_connection()
        try:
            if not self._sock.poll(max(0, int(timeout_ms)), zmq.POLLIN):
                return []
        except zmq.ZMQError as exc:
            self.last_error = f"poll failed: {exc}"
            return []
        out: list[Message] = []
        for _ in range(self.max_batch):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                self._count_garbage(f"receive failed: {exc}")
                break
            try:
                out.append(protocol.decode(frames))
            except ProtocolError as exc:
                self._count_garbage(str(exc))
            except Exception as exc:  # noqa: BLE001 - a socket is untrusted input; never crash
                self._count_garbage(f"{type(exc).__name__}: {exc}")
        self.received += len(out)
        return out

    def _count_garbage(self, error: str) -> None:
        self.garbage += 1
        self.last_error = error[:300]

    def _watch_connection(self) -> None:
        if self._monitor is None:
            return
        try:
            while self._monitor.poll(0):
                event = recv_monitor_message(self._monitor)["event"]
                if event == zmq.EVENT_DISCONNECTED:
                    self._lost_at = time.monotonic()
                    self.connected = False
                elif event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                    self._lost_at = None
                    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        self.connected = True
        except zmq.ZMQError:
            return
        if self._lost_at is not None and time.monotonic() - self._lost_at > _RETRY_GRACE_S:
            self._lost_at = None
            self.resets += 1
            self._count_garbage(
                "the connection was cut by ZeroMQ after a protocol error (a frame over "
                f"{protocol.MAX_MESSAGE_BYTES} bytes, or a peer that is not a symwatch agent); "
                "reconnected")
            try:
                self._sock.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass  # the session is already gone; connect below is what matters
            try:
                self._sock.connect(self.endpoint)
            except zmq.ZMQError as exc:
                self.last_error = f"reconnect to {self.endpoint} failed: {exc}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
            self._monitor = None
        self._sock.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackgroundFeed:
    """A daemon thread that owns a Subscriber and hands decoded messages over through a bounded
    thread-safe queue (`poll`) or a callback run in the feed thread (`on_messages`).

    With `history` (the default) a viewer that attaches late first gets the agent's history
    (symwatch.transport.late_join): those messages come first, marked `snapshot_seq`, then live ones."""

    def __init__(self, endpoint: str, *, on_messages: Callable[[list[Message]], None] | None = None,
                 max_queue: int = 100_000, poll_ms: int = 100,
                 context: zmq.Context[Any] | None = None, history: bool = True,
                 history_endpoint: str | None = None, curve: Any = None) -> None:
        self.endpoint = validate_endpoint(endpoint)
        self._curve = curve
        self._history = history
        self._history_endpoint = history_endpoint
        self.late_join: Any = None  # the LateJoin, once the thread made it
        self.overflow = 0  # messages discarded because the reader fell behind by max_queue
        # Called in the feed thread after each batch is queued (no arguments; it must not
        # block): the TUI's wake-up, so it redraws when data arrives rather than on a clock.
        self.on_arrival: Callable[[], None] | None = None
        self._on_messages = on_messages
        self._queue: deque[Message] = deque()
        self._max_queue = max_queue
        self._poll_ms = poll_ms
        self._context = context
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._sub: Subscriber | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"symwatch-feed {self.endpoint}",
                                        daemon=True)
        self._thread.start()
        self._started.wait(5.0)
        if self._error is not None and self._sub is None:
            raise EndpointError(self._error)

    @property
    def garbage(self) -> int:
        return ((self._sub.garbage if self._sub else 0)
                + (self.late_join.garbage if self.late_join is not None else 0))

    @property
    def last_error(self) -> str | None:
        return self._error or (self._sub.last_error if self._sub else None)

    @property
    def resets(self) -> int:
        return self._sub.resets if self._sub else 0

    @property
    def connected(self) -> bool | None:
        """The subscriber's: None before the first connection, False while it is down."""
        return self._sub.connected if self._sub else None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        # The socket is created, used and closed in this thread only.
        try:
            self._sub = Subscriber(self.endpoint, context=self._context, curve=self._curve)
        except Exception as exc:  # noqa: BLE001 - reported through last_error
            self._error = str(exc)
            self._started.set()
            return
        join = None
        if self._history:
            join = self.late_join = LateJoin(self.endpoint, context=self._context,
                                             history_endpoint=self._history_endpoint,
                                             curve=self._curve)
        self._started.set()
        try:
            while not self._stop.is_set():
                waiting = join is not None and join.waiting
                batch = self._sub.poll(min(self._poll_ms, 20) if waiting else self._poll_ms)
                if join is not None and not (join.done and not batch):
                    batch = join.process(batch)
                if not batch:
                    continue
                if self._on_messages is not None:
                    try:
                        self._on_messages(batch)
                    except Exception as exc:  # noqa: BLE001 - a bad callback must not kill the feed
                        self._error = f"message callback failed: {type(exc).__name__}: {exc}"
                    continue
                with self._ready:
                    self._queue.extend(batch)
                    excess = len(self._queue) - self._max_queue
                    if excess > 0:
                        # Oldest first: the live view needs the latest state, and META repeats.
                        for _ in range(excess):
                            self._queue.popleft()
                        self.overflow += excess
                    self._ready.notify_all()
                wake = self.on_arrival
                if wake is not None:
                    try:
                        wake()
                    except Exception as exc:  # noqa: BLE001 - e.g. the app's loop has closed
                        self._error = f"arrival callback failed: {type(exc).__name__}: {exc}"
        finally:
            self._sub.close()

    def poll(self, timeout_ms: int = 0, max_messages: int | None = None) -> list[Message]:
        """Take queued messages (at most `max_messages`), waiting up to `timeout_ms` for one."""
        with self._ready:
            if not self._queue and timeout_ms > 0:
                self._ready.wait(timeout_ms / 1000)
            n = len(self._queue) if max_messages is None else min(max_messages, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def wait_for_message(self, timeout_s: float) -> bool:
        """True as soon as a message is queued (left in place for `poll`), False on timeout."""
        with self._ready:
            return self._ready.wait_for(lambda: bool(self._queue), timeout_s)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
