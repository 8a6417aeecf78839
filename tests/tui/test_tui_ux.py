"""The run view as a user drives it: sorting (keys and header clicks), the `/` filter, a click
on a row, the command palette and the help listing every action, themes, and the layouts at
80×24 and 250 columns. The real app under Textual's Pilot, fed with the fixed stream in
tests/tui_stream.py (and, where said, a real PUB socket)."""

from __future__ import annotations

import pytest
from textual.actions import parse
from textual.command import CommandPalette

from symwatch.core import protocol
from symwatch.transport.subscriber import Subscriber
from symwatch.state.run_state import RunState
from symwatch.tui.app import SymwatchApp
from symwatch.tui.commands import COMMANDS, action_name
from symwatch.tui.widgets.filter_bar import FilterBar
from symwatch.tui.screens.help import HelpScreen, help_text
from symwatch.tui.screens.layer_detail import LayerDetailScreen
from symwatch.tui.layer_order import TableOrder, matches, next_sort_column, ordered
from symwatch.tui.widgets.layer_table import LayerTable, column_key
from symwatch.tui.themes import DARK, LIGHT, ThemeError, background_from_colorfgbg, resolve_theme
from tui_snapshots import screen_text, settled_screen
from waiting import pilot_until as until
from tui_stream import DEAD_LAYER, LAYERS, STAIRCASE_LAYER, UNMEASURED_LAYER, frozen_source
from tui_stream import messages as stream_messages

NAMES = [name for name, _, _ in LAYERS]


def rows(app) -> list[str]:
    table = app.query_one(LayerTable)
    return [str(row.key.value) for row in table.ordered_rows]


def cursor_layer(app) -> str:
    table = app.query_one(LayerTable)
    return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)


def fixed_app(**kw) -> SymwatchApp:
    kw.setdefault("tick_s", 0.05)
    kw.setdefault("theme", DARK)
    return SymwatchApp(frozen_source(kw.pop("steps", 150), goodbye=kw.pop("goodbye", False)),
                       **kw)


async def loaded(pilot, app) -> None:
    await until(pilot, lambda: app.query_one(LayerTable).row_count == len(NAMES), what="rows")


# -- sorting -----------------------------------------------------------------------------------

def test_ordering_rules_na_last_ties_stable_filter_globs():
    state = RunState()
    state.fold_all(stream_messages(120))
    layers = list(state.layers.values())
    dead_first = ordered(layers, TableOrder(column_key("dead_fraction"), descending=True))
    assert dead_first[0] == DEAD_LAYER and dead_first[-1] == UNMEASURED_LAYER
    assert dead_first[1:-1] == [n for n in NAMES if n not in (DEAD_LAYER, UNMEASURED_LAYER)]
    ascending = ordered(layers, TableOrder(column_key("dead_fraction")))
    assert ascending[-2:] == [DEAD_LAYER, UNMEASURED_LAYER]  # N/A last both ways
    assert ordered(layers, TableOrder("layer")) == sorted(NAMES)
    assert ordered(layers, TableOrder(None, descending=True)) == NAMES[::-1]
    by_rank = ordered(layers, TableOrder(column_key("numerical_rank"), descending=True))
    ranks = [state.layers[n].value("numerical_rank") for n in by_rank[:-1]]
    assert ranks == sorted(ranks, reverse=True)
    assert [n for n in NAMES if matches(state.layers[n], "MLP.fc")] == [
        "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    assert [n for n in NAMES if matches(state.layers[n], "blocks.?.attn.q*")] == [
        "blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert [n for n in NAMES if matches(state.layers[n], "layernorm")] == ["norm_f"]  # type
    assert next_sort_column(None, ["ind:a", "ind:b"]) == "layer"
    assert next_sort_column("ind:b", ["ind:a", "ind:b"]) is None
    assert TableOrder().sorted_by("ind:a") == TableOrder("ind:a", descending=True)
    assert TableOrder("ind:a", True).sorted_by("ind:a") == TableOrder("ind:a", False)


async def test_s_cycles_sort_columns_and_S_reverses_keeping_the_cursor_on_its_layer():
    app = fixed_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app)
        assert rows(app) == NAMES
        table = app.query_one(LayerTable)
        table.move_cursor(row=NAMES.index(DEAD_LAYER))
        await pilot.press("s")  # layer name, A to Z
        await until(pilot, lambda: rows(app) == sorted(NAMES), what="sorted by name")
        assert cursor_layer(app) == DEAD_LAYER
        assert table.columns["layer"].label.plain == "▲ Layer"
        await pilot.press("S")
        await until(pilot, lambda: rows(app) == sorted(NAMES, reverse=True), what="reversed")
        assert table.columns["layer"].label.plain == "▼ Layer"
        await pilot.press("s")  # the first indicator column of the view, largest first
        first = app.indicator_columns()[0]
        assert table.order == TableOrder(first, descending=True)
        assert table.columns[first].label.plain.startswith("▼ ")
        values = [app.state.layers[n].value(first.removeprefix("ind:")) for n in rows(app)]
        known = [v for v in values if v is not None]
        assert known == sorted(known, reverse=True) and values[-1] is None  # N/A last
        assert cursor_layer(app) == DEAD_LAYER
        for _ in app.indicator_columns():
            await pilot.press("s")
        assert table.order.column is None
        await until(pilot, lambda: rows(app) == NAMES, what="back to the run's order")


async def test_a_live_sorted_table_reorders_as_values_change(fake_agent):
    agent = fake_agent()
    app = SymwatchApp(Subscriber(agent.endpoint), owns_source=True, tick_s=0.05, theme=DARK)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.messages, "a heartbeat", 5, step=0.05,
                    tick=agent.heartbeat)
        agent.meta()
        agent.send(protocol.METRICS, 1, values={
            "conv1": {"stable_rank": 1.0}, "fc1": {"stable_rank": 2.0},
            "fc2": {"stable_rank": 3.0}})
        await until(pilot, lambda: app.query_one(LayerTable).row_count == 3)
        app.sort_by(column_key("stable_rank"))
        await until(pilot, lambda: rows(app) == ["fc2", "fc1", "conv1"], what="largest first")
        agent.send(protocol.METRICS, 2, values={"conv1": {"stable_rank": 9.0}})
        await until(pilot, lambda: rows(app) == ["conv1", "fc2", "fc1"], what="re-sorted")


async def test_clicking_a_header_sorts_and_clicking_again_reverses():
    app = fixed_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app)
        table = app.query_one(LayerTable)
        await pilot.click(LayerTable, offset=(2, 0))  # the "Layer" header
        await until(pilot, lambda: rows(app) == sorted(NAMES), what="sorted by a click")
        await pilot.click(LayerTable, offset=(2, 0))
        await until(pilot, lambda: rows(app) == sorted(NAMES, reverse=True), what="reversed")
        x = table.columns["layer"].get_render_width(table) + 2  # inside the next column
        await pilot.click(LayerTable, offset=(x, 0))
        assert table.order.column == str(table.ordered_columns[1].key.value)


async def test_clicking_a_row_selects_it_and_clicking_it_again_opens_its_detail():
    app = fixed_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app)
        table = app.query_one(LayerTable)
        row_y = table.header_height + NAMES.index(STAIRCASE_LAYER)
        await pilot.click(LayerTable, offset=(3, row_y))
        await until(pilot, lambda: cursor_layer(app) == STAIRCASE_LAYER, what="row selected")
        assert not isinstance(app.screen, LayerDetailScreen)
        await pilot.click(LayerTable, offset=(3, row_y))
        await until(pilot, lambda: isinstance(app.screen, LayerDetailScreen), what="detail")
        assert app.screen.layer_name == STAIRCASE_LAYER


# -- filtering ---------------------------------------------------------------------------------

async def test_slash_filters_rows_enter_keeps_escape_clears():
    app = fixed_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app)
        bar = app.query_one(FilterBar)
        assert not bar.display
        await pilot.press("slash")
        assert bar.display and app.focused.id == "filter-input"
        await pilot.press(*"mlp.fc1")
        await until(pilot, lambda: rows(app) == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"],
                    what="filtered rows")
        assert "2 of 11 layers" in screen_text(app)
        await pilot.press("q")  # typed into the filter, not quitting
        assert app.is_running and rows(app) == []
        await pilot.press("backspace", "enter")
        await until(pilot, lambda: isinstance(app.focused, LayerTable), what="focus back")
        assert bar.display and len(rows(app)) == 2  # the filter stays, and says so
        await pilot.press("s")  # sorting works on the filtered rows
        await until(pilot, lambda: app.query_one(LayerTable).order.column == "layer")
        assert rows(app) == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
        await pilot.press("slash", "escape")
        await until(pilot, lambda: len(rows(app)) == len(NAMES), what="filter cleared")
        assert not bar.display and isinstance(app.focused, LayerTable)


async def test_replay_keys_type_into_the_filter_instead_of_controlling_the_replay():
    from symwatch.sources.replay import ReplaySource

    source = ReplaySource(stream_messages(60), speed=float("inf"))
    app = SymwatchApp(source, tick_s=0.05, theme=DARK)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.query_one(LayerTable).row_count == len(NAMES))
        await pilot.press("slash", "b", "space", "-")
        assert app.query_one("#filter-input").value == "b -" and source.playing
        await pilot.press("escape", "space")
        assert not source.playing  # the table has focus again: space pauses the replay


# -- the command palette and help ------------------------------------------------------------

def test_every_key_binding_is_a_listed_command_with_help():
    listed = {action_name(c.action) for c in COMMANDS}
    actions = [c.action for c in COMMANDS]
    assert len(actions) == len(set(actions)), "an action is listed twice"
    for binding in SymwatchApp.BINDINGS:
        assert action_name(binding.action) in listed, f"{binding.key} is not in COMMANDS"
    help_plain = "\n".join(str(cell) for col in help_text().columns for cell in col._cells)
    for command in COMMANDS:
        assert command.keys in help_plain and command.help in help_plain
    for key in ("s", "S", "/", "t", "Ctrl+P", "click a header", "click a row"):
        assert key in help_plain


async def test_the_palette_lists_every_command_and_runs_them():
    app = fixed_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for command in COMMANDS:
            _, name, params = parse(command.action)
            if command.replay or name == "command_palette":
                continue
            if app.check_action(name, params) is False:
                continue  # e.g. "back to live" while live
            assert command.title in titles, command.title
        assert not any(t.startswith("Replay") for t in titles)  # a live source has no replay
        assert "Theme" in titles and "Sort by stable rank" in titles
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"light / dark")
        await pilot.pause(0.5)  # the palette searches its providers in the background
        await pilot.press("enter")
        await until(pilot, lambda: app.theme == LIGHT, what="theme toggled from the palette")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"sort by dead fraction")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: rows(app)[0] == DEAD_LAYER, what="sorted from the palette")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"events timeline")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: type(app.screen).__name__ == "EventsScreen", what="events")


async def test_replay_commands_appear_for_a_replay():
    from symwatch.sources.replay import ReplaySource

    app = SymwatchApp(ReplaySource(stream_messages(20)), tick_s=0.05, theme=DARK)
    async with app.run_test(size=(120, 40)):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert all(c.title in titles for c in COMMANDS if c.replay)


async def test_enter_and_the_open_layer_command_open_the_cursor_row():
    app = fixed_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app)
        app.query_one(LayerTable).move_cursor(row=2)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LayerDetailScreen))
        assert app.screen.layer_name == NAMES[2]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, LayerDetailScreen))
        await app.run_action("open_layer")
        await until(pilot, lambda: isinstance(app.screen, LayerDetailScreen))
        assert app.screen.layer_name == NAMES[2]
        await pilot.press("escape", "question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "Ctrl+P" in screen_text(app)


# -- themes ------------------------------------------------------------------------------------

def test_theme_choice_environment_and_terminal_background():
    assert resolve_theme("light", {}) == LIGHT and resolve_theme("dark", {}) == DARK
    assert resolve_theme("terminal", {}) == "textual-ansi"
    assert resolve_theme(None, {}) == DARK  # nothing known: dark
    assert resolve_theme(None, {"COLORFGBG": "0;15"}) == LIGHT
    assert resolve_theme(None, {"COLORFGBG": "15;default;0"}) == DARK
    assert resolve_theme("auto", {"COLORFGBG": "0;7"}) == LIGHT
    assert resolve_theme(None, {"SYMWATCH_THEME": "light", "COLORFGBG": "15;0"}) == LIGHT
    assert resolve_theme("dark", {"SYMWATCH_THEME": "light"}) == DARK  # the flag wins
    assert background_from_colorfgbg("garbage") is None
    with pytest.raises(ThemeError, match=r"\$SYMWATCH_THEME: unknown theme 'pink'"):
        resolve_theme(None, {"SYMWATCH_THEME": "pink"})


async def test_t_toggles_light_and_dark_and_the_stylesheet_follows():
    app = fixed_app(theme=DARK)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        dark_background = app.screen.styles.background
        await pilot.press("t")
        assert app.theme == LIGHT and not app.current_theme.dark
        await pilot.pause(0.1)
        assert app.screen.styles.background != dark_background
        assert app.screen.styles.background.brightness > 0.5
        await pilot.press("t")
        assert app.theme == DARK


def test_the_stylesheet_uses_theme_variables_not_fixed_colours():
    import re
    from pathlib import Path

    import symwatch.tui

    css = (Path(symwatch.tui.__file__).parent / "app.tcss").read_text()
    colours = re.findall(r"^\s*(?:background|color|border[a-z-]*)\s*:\s*([^;]+);", css, re.M)
    assert colours
    for value in colours:
        assert "$" in value or value.strip() in ("none",), f"a fixed colour in app.tcss: {value}"


# -- layouts -----------------------------------------------------------------------------------

async def test_80x24_shows_whole_layer_names_every_overview_value_and_the_footer():
    app = fixed_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        screen = (await settled_screen(pilot, app)).splitlines()
        assert len(screen) == 24 and max(len(line) for line in screen) <= 80
        for name in NAMES:  # no "…" prefix: blocks.0 and blocks.1 stay apart
            assert any(line.split()[:1] == [name] for line in screen), name
        head = next(line for line in screen if line.split()[:1] == ["Layer"])
        for short in ("brkn", "modes", "srank", "erank", "dead", "dup"):
            assert short in head.split()
        assert "step 150" in screen[1] and "loss" in screen[1]
        assert "Quit" in screen[-1]


async def test_250_columns_use_the_width_with_full_labels_and_long_sparklines():
    app = fixed_app()
    async with app.run_test(size=(250, 60)) as pilot:
        await loaded(pilot, app)
        table = app.query_one(LayerTable)
        assert table._layout.spark_w == 24 and table._layout.header_height == 1
        screen = screen_text(app)
        assert "duplicate fraction" in screen and "Shape" in screen
        assert table.virtual_size.width > 200
        # events and loss grow with the height
        assert app.query_one("#events").region.height >= 8


async def test_resizing_a_finished_run_refits_the_table_to_the_new_width():
    app = fixed_app(goodbye=True)  # finished: nothing new arrives to trigger a redraw
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        table = app.query_one(LayerTable)
        assert table._layout.spark_w == 0
        await pilot.resize_terminal(250, 50)
        await until(pilot, lambda: table._layout.spark_w == 24, what="refitted to 250")
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: table._layout.spark_w == 0, what="refitted to 80")
