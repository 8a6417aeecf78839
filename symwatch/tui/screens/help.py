"""The help screen: keys, connection states and what the indicator columns mean."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from symwatch.tui.columns import LEGEND, label, legend
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

def _columns() -> tuple[tuple[str, str], ...]:
    """Every column's short and long name (the table shows one or the other by width) with
    its legend (symwatch.tui.columns.LEGEND): the same line ←/→ shows under the table."""
    rows = []
    for name in LEGEND:
        short, long_ = label(name, short=True), label(name)
        explained = legend(name).split("  ", 1)[1].split(": ", 1)[1]
        rows.append((f"{short:<6} {long_}" if short != long_ else long_, explained))
    rows.append(("qkσ3 …", ("a head's series (the heads view): family short name + head "
                            "number; QK σ₁ h3 is head 3's QK σ₁")))
    return tuple(rows)


INDICATORS = (
    *_columns(),
    ("▲ / ▼ name", "a transition just happened in this layer (up / down)"),
    ("N/A", ("not measured (yet), not finite, or the symmetry does not hold for the layer "
             "(e.g. duplicates of Linear → Linear); never shown as 0; a column N/A on every "
             "layer is not shown")),
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
                          "value; fractions in percent. ←/→ move the column cursor: the line "
                          "under the table explains that column. The header's 'dropped' counts messages the agent could not "
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
