"""The run picker: a table of live runs from the registry; Enter chooses one."""

from __future__ import annotations

import os
import time
from typing import Sequence

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from symwatch.runtime import RunEntry


def started_text(started: float, now: float | None = None) -> str:
    """Local time; the date only when it is not today (keeps the picker inside 120 columns)."""
    if not started:
        return "?"
    when = time.localtime(started)
    today = time.localtime(time.time() if now is None else now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M:%S", when)
    return time.strftime("%Y-%m-%d %H:%M", when)


def command_text(command: Sequence[str], width: int = 32) -> str:
    """The command line, its program as a base name (a full path says little and eats the row)."""
    parts = list(command)
    if parts:
        parts[0] = os.path.basename(parts[0]) or parts[0]
    text = " ".join(parts)
    return text if len(text) <= width else text[:width - 1] + "…"


class RunPickerScreen(Screen["RunEntry | None"]):
    """Dismisses with the chosen RunEntry, or None when cancelled."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("q", "cancel", "Cancel", show=False),
    ]

    def __init__(self, runs: Sequence[RunEntry]) -> None:
        super().__init__()
        self.runs = list(runs)

    def compose(self) -> ComposeResult:
        yield Static(f"{len(self.runs)} symwatch runs are live on this machine — choose one "
                     "with ↑/↓ and Enter (Esc cancels)", id="picker-title")
        yield DataTable(id="picker-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in ("run id", "name", "pid", "command", "endpoint", "started", "steps"):
            table.add_column(col, key=col)
        for entry in self.runs:
            table.add_row(entry.run_id, entry.name, str(entry.pid), command_text(entry.command),
                          entry.endpoint, started_text(entry.started), f"{entry.steps:,}",
                          key=entry.run_id)
        table.focus()

    @on(DataTable.RowSelected)
    def _chosen(self, event: DataTable.RowSelected) -> None:
        chosen = next((e for e in self.runs if e.run_id == event.row_key.value), None)
        self.dismiss(chosen)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PickerApp(App["RunEntry | None"]):
    """Runs the picker on its own and exits with the choice (`app.return_value`)."""

    CSS_PATH = "app.tcss"
    TITLE = "symwatch"

    def __init__(self, runs: Sequence[RunEntry]) -> None:
        super().__init__()
        self.runs = list(runs)

    def on_mount(self) -> None:
        self.push_screen(RunPickerScreen(self.runs), self.exit)
