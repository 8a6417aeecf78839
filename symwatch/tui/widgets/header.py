"""The run header: connection state, run identity and what sets its sampling; step, loss, rate,
overhead, drops."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from symwatch.state import numbers
from symwatch.state.optimizer import settings_text
from symwatch.state.run_state import FINISHED, LIVE, RECONNECTING, STALE, WAITING, RunState
from symwatch.tui.history_view import HistoryWindow, value_at, window_label
from symwatch.tui.run_text import overhead_text, sampling_text

STATE_STYLES = {
    WAITING: "bold black on yellow",
    LIVE: "bold black on green",
    STALE: "bold white on dark_orange3",
    RECONNECTING: "bold white on dark_orange3",
    FINISHED: "bold white on blue",
}
REPLAY_STYLE = "bold black on cyan"  # a replay's label, in place of the connection state
STATE_LABELS = {WAITING: "WAITING", LIVE: "LIVE", STALE: "STALE", FINISHED: "FINISHED",
                RECONNECTING: "RECONNECTING"}


def header_text(state: RunState, connection: str, *, endpoint: str, paused: bool = False,
                window: HistoryWindow | None = None, width: int | None = None,
                replay: str | None = None) -> Text:
    """Two lines: who/where/state, then the run's numbers (at the window's last step when
    paused or scrolled back: `window`, see symwatch.tui.history_view). `replay`: a replay's
    state (sources.replay_label), said where a run's connection state is (a paused replay
    read LIVE, its speed nowhere); a recorded run that finished still says FINISHED."""
    top = Text()
    if replay is not None and connection != FINISHED:
        top.append(f" {replay} ", REPLAY_STYLE)
    else:
        top.append(f" {STATE_LABELS.get(connection, connection.upper())} ",
                   STATE_STYLES.get(connection, "reverse"))
    history = window is not None and not window.live
    if history:
        top.append(" ")
        top.append_text(window_label(window, state))  # type: ignore[arg-type]
    elif paused:
        top.append(" ")
        top.append(" PAUSED ", "bold black on bright_white")
    top.append("  ")
    # Until META arrives (re-sent every few seconds) the run id is all we know of the run.
    top.append(state.name or (f"run {state.run_id}" if state.run_id else "(no run yet)"), "bold")
    if state.host:
        top.append(f"  {state.host}", "dim")
    if state.pid is not None:
        top.append(f" pid {state.pid}", "dim")
    if state.world_size and state.world_size > 1:
        top.append(f"  world {state.world_size}", "dim")
    if state.device:
        top.append(f"  {state.device}", "dim")
    # the socket path (`endpoint`) is on `g`'s screen: here it took ~45 columns of the line
    # the option's hint is for a run that can still be restarted with it, not a finished one
    sampling = sampling_text(state.sampling, hint=not state.finished)
    if sampling:  # what sets the cadence, and the option that changes it: on this line, which
        # has room for it (after the figures it was cut off at 120 columns, where a default
        # run needs it most: it is what explains pending cells and a slow refresh); without the
        # option's hint where only that fits
        room = (width or 0) - len(top.plain) - len("   sampling   ")  # as appended below
        if width and len(sampling) > room:
            sampling = sampling_text(state.sampling, hint=False)
        top.append("  ")
        _field(top, "sampling", sampling,
               "yellow" if state.sampling and state.sampling.get("limit") == "budget" else "")

    line = Text()
    shown_step = window.end if history and window is not None else state.step
    step = f"{shown_step:,}" if shown_step is not None else numbers.NA
    _field(line, "step", step)
    if history and window is not None:
        _field(line, "loss", numbers.compact(value_at(state.loss, window)))
    else:  # NaN or inf in red: the run diverged (N/A would say there was no value)
        _field(line, "loss", state.loss_text(), "bold red" if state.loss_nonfinite else "")
    settings = settings_text(state.optimizer)
    if settings:  # the optimizers' lr and weight decay now (STATS `optimizer`), never N/A
        line.append(f" {settings}", "bold cyan")
        line.append("  ")
    _field(line, "steps/s", numbers.compact(state.steps_per_s, 3))
    _field(line, "overhead", overhead_text(state.overhead, state.sampling))
    dropped = state.dropped
    _field(line, "dropped", str(dropped), "bold red" if dropped else "")
    if state.garbage:
        _field(line, "garbage", str(state.garbage), "bold red")
    if state.restarts:
        _field(line, "restarts", str(state.restarts), "yellow")
    # Each line is cut, never wrapped: a wrapped first line would push the numbers out of view.
    # With the width known, a line is cut between two fields, never inside one (`overhead
    # 54.7…` read as a different number).
    if width:
        top, line = _whole_fields(top, width), _whole_fields(line, width)
    return Text("\n", no_wrap=True, overflow="ellipsis").join([top, line])


def _whole_fields(line: Text, width: int) -> Text:
    """`line` cut after its last field (fields are two spaces apart) that fits in `width`."""
    if len(line.plain.rstrip()) <= width:
        return line
    cut = line.plain.rfind("  ", 0, width + 1)
    if cut <= 0:
        return line
    line = line.copy()
    line.truncate(cut, overflow="crop")
    return line


def _field(line: Text, label: str, value: str, style: str = "") -> None:
    line.append(f" {label} ", "dim")
    line.append(value, style or "bold")
    line.append("  ")


class RunHeader(Static):
    """Shows `header_text`; re-rendered by the app on its clock."""

    def show(self, state: RunState, connection: str, *, endpoint: str, paused: bool,
             window: HistoryWindow | None = None, replay: str | None = None) -> None:
        # Two lines, fixed in app.tcss: no layout pass of the screen for new figures.
        self.update(header_text(state, connection, endpoint=endpoint, paused=paused,
                                window=window, width=self.size.width or self.app.size.width,
                                replay=replay),
                    layout=False)
