"""The `/` filter line under the layer table: type to narrow the rows, Enter keeps the filter,
Esc clears it. It stays on screen, with the count of rows shown, while a filter is set."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Static

PLACEHOLDER = "layer name or type; * ? globs; Enter keeps, Esc clears"


class FilterBar(Horizontal):
    """Posts `Changed` on every edit and `Done` when the user leaves it (Enter or Esc)."""

    BINDINGS = [Binding("escape", "clear", "Clear filter")]

    class Changed(Message):
        def __init__(self, pattern: str) -> None:
            super().__init__()
            self.pattern = pattern

    class Done(Message):
        """Focus can go back to the table."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._count: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("filter /", style="bold"), id="filter-prompt")
        yield Input(placeholder=PLACEHOLDER, id="filter-input", compact=True)
        yield Static(id="filter-count")

    def on_mount(self) -> None:
        self.display = False

    @property
    def pattern(self) -> str:
        return self.query_one(Input).value.strip()

    def open(self) -> None:
        self.display = True
        self.query_one(Input).focus()

    def show_count(self, shown: int, total: int) -> None:
        """Called on every redraw: a Static updates (and lays out again) only on a change."""
        if (shown, total) != self._count:
            self._count = (shown, total)
            self.query_one("#filter-count", Static).update(
                Text(f"{shown:,} of {total:,} layers", style="dim"))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(event.value.strip()))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.display = bool(self.pattern)  # an empty filter needs no line
        self.post_message(self.Done())

    def action_clear(self) -> None:
        self.query_one(Input).value = ""  # posts Input.Changed, so Changed("") follows
        self.display = False
        self.post_message(self.Changed(""))
        self.post_message(self.Done())
