"""A bounded history of published messages, served to late viewers (stdlib only; shared).

A viewer that attaches at step 50,000 asks the agent's history socket for a snapshot
(ZeroMQ's Clone pattern; see docs/protocol.md, "Late join") and sees the run so far, not an
empty screen. The agent's publisher thread owns one (one thread, no lock): it hands every
encoded message to `add` and answers requests with `snapshot`. `symwatch relay` keeps one per
publisher (run, rank, restart) that sends through it, and answers for all of them.

What is kept, all of it bounded whatever the run's length:

- `metrics` and `stats`: at most `samples` messages each. When a list is full its older half
  is thinned (every other message dropped) and the newer half kept whole, so the history
  stays dense near now and ever sparser towards the start, while the very first message is
  always kept: a week-long run still shows where it began.
- `event`: the latest `events` (transitions and notices), oldest dropped first.
- `meta`, `gpu`, `heartbeat`: the latest one of each.
- Everything together at most `max_bytes` of encoded bodies: over it, the largest series is
  thinned again (then the oldest events go).

Messages are kept exactly as they were sent (the same two frames, the same `seq`), so a
snapshot needs no re-encoding and a viewer decodes and validates them like live ones.
"""

from __future__ import annotations

from collections import deque

from symwatch.core import protocol

Entry = tuple[int, bytes, bytes]  # (seq, topic frame, body frame)

DEFAULT_SAMPLES = 256
DEFAULT_EVENTS = 1000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

_THINNED = (protocol.METRICS, protocol.STATS)
_LATEST = (protocol.META, protocol.GPU, protocol.HEARTBEAT)


class History:
    """See the module docstring. Not thread-safe: one owner thread."""

    def __init__(self, *, samples: int = DEFAULT_SAMPLES, events: int = DEFAULT_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if samples < 4 or events < 1 or max_bytes < 1:
            raise ValueError("history: samples >= 4, events >= 1 and max_bytes >= 1 required")
        self.samples = samples
        self.max_bytes = max_bytes
        self._series: dict[str, list[Entry]] = {kind: [] for kind in _THINNED}
        self._events: deque[Entry] = deque(maxlen=events)
        self._latest: dict[str, Entry] = {}
        self.bytes = 0  # encoded bytes held (topic + body of every entry)
        self.added = 0  # messages handed to `add`
        self.thinned = 0  # messages dropped to stay within the bounds

    def __len__(self) -> int:
        return (sum(len(s) for s in self._series.values()) + len(self._events)
                + len(self._latest))

    def add(self, kind: str, seq: int, topic: bytes, body: bytes) -> None:
        entry = (seq, topic, body)
        size = len(topic) + len(body)
        self.added += 1
        if kind in self._series:
            series = self._series[kind]
            series.append(entry)
            self.bytes += size
            if len(series) > self.samples:
                self._thin(series)
        elif kind == protocol.EVENT:
            if len(self._events) == self._events.maxlen:
                self._drop(self._events[0])
                self.thinned += 1
            self._events.append(entry)
            self.bytes += size
        elif kind in _LATEST:
            old = self._latest.get(kind)
            if old is not None:
                self._drop(old)
            self._latest[kind] = entry
            self.bytes += size
        else:  # goodbye, or a kind this version does not store
            return
        if self.bytes > self.max_bytes:
            self._shrink()

    def _drop(self, entry: Entry) -> None:
        self.bytes -= len(entry[1]) + len(entry[2])

    def _thin(self, series: list[Entry]) -> None:
        """Drop every other message of the older half (never the first), in place."""
        if len(series) < 3:
            return
        keep_recent = len(series) // 2
        older, recent = series[:-keep_recent], series[-keep_recent:]
        kept = older[::2]
        for entry in older[1::2]:
            self._drop(entry)
        self.thinned += len(older) - len(kept)
        series[:] = kept + recent

    def _shrink(self) -> None:
        while self.bytes > self.max_bytes:
            series = max(self._series.values(),
                         key=lambda s: sum(len(e[2]) for e in s) if len(s) >= 3 else -1)
            if len(series) >= 3:
                self._thin(series)
            elif self._events:
                self._drop(self._events.popleft())
                self.thinned += 1
            else:
                return  # only the latest meta/gpu/heartbeat and a couple of samples left

    def snapshot(self, max_bytes: int) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The stored messages, the latest `meta` first and the rest in `seq` order, within
        `max_bytes` (the oldest are left out first). Returns (frames list, complete)."""
        meta = self._latest.get(protocol.META)
        rest = [e for kind, e in self._latest.items() if kind != protocol.META]
        for series in self._series.values():
            rest.extend(series)
        rest.extend(self._events)
        rest.sort(key=lambda e: e[0])
        budget = max_bytes
        complete = True
        head: list[tuple[bytes, bytes]] = []
        if meta is not None:
            size = len(meta[1]) + len(meta[2])
            if size <= budget:
                head.append((meta[1], meta[2]))
                budget -= size
            else:
                complete = False
        tail: list[tuple[bytes, bytes]] = []
        for seq, topic, body in reversed(rest):  # newest first, so a cut loses the oldest
            size = len(topic) + len(body)
            if size > budget:
                complete = False
                break
            tail.append((topic, body))
            budget -= size
        tail.reverse()
        return head + tail, complete
