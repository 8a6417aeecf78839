"""What a message source is: the `MessageSource` protocol every view reads from, the optional
capabilities some sources add, and `SourceError`.

Every source has an `endpoint`, `garbage` and `last_error` counters, `poll` and `close`
(`MessageSource`). Some can do more, and say so by having the attribute:

- `where` (`Located`): what to call the source on screen instead of its endpoint (a tunnel's
  local socket is named by its ssh:// URL).
- `on_arrival` (`Wakeable`): a callback the source calls (in its own thread) when messages are
  queued, so a view redraws when data arrives rather than on a clock (BackgroundFeed).
- `connected` (`Connectable`): None before the first connection, False while it is down.
- `now()` and `generation` (`Clocked`): the source's own clock (a replay ages the state in
  recording time), and a counter that changes when a consumer must start again from an
  empty state (a replay seeked back).
- `toggle_play`, `faster`, `slower`, `seek_start`, `seek_end` and `status()` (`Replayable`):
  the controls of a replay, and where it stands; `seek_step(step)`, `steps` and `step`
  (`StepSeekable`): standing at any step of it.

The live sources (symwatch.transport.subscriber's Subscriber and BackgroundFeed) sit below this
package and cannot inherit from it, so views read the optional capabilities through the
functions here (`where`, `clock`, `generation`, `disconnected`, `listen`, `replay_control`,
`step_seek`, `status`), never with getattr of their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

from symwatch.core.protocol import Message

REPLAY_CONTROLS = ("toggle_play", "faster", "slower", "seek_start", "seek_end")


class SourceError(Exception):
    """A source that cannot be opened: a bad endpoint, an ssh failure, an unreadable recording.
    The message is the original one (fit to show a user); the original exception is the
    `__cause__`."""


class MessageSource(Protocol):
    """What the TUI and the headless printer read from: decoded messages plus receive counters."""

    endpoint: str

    @property
    def garbage(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...

    def poll(self, timeout_ms: int = 0) -> list[Message]: ...

    def close(self) -> None: ...


# -- optional capabilities ---------------------------------------------------------------------

class Located(Protocol):
    where: str | None


class Wakeable(Protocol):
    on_arrival: Callable[[], None] | None


class Connectable(Protocol):
    @property
    def connected(self) -> bool | None: ...


class Clocked(Protocol):
    generation: int

    def now(self) -> float: ...


class Replayable(Protocol):
    def toggle_play(self) -> None: ...

    def faster(self) -> None: ...

    def slower(self) -> None: ...

    def seek_start(self) -> None: ...

    def seek_end(self) -> None: ...

    def status(self) -> str: ...


class StepSeekable(Protocol):
    """A source that can stand at any step of a run known in advance (a replay)."""

    @property
    def steps(self) -> tuple[int, int] | None: ...

    def seek_step(self, step: int) -> None: ...


# -- reading them from any source --------------------------------------------------------------

def where(source: MessageSource) -> str:
    """What to call the source on screen: its `where` when it has one, else its endpoint."""
    return getattr(source, "where", None) or getattr(source, "endpoint", "?")


def clock(source: MessageSource) -> Callable[[], float]:
    """The clock to fold and age the state with: the source's `now`, else time.monotonic."""
    return getattr(source, "now", None) or time.monotonic


def generation(source: MessageSource) -> int:
    """The source's generation (0 for a source that never starts again)."""
    return getattr(source, "generation", 0)


def disconnected(source: MessageSource) -> bool:
    """True while a source that knows its connection says it is down (not before the first)."""
    return getattr(source, "connected", None) is False


def listen(source: MessageSource, wake: Callable[[], None]) -> bool:
    """Have the source call `wake` when data arrives, if it can; whether it can."""
    if not hasattr(source, "on_arrival"):
        return False
    source.on_arrival = wake  # type: ignore[attr-defined]
    return True


def replay_control(source: MessageSource, name: str) -> Callable[[], object] | None:
    """The source's replay control `name` (one of REPLAY_CONTROLS), or None without it."""
    control = getattr(source, name, None) if name in REPLAY_CONTROLS else None
    return control if callable(control) else None


def replay_label(source: MessageSource) -> str | None:
    """A replay's state in a few words for the header (`REPLAY 8×`, `REPLAY paused 8×`), or
    None for a source that is not a replay."""
    label = getattr(source, "label", None)
    return label() if callable(label) else None


@dataclass(frozen=True)
class StepSeek:
    """A source's step seek, read now: `seek(step)`, the run's (first, last) step, and the step
    of the last message released (`at`, None before the first)."""

    seek: Callable[[int], None]
    steps: tuple[int, int]
    at: int | None


def step_seek(source: MessageSource) -> StepSeek | None:
    """The step seek of a source that can stand at any step (a replay with messages), else
    None: the scroll-back keys and "Go to step" then move the replay instead of the view."""
    seek = getattr(source, "seek_step", None)
    steps = getattr(source, "steps", None)
    if not callable(seek) or steps is None:
        return None
    return StepSeek(seek, steps, getattr(source, "step", None))


def status(source: MessageSource) -> str | None:
    """Where a replay stands (`status()`), or None for a source without one."""
    text = getattr(source, "status", None)
    return str(text()) if callable(text) else None

