"""The events timeline: every transition and notice of the run so far, newest at the bottom."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from symwatch.state.run_state import RunState
from symwatch.tui.widgets.panels import SEVERITY_STYLES


class EventsScreen(ModalScreen[None]):
    """A scrollable table of `state.events` (bounded; the header says how many were kept)."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("e", "close", "Close", show=False),
    ]

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state

    def compose(self) -> ComposeResult:
        with Vertical(id="events-box"):
            kept, total = len(self.state.events), self.state.events_total
            title = f"events — {total:,}" + (f" (latest {kept:,} kept)" if kept < total else "")
            yield Static(Text(title, style="bold"), id="events-title")
            table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True,
                                               id="events-table")
            table.add_column(Text("step", style="bold"), key="step")
            table.add_column(Text("kind", style="bold"), key="kind")
            table.add_column(Text("what happened", style="bold"), key="message")
            for i, ev in enumerate(self.state.events):
                table.add_row(Text(f"{ev.step:,}", justify="right"),
                              Text(ev.severity, style=SEVERITY_STYLES.get(ev.severity, "")),
                              Text(ev.message.replace("\n", " ")), key=str(i))
            yield table

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.focus()
        if table.row_count:
            table.move_cursor(row=table.row_count - 1)

    def action_close(self) -> None:
        self.dismiss(None)
