"""The events timeline: every transition and notice of the run so far, newest at the bottom.

Each event reads without scrolling sideways: its kind in words (`units died`, `a mode learned`:
the detector's kind, not `transition` on every row), its cause (an optimizer change, the
`[exogenous: …]` label) in a column of its own, and what happened wrapped to the screen, led by
the change in the table's own names and units (`inact 1.6% → 3.1%`, not `relu_dead 0.01562`).
Enter on an event opens its layer's detail at its step.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from symwatch.state.run_state import RunState
from symwatch.tui.event_text import event_layer, event_parts
from symwatch.tui.widgets.panels import SEVERITY_STYLES

STEP_W, KIND_W, CAUSE_W, MIN_TEXT_W = 8, 16, 24, 20
# the box is 95% of the screen with a border and padding (app.tcss #events-box); each column
# has one blank on either side (DataTable's cell padding); 2 for the scrollbar
BOX_SHARE, BOX_CHROME, COLUMN_PADDING, SCROLLBAR = 0.95, 4, 2, 2


def column_widths(screen_width: int, kind_w: int, cause_w: int) -> tuple[int, int, int, int]:
    """step, kind, cause and text widths for a screen `screen_width` wide: the text gets what
    the others leave (they shrink first at 80 columns), so nothing needs a sideways scroll."""
    usable = int(screen_width * BOX_SHARE) - BOX_CHROME - SCROLLBAR - 4 * COLUMN_PADDING
    kind_w, cause_w = min(kind_w, KIND_W), min(cause_w, CAUSE_W)
    text_w = usable - STEP_W - kind_w - cause_w
    if text_w < MIN_TEXT_W:  # narrow: the kind and cause columns wrap instead
        squeeze = MIN_TEXT_W - text_w
        cause_cut = min(squeeze, max(0, cause_w - 12))
        cause_w -= cause_cut
        kind_w -= min(squeeze - cause_cut, max(0, kind_w - 10))
        text_w = usable - STEP_W - kind_w - cause_w
    return STEP_W, kind_w, cause_w, max(MIN_TEXT_W, text_w)


class EventsScreen(ModalScreen[None]):
    """A scrollable table of `state.events` (bounded; the header says how many were kept)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("e", "close", "Close", show=False),
    ]

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state
        self.events = list(state.events)

    def compose(self) -> ComposeResult:
        with Vertical(id="events-box"):
            kept, total = len(self.state.events), self.state.events_total
            title = f"events — {total:,}" + (f" (latest {kept:,} kept)" if kept < total else "")
            title += "   Enter: the layer at that step"
            yield Static(Text(title, style="bold"), id="events-title")
            table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True,
                                               id="events-table")
            parts = [event_parts(ev) for ev in self.events]
            step_w, kind_w, cause_w, text_w = column_widths(
                self.app.size.width, max([len(p.kind) for p in parts] + [4]),
                max([len(p.cause) for p in parts] + [5]))
            table.add_column(Text("step", style="bold"), key="step", width=step_w)
            table.add_column(Text("kind", style="bold"), key="kind", width=kind_w)
            table.add_column(Text("cause", style="bold"), key="cause", width=cause_w)
            table.add_column(Text("what happened", style="bold"), key="message", width=text_w)
            for i, (ev, p) in enumerate(zip(self.events, parts)):
                what = Text()
                if p.change:
                    what.append(p.change, "bold")
                    what.append("  ")
                what.append(p.text)
                kind_style = SEVERITY_STYLES.get(ev.severity, "")
                table.add_row(Text(f"{ev.step:,}", justify="right"), Text(p.kind, kind_style),
                              Text(p.cause, "magenta"), what, key=str(i), height=None)
            yield table

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.focus()
        if table.row_count:
            table.move_cursor(row=table.row_count - 1)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on an event: its layer's detail screen, the view scrolled back to its step."""
        event.stop()
        ev = self.events[int(str(event.row_key.value))]
        layer = event_layer(ev)
        self.dismiss(None)
        if layer is None or layer not in self.state.layers:
            self.app.notify(f"step {ev.step:,}: no layer to show for this event", timeout=2)
            return
        self.app.open_event(layer, ev.step)  # type: ignore[attr-defined]

    def action_close(self) -> None:
        self.dismiss(None)
