"""The help screen: keys, connection states and what the indicator columns mean."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from symwatch.tui.commands import COMMANDS, OTHER_KEYS


def _keys() -> tuple[tuple[str, str], ...]:
    """Every action of the app (symwatch.tui.commands) and the table's and mouse's keys."""
    rows = [(c.keys, c.help + (" (replay)" if c.replay else "")) for c in COMMANDS]
    return tuple(rows) + OTHER_KEYS


KEYS = _keys()

STATES = (
    ("WAITING", "nothing received yet from the endpoint"),
    ("LIVE", "messages arriving (the agent sends a heartbeat every second)"),
    ("STALE", "no message for more than 3 s: run stuck, stopped or unreachable"),
    ("RECONNECTING", "the connection to the agent dropped (it died or restarts); retrying"),
    ("FINISHED", "the run said goodbye; the last values stay on screen"),
)

INDICATORS = (
    ("weight norm", "‖W‖_F, the Frobenius norm of the layer's weight"),
    ("stable rank", "‖W‖_F² / σ₁²: how many directions carry the weight's energy"),
    ("numerical rank", "singular values above a threshold (relative to the largest σ₁ seen)"),
    ("dead fraction", "share of units whose in+bias+out weight norm is ≤ 1 % of the layer's RMS"),
    ("broken Δ", "how far the layer is from its symmetric states, 0..1 (docs/metrics.md)"),
    ("▲ / ▼ name", "a transition just happened in this layer (up / down)"),
    ("N/A", "not measured (yet), not finite, or the symmetry does not hold for the layer "
            "(e.g. duplicates of Linear → Linear); never shown as 0"),
)


def help_text() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    for title, rows in (("Keys", KEYS), ("Connection", STATES), ("Columns", INDICATORS)):
        grid.add_row(Text(title, style="bold underline"), "")
        for key, what in rows:
            grid.add_row(key, what)
        grid.add_row("", "")
    grid.add_row("", Text("Each indicator cell: a sparkline of recent samples, then the latest "
                          "value. The header's 'dropped' counts messages the agent could not "
                          "send plus gaps in sequence numbers. Themes: --theme light|dark|auto"
                          "|terminal or $SYMWATCH_THEME; t switches light ⇄ dark.",
                          style="dim"))
    return grid


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(Text("symwatch — help", style="bold"), id="help-title")
            yield Static(help_text(), id="help-body")

    def action_close(self) -> None:
        self.dismiss(None)
