"""FramePacer: when the run view may redraw for new data. Plain Python, no Textual: the app
asks it and tells it what a redraw cost; the clocks are injected (tests/tui/test_pacing.py).

The view redraws when data arrives (a source that wakes it, e.g. BackgroundFeed), and on a
clock in any case (the stale countdown; sources that cannot wake the app). Redraws for new
data are paced:

- at most one per MIN_FRAME_S (Textual composes at most 60 screen updates a second);
- from a budget of DATA_SHARE of the UI thread's CPU time: a token bucket holding up to
  BURST_S, each redraw charged what it took (fold, draw and the screen update after it), so
  cheap redraws go out at once and expensive ones (1,000 layers at 10 Hz, a busy machine) are
  spaced so that a key press is answered within about one redraw however fast messages come;
- by the clock on the wall too: after a redraw that took w seconds, none for
  w·(1/DATA_SHARE − 1). On a busy machine CPU time undercounts a redraw (waiting for the GIL,
  for a core), and redraws back to back leave no turn of the event loop in which a key press
  could arrive;
- input first: with a key or a click waiting, a tick is put off (by INPUT_FIRST_S, up to
  MAX_DEFERRALS times in a row: data must show in the end).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

MIN_FRAME_S = 1 / 60  # Textual composes at most 60 screen updates a second (TEXTUAL_FPS)
DATA_SHARE = 0.4
# Small: a key press reaches the app only when the event loop turns between two pieces of work
# (the terminal's input thread hands it over with run_coroutine_threadsafe), so redraws must
# not run back to back. 0.25 s let five 50 ms redraws of a 1,000-layer table go in a row, and a
# key waited behind all of them; 0.06 s is one such redraw, or several cheap ones.
BURST_S = 0.06
# With input waiting, a tick comes back this much later, at most MAX_DEFERRALS times in a row.
INPUT_FIRST_S = 0.004
MAX_DEFERRALS = 10


@dataclass
class Frame:
    """One tick being timed: when it started (wall, monotonic) and the UI thread's CPU time
    then; once it drew new data, when the drawing started, the CPU time at its end and what
    it was charged so far (the rest is charged when the screen has updated: `shown`)."""

    started: float
    cpu_started: float
    drawn_started: float = 0.0
    cpu_drawn: float = 0.0
    drawn_cost: float = 0.0


class FramePacer:
    """See the module docstring. `clock` is wall time (time.monotonic), `cpu_clock` the UI
    thread's CPU time (time.thread_time)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.thread_time,
                 min_frame_s: float = MIN_FRAME_S, data_share: float = DATA_SHARE,
                 burst_s: float = BURST_S, max_deferrals: int = MAX_DEFERRALS) -> None:
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.min_frame_s = min_frame_s
        self.data_share = data_share
        self.burst_s = burst_s
        self.max_deferrals = max_deferrals
        self.budget = burst_s  # seconds of UI time data redraws may use now (token bucket)
        self._budget_at = clock()
        self.last_tick_at = 0.0  # when the last drawing tick started
        self.last_draw_end = 0.0  # when the last redraw of new data ended
        self.last_draw_wall = 0.0  # and the wall-clock time it took
        self.frame_cost = 0.0  # CPU seconds a redraw takes, tick to screen update (smoothed)
        self.deferrals = 0  # ticks put off for input in a row

    # -- when --------------------------------------------------------------------------------

    def _refill(self) -> float:
        now = self.clock()
        self.budget = min(self.burst_s, self.budget + (now - self._budget_at) * self.data_share)
        self._budget_at = now
        return now

    def next_frame_at(self) -> float:
        """The earliest time (on `clock`) the next redraw of new data may go out."""
        now = self._refill()
        at = max(self.last_tick_at + self.min_frame_s,
                 self.last_draw_end + self.last_draw_wall * (1 / self.data_share - 1))
        return max(at, now - self.budget / self.data_share) if self.budget < 0 else at

    def delay(self) -> float:
        """Seconds until a redraw may go out (0 or less: now)."""
        return self.next_frame_at() - self.clock()

    def due(self) -> bool:
        """Whether a redraw may go out now."""
        now = self.clock()
        return now >= self.next_frame_at()

    def defer_for_input(self, input_waiting: bool) -> bool:
        """Input first: whether to put the tick off because input is waiting (counted; never
        more than `max_deferrals` ticks in a row)."""
        if input_waiting and self.deferrals < self.max_deferrals:
            self.deferrals += 1
            return True
        self.deferrals = 0
        return False

    # -- what a redraw cost ------------------------------------------------------------------

    def begin(self) -> Frame:
        """A tick starts (whether it draws or not)."""
        return Frame(started=self.clock(), cpu_started=self.cpu_clock())

    def drawing(self, frame: Frame) -> None:
        """The tick draws: the pace counts from its start."""
        self.last_tick_at = frame.started
        frame.drawn_started = self.clock()

    def charge(self, cpu_started: float) -> float:
        """Take the UI thread's CPU time since `cpu_started` from the budget; that cost. CPU
        time, not wall time: on a busy machine waiting for a core is not work of ours, and
        charging it would slow the view down for nothing."""
        self._refill()
        cost = self.cpu_clock() - cpu_started
        self.budget -= cost
        return cost

    def drawn(self, frame: Frame) -> None:
        """The tick drew new data. Charged now, not only once the screen has updated: redraws
        scheduled before that would otherwise run back to back, uncharged, with no screen
        update (and no turn of the event loop for a key press) in between."""
        frame.cpu_drawn = self.cpu_clock()
        frame.drawn_cost = self.charge(frame.cpu_started)
        self.last_draw_end = self.clock()
        self.last_draw_wall = self.last_draw_end - frame.drawn_started

    def shown(self, frame: Frame) -> None:
        """The screen update after a drawn frame: the rest of its cost."""
        cost = frame.drawn_cost + self.charge(frame.cpu_drawn)
        self.frame_cost = 0.7 * self.frame_cost + 0.3 * cost
