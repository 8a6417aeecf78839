"""Snapshot tests: the real app, fixed data (tests/tui_stream.py, its clock stopped), a fixed
terminal size; the screen's text is compared with tests/snapshots/NAME.txt.

After a deliberate change to what the view shows, rewrite the snapshots and review them:
    SYMWATCH_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest -q tests/tui/test_tui_snapshots.py
    git diff tests/snapshots/
"""

from __future__ import annotations

import itertools

from symwatch.tui.app import SymwatchApp
from symwatch.tui.widgets.layer_table import LayerTable
from symwatch.tui.themes import DARK
from tui_snapshots import assert_snapshot, settled_screen
from tui_stream import LAYERS, STAIRCASE_LAYER, frozen_source
from waiting import pilot_until


async def _loaded(pilot, app) -> None:
    await pilot_until(pilot, lambda: app.query_one(LayerTable).row_count >= len(LAYERS),
                      "the fixed stream to fill the table", 10, step=0.05)


def _app(steps: int = 105, goodbye: bool = False) -> SymwatchApp:
    # 105 steps: two layers still flagged (▲) by their transitions at steps 90 and 100
    return SymwatchApp(frozen_source(steps, goodbye=goodbye), tick_s=0.05, theme=DARK)


async def test_snapshot_dashboard_80x24():
    app = _app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _loaded(pilot, app)
        assert_snapshot("dashboard-80x24", await settled_screen(pilot, app))


async def test_snapshot_dashboard_sorted_and_filtered_120x30():
    app = _app()
    async with app.run_test(size=(120, 30)) as pilot:
        await _loaded(pilot, app)
        await pilot.press("slash", *"blocks", "enter", "s", "s")  # by name, then broken Δ
        assert_snapshot("dashboard-sorted-filtered-120x30", await settled_screen(pilot, app))


async def test_snapshot_layer_detail_100x40():
    app = _app()
    async with app.run_test(size=(100, 40)) as pilot:
        await _loaded(pilot, app)
        table = app.query_one(LayerTable)
        table.move_cursor(row=table.get_row_index(STAIRCASE_LAYER))
        await pilot.press("enter")
        assert_snapshot("layer-detail-100x40", await settled_screen(pilot, app))


async def test_snapshot_help_80x40():
    app = _app()
    async with app.run_test(size=(80, 40)) as pilot:
        await _loaded(pilot, app)
        await pilot.press("question_mark")
        assert_snapshot("help-80x40", await settled_screen(pilot, app))


async def test_snapshot_finished_run_80x24():
    app = _app(steps=150, goodbye=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await _loaded(pilot, app)
        assert_snapshot("finished-80x24", await settled_screen(pilot, app))


async def test_layer_table_fast_cell_rendering_matches_datatables_own():
    # LayerTable renders its one-line Text cells itself (DataTable's way costs ~0.2 ms a cell,
    # which kept keys waiting at 1,000 layers); every cell the fixed stream gives (flags, ⚠,
    # N/A, sparklines, zebra rows, cursor, hover, both themes) must come out exactly as
    # DataTable renders it, segment by segment, style by style.
    from rich.style import Style
    from textual.coordinate import Coordinate
    from textual.widgets import DataTable

    from symwatch.tui.themes import LIGHT
    for theme in (DARK, LIGHT):
        app = SymwatchApp(frozen_source(105), tick_s=0.05, theme=theme)
        async with app.run_test(size=(160, 40)) as pilot:
            await _loaded(pilot, app)
            table = app.query_one(LayerTable)
            compared = 0
            for row in range(table.row_count):
                base = table._get_row_style(row, Style())
                for column, spec in enumerate(table.ordered_columns):
                    for cursor, hover in ((False, False), (True, False), (False, True)):
                        args = (row, column, base, spec.get_render_width(table), cursor, hover)
                        table._cell_render_cache.clear()
                        general = app.console.render_lines
                        app.console.render_lines = None  # ours must not take the general way
                        try:
                            ours = table._render_cell(*args)
                        finally:
                            app.console.render_lines = general
                        table._cell_render_cache.clear()
                        theirs = DataTable._render_cell(table, *args)
                        assert ours == theirs, (row, spec.key.value, cursor, hover)
                        compared += 1
            assert compared >= len(LAYERS) * 9 * 3  # Layer, Type, Shape, 6 indicators
            # whole lines too (LayerTable._render_line_in_row), the header and every row, with
            # the cursor and the mouse on this row or another, and the row styles it keeps
            keys = [table._header_row_key, *(r.key for r in table.ordered_rows)]
            base = Style(bgcolor="black")
            for at, hover, mouse in itertools.product(((0, 0), (3, 2)), ((0, 0), (3, 0), (7, 4)),
                                                      (False, True)):
                table._show_hover_cursor = mouse  # the mouse moved over the table
                for key in keys:
                    args = (key, 0, base, Coordinate(*at), Coordinate(*hover))
                    table._row_render_cache.clear()
                    table._cell_render_cache.clear()
                    ours_line = table._render_line_in_row(*args)
                    table._row_render_cache.clear()
                    table._cell_render_cache.clear()
                    assert ours_line == DataTable._render_line_in_row(table, *args), (args, mouse)
            for row in (-1, 0, 1, 2):
                assert table._get_row_style(row, base) == DataTable._get_row_style(table, row,
                                                                                   base)
