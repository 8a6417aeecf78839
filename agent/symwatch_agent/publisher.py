"""The daemon thread that owns the agent's ZeroMQ socket and sends everything it publishes.

The training thread only ever calls `submit`, which is a non-blocking queue put: when the queue
is full (no thread time, a flood of samples) the item is dropped and counted, never waited for.
ZeroMQ PUB itself drops at its high-water mark when a subscriber is slow; receivers see those
losses as gaps in the sequence numbers. Sockets are not thread-safe, so only this thread
touches the socket; it also runs the periodic jobs (heartbeat, metadata re-send, GPU sampling,
registry refresh) so the training thread never does.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from symwatch import protocol

Payload = dict[str, Any]
# A payload, or a function the publisher thread calls to build it (used to read back tensors
# off the training thread). Either may be None-valued for "nothing to send this time".
PayloadSource = Payload | Callable[[], Payload | None]
Reporter = Callable[[str, BaseException | str], None]


class PublisherError(RuntimeError):
    """The publisher could not start (bad endpoint, address in use, refused interface)."""


@dataclass
class Periodic:
    """A job the publisher thread runs every `interval` seconds; it returns a message
    (kind, payload, step) to send, or None."""

    interval: float
    job: Callable[[], tuple[str, Payload, int] | None]
    next_due: float = 0.0


def resolve_bind_address(endpoint: str, insecure: bool = False) -> str:
    """Check an endpoint the agent will bind and return the address to pass to zmq.bind.

    Port 0 or * means "any free port". Only loopback and Unix sockets are allowed without
    `insecure`: anything else would let any host on the network read the stream.
    """
    if endpoint.startswith("ipc://"):
        return endpoint
    if not endpoint.startswith("tcp://") or ":" not in endpoint[6:]:
        raise PublisherError(f"cannot publish on {endpoint!r}: expected tcp://HOST:PORT "
                             "or ipc://PATH")
    host, _, port = endpoint[6:].rpartition(":")
    if port in ("0", "*"):
        port = "*"
    elif not port.isdigit():
        raise PublisherError(f"cannot publish on {endpoint!r}: port {port!r} is not a number")
    if not insecure and not _is_loopback(host):
        raise PublisherError(f"refusing to publish on {host!r}: only loopback (127.0.0.1) and "
                             "ipc:// endpoints are private; view remote runs through SSH, or "
                             "pass insecure=True if you accept that anyone can read the stream")
    return f"tcp://{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Publisher:
    """Owns the PUB socket on a daemon thread; see the module docstring."""

    def __init__(self, endpoint: str, *, run: str, rank: int = 0, restart: int = 0,
                 queue_size: int = 256, idle_wait: float = 0.25, report: Reporter,
                 insecure: bool = False, recorder: Any = None) -> None:
        self._bind_address = resolve_bind_address(endpoint, insecure)
        self._header = {"run": run, "rank": rank, "restart": restart}
        self._queue: queue.Queue[tuple[str, PayloadSource, int] | None] = queue.Queue(queue_size)
        self._periodic: list[Periodic] = []
        self._idle_wait = idle_wait
        self._report = report
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        # A symwatch.recording.Recorder (or None): each encoded message is handed to it here,
        # on this thread, with a non-blocking put; its own thread writes the file.
        self._recorder = recorder
        self._seq = 0
        self.endpoint = ""
        self.dropped = 0  # items refused because the queue was full
        self.sent = 0

    def add_periodic(self, interval: float, job: Callable[[], tuple[str, Payload, int] | None]) -> None:
        self._periodic.append(Periodic(interval, job))

    def start(self, timeout: float = 10.0) -> str:
        """Start the thread and bind; returns the endpoint actually bound (with its port)."""
        self._thread = threading.Thread(target=self._run, name="symwatch-publisher", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise PublisherError("the publisher thread did not start in time")
        if self._start_error is not None:
            raise PublisherError(f"cannot publish on {self._bind_address}: "
                                 f"{self._start_error}") from self._start_error
        return self.endpoint

    def submit(self, kind: str, payload: PayloadSource, step: int) -> bool:
        """Queue a message without ever blocking; returns False (and counts it) if dropped."""
        try:
            self._queue.put_nowait((kind, payload, step))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, goodbye: Payload | None = None, step: int = 0, timeout: float = 2.0) -> None:
        """Send `goodbye` (best effort), stop the thread and close the socket."""
        if self._thread is None:
            return
        if goodbye is not None:
            try:
                # Make room: a goodbye matters more than a stale sample.
                while self._queue.full():
                    self._queue.get_nowait()
                    self.dropped += 1
                self._queue.put_nowait((protocol.GOODBYE, goodbye, step))
            except (queue.Full, queue.Empty):
                pass
        self._stopping.set()
        try:
            self._queue.put_nowait(None)  # wake the thread
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        ctx = zmq.Context()  # our own context: never share the user's
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        try:
            sock.bind(self._bind_address)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._start_error = exc
            sock.close(0)
            ctx.term()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(sock)
        finally:
            # A short linger gives the goodbye a chance to leave without ever hanging exit.
            sock.close(linger=200)
            ctx.term()
            if self.endpoint.startswith("ipc://"):
                try:
                    os.unlink(self.endpoint[len("ipc://"):])
                except OSError:
                    pass

    def _loop(self, sock: zmq.Socket) -> None:
        while True:
            now = time.monotonic()
            for job in self._periodic:
                if now >= job.next_due:
                    job.next_due = now + job.interval
                    try:
                        message = job.job()
                    except Exception as exc:
                        self._report(f"periodic:{getattr(job.job, '__name__', 'job')}", exc)
                        continue
                    if message is not None:
                        self._send(sock, *message)
            wait = min([j.next_due for j in self._periodic], default=now + self._idle_wait) - now
            try:
                item = self._queue.get(timeout=max(0.0, min(wait, self._idle_wait)))
            except queue.Empty:
                item = None
            if item is not None:
                kind, source, step = item
                try:
                    payload = source() if callable(source) else source
                except Exception as exc:
                    self._report(f"build:{kind}", exc)
                    payload = None
                if payload is not None:
                    self._send(sock, kind, payload, step)
                if kind == protocol.GOODBYE:
                    return
            if self._stopping.is_set() and self._queue.empty():
                return

    def _send(self, sock: zmq.Socket, kind: str, payload: Payload, step: int) -> None:
        now = time.time()
        try:
            frames = protocol.encode(kind, seq=self._seq, time=now, step=step,
                                     payload=payload, **self._header)
        except protocol.ProtocolError as exc:
            self._report(f"encode:{kind}", exc)
            return
        if self._recorder is not None:
            h = self._header
            self._recorder.submit(kind, h["run"], h["rank"], h["restart"], self._seq, now, step,
                                  frames[1])
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            self._seq += 1
            self.sent += 1
        except zmq.Again:
            self._seq += 1  # a gap the receivers will see and count
        except zmq.ZMQError as exc:
            self._report("send", exc)
