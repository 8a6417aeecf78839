"""The daemon thread that owns the agent's ZeroMQ socket and sends everything it publishes.

The training thread only ever calls `submit`, which is a non-blocking queue put: when the queue
is full (no thread time, a flood of samples) the item is dropped and counted, never waited for.
ZeroMQ PUB itself drops at its high-water mark when a subscriber is slow; receivers see those
losses as gaps in the sequence numbers. Sockets are not thread-safe, so only this thread
touches the socket; it also runs the periodic jobs (heartbeat, metadata re-send, GPU sampling,
registry refresh) so the training thread never does.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from symwatch import protocol, runtime

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


# How often the thread looks for late-join requests when nothing else wakes it.
HISTORY_POLL_INTERVAL_S = 0.2


def resolve_bind_address(endpoint: str, insecure: bool = False, curve: bool = False) -> str:
    """Check an endpoint the agent will bind and return the address to pass to zmq.bind.

    Port 0 or * means "any free port". Only loopback and Unix sockets are allowed without
    CurveZMQ keys (`curve`) or `insecure`: anything else would let any host on the network
    read the stream (docs/security.md).
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
    if not insecure and not curve and not runtime.is_loopback_host(host):
        raise PublisherError(f"refusing to publish on {host!r}: only loopback (127.0.0.1) and "
                             "ipc:// endpoints are private; view remote runs through SSH, give "
                             "CurveZMQ keys (`symwatch keygen`; curve_server_key= and "
                             "curve_authorized=), or pass insecure=True if you accept that "
                             "anyone who can reach the port can read the stream")
    return f"tcp://{host}:{port}"


def resolve_connect_address(endpoint: str, insecure: bool = False, curve: bool = False) -> str:
    """Check the address of a relay the agent will connect its PUB socket to (`connect=`).
    The same rule as for binding: the stream may leave this machine only encrypted (the
    relay's CurveZMQ key) or with `insecure`."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    if not endpoint.startswith("tcp://") or ":" not in endpoint[6:]:
        raise PublisherError(f"cannot publish to a relay at {endpoint!r}: expected "
                             "tcp://HOST:PORT or ipc://PATH (what `symwatch relay` printed)")
    host, _, port = endpoint[6:].rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise PublisherError(f"cannot publish to a relay at {endpoint!r}: port {port!r} is not "
                             "a port number")
    if not insecure and not curve and not runtime.is_loopback_host(host):
        raise PublisherError(f"refusing to send the stream in clear text to {host!r}: give the "
                             "relay's CurveZMQ public key and this agent's key "
                             "($SYMWATCH_CURVE_RELAY_KEY, $SYMWATCH_CURVE_CLIENT_KEY), reach "
                             "the relay through an SSH tunnel on 127.0.0.1, or pass "
                             "insecure=True if anyone on the network may read it")
    return endpoint


def exposed_without_curve(bind_address: str, curve: bool) -> bool:
    """True when the stream is reachable from other hosts in clear text (insecure=True)."""
    if curve or bind_address.startswith("ipc://"):
        return False
    return not runtime.is_loopback_host(bind_address[len("tcp://"):].rpartition(":")[0])


class Publisher:
    """Owns the PUB socket on a daemon thread; see the module docstring."""

    def __init__(self, endpoint: str, *, run: str, rank: int = 0, restart: int = 0,
                 queue_size: int = 256, idle_wait: float = 0.25, report: Reporter,
                 insecure: bool = False, recorder: Any = None, history: Any = None,
                 curve: Any = None, connect: bool = False) -> None:
        # connect: the PUB socket connects to a relay's XSUB socket (docs/distributed.md)
        # instead of binding; the relay then serves viewers and late joiners.
        self._connect = connect
        self._bind_address = (resolve_connect_address(endpoint, insecure, curve is not None)
                              if connect else
                              resolve_bind_address(endpoint, insecure, curve is not None))
        # A symwatch_agent.curve.CurveServer (or None): both sockets become CURVE servers and a
        # ZAP authenticator thread admits only the authorised client keys.
        self._curve = curve
        self.exposed = exposed_without_curve(self._bind_address, curve is not None)
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
        # A symwatch_agent.history.History (or None): every encoded message is kept there, and
        # a ROUTER socket next to the PUB one serves it to late viewers (docs/protocol.md,
        # "Late join"). Both sockets belong to this thread.
        self._history = history
        self.history_endpoint = ""
        self.history_garbage = 0  # requests on the history socket that were not valid
        self.snapshots_served = 0
        self._seq = 0
        self.endpoint = ""
        self.dropped = 0  # items refused because the queue was full
        self.sent = 0
        # CPU seconds this thread has used (building, encoding, sending, periodic jobs): it
        # competes with training for cores and the GIL, so the agent charges it to its budget.
        self.cpu_s = 0.0

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
        auth = None
        # Towards a relay an XPUB socket (a PUB that also hears subscriptions), so this thread
        # can wait for the relay's subscription before sending: a PUB drops everything sent
        # before it (the start-up notices, the first meta) while the connection is made.
        sock = ctx.socket(zmq.XPUB if self._connect else zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        try:
            if self._curve is not None:
                auth = self._curve.authenticator(ctx)  # before bind: no unchecked handshake
                self._curve.apply(sock)
            if self._connect:
                if self._bind_address.startswith("tcp://["):
                    sock.setsockopt(zmq.IPV6, 1)
                # Connecting never fails for an absent relay: ZeroMQ retries in the background
                # and PUB drops (counted as gaps) until it is there.
                sock.connect(self._bind_address)
                self.endpoint = self._bind_address
            else:
                sock.bind(self._bind_address)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except (zmq.ZMQError, OSError) as exc:
            self._start_error = exc
            sock.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            self._ready.set()
            return
        router = self._bind_history(ctx) if self._history is not None else None
        self._ready.set()
        try:
            if self._connect:
                # Off the training thread (watch() has returned): give the relay a moment to
                # subscribe, so the first messages are not dropped; they wait in the queue.
                if sock.poll(int(RELAY_WAIT_S * 1000), zmq.POLLIN):
                    _drain(sock)
            self._loop(sock, router)
        finally:
            # A short linger gives the goodbye a chance to leave without ever hanging exit.
            sock.close(linger=200)
            if router is not None:
                router.close(linger=0)
            if auth is not None:
                auth.stop()
            ctx.term()
            for endpoint in ((self.history_endpoint,) if self._connect
                             else (self.endpoint, self.history_endpoint)):
                if endpoint.startswith("ipc://"):
                    try:
                        os.unlink(endpoint[len("ipc://"):])
                    except OSError:
                        pass

    def _bind_history(self, ctx: zmq.Context) -> zmq.Socket | None:
        """The ROUTER socket late viewers ask for a snapshot; next to the PUB endpoint (same
        directory or interface). Failing to bind it costs the late-join history, nothing else."""
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REQUEST_BYTES)
        # A reply is at most a few thousand messages; a peer that stops reading is cut off
        # (ROUTER_MANDATORY makes a full pipe an error instead of a silent drop).
        router.setsockopt(zmq.SNDHWM, 10_000)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self._curve is not None:
            self._curve.apply(router)
        try:
            router.bind(history_bind_address(self.endpoint))
            self.history_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            return router
        except zmq.ZMQError as exc:
            router.close(0)
            self._report("history", f"cannot serve late viewers a history: {exc}")
            return None

    def _loop(self, sock: zmq.Socket, router: zmq.Socket | None = None) -> None:
        # The queue is a Python queue, not a socket, so the two cannot be polled together:
        # with a history socket the thread wakes at least every HISTORY_POLL_INTERVAL_S to
        # answer requests.
        # Every wake-up costs CPU even when there is nothing to do (about 0.2 ms of kernel time
        # on a VM), which the training pays for: 5 a second is a late viewer's snapshot within
        # 0.2 s, at a quarter of the idle cost of 20 a second.
        idle_wait = (self._idle_wait if router is None
                     else min(self._idle_wait, HISTORY_POLL_INTERVAL_S))
        while True:
            if router is not None:
                try:
                    self._serve_history(router)
                except Exception as exc:  # late join must never take the stream down
                    self._report("history", exc)
                    router = None  # closed by _run; no more snapshots this run
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
            wait = min([j.next_due for j in self._periodic], default=now + idle_wait) - now
            try:
                item = self._queue.get(timeout=max(0.0, min(wait, idle_wait)))
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
            self.cpu_s = time.thread_time()
            if self._connect:
                _drain(sock)  # the relay's (re)subscriptions: nothing to do with them
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
        if self._history is not None:
            self._history.add(kind, self._seq, frames[0], frames[1])
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            self._seq += 1
            self.sent += 1
        except zmq.Again:
            self._seq += 1  # a gap the receivers will see and count
        except zmq.ZMQError as exc:
            self._report("send", exc)

    # -- late join -----------------------------------------------------------------------------

    def _serve_history(self, router: zmq.Socket) -> None:
        for _ in range(16):  # a few requests per turn; the rest wait for the next one
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:  # Again (nothing waiting) or a socket problem
                return
            try:
                if len(frames) != 3:
                    raise protocol.ProtocolError(f"expected 3 frames, got {len(frames)}")
                max_bytes = protocol.decode_snapshot_request(frames[1:])
            except protocol.ProtocolError:
                self.history_garbage += 1  # counted and ignored: the socket does nothing else
                continue
            self._send_snapshot(router, frames[0], max_bytes)

    def _send_snapshot(self, router: zmq.Socket, peer: bytes, max_bytes: int) -> None:
        assert self._history is not None
        entries, complete = self._history.snapshot(min(max_bytes, self._history.max_bytes))
        count = 0
        try:
            for topic, body in entries:
                router.send_multipart([peer, topic, body], flags=zmq.NOBLOCK, copy=False)
                count += 1
        except zmq.Again:
            complete = False  # the viewer stopped reading; it sees count < what it expected
        except zmq.ZMQError:
            return  # the viewer went away
        # Every message with a seq up to this one was handed to the PUB socket already.
        end = protocol.SnapshotEnd(run=self._header["run"], rank=self._header["rank"],
                                   restart=self._header["restart"], seq=self._seq - 1,
                                   count=count, complete=complete)
        try:
            router.send_multipart([peer, *protocol.encode_snapshot_end(end)], flags=zmq.NOBLOCK)
            self.snapshots_served += 1
        except zmq.ZMQError:
            pass


RELAY_WAIT_S = 2.0  # how long a publisher to a relay waits for it before sending anyway


def _drain(sock: zmq.Socket) -> None:
    while True:
        try:
            sock.recv(zmq.NOBLOCK)
        except zmq.ZMQError:
            return


def history_bind_address(endpoint: str) -> str:
    """Where the history ROUTER binds, next to the bound PUB endpoint (runtime.history_address:
    `X.history.sock` beside an ipc socket, the same interface for TCP)."""
    return runtime.history_address(endpoint)
