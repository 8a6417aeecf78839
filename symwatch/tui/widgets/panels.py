"""The panels under the layer table: loss sparkline, GPU summary line, recent events."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.widgets import Static

from symwatch.core.jumps import WARMUP_SAMPLES
from symwatch.state import axis, numbers
from symwatch.state.gpu_clocks import clock_text, throttled
from symwatch.state.optimizer import change_text
from symwatch.state.run_state import RunState
from symwatch.tui.event_text import event_parts
from symwatch.tui.history_view import HistoryWindow, steps_shown, value_at
from symwatch.tui.main_layout import chart_rows
from symwatch.tui.widgets.legend import cut_at_word
from symwatch.tui.widgets.sparkline import label_width, sparkline_rows

# A loss chart whose values span this factor or more is drawn on a log scale
LOG_SCALE_RANGE = 20.0
# A loss chart this many rows tall or taller has axes: y ticks, and a step line as its last row
AXIS_MIN_ROWS = 3

BOUNDARY_MARK = "┊"  # in the loss chart: where a restarted run replaced the previous one
SETTINGS_MARK = "╎"  # in the loss chart: where an optimizer's lr or weight decay changed
SETTINGS_STYLE = "bold magenta"

THROTTLE_STYLE = "bold yellow"  # a GPU whose clocks are held down (power cap, thermal, …)

SEVERITY_STYLES = {"info": "cyan", "notice": "yellow", "warning": "bold yellow",
                   "error": "bold red", "transition": "bold magenta"}


def loss_text(state: RunState, width: int, rows: int = 1,
              window: HistoryWindow | None = None, axes: bool = False) -> Text:
    """The loss now and its chart. Live, the chart is the whole run (its older part merged
    into min/max columns, symwatch.core.downsample), where a plateau and the drop that ends it show
    at any length of run; paused or scrolled back (`window`), the value at the window's end
    and the chart over the window, as the table's sparklines. `axes` (the dashboard's panel):
    from AXIS_MIN_ROWS rows, y tick labels and a step line (without: the bare chart)."""
    text = Text(no_wrap=True, overflow="ellipsis")  # a wrapped first line would push the chart
    text.append(" loss ", "dim")
    store = state.loss.store
    if window is not None and not window.live:
        first, last = steps_shown(window, state)
        text.append(numbers.compact(value_at(state.loss, window)), "bold")
    else:
        first, last = store.first_step, store.last_step
        text.append(state.loss_text(), "bold red" if state.loss_nonfinite else "bold")
    # With AXIS_MIN_ROWS rows or more (a tall terminal), the chart gets y tick labels on the
    # left and its last row becomes the step line (symwatch.state.axis's rule); fewer rows (80×24:
    # one) keep the bare chart, whose range and steps the title line says in words.
    with_axes = axes and rows >= AXIS_MIN_ROWS
    bar_rows = rows - 1 if with_axes else rows
    chart_w, pad = max(0, width - 2), 0
    ax: axis.Axis | None = None
    if with_axes:  # the labels' width depends on the values' range: a first pass, narrow
        # (cheap, and its min/max columns keep the range), gives the width to leave for them
        ax, log_scale = _loss_axis(
            _loss_points(state, store, first, last, window, min(chart_w, 32))[0], bar_rows)
        pad = label_width(ax)
        chart_w = max(0, chart_w - pad)
    points, boundary = _loss_points(state, store, first, last, window, chart_w)
    known = [v for v in points if v is not None]
    log_scale = bool(known) and min(known) > 0 and max(known) >= LOG_SCALE_RANGE * min(known)
    if with_axes:
        ax, log_scale = _loss_axis(points, bar_rows)
        if label_width(ax) != pad:  # narrower columns moved a label's width: fit them again
            chart_w = max(0, chart_w + pad - label_width(ax))
            pad = label_width(ax)
            points, boundary = _loss_points(state, store, first, last, window, chart_w)
            known = [v for v in points if v is not None]
    if known and first is not None and last is not None:  # (after a restart: once it has loss)
        text.append(f"  min {numbers.compact(min(known))}  max {numbers.compact(max(known))}"
                    f"  steps {max(first, store.first_step or first):,}–{last:,}"
                    + ("  log scale" if log_scale else ""), "dim")
    if log_scale:  # the first steps' loss would flatten everything after it on a linear scale
        points = [None if v is None or v <= 0 else math.log10(v) for v in points]
    if boundary is not None:
        text.append(f"  {BOUNDARY_MARK} restarted", "yellow")
    marks: dict[int, tuple[str, str]] = {}
    if boundary is None and first is not None and last is not None:
        marks = settings_marks(state, first, last, chart_w)
        latest = [ev for ev in state.setting_changes if first <= ev.step <= last]
        if latest:  # the newest change in view, said in words beside the chart's title:
            # before the logged scalars, which the title's end cuts first (at 120 columns
            # the demo's three scalars left `╎ wd …` of it)
            text.append(f"  {SETTINGS_MARK} {change_text(latest[-1].changes)} "
                        f"@{latest[-1].step:,}", SETTINGS_STYLE)
    for name, value in list(state.scalars.items())[:3]:
        text.append(f"  {name} ", "dim")
        text.append(numbers.compact(value))
    if boundary is not None:
        marks[boundary] = (BOUNDARY_MARK, "bold yellow")
    if ax is not None:
        lines = sparkline_rows(points, chart_w, bar_rows, lo=ax.lo, hi=ax.hi)
        labels = list(reversed(ax.labels))
    else:
        lines = sparkline_rows(points, chart_w, bar_rows)
        labels = [""] * len(lines)
    for label, line in zip(labels, lines):
        text.append("\n ")
        if label:
            text.append(label + " ", "dim")
        start = 0
        for column in sorted(marks):
            if column >= len(line):
                break
            mark, style = marks[column]
            text.append(line[start:column], "bright_cyan")
            text.append(mark, style)
            start = column + 1
        text.append(line[start:], "bright_cyan")
    if with_axes:
        text.append("\n " + " " * pad, "dim")
        text.append(_step_line(state, first, last, chart_w, boundary), "dim")
    return text


def _loss_points(state: RunState, store: Any, first: int | None, last: int | None,
                 window: HistoryWindow | None, width: int
                 ) -> tuple[list[float | None], int | None]:
    """The loss chart's columns (and the restart mark's column, live after a restart)."""
    points = store.columns(first, last, width) if first is not None and last is not None \
        else []
    if state.previous_loss is not None and (window is None or window.live) and width >= 3:
        return across_restart(state, width)
    return points, None


def _loss_axis(points: list[float | None], rows: int) -> tuple[axis.Axis | None, bool]:
    """The loss chart's y axis (log ticks when the loss spans LOG_SCALE_RANGE or more) and
    whether it is a log one."""
    known = [v for v in points if v is not None and math.isfinite(v)]
    log_scale = bool(known) and min(known) > 0 and max(known) >= LOG_SCALE_RANGE * min(known)
    return (axis.log_axis(known, rows) if log_scale else axis.axis(known, rows)), log_scale


def _step_line(state: RunState, first: int | None, last: int | None, width: int,
               boundary: int | None) -> str:
    """The steps under the loss chart: first, middle and last; after a restart, the previous
    run's under its columns and this run's under its own."""
    if boundary is not None and state.previous_loss is not None:
        before, now = state.previous_loss.store, state.loss.store
        left = axis.step_line(before.first_step or 0, before.last_step or 0, boundary)
        right = axis.step_line(now.first_step or 0, now.last_step or 0,
                               width - boundary - 1) if now.count else ""
        return (left + BOUNDARY_MARK + right)[:width]
    if first is None or last is None:
        return ""
    return axis.step_line(max(first, state.loss.store.first_step or first), last, width)


def settings_marks(state: RunState, first: int, last: int, width: int
                   ) -> dict[int, tuple[str, str]]:
    """The chart columns (as `DownsampleStore.columns` places steps) of the optimizer
    settings changes between steps `first` and `last`, each with its mark and style."""
    span = max(1, last - first + 1)
    return {min(width - 1, (ev.step - first) * width // span): (SETTINGS_MARK, SETTINGS_STYLE)
            for ev in state.setting_changes if first <= ev.step <= last and width > 0}


def across_restart(state: RunState, width: int) -> tuple[list[float | None], int]:
    """The previous run's loss then this run's, side by side in `width` columns (each its
    share by steps), and the column between them that marks the restart."""
    before, now = state.previous_loss.store, state.loss.store  # type: ignore[union-attr]
    before_span = (before.last_step or 0) - (before.first_step or 0) + 1
    now_span = ((now.last_step or 0) - (now.first_step or 0) + 1) if now.count else 0
    usable = width - 1
    left = round(usable * before_span / (before_span + now_span)) if now_span else usable - 1
    left = max(1, min(usable - 1, left))
    points = before.columns(before.first_step or 0, before.last_step or 0, left) + [None]
    right = usable - left
    points += (now.columns(now.first_step or 0, now.last_step or 0, right) if now.count
               else [None] * right)
    return points, left


def gpu_text(gpu: dict[str, Any] | None) -> Text:
    """One line. Memory is in bytes, power in watts, as the agent's NVML sampler reports."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(" GPU ", "dim")
    if gpu is None:
        text.append("no GPU report yet", "dim")
        return text
    if not gpu.get("available"):
        text.append("no NVIDIA GPU visible", "yellow")
        reason = str(gpu.get("reason") or "")
        if reason.startswith("no NVIDIA GPU visible"):  # the agent's reasons often say it too
            reason = reason[len("no NVIDIA GPU visible"):].strip(" ()")
        if reason:
            text.append(f" ({reason})", "dim")
        return text
    devices = gpu.get("devices") or []
    if not devices:
        text.append("no devices reported", "dim")
    for i, dev in enumerate(devices[:4]):
        if i:
            text.append("  │  ", "dim")
        if len(devices) == 1:
            text.append(f"{dev.get('index', '?')}: {dev.get('name', '?')}  ", "bold")
        else:
            text.append(f"{dev.get('index', '?')} ", "bold")
        text.append(f"util {numbers.with_unit(dev.get('util'), '%')}  ")
        used, total = numbers.gib(dev.get("mem_used")), numbers.gib(dev.get("mem_total"))
        text.append(f"mem {used}/{total} GiB")
        if len(devices) == 1:
            power = numbers.with_unit(dev.get("power"), "")
            limit = numbers.with_unit(dev.get("power_limit"), " W")
            text.append(f"  {numbers.with_unit(dev.get('temp'), '°C')}  {power}/{limit}")
        clocks = clock_text(dev) if len(devices) == 1 else \
            ("throttled: " + ", ".join(throttled(dev)) if throttled(dev) else "")
        if clocks:  # the SM clock and why NVML holds it down (warning colour when it slows)
            text.append(f"  {clocks}", THROTTLE_STYLE if throttled(dev) else "")
    if len(devices) > 4:
        text.append(f"  … +{len(devices) - 4} more", "dim")
    return text


def _samples_a_layer(state: RunState) -> int | None:
    """The median of the samples each layer has had (a sliced sample refreshes some layers
    only), None before any."""
    counts = sorted(layer.updates for layer in state.layers.values() if layer.updates)
    return counts[len(counts) // 2] if counts else None


def events_text(state: RunState, lines: int, width: int = 0) -> Text:
    """The last `lines` events, one line each, cut at a word to `width` (0: not cut); while
    no transition has been flagged, its last line says why (the agent's notices, such as
    the modules it does not measure, do not hide that)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    why = None if _flagged(state) else _why_no_events(state)
    if why is not None and 0 < lines <= len(state.events) and any(
            ev.severity in ("warning", "error") for ev in state.events):
        why = None  # no room for both: the agent's warning matters more
    shown = max(0, lines - 1) if why is not None and lines > 0 else lines
    recent = list(state.events)[-shown:] if shown > 0 else []
    for i, ev in enumerate(recent):
        if i:
            text.append("\n")
        # as the events timeline (`e`) shows it: the kind in words, the change in the table's
        # names and units, the cause first where there is one (a line is cut at the edge)
        parts = event_parts(ev)
        line = Text()
        line.append(f" step {ev.step:>7,}  ", "dim")
        line.append(parts.kind, SEVERITY_STYLES.get(ev.severity, "white"))
        line.append("  ")
        if parts.cause:
            line.append(f"[{parts.cause}] ", "magenta")
        if parts.change:
            line.append(parts.change, "bold")
            line.append("  ")
        line.append(parts.text, "dim" if parts.change else "")
        text.append_text(cut_at_word(line, width))
    if why is not None:
        if recent:
            text.append("\n")
        text.append_text(cut_at_word(why, width))
    return text


def events_log_lines(state: RunState) -> int:
    """The lines the events log has to show: each event, and while no transition has been
    flagged, the line that says why."""
    return len(state.events) + (0 if _flagged(state) else 1)


def _flagged(state: RunState) -> bool:
    return bool(state.transitions)  # every transition of the run (the log keeps the latest)


def _why_no_events(state: RunState) -> Text:
    """ "no events yet", and why: the layers' samples still inside the detector's warm-up
    ("transitions" where the agent's notices are in the log: there are events)."""
    text = Text()
    typical = _samples_a_layer(state)
    what = "transitions" if state.events else "events"
    if any(ev.severity == "warning" and "transition detection" in ev.message
           for ev in state.events):  # switched off by a failure: nothing more will come
        text.append(f" no {what}: detection was switched off (the warning above)", "dim")
        return text
    if state.finished:
        # nothing more will come: "yet" and the warm-up's promise would read as if it might
        text.append(f" no {what} in this run", "dim")
        if typical is not None and typical < WARMUP_SAMPLES:
            text.append(f" (it ended at ~{typical} sample{'' if typical == 1 else 's'} a layer, "
                        f"before the detector's ~{WARMUP_SAMPLES}-sample warm-up)", "dim")
        return text
    text.append(f" no {what} yet", "dim")
    # Why nothing is flagged yet: a budget-stretched interval (the header's `sampling`)
    # can leave a run's layers below the detector's warm-up for thousands of steps.
    if typical is not None and typical < WARMUP_SAMPLES:
        plural = "" if typical == 1 else "s"
        text.append(f": ~{typical} sample{plural} a layer so far; jumps are flagged from a "
                    f"series' ~{WARMUP_SAMPLES}th sample", "dim")
        # under a budget the loss has its own cadence (STATS `run_level_every`), not the
        # layers' samples: its warm-up is counted in its own steps
        stride = (state.sampling or {}).get("run_level_every")
        if isinstance(stride, int) and not isinstance(stride, bool) and stride > 0:
            text.append(f" (the loss's from step ~{WARMUP_SAMPLES * stride:,})", "dim")
    return text


class LossPanel(Static):
    """The loss line and chart; the chart grows on tall terminals (1 row at 24, 6 at 40+) and
    takes the lines a short layer table leaves (symwatch.tui.main_layout)."""

    rows: int | None = None  # the chart's rows as the app fitted them (None: not yet)

    def chart_rows(self) -> int:
        return self.rows if self.rows is not None else chart_rows(self.app.size.height)

    def show(self, state: RunState, window: HistoryWindow | None = None) -> None:
        rows = self.chart_rows()
        self.styles.height = rows + 1
        # layout=False: the height is set just above, the width is the screen's; a layout pass
        # of the whole screen on every data frame cost more than drawing the frame.
        self.update(loss_text(state, self.size.width or self.app.size.width, rows, window,
                              axes=True), layout=False)


class GpuLine(Static):
    def show(self, state: RunState) -> None:
        self.update(gpu_text(state.gpu), layout=False)  # one line, fixed in app.tcss


class EventsLog(Static):
    def show(self, state: RunState) -> None:
        self.update(events_text(state, max(1, self.size.height or 3),
                                self.size.width or self.app.size.width), layout=False)
