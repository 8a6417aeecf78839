"""ReplaySource: a MessageSource over a recording that releases messages at their recorded pace.

The source keeps a position in recording time (epoch seconds, the messages' `time`). While it
plays, the position advances by wall time × `speed`; `poll` releases every message whose
`time` is at or before the position, in recorded order. Silences longer than `max_gap_s`
(recording time: a run that was paused, or stretches thinned by downsampling) are skipped, so
a replay never sits idle for hours.

`now()` returns the position: the app folds with it and asks the RunState for its connection
state with it, so a paused replay does not turn "stale", while a recording that stops without
a goodbye (a killed run) does, as the live view did.

Optional controls the TUI binds when a source has them: `toggle_play`, `faster`, `slower`,
`seek_start`, `seek_end`, and `seek_step(step)` with `steps` (the recording's first and last
step) for the scroll-back keys and "Go to step"; `generation` changes when the consumer must
start from an empty state (after `seek_start`, or a seek back); `status()` says where the
replay is.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Iterable

from symwatch.core.protocol import Message
from symwatch.core.recording import RecordingReader

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, math.inf)
DEFAULT_MAX_GAP_S = 5.0


class ReplaySource:
    """See the module docstring. Load it with `ReplaySource.open(path)` or a message list."""

    def __init__(self, messages: Iterable[Message], *, speed: float = 1.0,
                 endpoint: str = "(replay)", clock: Callable[[], float] = time.monotonic,
                 max_gap_s: float = DEFAULT_MAX_GAP_S, garbage: int = 0,
                 last_error: str | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.endpoint = endpoint
        self.garbage = garbage
        self.last_error = last_error
        self.speed = float(speed)
        self.max_gap_s = max_gap_s
        self.playing = True
        self.generation = 0
        self.closed = False
        self._messages = list(messages)
        self._clock = clock
        self._i = 0
        self._start = self._messages[0].time if self._messages else 0.0
        self._end = max((m.time for m in self._messages), default=self._start)
        self._pos = self._start
        self._last_clock: float | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: object) -> ReplaySource:
        """Read (and validate) every message of the recording at `path`."""
        with RecordingReader(path) as reader:
            messages = list(reader)
            options.setdefault("garbage", reader.garbage)
            options.setdefault("last_error", reader.last_error)
        options.setdefault("endpoint", f"(replay) {os.fspath(path)}")
        return cls(messages, **options)  # type: ignore[arg-type]

    # -- MessageSource -------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> list[Message]:
        out = self._due()
        if not out and timeout_ms > 0 and not self.exhausted and not self.closed:
            time.sleep(min(timeout_ms / 1000, self._wait_s()))
            out = self._due()
        return out

    def close(self) -> None:
        self.closed = True

    # -- position ------------------------------------------------------------------------------

    def now(self) -> float:
        """The replay position in recording time (what the view folds and ages state with)."""
        self._advance()
        return self._pos

    @property
    def exhausted(self) -> bool:
        return self._i >= len(self._messages)

    @property
    def total(self) -> int:
        return len(self._messages)

    @property
    def released(self) -> int:
        return self._i

    def _advance(self) -> None:
        now = self._clock()
        last, self._last_clock = self._last_clock, now
        if not self.playing or last is None:
            return
        if math.isinf(self.speed):
            self._pos = max(self._pos, self._end)
        else:
            self._pos += (now - last) * self.speed
        if self._i < len(self._messages):
            upcoming = self._messages[self._i].time
            if upcoming - self._pos > self.max_gap_s:  # a long silence: skip most of it
                self._pos = upcoming - min(1.0, self.max_gap_s)

    def _due(self) -> list[Message]:
        if self.closed:
            return []
        self._advance()
        start = self._i
        while self._i < len(self._messages) and self._messages[self._i].time <= self._pos:
            self._i += 1
        return self._messages[start:self._i]

    def _wait_s(self) -> float:
        if self.exhausted or not self.playing:
            return 0.05
        return max(0.0, min(0.5, (self._messages[self._i].time - self._pos) / self.speed))

    # -- controls (the TUI binds keys to these) ------------------------------------------------

    def toggle_play(self) -> None:
        self._advance()
        self.playing = not self.playing
        self._last_clock = None

    def faster(self) -> None:
        self._advance()
        self.speed = next((s for s in SPEEDS if s > self.speed), SPEEDS[-1])

    def slower(self) -> None:
        self._advance()
        self.speed = next((s for s in reversed(SPEEDS) if s < self.speed), SPEEDS[0])

    def seek_end(self) -> None:
        """Release everything at the next poll and stand at the last message."""
        self._advance()
        self._pos = max(self._pos, self._end)

    def seek_start(self) -> None:
        """Back to the first message; the consumer must start again from an empty state."""
        self._i = 0
        self._pos = self._start
        self._last_clock = None
        self.generation += 1

    @property
    def steps(self) -> tuple[int, int] | None:
        """(first, last) step of the recording, or None when it has no message."""
        if not self._messages:
            return None
        steps = [m.step for m in self._messages]
        return min(steps), max(steps)

    def seek_step(self, step: int) -> None:
        """Stand paused at `step`: every message before the first one of a later step is
        released at the next poll, so the view shows that step exactly. Behind what was
        released already, the replay starts again (`generation`) and releases up to there."""
        end = next((i for i, m in enumerate(self._messages) if m.step > step),
                   len(self._messages))
        if end < self._i:
            self._i = 0
            self.generation += 1
        self._pos = self._messages[end - 1].time if end > 0 else self._start
        self.playing = False
        self._last_clock = None

    @property
    def step(self) -> int | None:
        """The step of the last message released (None before the first)."""
        return self._messages[self._i - 1].step if self._i else None

    def label(self) -> str:
        """The header's few words (where the connection state says LIVE for a run): the
        replay, its speed, and whether it plays (`status` says the rest, in a toast)."""
        speed = "max" if math.isinf(self.speed) else f"{self.speed:g}×"
        state = "" if self.playing else "paused "
        if self.exhausted:
            state = "at end " if self.playing else "paused at end "
        return f"REPLAY {state}{speed}"

    def status(self) -> str:
        speed = "max" if math.isinf(self.speed) else f"{self.speed:g}×"
        state = "playing" if self.playing else "paused"
        if self.exhausted:
            state = "at the end" if self.playing else "paused at the end"
        elapsed = max(0.0, min(self._pos, self._end) - self._start)
        at = f"step {self.step:,}, " if self.step is not None else ""
        return (f"replay {state}, {speed}, {at}{_clock_text(elapsed)} / "
                f"{_clock_text(self._end - self._start)}, {self._i:,}/{len(self._messages):,}")


def _clock_text(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
