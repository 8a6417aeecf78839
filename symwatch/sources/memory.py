"""ListSource: a MessageSource over messages already in memory (tests, replays, no run yet)."""

from __future__ import annotations

from collections import deque
from typing import Iterable

from symwatch.core.protocol import Message


class ListSource:
    """A MessageSource over messages already in memory (tests, replays); `push` adds more."""

    def __init__(self, messages: Iterable[Message] = (), *, endpoint: str = "(recorded)",
                 batch: int | None = None) -> None:
        self.endpoint = endpoint
        self.garbage = 0
        self.last_error: str | None = None
        self._pending: deque[Message] = deque(messages)
        self._batch = batch
        self.closed = False

    def push(self, *messages: Message) -> None:
        self._pending.extend(messages)

    def poll(self, timeout_ms: int = 0) -> list[Message]:
        n = len(self._pending) if self._batch is None else min(self._batch, len(self._pending))
        return [self._pending.popleft() for _ in range(n)]

    def close(self) -> None:
        self.closed = True
