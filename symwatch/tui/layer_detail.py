"""The layer detail screen (Enter on a row): every indicator of one layer as a chart over its
history, with the layer's transitions marked under it, and the layer's metadata."""

from __future__ import annotations

from bisect import bisect_left

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from symwatch import numbers
from symwatch.state import EventRecord, LayerState, RunState, Series
from symwatch.tui.columns import label
from symwatch.tui.sparkline import sparkline_rows

CHART_ROWS = 3
REFRESH_S = 0.5


def marker_line(series: Series, steps: list[int], width: int) -> str:
    """A line under a chart of `series` with ▲ where each step in `steps` falls, using the same
    bucketing and right alignment as `sparkline_rows`."""
    hist = [s for s, _ in series.history]
    n = len(hist)
    line = [" "] * width
    if not n or width <= 0:
        return "".join(line)
    for step in steps:
        k = bisect_left(hist, step)
        if k >= n or (k == 0 and step < hist[0]):
            continue  # outside the kept history
        x = (width - n + k) if n <= width else k * width // n
        if 0 <= x < width:
            line[x] = "▲"
    return "".join(line)


def layer_detail_text(state: RunState, layer: LayerState, width: int) -> Text:
    text = Text()
    text.append(f"{layer.name}", "bold")
    text.append(f"   {layer.type}   shape {numbers.shape(layer.shape)}", "dim")
    if layer.params is not None:
        text.append(f"   {layer.params:,} parameters", "dim")
    if layer.nonfinite:
        text.append("   ⚠ NaN/inf in the latest sample", "bold red")
    events = [ev for ev in state.events
              if ev.severity == "transition" and _names_layer(ev, layer.name)]
    event_steps = [ev.step for ev in events]
    chart_w = max(10, width - 2)  # each chart row is indented by one space
    for name in state.indicator_names():
        series = layer.indicators.get(name)
        if series is None:
            continue
        known = [v for v in series.values() if v is not None]
        text.append(f"\n\n {label(name)}", "bold cyan")
        text.append(f"  now {numbers.indicator(name, series.current)}", "bold")
        if known:
            text.append(f"   min {numbers.indicator(name, min(known))}"
                        f"   max {numbers.indicator(name, max(known))}", "dim")
        if series.history:
            text.append(f"   steps {series.history[0][0]:,}–{series.history[-1][0]:,}", "dim")
        for row in sparkline_rows(series.values(), chart_w, CHART_ROWS):
            text.append("\n ")
            text.append(row, "cyan")
        if event_steps:
            text.append("\n ")
            text.append(marker_line(series, event_steps, chart_w), "bold yellow")
    text.append("\n\n Transitions in this layer", "bold")
    if not events:
        text.append("\n none yet", "dim")
    for ev in events[-20:]:
        text.append(f"\n step {ev.step:>9,}  ", "dim")
        text.append(ev.message)
    return text


def _names_layer(event: EventRecord, name: str) -> bool:
    return event.layer == name or name in event.layers


class LayerDetailScreen(ModalScreen[None]):
    """Redraws itself from the app's live RunState twice a second."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("enter", "close", "Close", show=False),
    ]

    def __init__(self, state: RunState, layer: str) -> None:
        super().__init__()
        self.state = state
        self.layer_name = layer

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-box"):
            yield Static(id="detail-body")

    def on_mount(self) -> None:
        self.refresh_body()
        self.set_interval(REFRESH_S, self.refresh_body)

    def refresh_body(self) -> None:
        layer = self.state.layers.get(self.layer_name)
        body = self.query_one("#detail-body", Static)
        if layer is None:  # the run restarted without this layer
            body.update(Text(f"{self.layer_name}: no longer in this run", "dim"))
            return
        # the text must fit the box's content width, or every chart row wraps
        width = body.content_size.width or max(20, self.size.width - 8)
        body.update(layer_detail_text(self.state, layer, width))

    def action_close(self) -> None:
        self.dismiss(None)
