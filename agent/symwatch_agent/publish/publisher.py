"""The daemon thread that owns the agent's ZeroMQ socket and sends everything it publishes.

The training thread only ever calls `submit`, which is a non-blocking queue put: when the queue
is full (no thread time, a flood of samples) the item is dropped and counted, never waited for.
ZeroMQ PUB itself drops at its high-water mark when a subscriber is slow; receivers see those
losses as gaps in the sequence numbers. Sockets are not thread-safe, so only this thread
touches the socket; it also runs the periodic jobs (heartbeat, metadata re-send, GPU sampling,
registry refresh) so the training thread never does.

The thread is event-driven: it sleeps in one `zmq.Poller` on the history ROUTER socket, the
relay's XPUB socket (connect mode) and the read end of a pipe that `submit` and `close` write a
byte into, until one of them is ready or the next periodic job is due. Every wake-up costs CPU
that the training pays for (about 0.2 ms of kernel time on a VM), so there is no polling clock.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from symwatch.core import exposure, protocol, runtime

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


# The longest the thread sleeps when nothing is due: nothing should need it (every message
# and request wakes it), but if a wake-up were ever lost, a queued message waits at most this.
MAX_SLEEP_S = 5.0
# Periodic jobs due within this much of each other run in one wake-up, not two.
PERIODIC_SLACK_S = 0.005
# A job due within this fraction of its interval runs early when a submitted message has woken
# the thread anyway, keeping to its grid: the heartbeat, GPU and metadata jobs ride on the
# STATS wake-ups while a run trains. On a VM each wake-up costs ~0.6 ms of CPU (the poll's
# return, the pipe, ZeroMQ's hand-off: 0.73 ms a second measured with only the 1 Hz jobs), and
# the jobs' own wake-ups were a third of the publisher's steady cost (docs/benchmarks.md).
# 0.9, not 0.5: with STATS once a second (at least that far apart) the 1 Hz heartbeat then
# always finds a STATS wake-up within 0.9 s before its due time (at 0.5 it did only half the
# time, by phase: 2 wake-ups a second, measured); and not 1, so that a job that has just run
# on time does not run again at a wake-up a moment later.
EARLY_FRACTION = 0.9
# The longest a submit waits for another thread's one-byte write to the wake-up pipe (only
# ever reached in a forked child, on a lock its parent's thread held at the fork).
WAKE_LOCK_WAIT_S = 0.05


def resolve_bind_address(endpoint: str, insecure: bool = False, curve: bool = False,
                         launcher: str = exposure.WATCH) -> str:
    """Check an endpoint the agent will bind and return the address to pass to zmq.bind.

    Port 0 or * means "any free port". Only loopback and Unix sockets are allowed without
    CurveZMQ keys (`curve`) or `insecure`: anything else would let any host on the network
    read the stream (docs/security.md). `launcher` (symwatch.core.exposure): how the agent was
    started, so that a refusal says what to type (a keyword, a flag, a variable).
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
        raise PublisherError(exposure.refusal(host, launcher=launcher))
    return f"tcp://{host}:{port}"


def resolve_connect_address(endpoint: str, insecure: bool = False, curve: bool = False,
                            launcher: str = exposure.WATCH) -> str:
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
        raise PublisherError(exposure.refusal(host, launcher=launcher, connect=True))
    return endpoint


def exposed_without_curve(bind_address: str, curve: bool) -> bool:
    """True when the stream is reachable from other hosts in clear text (insecure=True)."""
    if curve or bind_address.startswith("ipc://"):
        return False
    return not runtime.is_loopback_host(bind_address[len("tcp://"):].rpartition(":")[0])


class Publisher:
    """Owns the PUB socket on a daemon thread; see the module docstring."""

    def __init__(self, endpoint: str, *, run: str, rank: int = 0, restart: int = 0,
                 queue_size: int = 256, idle_wait: float = MAX_SLEEP_S, report: Reporter,
                 insecure: bool = False, recorder: Any = None, history: Any = None,
                 curve: Any = None, connect: bool = False,
                 launcher: str = exposure.WATCH) -> None:
        # connect: the PUB socket connects to a relay's XSUB socket (docs/distributed.md)
        # instead of binding; the relay then serves viewers and late joiners.
        self._connect = connect
        self._bind_address = (resolve_connect_address(endpoint, insecure, curve is not None,
                                                      launcher)
                              if connect else
                              resolve_bind_address(endpoint, insecure, curve is not None,
                                                   launcher))
        # A symwatch_agent.publish.curve.CurveServer (or None): both sockets become CURVE servers and a
        # ZAP authenticator thread admits only the authorised client keys.
        self._curve = curve
        self.exposed = exposed_without_curve(self._bind_address, curve is not None)
        self._header = {"run": run, "rank": rank, "restart": restart}
        self._queue: queue.Queue[tuple[str, PayloadSource, int]] = queue.Queue(queue_size)
        self._periodic: list[Periodic] = []
        # The longest the thread sleeps with nothing due (a safety net, see MAX_SLEEP_S).
        self._idle_wait = idle_wait
        # The wake-up pipe (made by `start`): `submit` and `close` write a byte to the write
        # end, the thread polls the read end next to its sockets. -1: no pipe (not started, or
        # the thread has ended and closed it). `_wake_pending` keeps at most one byte unread in
        # the usual case, so a burst of submits costs one write, not one each; the lock only
        # keeps a write off an fd number the thread is closing (and maybe the OS reusing).
        self._wake_r = -1
        self._wake_w = -1
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self.wakeups = 0  # times the thread woke up (a message, a request, a job, or the cap)
        self._report = report
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        # A symwatch.core.recording.Recorder (or None): each encoded message is handed to it here,
        # on this thread, with a non-blocking put; its own thread writes the file.
        self._recorder = recorder
        # A symwatch.core.history.History (or None): every encoded message is kept there, and
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
        # Made here rather than in __init__ so that a publisher never started holds no file
        # descriptors; os.pipe's are close-on-exec, so a subprocess the user starts does not
        # inherit them. Both ends non-blocking: a full pipe already holds a wake-up, and the
        # thread drains the read end until it would block.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False  # anything submitted before now is read on the first turn
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
        except queue.Full:
            self.dropped += 1
            return False
        # With a wake-up already pending, the thread reads this item with the rest of the queue
        # when that byte wakes it: a burst of submits costs one write.
        if not self._wake_pending:
            self._wake()
        return True

    def _wake(self) -> None:
        """Write one byte into the wake-up pipe. Called from the training thread and from the
        publisher thread itself (a build that reports an event): it never raises, and waits
        only for another writer's one-byte write. A write that fails costs nothing: a full
        pipe (BlockingIOError) already holds a wake-up, and a closed one means the thread has
        ended.

        Every caller writes its own byte, even when another holds the lock: that writer's byte
        may already have been read by the thread before this caller's item was queued (seen
        on the publisher thread: its event's wake-up skipped while the training thread, its
        byte consumed, had not yet released the lock; the stats behind it waited for the next
        heartbeat). The lock only keeps a write off an fd number the thread is closing.

        In a forked child (a DataLoader worker) the pipe is still the parent's: a byte written
        there only gives the parent's thread one spurious wake-up. A lock a parent thread held
        at the fork is never released in the child, hence the bounded wait."""
        self._wake_pending = True
        if not self._wake_lock.acquire(timeout=WAKE_LOCK_WAIT_S):
            return
        try:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")
        except OSError:
            pass
        finally:
            self._wake_lock.release()

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
        self._wake()  # even if a byte is pending: this is the one wake-up that must arrive
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Still inside a sample's computation (a slow first sample on a loaded machine).
            # Leaving now would let the interpreter finalise under a thread running torch
            # kernels, which aborts the process ("terminate called without an active
            # exception", exit −6): a finished training run reported as a crash. Waiting a
            # little longer is the lesser harm; said once, so a slow exit is explained.
            self._report("close", f"waiting up to {LATE_CLOSE_S:g} s for the sample in "
                                  "progress to finish before exit")
            self._thread.join(LATE_CLOSE_S)
        self._thread = None

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._close_wake_pipe()

    def _close_wake_pipe(self) -> None:
        """Close the wake-up pipe once the thread is done with it. The write end's number is
        cleared under the lock first: a `submit` after this finds -1 and writes nothing,
        rather than a byte into whatever file the OS gives that number next."""
        with self._wake_lock:
            write_end, self._wake_w = self._wake_w, -1
        read_end, self._wake_r = self._wake_r, -1
        for fd in (write_end, read_end):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _serve(self) -> None:
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
        # One poller for everything that can give the thread work, so it sleeps until there is
        # some: a byte in the wake-up pipe (a submitted message, close), a late viewer's request
        # on the history socket, the relay's (re)subscriptions on the XPUB socket; the poll's
        # timeout is the next periodic job. No polling clock: on a VM every wake-up costs about
        # 0.2 ms of kernel CPU that the training pays for.
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        if router is not None:
            poller.register(router, zmq.POLLIN)
        if self._connect:
            poller.register(sock, zmq.POLLIN)
        # Items read per turn: a flood of submits cannot keep the thread from history
        # requests and periodic jobs; whatever is left is read on the next turn, at once.
        per_turn = self._queue.maxsize if self._queue.maxsize > 0 else 256
        while True:
            next_due = self._run_due_jobs(sock)
            if not self._queue.empty():
                timeout_ms = 0
            else:
                wait = min(next_due - time.monotonic(), self._idle_wait)
                # Rounded up: waking a little early would spin on zero timeouts until due.
                timeout_ms = math.ceil(max(0.0, wait) * 1000)
            ready = dict(poller.poll(timeout_ms))
            self.wakeups += 1
            woken = self._wake_r in ready
            if woken:
                self._drain_wake_pipe()
                # Cleared after the pipe is read and before the queue is: a submit from now on
                # writes a new byte, one from before has its item read below.
                self._wake_pending = False
            if router is not None and router in ready:
                try:
                    self._serve_history(router)
                except Exception as exc:  # late join must never take the stream down
                    self._report("history", exc)
                    poller.unregister(router)
                    router = None  # closed by _serve; no more snapshots this run
            if self._connect and sock in ready:
                _drain(sock)  # the relay's (re)subscriptions: nothing to do with them
            for _ in range(per_turn):
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item[0] == protocol.GOODBYE:
                    # Last of all: what the items before it submitted while being built (a
                    # sample's events, a non-finite loss's divergence) is queued behind it and
                    # would never go out otherwise.
                    for _ in range(per_turn):
                        try:
                            later = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if later[0] != protocol.GOODBYE:
                            self._build_and_send(sock, *later)
                    self._build_and_send(sock, *item)
                    return
                self._build_and_send(sock, *item)
            if woken and not self._stopping.is_set():
                self._run_due_jobs(sock, awake=True)
            self.cpu_s = time.thread_time()
            if self._stopping.is_set() and self._queue.empty():
                return

    def _build_and_send(self, sock: zmq.Socket, kind: str, source: PayloadSource,
                        step: int) -> None:
        try:
            payload = source() if callable(source) else source
        except Exception as exc:
            self._report(f"build:{kind}", exc)
            payload = None
        if payload is not None:
            self._send(sock, kind, payload, step)

    def _run_due_jobs(self, sock: zmq.Socket, awake: bool = False) -> float:
        """Run the periodic jobs that are due; returns when the next one is (monotonic time),
        or infinity when there are none. Each job keeps to its own grid (due + interval, not
        now + interval), so jobs whose intervals are multiples of each other (the heartbeat
        every second, the metadata every five) stay in step and share wake-ups. `awake`: the
        thread is up for a message anyway, so jobs due within EARLY_FRACTION of their
        interval run now rather than wake it again."""
        now = time.monotonic()
        for job in self._periodic:
            early = EARLY_FRACTION * job.interval if awake else PERIODIC_SLACK_S
            if now + early >= job.next_due:
                job.next_due += job.interval
                if job.next_due <= now:  # the first run, or the thread fell behind: no catch-up
                    job.next_due = now + job.interval
                try:
                    message = job.job()
                except Exception as exc:
                    self._report(f"periodic:{getattr(job.job, '__name__', 'job')}", exc)
                    continue
                if message is not None:
                    self._send(sock, *message)
        return min((job.next_due for job in self._periodic), default=math.inf)

    def _drain_wake_pipe(self) -> None:
        while True:
            try:
                if not os.read(self._wake_r, 4096):
                    return
            except OSError:  # BlockingIOError: empty, which is the point
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
# How long close() waits, after its own timeout, for a sample still being computed.
LATE_CLOSE_S = 30.0


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
