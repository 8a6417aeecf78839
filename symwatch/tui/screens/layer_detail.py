"""The layer detail screen (Enter on a row): the layer's metadata, its latest singular-value
spectrum and unit strip (layer_structure.py), then every indicator of the layer as a chart over
its history, with the layer's transitions marked under it."""

from __future__ import annotations

import dataclasses

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from symwatch.state import axis, numbers
from symwatch.state.run_state import EventRecord, LayerState, RunState
from symwatch.tui.columns import label
from symwatch.tui.history_view import HistoryWindow, layer_span, steps_shown, value_at
from symwatch.tui.widgets.layer_structure import metadata_text, spectrum_text, units_text
from symwatch.tui.widgets.sparkline import axis_chart, label_width

CHART_ROWS = 5  # odd, so a constant sits on the middle row, labelled with its value; 5 nice
# ticks waste less of the height than 3 (0.2 → 0.9 fills 70 % of it rather than 47 %)
REFRESH_S = 0.5


def marker_line(first: int, last: int, steps: list[int], width: int) -> str:
    """A line under a chart of the steps first..last (`width` columns, as
    `TieredSeries.columns` lays them out) with ▲ where each step in `steps` falls."""
    line = [" "] * max(0, width)
    span = max(1, last - first + 1)
    for step in steps:
        if first <= step <= last and width > 0:
            line[min(width - 1, (step - first) * width // span)] = "▲"
    return "".join(line)


def layer_detail_text(state: RunState, layer: LayerState, width: int,
                      window: HistoryWindow | None = None, log: bool = False) -> Text:
    """The layer's metadata, its latest spectrum (`log`: on a log scale) and units, then a
    chart per indicator over `window` (live: the newest steps) with the layer's transitions in
    it marked, then its transitions."""
    window = window or HistoryWindow()
    first, last = steps_shown(window, state)
    if window.span is None:  # the default: what the layer's own recent samples cover
        first = min(first, last - layer_span(state, layer) + 1)
    text = Text()
    text.append(f"{layer.name}", "bold")
    if layer.nonfinite:
        text.append("   ⚠ NaN/inf in the latest sample", "bold red")
    text.append(f"\n steps {max(first, 0):,}–{last:,}", "dim")
    text.append("   live" if window.live else "   paused: [ ] { } move, z Z zoom, L live",
                "dim italic")
    text.append("\n")
    text.append(metadata_text(layer))
    text.append("\n\n")
    text.append(spectrum_text(layer, width, log))
    text.append("\n\n")
    text.append(units_text(layer, width))
    # every transition of the run, kept exactly (state.transitions; not downsampled)
    events = [ev for ev in state.transitions if _names_layer(ev, layer.name)]
    event_steps = [ev.step for ev in events if first <= ev.step <= last]
    chart_w = max(10, width - 2)  # each chart row is indented by one space
    for name in state.indicator_names():
        series = layer.indicators.get(name)
        if series is None:
            continue
        lows = [lo for _, lo, _, _ in series.store.entries(first, last) if lo == lo]
        highs = [hi for _, _, hi, _ in series.store.entries(first, last) if hi == hi]
        text.append(f"\n\n {label(name)}", "bold cyan")
        now = value_at(series, window)
        text.append(f"  {'now' if window.live else 'at ' + format(last, ',')} "
                    f"{numbers.indicator(name, now)}", "bold")
        # one axis for the window's whole envelope (the merged tiers' min and max too), so the
        # y labels hold for every column drawn (symwatch.state.axis: nice ticks, a minimum
        # range); fractions in percent, as the title and the table write them, with at least
        # one percentage point of range (a fraction's 0.01 % wobble is not worth the height)
        unit = 100.0 if numbers.is_fraction(name) else 1.0
        ax = axis.axis([v * unit for v in (*lows, *highs)], CHART_ROWS,
                       floor=1.0 if unit != 1.0 else axis.ABS_MIN_SPAN)
        if ax is not None and unit != 1.0:
            ax = dataclasses.replace(ax, labels=tuple(t + "%" for t in ax.labels))
        if lows and highs:
            text.append(f"   min {numbers.indicator(name, min(lows))}"
                        f"   max {numbers.indicator(name, max(highs))}", "dim")
            if ax is not None and ax.flat:
                text.append("   constant", "dim italic")
        bars_w = max(4, chart_w - label_width(ax))
        points = [None if v is None else v * unit
                  for v in series.store.columns(first, last, bars_w)]
        rows, steps = axis_chart(points, bars_w, ax, first, last)
        pad = label_width(ax)
        for row in rows:
            text.append("\n ")
            text.append(row[:pad], "dim")
            text.append(row[pad:], "dim cyan" if ax is not None and ax.flat else "cyan")
        if event_steps:
            text.append("\n " + " " * pad)
            text.append(marker_line(first, last, event_steps, bars_w), "bold yellow")
        text.append("\n ")
        text.append(steps, "dim")
    shown = [ev for ev in events if ev.step <= last]
    text.append(f"\n\n Transitions in this layer (to step {last:,})", "bold")
    if not shown:
        text.append("\n none yet", "dim")
    for ev in shown[-20:]:
        text.append(f"\n step {ev.step:>9,}  ", "dim")
        text.append(ev.message)
    return text


def _names_layer(event: EventRecord, name: str) -> bool:
    return event.layer == name or name in event.layers


class LayerDetailScreen(ModalScreen[None]):
    """Redraws itself from the app's RunState twice a second, over the app's history window
    (symwatch.tui.history_view)."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("enter", "close", "Close", show=False),
        # the app's scroll-back keys (a modal screen hides the app's own bindings)
        Binding("p", "app.pause", "Freeze"),
        Binding("left_square_bracket", "app.history_pan(-0.5)", "Back", key_display="["),
        Binding("right_square_bracket", "app.history_pan(0.5)", "Forward", key_display="]"),
        Binding("left_curly_bracket", "app.history_jump(-1)", "Back a lot", show=False),
        Binding("right_curly_bracket", "app.history_jump(1)", "Forward a lot", show=False),
        Binding("z", "app.history_zoom(2)", "Zoom out", show=False),
        Binding("Z", "app.history_zoom(0.5)", "Zoom in", show=False),
        Binding("L", "app.history_live", "Live", show=False),
        Binding("l", "toggle_log", "Log σ"),
    ]

    def __init__(self, state: RunState, layer: str) -> None:
        super().__init__()
        self.state = state
        self.layer_name = layer
        self._drawn: tuple[object, ...] | None = None
        self.log_scale = False  # the spectrum's scale (l)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-box"):
            yield Static(id="detail-body")

    def on_mount(self) -> None:
        self.refresh_body()
        self.set_interval(REFRESH_S, self.refresh_body)

    def refresh_body(self) -> None:
        window = getattr(self.app, "window", None)
        key = (window, self.state.revision if window is None or window.live else None,
               self.size, self.log_scale)
        if key == self._drawn:
            return  # paused or scrolled back: nothing new to show
        self._drawn = key
        layer = self.state.layers.get(self.layer_name)
        body = self.query_one("#detail-body", Static)
        if layer is None:  # the run restarted without this layer
            body.update(Text(f"{self.layer_name}: no longer in this run", "dim"))
            return
        # the text must fit the box's content width, or every chart row wraps
        width = body.content_size.width or max(20, self.size.width - 8)
        body.update(layer_detail_text(self.state, layer, width, window, self.log_scale))

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self.refresh_body()

    def action_close(self) -> None:
        self.dismiss(None)
