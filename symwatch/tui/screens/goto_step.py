""""Go to step": a one-line prompt for a step of the run (`G`, or the command palette). The app
then scrolls the live view back to it, or moves a replay there (symwatch.tui.app)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


def parse_step(text: str) -> int | None:
    """A step typed by a person: digits, with `,` `_` or spaces between groups; None if not."""
    cleaned = text.strip().replace(",", "").replace("_", "").replace(" ", "")
    return int(cleaned) if cleaned.isdigit() else None


class GoToStepScreen(ModalScreen[int | None]):
    """Dismissed with the step typed (Enter), or None (Esc)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, bounds: tuple[int, int] | None) -> None:
        super().__init__()
        self.bounds = bounds

    def compose(self) -> ComposeResult:
        hint = (f"steps {self.bounds[0]:,}–{self.bounds[1]:,}" if self.bounds is not None
                else "no step yet")
        with Vertical(id="goto-box"):
            yield Static(Text.assemble(("go to step", "bold"), f"  ({hint}; Enter, Esc)"),
                         id="goto-title")
            yield Input(placeholder="step", id="goto-input", compact=True)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        step = parse_step(event.value)
        if step is None:
            self.notify(f"not a step: {event.value!r}", severity="warning", timeout=2.0)
            return
        self.dismiss(step)

    def action_cancel(self) -> None:
        self.dismiss(None)
