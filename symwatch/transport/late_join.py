"""Late join on the observer side: ask the agent for its history, then go live without gaps or
duplicates (ZeroMQ's Clone pattern; docs/protocol.md, "Late join").

`BackgroundFeed` runs a `LateJoin` in its thread: subscribe first (the Subscriber), hold the
first live messages back, learn where the agent's history socket is (the registry entry, or
the `history_endpoint` field of the first `meta`/`heartbeat`), ask it for a snapshot with a
DEALER and a deadline, deliver the snapshot's messages (marked `snapshot_seq`, oldest first),
then the held-back and later live messages whose `seq` is newer than the snapshot. An agent
without a history (an older one, `history=False`, an unreachable socket) costs at most a
short wait: live messages then flow as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import zmq

from symwatch.core import protocol, runtime
from symwatch.core.protocol import Message, ProtocolError

SNAPSHOT_TIMEOUT_S = 3.0  # the agent answers from memory; this only bounds a dead or odd peer
# Without a registry entry, the first `heartbeat` (1 s) or `meta` says where the history is;
# live messages are held back at most this long for it.
ENDPOINT_WAIT_S = 2.5
MAX_HELD = 100_000  # live messages held back while the snapshot is fetched (oldest dropped)


@dataclass
class Snapshot:
    messages: list[Message]  # decoded, in the order the agent sent them
    end: protocol.SnapshotEnd
    garbage: int  # frames in the reply that were not valid messages
    # Every end marker: one from an agent; one per publisher from `symwatch relay`, each but
    # the last with `more` set (its messages come before it).
    ends: list[protocol.SnapshotEnd] = field(default_factory=list)


def registry_history_endpoint(endpoint: str) -> str | None:
    """The `history_endpoint` of the registered run publishing on `endpoint`, if any."""
    try:
        for entry in runtime.live_runs(prune=False):
            if entry.endpoint == endpoint and isinstance(entry.extra, dict):
                value = entry.extra.get("history_endpoint")
                return value if isinstance(value, str) else None
    except (OSError, ValueError):
        pass
    return None


def usable_history_endpoint(pub_endpoint: str, advertised: Any) -> str | None:
    """The history endpoint to connect to, or None. An agent may only point at its own host:
    ipc next to an ipc PUB socket (or loopback TCP), and for a TCP PUB socket the port on the
    host we already connect to (an agent bound to 0.0.0.0 advertises that, not a name)."""
    if not isinstance(advertised, str) or len(advertised) > 1024:
        return None
    if advertised.startswith("ipc://"):
        return advertised if pub_endpoint.startswith("ipc://") and len(advertised) > 6 else None
    if not advertised.startswith("tcp://"):
        return None
    host, _, port = advertised[len("tcp://"):].rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if pub_endpoint.startswith("ipc://"):
        return advertised if runtime.is_loopback_host(host) else None
    pub_host = pub_endpoint[len("tcp://"):].rpartition(":")[0]
    return f"tcp://{pub_host}:{port}"


def fetch_snapshot(endpoint: str, *, context: zmq.Context[Any] | None = None,
                   timeout_s: float = SNAPSHOT_TIMEOUT_S,
                   max_bytes: int = protocol.DEFAULT_SNAPSHOT_BYTES,
                   curve: Any = None) -> Snapshot | str:
    """Ask the history socket at `endpoint` for a snapshot. Returns it, or a one-line reason
    (timeout, bad reply). Never waits longer than `timeout_s` in all."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.RCVHWM, 0)  # the reply is bounded by max_bytes; take all of it
    if curve is not None:
        curve.apply(sock)
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    deadline = time.monotonic() + timeout_s
    messages: list[Message] = []
    ends: list[protocol.SnapshotEnd] = []
    garbage = 0
    received = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart(protocol.encode_snapshot_request(max_bytes), flags=zmq.NOBLOCK)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1):
                return f"no history from {endpoint} within {timeout_s:g} s"
            frames = sock.recv_multipart()
            received += sum(len(f) for f in frames)
            if frames and frames[0] == protocol.SNAPSHOT_END.encode("ascii"):
                try:
                    end = protocol.decode_snapshot_end(frames)
                except ProtocolError as exc:
                    return f"bad end of history from {endpoint}: {exc}"
                ends.append(end)
                if end.more:  # a relay: the next publisher's snapshot follows
                    continue
                return Snapshot(messages, ends[0], garbage, ends)
            if received > max_bytes + protocol.MAX_MESSAGE_BYTES:
                return f"history from {endpoint} exceeds the {max_bytes} bytes asked for"
            try:
                messages.append(protocol.decode(frames))
            except ProtocolError:
                garbage += 1
    except zmq.ZMQError as exc:
        return f"history request to {endpoint} failed: {exc}"
    finally:
        sock.close(linger=0)


class LateJoin:
    """The feed thread's late-join state machine; `process` each live batch, deliver what it
    returns. See the module docstring."""

    def __init__(self, endpoint: str, *, context: zmq.Context[Any] | None = None,
                 history_endpoint: str | None = None, timeout_s: float = SNAPSHOT_TIMEOUT_S,
                 endpoint_wait_s: float = ENDPOINT_WAIT_S,
                 max_bytes: int = protocol.DEFAULT_SNAPSHOT_BYTES, curve: Any = None) -> None:
        self.endpoint = endpoint
        self._context = context
        self._timeout_s = timeout_s
        self._endpoint_wait_s = endpoint_wait_s
        self._max_bytes = max_bytes
        self._curve = curve
        known = history_endpoint or registry_history_endpoint(endpoint)
        self._history_endpoint = usable_history_endpoint(endpoint, known) if known else None
        self._held: list[Message] = []
        self._first_at: float | None = None
        self._cutoff: dict[tuple[str, int, int], int] = {}
        self.done = False
        self.snapshot_messages = 0  # history messages delivered
        self.skipped = 0  # live messages already contained in the snapshot
        self.garbage = 0  # bad frames in the snapshot reply
        self.error: str | None = None  # why there is no history, if there is none

    def process(self, batch: list[Message], now: float | None = None) -> list[Message]:
        if self.done:
            return self._newer(batch) if self._cutoff else batch
        now = time.monotonic() if now is None else now
        if batch and self._first_at is None:
            self._first_at = now
        self._held.extend(batch)
        if len(self._held) > MAX_HELD:
            del self._held[:len(self._held) - MAX_HELD]
        if self._first_at is None:
            return []  # nothing live yet: the subscription may not be in place; ask later
        if any(msg.kind == protocol.GOODBYE for msg in batch):
            # the run has ended: its history socket is gone; deliver what arrived, at once
            self.error = "the run ended before its history was fetched"
            return self._finish([])
        target = self._history_endpoint
        if target is None:
            # the agent may have registered since we started (it imports torch first)
            known = registry_history_endpoint(self.endpoint)
            target = usable_history_endpoint(self.endpoint, known) if known else None
        if target is None:
            for msg in batch:
                if msg.kind in (protocol.META, protocol.HEARTBEAT):
                    advertised = msg.get("history_endpoint")
                    target = usable_history_endpoint(self.endpoint, advertised)
                    if target is None:  # this agent keeps no history (or points elsewhere)
                        self.error = ("the agent serves no history" if advertised is None else
                                      f"ignored history endpoint {str(advertised)[:80]!r}")
                        return self._finish([])
                    break
        if target is None:
            if now - self._first_at >= self._endpoint_wait_s:
                self.error = "the agent did not say where its history is"
                return self._finish([])
            return []
        result = fetch_snapshot(target, context=self._context, timeout_s=self._timeout_s,
                                max_bytes=self._max_bytes, curve=self._curve)
        if isinstance(result, str):
            self.error = result
            return self._finish([])
        self.garbage += result.garbage
        for end in result.ends or [result.end]:
            self._cutoff[(end.run, end.rank, end.restart)] = end.seq
        history = [replace(m, snapshot_seq=self._cutoff[(m.run, m.rank, m.restart)])
                   for m in result.messages
                   if m.seq <= self._cutoff.get((m.run, m.rank, m.restart), -1)]
        self.garbage += len(result.messages) - len(history)
        self.snapshot_messages = len(history)
        return self._finish(history)

    def _finish(self, history: list[Message]) -> list[Message]:
        self.done = True
        held, self._held = self._held, []
        return history + (self._newer(held) if self._cutoff else held)

    def _newer(self, batch: list[Message]) -> list[Message]:
        out = []
        for msg in batch:
            cutoff = self._cutoff.get((msg.run, msg.rank, msg.restart))
            if cutoff is not None and msg.seq <= cutoff:
                self.skipped += 1
            else:
                out.append(msg)
        return out

    @property
    def waiting(self) -> bool:
        """True while live messages are held back (the feed then polls more often)."""
        return not self.done and self._first_at is not None
