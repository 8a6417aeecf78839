"""SymwatchApp: the live Textual view of one run, fed by any MessageSource (never a socket)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Iterable, Iterator

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message as UiMessage
from textual.notifications import Notification, Notify, SeverityLevel
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input

from symwatch.core import runtime
from symwatch.core.protocol import Message
from symwatch.core.runtime import RunEntry
from symwatch.sources import base as sources
from symwatch.sources.base import SourceError
from symwatch.sources.base import MessageSource
from symwatch.sources.memory import ListSource
from symwatch.sources.open import open_endpoint
from symwatch.state.run_state import (DEFAULT_STALE_AFTER, FINISHED, LIVE, RECONNECTING, STALE, WAITING,
                            RunState)
from symwatch.tui.widgets.banner import ConnectionBanner
from symwatch.tui.columns import measured_indicators, next_view, shown_views
from symwatch.tui.widgets.legend import LegendLine, ViewTabs
from symwatch.tui.commands import palette_commands
from symwatch.tui.widgets.filter_bar import FilterBar
from symwatch.tui.layer_order import next_sort_column
from symwatch.tui.themes import DARK, ThemeError, resolve_theme, toggled
from symwatch.tui.screens.events import EventsScreen
from symwatch.tui.screens.layer_detail import LayerDetailScreen
from symwatch.tui.widgets.header import RunHeader
from symwatch.tui.screens.goto_step import GoToStepScreen
from symwatch.tui.screens.help import HelpScreen
from symwatch.tui import history_view
from symwatch.tui.history_view import HistoryWindow
from symwatch.tui.heap import LongLivedHistory
from symwatch.tui.widgets.layer_table import LayerTable
from symwatch.tui.main_layout import MainHeights, main_heights
from symwatch.tui.widgets.panels import EventsLog, GpuLine, LossPanel, events_log_lines
from symwatch.tui.pacing import INPUT_FIRST_S, FramePacer
from symwatch.tui.screens.runs import RunsConfig, RunsScreen, open_runs_screen
from symwatch.tui.widgets.ranks_panel import RanksLine, RanksScreen

# The view redraws when data arrives (a source with `on_arrival`, e.g. BackgroundFeed), and on
# this clock in any case (the stale countdown; sources that cannot wake the app). Redraws for
# new data are paced by symwatch.tui.pacing.FramePacer.
TICK_S = 0.2
# Time one go of folding may take. What is left (the rest of a large message, in slices, then
# the app's backlog, then the source, where ZeroMQ drops at its high-water mark and the gap
# shows as "dropped") is folded by the next go, queued behind any key press that came
# meanwhile: a key waits for at most one go, not for a whole 1,000-layer message.
FOLD_SLICE_S = 0.012
FOLD_PAUSE_S = 0.006  # between goes: folding a backlog takes at most 2/3 of the UI thread
NOTIFY_SEVERITIES = ("warning", "error", "transition")
# Event toasts on screen at once: a burst of transitions (a weight-decay switch moves every
# layer) stacked a column of toasts over the loss chart. Older ones give way to newer; the
# events timeline (`e`) keeps every event whole. Below WIDE_COLUMNS a toast is half the
# screen's width: one at a time.
EVENT_TOASTS = 2
WIDE_COLUMNS = 120
# How often a view whose run ended (or went silent) looks for a restart of it in the registry.
FOLLOW_CHECK_S = 1.0


def toast_text(message: str) -> str:
    """An event's message for a toast: its lead (the top jump and the loss beside it) and any
    [exogenous: …] explanation; the list of other series that moved (`; also …`) is left to
    the events timeline."""
    lead, also, rest = message.partition("; also ")
    if not also:
        return message
    bracket = rest.rfind(" [")
    return lead + " …" + (rest[bracket:] if bracket >= 0 and rest.endswith("]") else "")


# The App's actions that act on the dashboard (its table, charts, history window): disabled,
# and left off the footer, on the Runs screen (SymwatchApp.check_action), as are a replay's
# controls (Home and End are the runs list's there).
DASHBOARD_ACTIONS = frozenset({
    "pause", "next_view", "events", "ranks", "next_sort", "reverse_sort", "filter",
    "history_pan", "history_jump", "history_zoom", "history_live", "goto_step", "follow_run"})


class SymwatchApp(App[None]):
    """Drains `source.poll(0)` into a RunState (when the source says data arrived, and every
    TICK_S) and redraws the widgets from it, paced (symwatch.tui.pacing)."""

    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        # Replay controls: live only when the source has them (see check_action); first, so
        # that a replay's footer shows its speed keys however narrow the terminal.
        Binding("space", "replay('toggle_play')", "Play/pause", priority=True),
        Binding("plus,equals_sign", "replay('faster')", "Faster", key_display="+",
                priority=True),
        Binding("minus", "replay('slower')", "Slower", key_display="-", priority=True),
        Binding("home", "replay('seek_start')", "Start", priority=True),
        Binding("end", "replay('seek_end')", "End", priority=True),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Help", key_display="?"),
        # "Freeze", not "Pause/resume": a replay's footer also shows `space Play/pause` (its
        # playback), and the two read as one key twice (a new user's report)
        Binding("p", "pause", "Freeze"),
        Binding("v", "next_view", "Columns"),
        Binding("e", "events", "Events"),
        Binding("g", "ranks", "Ranks/GPUs"),
        Binding("r", "runs", "Runs"),
        Binding("s", "next_sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse sort", show=False),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("t", "toggle_theme", "Theme", show=False),
        # Scroll-back through the run's history (symwatch.tui.history_view).
        Binding("left_square_bracket", "history_pan(-0.5)", "Back", key_display="["),
        Binding("right_square_bracket", "history_pan(0.5)", "Forward", key_display="]",
                show=False),
        Binding("left_curly_bracket", "history_jump(-1)", "Back a lot", key_display="{",
                show=False),
        Binding("right_curly_bracket", "history_jump(1)", "Forward a lot", key_display="}",
                show=False),
        Binding("z", "history_zoom(2)", "Zoom out", show=False),
        Binding("Z", "history_zoom(0.5)", "Zoom in", show=False),
        Binding("L", "history_live", "Live", show=False),
        Binding("G", "goto_step", "Go to step", show=False),
        # A restart of the run (same name, new process): shown only when there is one.
        Binding("f", "follow_run", "Follow restart"),
        Binding("end", "history_live", "Live", show=False, priority=True),  # if no replay
    ]

    def __init__(self, source: MessageSource, *, title: str | None = None,
                 stale_after: float = DEFAULT_STALE_AFTER, owns_source: bool = False,
                 tick_s: float = TICK_S, bell: bool = False, theme: str | None = None,
                 follow: bool | None = None, curve: Any = None) -> None:
        super().__init__()
        # A restarted run (same name, new process and socket, in this machine's registry):
        # None: not looked for (a replay, a recording); False: offered (a notification naming
        # `f`); True: followed at once (`symwatch attach --follow`). `curve`: the CurveZMQ
        # client settings the new run's socket is opened with, as this one's was.
        self.follow = follow
        self.curve = curve
        self.restart_offer: RunEntry | None = None
        self.follows = 0  # switches to a restarted run so far
        # a Textual theme name; None: $SYMWATCH_THEME, else the terminal's background (the
        # command line reports a bad $SYMWATCH_THEME; here it falls back to the dark theme)
        try:
            self.theme = theme or resolve_theme()
        except ThemeError:
            self.theme = DARK
        self.ring_bell = bell  # the terminal bell on each transition, for who looks away
        self.source = source
        # what the header names: a source's `where` (e.g. ssh://host/run), else its endpoint
        self.endpoint: str = sources.where(source)
        self.state = RunState(stale_after=stale_after)
        self.paused = False  # paused or scrolled back: `window` is not live
        self.window = HistoryWindow()  # the stretch of the run shown (live: the newest)
        self._window_run: str | None = None  # the run the window was set on
        self._wake_pending = False  # a redraw is scheduled because data arrived
        self.pacer = FramePacer()  # when redraws for new data may go out
        self.long_lived = LongLivedHistory()  # the run's series kept out of full GC passes
        self._heap_checked_at = 0.0
        self._tick_deferred = False  # a tick waits for input to be handled first
        self._deferred_draw = False  # ... and one of the ticks it stands for was to draw
        self._folding: Iterator[None] | None = None  # a message folded in slices, part-way
        self._fold_queued = False  # a go of folding is queued behind the app's other messages
        self.owns_source = owns_source
        self.tick_s = tick_s
        self.tick_errors = 0  # internal failures while drawing; counted, shown, never fatal
        self.last_tick_error: str | None = None
        self._drawn_key: tuple[Any, ...] | None = None
        self._drawn_revision = -1
        self._heights: MainHeights | None = None  # the table's, loss chart's and log's, once fitted
        self._fit_retries = 0  # fits put off in a row: a line shown but not laid out yet
        self._backlog: deque[Message] = deque()
        self._events_seen = 0
        self._event_toasts: deque[Notification] = deque()
        self._toasts_to_drop: set[str] = set()  # identities of toasts dropped before shown
        self.title = title or f"symwatch — {self.endpoint}"
        # A replay source ages the state on its own clock (recording time), so a paused replay
        # is not "stale"; `generation` changes when it seeks back and the state must restart.
        self._clock = sources.clock(source)
        self._generation = sources.generation(source)
        # the Runs screen's hosts and ssh options (symwatch.tui.screens.runs)
        self.runs_config: RunsConfig | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="main"):
            yield RunHeader(id="header")
            yield ConnectionBanner(id="banner")
            yield ViewTabs(id="view-tabs")
            yield LayerTable(id="layers")
            yield LegendLine(id="legend")
            yield FilterBar(id="filter-bar")
            yield LossPanel(id="loss")
            yield GpuLine(id="gpu")
            yield RanksLine(id="ranks-line")
            yield EventsLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LayerTable).focus()
        self._listen(self.source)
        self.tick()
        self.set_interval(self.tick_s, self._clock_tick)
        if self.follow is not None:
            self.set_interval(FOLLOW_CHECK_S, self._look_for_restart)
        # The app's own objects out of the collector's full passes (symwatch.tui.heap).
        self.call_after_refresh(self.long_lived.settle)

    def _listen(self, source: MessageSource) -> None:
        """Be woken by the source when data arrives (if it can), instead of waiting a tick."""
        sources.listen(source, self._data_arrived)

    class DataArrived(UiMessage):
        """Posted from the source's thread when messages are queued."""

    def _data_arrived(self) -> None:
        """Runs in the source's thread: hand over to the app's loop, never block."""
        if not self._wake_pending and self.is_running:
            self._wake_pending = True
            self.post_message(self.DataArrived())  # thread-safe

    def on_symwatch_app_data_arrived(self, _: DataArrived) -> None:
        # Coalesced and paced: at once when the last redraw is old enough, else when it will be.
        delay = self.pacer.delay()
        if delay > 0.001:
            self.set_timer(delay, self._woken_tick)
        else:  # (a zero-delay Textual timer divides by zero)
            self.call_later(self._woken_tick)

    def _woken_tick(self) -> None:
        # The pace is looked at again: another redraw may have gone out since this one was
        # timed (a fold's last go, the clock), and two in a row leave a key press waiting.
        delay = self.pacer.delay()
        if delay > 0.001:
            self.set_timer(delay, self._woken_tick)  # still pending: data wakes nobody else
            self.tick(draw=False)
            return
        self._wake_pending = False
        self.tick()

    def on_unmount(self) -> None:
        self.long_lived.release()
        if self.owns_source:
            self.source.close()

    # -- the clock -----------------------------------------------------------------------------

    @property
    def frame_cost(self) -> float:
        """CPU seconds a redraw takes, tick to screen update (smoothed)."""
        return self.pacer.frame_cost

    def _clock_tick(self) -> None:
        # Folds what arrived in any case; redraws when the pace allows (and no redraw woken by
        # data is waiting already).
        self.tick(draw=not self._wake_pending and self.pacer.due())
        now = time.monotonic()
        if now >= self._heap_checked_at + 1.0:
            self._heap_checked_at = now
            self.long_lived.update(self.state.series_count())

    def tick(self, draw: bool = True) -> None:
        """Drain the source, fold, redraw (if `draw`). Anything unexpected is counted, not
        raised. Input goes first: with a key or a click waiting, the tick comes back after it
        (keys queued behind two data frames of a 1,000-layer table waited ~140 ms)."""
        self._deferred_draw |= draw
        if self._tick_deferred:
            return  # a deferred tick is on its way and will do this one's work
        if self.pacer.defer_for_input(self._input_waiting()):
            self._tick_deferred = True
            self.set_timer(INPUT_FIRST_S, self._deferred_tick)
            return
        draw, self._deferred_draw = self._deferred_draw, False
        now = self._clock()
        frame = self.pacer.begin()
        try:
            if sources.generation(self.source) != self._generation:
                self._restart_state()
            if self._drain(now) and not self._fold_queued:
                # A timer, not call_later: the app's queue is served without yielding to the
                # event loop while it is not empty, so a chain of call_later goes would keep
                # the terminal's key presses from being queued at all.
                # A pause between goes, too: a screen to open takes the app several messages,
                # each of which would otherwise wait for a go.
                self._fold_queued = True
                self.set_timer(FOLD_PAUSE_S, self._fold_more)
            if not draw:
                return
            drawn = self._drawn_revision
            self.pacer.drawing(frame)
            self._draw(now)
            if self._drawn_revision != drawn:  # new data drawn: time it to the screen update
                self.pacer.drawn(frame)
                self.call_after_refresh(self.pacer.shown, frame)
        except Exception as exc:  # noqa: BLE001 - the view must outlive any bad input
            self.tick_errors += 1
            self.last_tick_error = f"{type(exc).__name__}: {exc}"

    def _deferred_tick(self) -> None:
        self._tick_deferred = False
        self.tick(draw=False)  # draws if a deferred tick was to (`_deferred_draw`)

    def _input_waiting(self) -> bool:
        """A key press or a mouse event in the app's queue (the deque inside Textual's queue,
        `values`, or asyncio.Queue's `_queue`; where a Textual keeps it elsewhere nothing is
        ever waiting and ticks are not deferred: tests/tui/test_tui_app.py notices)."""
        queue = self._message_queue
        waiting = getattr(queue, "values", None)
        if waiting is None:
            waiting = getattr(queue, "_queue", ())
        try:
            return any(isinstance(m, (events.Key, events.MouseEvent)) for m in waiting)
        except (TypeError, RuntimeError):
            return False

    def _fold_more(self) -> None:
        """The next go of folding, after the key presses that queued up meanwhile; draws when
        the last of the data is in and the pace allows."""
        self._fold_queued = False
        self.tick(draw=False)
        all_in = self._folding is None and not self._backlog
        if all_in and not self._wake_pending and self.pacer.due():
            self.tick()

    def _drain(self, now: float) -> bool:
        """Fold for at most FOLD_SLICE_S; True if data is left for another go."""
        deadline = time.monotonic() + FOLD_SLICE_S
        while time.monotonic() < deadline:
            if self._folding is None:
                if not self._backlog:
                    batch = self.source.poll(0)
                    if not batch:
                        break
                    self._backlog.extend(batch)
                self._folding = self.state.fold_steps(self._backlog.popleft(), now)
            try:
                next(self._folding)
            except StopIteration:
                self._folding = None
            except Exception as exc:  # noqa: BLE001 - one bad message costs one message
                self._folding = None
                self.tick_errors += 1
                self.last_tick_error = f"{type(exc).__name__}: {exc}"
        self.state.garbage = int(self.source.garbage)
        self.state.last_error = self.source.last_error
        return self._folding is not None or bool(self._backlog)

    def _restart_state(self) -> None:
        self._generation = sources.generation(self.source)
        self.state = RunState(stale_after=self.state.stale_after)
        self._backlog.clear()
        self._folding = None
        self.long_lived.restart()
        self._events_seen = 0
        self._drawn_key = None
        self._set_window(HistoryWindow(), redraw=False)
        self.query_one(LayerTable).clear()

    def _draw(self, now: float) -> None:
        state = self.state
        connection = self.connection(now)
        silent = state.silent_for(now)
        if not self.window.live and state.run_id != self._window_run:
            self._set_window(HistoryWindow(), redraw=False)  # the agent restarted: follow it
        window = self.window
        replay = sources.replay_label(self.source)  # a replay's state, speed: in the header
        # Paused or scrolled back, new data changes nothing on screen but the header's note.
        key = (state.revision if window.live else window, connection, state.garbage,
               self.size, int(silent) if connection in (STALE, RECONNECTING) and
               silent is not None else None, replay)
        if key == self._drawn_key:
            if not window.live and self._drawn_revision != state.revision:
                self._drawn_revision = state.revision
                self.query_one(RunHeader).show(state, connection, endpoint=self.endpoint,
                                               paused=True, window=window, replay=replay)
            return
        self._drawn_key = key
        self._drawn_revision = state.revision
        main = self.query_one("#main")
        for name in (WAITING, STALE, FINISHED):  # reconnecting is styled as stale
            main.set_class(connection == name or (name == STALE and connection == RECONNECTING),
                           f"-{name}")
        self.query_one(RunHeader).show(state, connection, endpoint=self.endpoint,
                                       paused=not window.live, window=window, replay=replay)
        self.query_one(ConnectionBanner).show(state, connection, endpoint=self.endpoint,
                                              silent_for=silent)
        if connection != WAITING:
            table = self.query_one(LayerTable)
            table.set_window(window)
            table.sync(state)
            self.query_one(ViewTabs).show(shown_views(measured_indicators(state)), table.view)
            self.query_one(LegendLine).show(table.legend_indicator())
            self.query_one(FilterBar).show_count(table.shown_layers, table.total_layers)
            self.query_one(LossPanel).show(state, window)
            gpu = self.query_one(GpuLine)
            # a CPU run's "no NVIDIA GPU visible" took a row the header's `cpu` already says;
            # `g` shows the GPU report whatever it is
            seen = bool(state.gpu and state.gpu.get("available"))
            if gpu.display != seen:
                gpu.display = seen
            gpu.show(state)
            self.query_one(RanksLine).show(state)
            self.query_one(EventsLog).show(state)
            # once this frame's layout is in place: the table's rows and the banner are known
            self.call_after_refresh(self._fit_heights)
        self._notify_events()

    def _fit_heights(self) -> None:
        """Cut the table to its rows and give the loss chart and the events log what that
        leaves (symwatch.tui.main_layout); a change is drawn again at the new heights."""
        main = self.query_one("#main")
        table = self.query_one(LayerTable)
        loss, events = self.query_one(LossPanel), self.query_one(EventsLog)
        if not table.display or not main.size.height:
            return
        others = [child for child in main.children
                  if child.display and child not in (table, loss, events)]
        if any(not child.outer_size.height for child in others) and self._fit_retries < 5:
            # a line just shown (the GPU line after WAITING, a banner) is not laid out yet:
            # its height is not known, so fit once it is
            self._fit_retries += 1
            self.call_after_refresh(self._fit_heights)
            return
        self._fit_retries = 0
        fixed = sum(child.outer_size.height for child in others)
        need = table.virtual_size.height + table.gutter.height
        if table.show_horizontal_scrollbar:
            need += table.scrollbar_size_horizontal
        # the loss panel's first line is its text; the rest is the chart's
        heights = main_heights(self.size.height, main.size.height - fixed - 1, need,
                               events_log_lines(self.state))
        if heights == self._heights:
            return
        self._heights = heights
        table.styles.height = heights.table
        loss.rows = heights.chart
        loss.styles.height = heights.chart + 1
        events.styles.height = heights.events
        self.call_after_refresh(self._redraw_table)  # the panels' text, at their new sizes

    def connection(self, now: float | None = None) -> str:
        """The state's waiting/live/stale/finished, or reconnecting while the source says its
        connection dropped (a crashed or restarting agent: known before the stale timeout)."""
        state = self.state.connection(now if now is not None else self._clock())
        if state in (LIVE, STALE) and sources.disconnected(self.source):
            return RECONNECTING
        return state

    def _notify_events(self) -> None:
        # every event since the last redraw: a loaded machine spaces redraws out, and a burst
        # (a weight-decay switch moves every layer) may all land between two of them
        fresh = min(self.state.events_total - self._events_seen, len(self.state.events))
        self._events_seen = self.state.events_total
        if fresh <= 0:
            return
        # an optimizer settings change (a notice with `changes`) is always shown: what
        # follows it is explained by it
        shown = [ev for ev in list(self.state.events)[-fresh:]
                 if (ev.severity in NOTIFY_SEVERITIES or ev.changes) and not ev.history]
        if self.ring_bell:
            # one bell per transition, however many came in one redraw (the toasts below keep
            # only the newest few)
            for ev in shown:
                if ev.severity == "transition":
                    self.bell()
        if isinstance(self.screen, ModalScreen):
            # toasts sat on top of the events log, help and layer detail: a modal screen is
            # read undisturbed (the events timeline, `e`, keeps every event)
            return
        for ev in shown[-self._toast_limit():]:
            self._event_toast(toast_text(ev.message), title=f"step {ev.step:,}",
                              severity="error" if ev.severity == "error" else
                              "information" if ev.changes else "warning")

    def _event_toast(self, message: str, title: str, severity: SeverityLevel) -> None:
        """App.notify, keeping only the newest EVENT_TOASTS event toasts on screen."""
        toast = Notification(message, title, severity, self.NOTIFICATION_TIMEOUT)
        self.post_message(Notify(toast))
        self._event_toasts.append(toast)
        while len(self._event_toasts) > self._toast_limit():
            self._drop_toast(self._event_toasts.popleft())

    def _toast_limit(self) -> int:
        return EVENT_TOASTS if self.size.width >= WIDE_COLUMNS else 1

    def _drop_toast(self, toast: Notification) -> None:
        if toast in self._notifications:
            self._unnotify(toast)
        else:  # posted but its Notify not handled yet: dropped when it is (on_notify)
            self._toasts_to_drop.add(toast.identity)

    def on_notify(self, event: Notify) -> None:
        """Runs before Textual's own handler (App._on_notify, which shows the toast): a toast
        dropped before its Notify got here is never shown. (Dropping it a refresh later lost
        the race under load: the Notify could come later still, and the toast stayed.)"""
        if event.notification.identity in self._toasts_to_drop:
            self._toasts_to_drop.discard(event.notification.identity)
            event.prevent_default()  # App._on_notify does not run

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

    def action_runs(self) -> None:
        """The Runs screen: runs here and on SSH hosts, recordings; Enter shows one here."""
        if not isinstance(self.screen, RunsScreen):
            open_runs_screen(self)

    def attach_source(self, source: MessageSource, title: str | None = None, *,
                      keep_state: bool = False) -> None:
        """Show another run (or recording) in this view; the previous source, if ours, is
        closed on a thread (a tunnel takes a moment to end). `keep_state`: the new source
        continues the run shown (a restart of it): the state folds its new run id as a
        restart (the loss chart marks the boundary) instead of starting empty."""
        old, owned = self.source, self.owns_source
        self.source, self.owns_source = source, True
        self.endpoint = sources.where(source)
        self.title = title or f"symwatch — {self.endpoint}"
        self._clock = sources.clock(source)
        self.restart_offer = None
        if keep_state:
            self._generation = sources.generation(source)
            self._backlog.clear()
            self._folding = None
            self._set_window(HistoryWindow(span=self.window.span), redraw=False)
        else:
            self._restart_state()
        self._listen(source)
        self.refresh_bindings()  # the replay keys follow the source
        if owned and old is not source:
            threading.Thread(target=old.close, name="symwatch-close-source", daemon=True).start()
        self.tick()

    # -- a restarted run (same name, new process) ----------------------------------------------

    def _look_for_restart(self) -> None:
        """Every FOLLOW_CHECK_S: once the run has ended or gone silent, a newer live run of its
        name in the registry is followed (`follow`) or offered (a notification naming `f`)."""
        state = self.state
        if (state.name is None or state.started is None or self.restart_offer is not None
                or state.connection(self._clock()) not in (FINISHED, STALE)):
            return
        try:
            newer = runtime.newest_run(runtime.live_runs(prune=False), state.name,
                                       started_after=state.started,
                                       not_endpoint=self.endpoint)
        except OSError:
            return
        if newer is None:
            return
        if self.follow:
            self.follow_run(newer)
            return
        self.restart_offer = newer
        self.refresh_bindings()
        self.notify(f"{state.name} restarted: run {newer.run_id} is live; press f to follow "
                    "it", title="restarted", timeout=30)

    def action_follow_run(self) -> None:
        """`f`: show the restarted run offered (its boundary marked in the loss chart)."""
        if self.restart_offer is not None:
            self.follow_run(self.restart_offer)

    def follow_run(self, entry: RunEntry) -> None:
        """Switch this view to `entry` (a restart of the run shown), keeping the run's loss
        before it in the chart with the switch marked."""
        try:
            source = open_endpoint(entry.endpoint, curve=self.curve)
        except SourceError as exc:
            self.restart_offer = None
            self.notify(f"cannot follow run {entry.run_id}: {exc}", severity="error")
            return
        old = self.state.run_id
        self.follows += 1
        self.attach_source(source, title=self.title, keep_state=True)
        self.refresh_bindings()
        self.notify(f"following run {entry.run_id} ({entry.name} restarted; was {old})",
                    timeout=5)

    def action_ranks(self) -> None:
        """Every rank (stragglers, diverging losses) and every node's GPUs."""
        if isinstance(self.screen, RanksScreen):
            self.screen.dismiss(None)
        else:
            self.push_screen(RanksScreen())

    def push_screen(self, screen: Any, *args: Any, **kwargs: Any) -> Any:
        """Textual's, dropping the event toasts on screen when a modal screen opens: they sat
        on top of the events timeline, help and the layer detail (new ones wait, see
        `_notify_events`)."""
        if isinstance(screen, ModalScreen):
            while self._event_toasts:
                self._drop_toast(self._event_toasts.popleft())
        return super().push_screen(screen, *args, **kwargs)

    def open_event(self, layer: str, step: int) -> None:
        """An event chosen in the timeline: the view at its step, its layer's detail."""
        self.goto_step(step)
        self.push_screen(LayerDetailScreen(self.state, layer))

    def action_events(self) -> None:
        """Every transition and notice so far, in a scrollable timeline."""
        if isinstance(self.screen, EventsScreen):
            self.screen.dismiss(None)
        else:
            self.push_screen(EventsScreen(self.state))

    def action_next_view(self) -> None:
        """Show the next view of indicator columns (the tab strip above the table names them
        and highlights this one; views N/A for every layer are skipped)."""
        table = self.query_one(LayerTable)
        table.view = next_view(table.view, measured_indicators(self.state))
        self._drawn_key = None
        self.tick()

    def on_layer_table_legend_moved(self, _: LayerTable.LegendMoved) -> None:
        """←/→ in the table: the legend line explains the column now under the cursor."""
        self.query_one(LegendLine).show(self.query_one(LayerTable).legend_indicator())

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if (action in DASHBOARD_ACTIONS or action == "replay") and isinstance(self.screen,
                                                                             RunsScreen):
            # the dashboard's keys do nothing for the runs list: off its footer (which they
            # pushed past 120 columns, cut mid-word) and off its keyboard
            return False
        if action == "follow_run":  # shown only while a restart is offered
            return self.restart_offer is not None
        if action == "history_live":  # End: the replay's when there is one; L always
            return not self.window.live and not isinstance(self.focused, Input)
        if action == "replay":  # bound (and shown) only for a source with that control
            if isinstance(self.focused, Input):
                return False  # its keys (space, +, -, Home, End) are the filter's text then
            return bool(parameters) and sources.replay_control(self.source,
                                                               str(parameters[0])) is not None
        return True

    # -- sorting, filtering, themes, the palette ----------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's own commands (theme, keys, screenshot, quit) and every one of ours."""
        yield from super().get_system_commands(screen)
        yield from palette_commands(self)

    def indicator_columns(self) -> list[str]:
        """The indicator column keys on screen now, left to right."""
        return [str(c.value) for c in self.query_one(LayerTable).columns
                if str(c.value).startswith("ind:")]

    def sort_by(self, column: str | None) -> None:
        """Sort the layer table by a column key (the same one again: reverse)."""
        table = self.query_one(LayerTable)
        table.set_order(table.order.sorted_by(column))
        self._redraw_table()

    def action_next_sort(self) -> None:
        table = self.query_one(LayerTable)
        column = next_sort_column(table.order.column, self.indicator_columns())
        self.sort_by(column)
        self.notify(f"sorted by {self._sort_text()}", timeout=1.5)

    def action_reverse_sort(self) -> None:
        table = self.query_one(LayerTable)
        table.set_order(table.order.reversed())
        self._redraw_table()
        self.notify(f"sorted by {self._sort_text()}", timeout=1.5)

    def _sort_text(self) -> str:
        order = self.query_one(LayerTable).order
        if order.column is None:
            return "the run's order" + (", reversed" if order.descending else "")
        name = order.column.removeprefix("ind:")
        return f"{name}, {'largest' if order.descending else 'smallest'} first"

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """A click on a column header of the layer table sorts by that column."""
        if isinstance(event.data_table, LayerTable):
            self.sort_by(str(event.column_key.value))

    def layer_filter(self) -> str:
        return self.query_one(LayerTable).order.filter

    def set_layer_filter(self, pattern: str) -> None:
        table = self.query_one(LayerTable)
        if pattern != table.order.filter:
            table.set_order(table.order.filtered(pattern))
            self._redraw_table()
        if not pattern and self.query_one(FilterBar).pattern:
            self.query_one("#filter-input", Input).value = ""

    def action_filter(self) -> None:
        """`/`: type to narrow the layer table."""
        self.query_one(FilterBar).open()

    def on_filter_bar_changed(self, event: FilterBar.Changed) -> None:
        self.set_layer_filter(event.pattern)

    def on_filter_bar_done(self, event: FilterBar.Done) -> None:
        self.query_one(LayerTable).focus()

    def _redraw_table(self) -> None:
        self._drawn_key = None
        if not self.paused:
            self.tick()

    def on_layer_table_resized(self, event: LayerTable.Resized) -> None:
        """The table and the charts are fitted to their widths: redraw at the new size."""
        self._redraw_table()

    def action_toggle_theme(self) -> None:
        self.theme = toggled(self.current_theme.dark)

    def action_open_layer(self) -> None:
        """The detail screen of the layer under the table's cursor."""
        table = self.query_one(LayerTable)
        if table.row_count:
            row = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
            self.push_screen(LayerDetailScreen(self.state, str(row.value)))

    def action_replay(self, control: str) -> None:
        run = sources.replay_control(self.source, control)
        if run is None:
            raise AttributeError(f"{type(self.source).__name__} has no replay control {control!r}")
        run()
        status = sources.status(self.source)
        if status is not None:
            self.notify(status, timeout=2.0)
        self.tick()

    def action_pause(self) -> None:
        """Freeze the view at the newest step (data keeps arriving), or follow it again."""
        if self.window.live:
            self._set_window(history_view.paused_at(self.state))
        else:
            self._set_window(HistoryWindow(span=self.window.span))

    # -- scroll-back (symwatch.tui.history_view) -----------------------------------------------

    def _set_window(self, window: HistoryWindow, redraw: bool = True) -> None:
        self.window = window
        self._window_run = self.state.run_id
        self.paused = not window.live
        self._drawn_key = None
        if not redraw:
            return
        if isinstance(self.screen, LayerDetailScreen):
            self.screen.refresh_body()
        self._draw(self._clock())  # the key's effect first; new data waits for its tick

    def action_history_pan(self, windows: float) -> None:
        """`[` / `]`: half a window back / forward (pausing the view; a replay seeks)."""
        seek = sources.step_seek(self.source)
        if seek is not None:
            span = history_view.span_of(self.window, self.state)
            self._seek_replay(self._replay_step(seek) + (round(windows * span)
                                                         or (1 if windows > 0 else -1)))
            return
        self._set_window(history_view.pan(self.window, self.state, windows))

    def action_history_jump(self, direction: int) -> None:
        """`{` / `}`: a tenth of the run back / forward (a replay: of the recording)."""
        seek = sources.step_seek(self.source)
        if seek is not None:
            first, last = seek.steps
            span = history_view.span_of(self.window, self.state)
            self._seek_replay(self._replay_step(seek) + direction * max(
                span, (last - first + 1) // history_view.BIG_JUMP))
            return
        self._set_window(history_view.jump(self.window, self.state, direction))

    def action_goto_step(self) -> None:
        """`G` ("Go to step…"): the view at a step typed in; a replay moves there."""
        seek = sources.step_seek(self.source)
        bounds = seek.steps if seek is not None else history_view.run_bounds(self.state)

        def chosen(step: int | None) -> None:
            if step is not None:
                self.goto_step(step)
        self.push_screen(GoToStepScreen(bounds), chosen)

    def goto_step(self, step: int) -> None:
        """Show `step`: a replay seeks there (paused); a live run scrolls back to it."""
        if sources.step_seek(self.source) is not None:
            self._seek_replay(step)
        else:
            self._set_window(history_view.at_step(self.window, self.state, step))

    def _replay_step(self, seek: sources.StepSeek) -> int:
        """Where the replay stands: the step of its last message released, else its first."""
        return seek.at if seek.at is not None else seek.steps[0]

    def _seek_replay(self, step: int) -> None:
        seek = sources.step_seek(self.source)
        if seek is None:
            return
        first, last = seek.steps
        seek.seek(max(first, min(last, step)))
        self._set_window(HistoryWindow(span=self.window.span), redraw=False)
        status = sources.status(self.source)
        if status is not None:
            self.notify(status, timeout=2.0)
        self.tick()

    def action_history_zoom(self, factor: float) -> None:
        """`z` / `Z`: a window twice / half as wide."""
        window = history_view.zoom(self.window, self.state, factor)
        if self.window.live:  # zooming the live view: it stays live
            window = HistoryWindow(span=window.span)
        self._set_window(window)

    def action_history_live(self) -> None:
        """`L` (or End): back to the live view."""
        self._set_window(HistoryWindow(span=self.window.span))


class RunsApp(SymwatchApp):
    """The dashboard with no run yet, starting on the Runs screen (`symwatch attach` with
    several runs, or with --ssh-host); Esc there quits."""

    def __init__(self, config: RunsConfig, **options: Any) -> None:
        super().__init__(ListSource(endpoint="(no run chosen)"), title="symwatch — runs",
                         owns_source=True, **options)
        self.runs_config = config

    def on_mount(self) -> None:
        super().on_mount()
        open_runs_screen(self, first=True)


def make_app(endpoint: str, *, title: str | None = None,
             stale_after: float = DEFAULT_STALE_AFTER, bell: bool = False,
             curve: Any = None, theme: str | None = None, follow: bool = False) -> SymwatchApp:
    """The app on a live endpoint: a BackgroundFeed (its own thread and socket) as the source
    (symwatch.sources.open; SourceError for an endpoint it cannot use); `curve`
    (symwatch.transport.keys.CurveClient) for an agent that requires CurveZMQ; `theme` a
    Textual theme name (symwatch.tui.themes.resolve_theme); `follow`: switch to a restart of
    the run at once (`attach --follow`) instead of offering it."""
    feed = open_endpoint(endpoint, curve=curve)
    return SymwatchApp(feed, title=title, stale_after=stale_after, owns_source=True, bell=bell,
                       theme=theme, follow=follow, curve=curve)
