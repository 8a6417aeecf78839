"""SymwatchApp: the live Textual view of one run, fed by any MessageSource (never a socket)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer

from symwatch.client import BackgroundFeed, MessageSource
from symwatch.protocol import Message
from symwatch.state import DEFAULT_STALE_AFTER, FINISHED, STALE, WAITING, RunState
from symwatch.tui.banner import ConnectionBanner
from symwatch.tui.columns import next_view
from symwatch.tui.events_screen import EventsScreen
from symwatch.tui.layer_detail import LayerDetailScreen
from symwatch.tui.header import RunHeader
from symwatch.tui.help import HelpScreen
from symwatch.tui.layer_table import LayerTable
from symwatch.tui.panels import EventsLog, GpuLine, LossPanel

# The view redraws on this clock, however fast messages arrive, so a flood cannot starve input.
TICK_S = 0.2
# Time one tick may spend folding; the rest waits (in the app's backlog, then in the source,
# then ZeroMQ drops at its high-water mark and the gap shows as "dropped") for later ticks.
FOLD_BUDGET_S = 0.05
NOTIFY_SEVERITIES = ("warning", "error", "transition")


class SymwatchApp(App[None]):
    """Drains `source.poll(0)` every TICK_S into a RunState and redraws the widgets from it."""

    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("p", "pause", "Pause/resume"),
        Binding("v", "next_view", "Columns"),
        Binding("e", "events", "Events"),
        # Replay controls: live only when the source has them (see check_action).
        Binding("space", "replay('toggle_play')", "Play/pause", priority=True),
        Binding("plus,equals_sign", "replay('faster')", "Faster", key_display="+",
                priority=True),
        Binding("minus", "replay('slower')", "Slower", key_display="-", priority=True),
        Binding("home", "replay('seek_start')", "Start", priority=True),
        Binding("end", "replay('seek_end')", "End", priority=True),
    ]

    def __init__(self, source: MessageSource, *, title: str | None = None,
                 stale_after: float = DEFAULT_STALE_AFTER, owns_source: bool = False,
                 tick_s: float = TICK_S, bell: bool = False) -> None:
        super().__init__()
        self.ring_bell = bell  # the terminal bell on each transition, for who looks away
        self.source = source
        self.endpoint: str = getattr(source, "endpoint", "?")
        self.state = RunState(stale_after=stale_after)
        self.paused = False
        self.owns_source = owns_source
        self.tick_s = tick_s
        self.tick_errors = 0  # internal failures while drawing; counted, shown, never fatal
        self.last_tick_error: str | None = None
        self._drawn_key: tuple[Any, ...] | None = None
        self._backlog: deque[Message] = deque()
        self._events_seen = 0
        self.title = title or f"symwatch — {self.endpoint}"
        # A replay source ages the state on its own clock (recording time), so a paused replay
        # is not "stale"; `generation` changes when it seeks back and the state must restart.
        self._clock = getattr(source, "now", None) or time.monotonic
        self._generation = getattr(source, "generation", 0)

    def compose(self) -> ComposeResult:
        with Vertical(id="main"):
            yield RunHeader(id="header")
            yield ConnectionBanner(id="banner")
            yield LayerTable(id="layers")
            yield LossPanel(id="loss")
            yield GpuLine(id="gpu")
            yield EventsLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LayerTable).focus()
        self.tick()
        self.set_interval(self.tick_s, self.tick)

    def on_unmount(self) -> None:
        if self.owns_source:
            self.source.close()

    # -- the clock -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Drain the source, fold, redraw. Anything unexpected is counted, not raised."""
        now = self._clock()
        try:
            if getattr(self.source, "generation", 0) != self._generation:
                self._restart_state()
            self._drain(now)
            if not self.paused:
                self._draw(now)
        except Exception as exc:  # noqa: BLE001 - the view must outlive any bad input
            self.tick_errors += 1
            self.last_tick_error = f"{type(exc).__name__}: {exc}"

    def _drain(self, now: float) -> None:
        deadline = time.monotonic() + FOLD_BUDGET_S
        while time.monotonic() < deadline:
            if not self._backlog:
                batch = self.source.poll(0)
                if not batch:
                    break
                self._backlog.extend(batch)
            while self._backlog and time.monotonic() < deadline:
                msg = self._backlog.popleft()
                try:
                    self.state.fold(msg, now)
                except Exception as exc:  # noqa: BLE001 - one bad message costs one message
                    self.tick_errors += 1
                    self.last_tick_error = f"{type(exc).__name__}: {exc}"
        self.state.garbage = int(getattr(self.source, "garbage", 0))
        self.state.last_error = getattr(self.source, "last_error", None)

    def _restart_state(self) -> None:
        self._generation = getattr(self.source, "generation", 0)
        self.state = RunState(stale_after=self.state.stale_after)
        self._backlog.clear()
        self._events_seen = 0
        self._drawn_key = None
        self.query_one(LayerTable).clear()

    def _draw(self, now: float) -> None:
        state = self.state
        connection = state.connection(now)
        silent = state.silent_for(now)
        key = (state.revision, connection, state.garbage, self.size,
               int(silent) if connection == STALE and silent is not None else None)
        if key == self._drawn_key:
            return
        self._drawn_key = key
        main = self.query_one("#main")
        for name in (WAITING, STALE, FINISHED):
            main.set_class(connection == name, f"-{name}")
        self.query_one(RunHeader).show(state, connection, endpoint=self.endpoint, paused=False)
        self.query_one(ConnectionBanner).show(state, connection, endpoint=self.endpoint,
                                              silent_for=silent)
        if connection != WAITING:
            self.query_one(LayerTable).sync(state)
            self.query_one(LossPanel).show(state)
            self.query_one(GpuLine).show(state)
            self.query_one(EventsLog).show(state)
        self._notify_events()

    def _notify_events(self) -> None:
        fresh = min(self.state.events_total - self._events_seen, len(self.state.events), 5)
        self._events_seen = self.state.events_total
        if fresh <= 0:
            return
        for ev in list(self.state.events)[-fresh:]:
            if ev.severity in NOTIFY_SEVERITIES and not ev.history:
                self.notify(ev.message, title=f"step {ev.step:,}",
                            severity="error" if ev.severity == "error" else "warning")
                if self.ring_bell and ev.severity == "transition":
                    self.bell()

    # -- actions -------------------------------------------------------------------------------

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
        else:
            self.push_screen(HelpScreen())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a layer row: that layer's detail screen."""
        if isinstance(event.data_table, LayerTable) and event.row_key.value:
            self.push_screen(LayerDetailScreen(self.state, str(event.row_key.value)))

    def action_events(self) -> None:
        """Every transition and notice so far, in a scrollable timeline."""
        if isinstance(self.screen, EventsScreen):
            self.screen.dismiss(None)
        else:
            self.push_screen(EventsScreen(self.state))

    def action_next_view(self) -> None:
        """Show the next family of indicator columns (overview, rank, units, scale, all)."""
        table = self.query_one(LayerTable)
        table.view = next_view(table.view, self.state.indicator_names())
        self.notify(f"columns: {table.view}", timeout=1.5)
        self._drawn_key = None
        self.tick()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "replay":  # bound (and shown) only for a source with that control
            return bool(parameters) and callable(getattr(self.source, str(parameters[0]), None))
        return True

    def action_replay(self, control: str) -> None:
        getattr(self.source, control)()
        status = getattr(self.source, "status", None)
        if callable(status):
            self.notify(str(status()), timeout=2.0)
        self.tick()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._drawn_key = None
        self.query_one(RunHeader).show(self.state, self.state.connection(self._clock()),
                                       endpoint=self.endpoint, paused=self.paused)
        if not self.paused:
            self.tick()


def make_app(endpoint: str, *, title: str | None = None,
             stale_after: float = DEFAULT_STALE_AFTER, bell: bool = False,
             curve: Any = None) -> SymwatchApp:
    """The app on a live endpoint: a BackgroundFeed (its own thread and socket) as the source;
    `curve` (symwatch.keys.CurveClient) for an agent that requires CurveZMQ."""
    feed = BackgroundFeed(endpoint, curve=curve)
    return SymwatchApp(feed, title=title, stale_after=stale_after, owns_source=True, bell=bell)
