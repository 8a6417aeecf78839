"""Every action of the run view, once: its keys, its title and what it does. The help screen
(`?`) and the command palette (Ctrl+P) are both built from this table, so neither can miss one
(tests/tui/test_tui_ux.py checks that every key binding of the app is listed here)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator, Protocol

from textual.actions import parse
from textual.app import SystemCommand

from symwatch.tui.columns import label
from symwatch.tui.layer_order import INDICATOR_PREFIX, TEXT_COLUMNS


class CommandHost(Protocol):
    """What the palette needs of the app (symwatch.tui.app.SymwatchApp)."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None: ...

    async def run_action(self, action: str, default_namespace: Any = None) -> bool: ...

    def indicator_columns(self) -> list[str]: ...

    def sort_by(self, column: str | None) -> None: ...

    def layer_filter(self) -> str: ...

    def set_layer_filter(self, pattern: str) -> None: ...


@dataclass(frozen=True)
class Command:
    keys: str  # as the help screen shows them
    action: str  # a Textual action string, run on the app
    title: str  # in the command palette
    help: str  # one line, in both
    replay: bool = False  # only for a replayed recording (`symwatch replay`)


COMMANDS: tuple[Command, ...] = (
    Command("?", "help", "Help", "keys, mouse, connection states and what the columns mean"),
    Command("Enter", "open_layer", "Layer detail",
            "the selected layer: every indicator's history as a chart, its transitions"),
    Command("e", "events", "Events timeline", "every transition and notice of the run so far"),
    Command("g", "ranks", "Ranks and GPUs",
            "every rank's step, loss, speed and memory (stragglers, diverging ranks); the GPUs"),
    Command("r", "runs", "Runs",
            "every run here and on SSH hosts; Enter shows one, a adds a host, o a recording"),
    Command("v", "next_view", "Next column view",
            "the next view of indicator columns (the tab strip above the table: overview, "
            "rank, units, scale, rotation, repr, heads, all; views with no value for this run "
            "are left out)"),
    Command("s", "next_sort", "Sort by the next column",
            "the run's order, layer name, then each indicator column of the view"),
    Command("S", "reverse_sort", "Reverse the sort", "largest first ⇄ smallest first"),
    Command("/", "filter", "Filter layers",
            "show the layers whose name or type contains the text (* ? globs); Esc clears"),
    Command("p", "pause", "Pause / resume", "freeze the view; data keeps arriving"),
    Command("[", "history_pan(-0.5)", "History: back",
            "half a window back through the run's history (pauses; a replay seeks)"),
    Command("]", "history_pan(0.5)", "History: forward", "half a window forward"),
    Command("{", "history_jump(-1)", "History: back a lot", "a tenth of the run back"),
    Command("}", "history_jump(1)", "History: forward a lot", "a tenth of the run forward"),
    Command("z", "history_zoom(2)", "History: zoom out", "a window twice as wide"),
    Command("Z", "history_zoom(0.5)", "History: zoom in", "a window half as wide"),
    Command("L", "history_live", "History: back to live", "the newest samples again (or End)"),
    Command("G", "goto_step", "Go to step…",
            "type a step: the view (or the replay) goes there"),
    Command("f", "follow_run", "Follow the restarted run",
            "the run ended and a new run of its name is live (a restarted script): show it"),
    Command("t", "toggle_theme", "Light / dark theme", "switch between the light and dark theme"),
    Command("Ctrl+P", "command_palette", "Command palette",
            "search every action by name (this list)"),
    Command("space", "replay('toggle_play')", "Replay: play / pause",
            "stop or continue the recording", replay=True),
    Command("+", "replay('faster')", "Replay: faster", "double the replay speed", replay=True),
    Command("-", "replay('slower')", "Replay: slower", "halve the replay speed", replay=True),
    Command("Home", "replay('seek_start')", "Replay: to the start",
            "back to the first message", replay=True),
    Command("End", "replay('seek_end')", "Replay: to the end",
            "everything at once, to the last message", replay=True),
    Command("q / Ctrl+C", "quit", "Quit", "leave symwatch (the run goes on)"),
)

# Keys without an action of the app's own: the table's, the mouse's, the screens'.
OTHER_KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓ PgUp PgDn", "move through the layer table"),
    ("← →", "move the column cursor: the line under the table explains that column"),
    ("Enter (events)", "on an event in the timeline (e): its layer's detail at its step"),
    ("click a header", "sort by that column; click it again to reverse"),
    ("click a row", "select it; click it again (or Enter) for its detail"),
    ("Esc", "close a screen (help, detail, events), or clear the filter"),
)


TEXT_TITLES = {"layer": "layer name", "type": "layer type", "shape": "size (shape)"}


def action_name(action: str) -> str:
    return parse(action)[1]


def palette_commands(app: CommandHost) -> Iterator[SystemCommand]:
    """The app's commands for Textual's command palette (those the app can run now), and a
    "Sort by …" command for each column on screen."""
    for command in COMMANDS:
        _, name, params = parse(command.action)
        if name == "command_palette" or app.check_action(name, params) is False:
            continue
        yield SystemCommand(command.title, command.help, partial(app.run_action, command.action))
    columns = list(TEXT_COLUMNS) + [c for c in app.indicator_columns()]
    for column in columns:
        title = (label(column[len(INDICATOR_PREFIX):]) if column.startswith(INDICATOR_PREFIX)
                 else TEXT_TITLES.get(column, column))
        yield SystemCommand(f"Sort by {title}", f"order the layers by {title} (again: reverse)",
                            partial(app.sort_by, column), discover=False)
    if app.layer_filter():
        yield SystemCommand("Clear the filter", f"show every layer again (now: "
                            f"{app.layer_filter()!r})", partial(app.set_layer_filter, ""))
