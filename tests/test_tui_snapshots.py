"""Snapshot tests: the real app, fixed data (tests/tui_stream.py, its clock stopped), a fixed
terminal size; the screen's text is compared with tests/snapshots/NAME.txt.

After a deliberate change to what the view shows, rewrite the snapshots and review them:
    SYMWATCH_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest -q tests/test_tui_snapshots.py
    git diff tests/snapshots/
"""

from __future__ import annotations

import time

from symwatch.tui.app import SymwatchApp
from symwatch.tui.layer_table import LayerTable
from symwatch.tui.themes import DARK
from tui_snapshots import assert_snapshot, settled_screen
from tui_stream import LAYERS, STAIRCASE_LAYER, frozen_source


async def _loaded(pilot, app) -> None:
    deadline = time.monotonic() + 10
    while app.query_one(LayerTable).row_count < len(LAYERS):
        assert time.monotonic() < deadline, "the fixed stream never filled the table"
        await pilot.pause(0.05)


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
