"""`symwatch relay`: one fan-in point for the agents of a multi-node job, one place to view it.

```
  node A: rank 0 ─┐ PUB connect                                    SUB ┌─ symwatch attach (1)
  node A: rank 1 ─┤            ┌──────────── relay ──────────────┐      │
  node B: rank 2 ─┼──────────► │ XSUB ──(validate, cache)──► XPUB │ ─────┼─ symwatch attach (2)
  node B: rank 3 ─┘  --bind    │  history per publisher: ROUTER  │ --publish
                               └─────────────────────────────────┘      └─ symwatch record …
```

Agents publish to it with `watch(..., connect=ENDPOINT)`, `$SYMWATCH_CONNECT` or
`symwatch run --connect ENDPOINT`: their PUB socket *connects* to the relay's XSUB socket
(`--bind`) instead of binding its own. Viewers connect a SUB socket to the relay's XPUB socket
(`--publish`) exactly as to an agent, and see every rank of every run that publishes there.

- **Validated**: every message is decoded and checked (`protocol.decode`) before it is passed
  on; garbage is counted and dropped, so one bad sender cannot break every viewer.
- **Unchanged**: messages are forwarded as the agent encoded them (same frames, same `seq`),
  so viewers count gaps per (run, rank, restart) as they would on an agent's own socket.
- **Late join**: the relay keeps a bounded history per publisher (`symwatch.core.history.History`,
  the agent's own) and answers snapshot requests on a ROUTER socket next to `--publish`: one
  snapshot per publisher, each followed by its end marker, all but the last marked `more`
  (docs/protocol.md). A viewer attaching late gets every run's and every rank's history.
  Publishers silent for `forget_after` seconds (default 10 min) after their goodbye, or the
  least recently heard beyond `max_publishers`, are forgotten.
- **Registered** in the local registry (`symwatch ls`, `symwatch attach` find it) as a run
  named `relay`, with its history endpoint.
- **Security** as for an agent (docs/security.md): loopback and ipc endpoints only, unless
  CurveZMQ keys are given (`--server-key`, `--authorized`: every socket becomes a CURVE server
  and admits only the listed client keys, agents' and viewers' alike) or `--insecure`.
- The relay never blocks on a slow viewer: XPUB drops at its high-water mark (the viewer sees
  the gap), like an agent's PUB socket.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from symwatch.core import exposure, protocol, runtime
from symwatch.core.history import History
from symwatch.transport.keys import KeyFileError, load_server

DEFAULT_BIND = "tcp://127.0.0.1:5557"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5558"
DEFAULT_MAX_PUBLISHERS = 1024
DEFAULT_FORGET_AFTER_S = 600.0
REGISTRY_REFRESH_S = 2.0

Key = tuple[str, int, int]  # (run, rank, restart): one publisher


class RelayError(RuntimeError):
    """The relay cannot start (an endpoint refused or in use, unusable keys)."""


@dataclass(frozen=True)
class RelayCurve:
    """CurveZMQ for every relay socket: its key pair and the authorised client keys."""

    public: bytes
    secret: bytes
    authorized: str

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True


def load_curve(server_key: str | None, authorized: str | None) -> RelayCurve | None:
    """The relay's CURVE settings, or None when neither file is given (RelayError when only
    one is, or a key cannot be used)."""
    if server_key is None and authorized is None:
        return None
    if server_key is None or authorized is None:
        raise RelayError("CurveZMQ needs both --server-key (the relay's secret key file) and "
                         "--authorized (a directory of the agents' and viewers' public keys); "
                         "run `symwatch keygen`")
    try:
        public, secret = load_server(server_key, authorized, what="relay key")
    except KeyFileError as exc:
        raise RelayError(str(exc)) from None
    return RelayCurve(public=public, secret=secret, authorized=authorized)


def check_endpoint(endpoint: str, *, secured: bool, insecure: bool, what: str) -> str:
    """`endpoint` if the relay may bind it: ipc, loopback TCP, or any interface with keys or
    `insecure`; RelayError with what to do otherwise."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if not endpoint.startswith("tcp://") or not host or not (port.isdigit() or port == "*"):
        raise RelayError(f"{what} {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
    if port == "0":
        endpoint = f"tcp://{host}:*"
    if not secured and not insecure and not runtime.is_loopback_host(host):
        raise RelayError(f"{what}: " + exposure.refusal(host, launcher=exposure.RELAY))
    return endpoint


@dataclass
class _Publisher:
    history: History | None  # None with history=False
    last_rx: float
    last_seq: int = -1  # the newest seq relayed: a snapshot holds everything up to it
    said_goodbye: bool = False


class Relay:
    """The relay's sockets on one thread of their own; `start()` binds and returns at once."""

    def __init__(self, bind: str = DEFAULT_BIND, publish: str = DEFAULT_PUBLISH, *,
                 insecure: bool = False, curve: RelayCurve | None = None,
                 history: bool = True, history_samples: int = 256,
                 history_bytes: int = 4 * 1024 * 1024,
                 max_publishers: int = DEFAULT_MAX_PUBLISHERS,
                 forget_after: float = DEFAULT_FORGET_AFTER_S,
                 register: bool = True, name: str = "relay",
                 clock: Callable[[], float] = time.monotonic) -> None:
        secured = curve is not None
        self._bind = check_endpoint(bind, secured=secured, insecure=insecure,
                                    what="bind the agents' endpoint")
        self._publish = check_endpoint(publish, secured=secured, insecure=insecure,
                                       what="publish the viewers' endpoint")
        self._curve = curve
        self.exposed = not secured and any(
            e.startswith("tcp://") and not runtime.is_loopback_host(
                e[len("tcp://"):].rpartition(":")[0]) for e in (self._bind, self._publish))
        self._keep_history = history
        self._history_samples = history_samples
        self._history_bytes = history_bytes
        self.max_publishers = max_publishers
        self.forget_after = forget_after
        self._register = register
        self.name = name
        self._clock = clock
        self.relay_id = f"relay-{os.getpid()}-{int(time.time() * 1000) % 100000:05d}"
        self.started = time.time()
        self.bind_endpoint = ""
        self.publish_endpoint = ""
        self.history_endpoint = ""
        self.publishers: dict[Key, _Publisher] = {}
        self.received = 0  # valid messages from agents
        self.forwarded = 0  # handed to the XPUB socket
        self.dropped = 0  # refused by XPUB (no room: a gap the viewers see)
        self.garbage = 0  # frames from agents that were not valid messages (dropped)
        self.history_garbage = 0  # requests on the history socket that were not valid
        self.snapshots_served = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Relay:
        self._thread = threading.Thread(target=self._run, name="symwatch-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RelayError("the relay thread did not start in time")
        if self.error is not None:
            raise RelayError(self.error)
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Relay:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> str:
        runs = {key[0] for key in self.publishers}
        return (f"{len(runs)} run(s), {len(self.publishers)} publisher(s); "
                f"{self.received:,} messages in, {self.forwarded:,} out, "
                f"{self.garbage:,} garbage, {self.dropped:,} dropped, "
                f"{self.snapshots_served:,} histories served")

    # -- the thread ----------------------------------------------------------------------------

    def _socket(self, ctx: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
        sock = ctx.socket(kind)
        sock.linger = 0
        if self._curve is not None:
            self._curve.apply(sock)
        return sock

    def _run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        auth = None
        sockets: list[zmq.Socket[Any]] = []
        try:
            if self._curve is not None:
                # lazy: it pulls in asyncio (~35 ms), for CurveZMQ only
                from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415 (lazy: asyncio)

                auth = ThreadAuthenticator(ctx)
                auth.start()
                auth.configure_curve(domain="*", location=self._curve.authorized)
            xsub = self._socket(ctx, zmq.XSUB)
            sockets.append(xsub)
            xsub.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
            xsub.setsockopt(zmq.RCVHWM, 100_000)
            xsub.bind(self._bind)
            self.bind_endpoint = xsub.getsockopt_string(zmq.LAST_ENDPOINT)
            xsub.send(b"\x01")  # subscribe to everything: the history needs every message
            xpub = self._socket(ctx, zmq.XPUB)
            sockets.append(xpub)
            xpub.setsockopt(zmq.SNDHWM, 10_000)
            xpub.setsockopt(zmq.MAXMSGSIZE, 4096)  # viewers send subscriptions only
            xpub.bind(self._publish)
            self.publish_endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
            router = None
            if self._keep_history:
                router = self._socket(ctx, zmq.ROUTER)
                sockets.append(router)
                router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REQUEST_BYTES)
                router.setsockopt(zmq.SNDHWM, 100_000)
                router.setsockopt(zmq.ROUTER_MANDATORY, 1)
                router.bind(runtime.history_address(self.publish_endpoint))
                self.history_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        except (zmq.ZMQError, OSError) as exc:
            self.error = f"cannot start the relay: {exc}"
            for sock in sockets:
                sock.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            self._ready.set()
            return
        if self._register:
            self._refresh_registry()
        self._ready.set()
        try:
            self._loop(xsub, xpub, router)
        finally:
            for sock in sockets:
                sock.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            if self._register:
                runtime.remove_entry(self.relay_id)
            for endpoint in (self.bind_endpoint, self.publish_endpoint, self.history_endpoint):
                if endpoint.startswith("ipc://"):
                    try:
                        os.unlink(endpoint[len("ipc://"):])
                    except OSError:
                        pass

    def _loop(self, xsub: zmq.Socket[Any], xpub: zmq.Socket[Any],
              router: zmq.Socket[Any] | None) -> None:
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        if router is not None:
            poller.register(router, zmq.POLLIN)
        next_refresh = self._clock() + REGISTRY_REFRESH_S
        while not self._stop.is_set():
            ready = dict(poller.poll(100))
            if xsub in ready:
                for _ in range(1000):  # a bounded batch, so requests are answered under load
                    try:
                        frames = xsub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._relay(frames, xpub)
            if xpub in ready:
                while True:  # viewers' (un)subscriptions: XPUB filters per viewer itself
                    try:
                        xpub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            if router is not None and router in ready:
                self._serve_history(router)
            now = self._clock()
            if now >= next_refresh:
                next_refresh = now + REGISTRY_REFRESH_S
                self._forget(now)
                if self._register:
                    self._refresh_registry()

    def _relay(self, frames: list[bytes], xpub: zmq.Socket[Any]) -> None:
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError:
            self.garbage += 1
            return
        except Exception:  # noqa: BLE001 - a socket is untrusted input; never crash
            self.garbage += 1
            return
        self.received += 1
        key = (msg.run, msg.rank, msg.restart)
        pub = self.publishers.get(key)
        if pub is None:
            if len(self.publishers) >= self.max_publishers:
                oldest = min(self.publishers, key=lambda k: self.publishers[k].last_rx)
                del self.publishers[oldest]
            pub = self.publishers[key] = _Publisher(
                History(samples=self._history_samples, max_bytes=self._history_bytes)
                if self._keep_history else None, self._clock())
        pub.last_rx = self._clock()
        pub.last_seq = max(pub.last_seq, msg.seq)
        pub.said_goodbye = pub.said_goodbye or msg.kind == protocol.GOODBYE
        if pub.history is not None:
            pub.history.add(msg.kind, msg.seq, frames[0], frames[1])
        try:
            xpub.send_multipart(frames, zmq.NOBLOCK)
            self.forwarded += 1
        except zmq.Again:
            self.dropped += 1

    def _forget(self, now: float) -> None:
        for key in [k for k, p in self.publishers.items()
                    if p.said_goodbye and now - p.last_rx > self.forget_after]:
            del self.publishers[key]

    # -- late join -----------------------------------------------------------------------------

    def _serve_history(self, router: zmq.Socket[Any]) -> None:
        for _ in range(16):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            try:
                if len(frames) != 3:
                    raise protocol.ProtocolError(f"expected 3 frames, got {len(frames)}")
                max_bytes = protocol.decode_snapshot_request(frames[1:])
            except protocol.ProtocolError:
                self.history_garbage += 1
                continue
            self._send_snapshots(router, frames[0], max_bytes)

    def _send_snapshots(self, router: zmq.Socket[Any], peer: bytes, max_bytes: int) -> None:
        """One snapshot per publisher, each closed by its end marker (`more` on all but the
        last); the byte budget shared equally."""
        keys = sorted(self.publishers)
        share = max_bytes // max(1, len(keys))
        try:
            if not keys:  # nothing relayed yet: an empty, complete snapshot
                end = protocol.SnapshotEnd(run="", rank=0, restart=0, seq=-1, count=0,
                                           complete=True)
                router.send_multipart([peer, *protocol.encode_snapshot_end(end)], zmq.NOBLOCK)
                self.snapshots_served += 1
                return
            for i, key in enumerate(keys):
                pub = self.publishers[key]
                assert pub.history is not None  # no ROUTER socket without a history
                entries, complete = pub.history.snapshot(min(share, pub.history.max_bytes))
                for topic, body in entries:
                    router.send_multipart([peer, topic, body], flags=zmq.NOBLOCK, copy=False)
                end = protocol.SnapshotEnd(run=key[0], rank=key[1], restart=key[2],
                                           seq=pub.last_seq,
                                           count=len(entries), complete=complete,
                                           more=i < len(keys) - 1)
                router.send_multipart([peer, *protocol.encode_snapshot_end(end)], zmq.NOBLOCK)
            self.snapshots_served += 1
        except zmq.ZMQError:
            return  # the viewer stopped reading or went away: it sees an incomplete reply

    # -- registry ------------------------------------------------------------------------------

    def _refresh_registry(self) -> None:
        try:
            runtime.write_entry(runtime.RunEntry(
                run_id=self.relay_id, name=self.name, pid=os.getpid(),
                command=list(sys.argv), endpoint=self.publish_endpoint, started=self.started,
                host=socket.gethostname(), steps=0, updated=time.time(),
                extra={"relay": True, "bind": self.bind_endpoint,
                       "publishers": len(self.publishers),
                       **({"history_endpoint": self.history_endpoint}
                          if self.history_endpoint else {})}))
        except OSError as exc:
            if self.error is None:
                self.error = f"not listed by `symwatch ls`: {exc}"
