"""How the main screen shares its height (symwatch/tui/main_layout.py): the rule on its own,
and the real app at several sizes, small and large models."""

from __future__ import annotations

import pytest

from symwatch.core import protocol
from symwatch.tui.main_layout import (
    CHART_MAX,
    EVENTS_MAX,
    EVENTS_MIN,
    TABLE_MIN,
    chart_rows,
    main_heights,
)
from symwatch.tui.widgets.layer_table import LayerTable
from symwatch.tui.widgets.legend import LegendLine
from symwatch.tui.widgets.panels import EventsLog, GpuLine, LossPanel
from tests.tui.test_tui_app import app_on, join, sampled, until


def test_a_large_table_keeps_three_shares_and_the_default_chart() -> None:
    heights = main_heights(40, free=35, table_lines=1002)
    assert heights.chart == chart_rows(40) == 6
    assert heights.events == (35 - 6) // 4 == 7
    assert heights.table == 35 - 6 - 7
    tall = main_heights(100, free=95, table_lines=1002)
    assert tall.events == EVENTS_MAX and tall.chart == 6 and tall.table == 95 - 6 - EVENTS_MAX


def test_a_short_table_is_cut_to_its_rows_and_gives_the_rest_away() -> None:
    heights = main_heights(40, free=35, table_lines=7)
    assert heights.table == 7
    assert heights.chart == CHART_MAX  # the chart first, up to its cap
    assert heights.events == 35 - 7 - CHART_MAX  # then the log: no line is left blank
    # a table only a little short of its share: every spare line to the chart
    near = main_heights(40, free=35, table_lines=20)
    assert near.table == 20 and near.chart == 6 + 2 and near.events == 7


@pytest.mark.parametrize("screen", [10, 16, 24, 30, 40, 60, 100])
@pytest.mark.parametrize("need", [1, 3, 4, 7, 20, 60, 1002])
def test_the_heights_always_fill_the_free_lines(screen: int, need: int) -> None:
    free = screen - 5  # header 2, GPU line, footer, the loss panel's text line
    heights = main_heights(screen, free=free, table_lines=need)
    assert heights.table + heights.chart + heights.events == free
    assert heights.table <= max(TABLE_MIN, need) and heights.chart >= 1
    if free - heights.chart >= TABLE_MIN + EVENTS_MIN:  # room for both minimums
        assert heights.table >= TABLE_MIN and heights.events >= EVENTS_MIN


def _fitted(app) -> bool:
    """Heights fitted and laid out: the table at its height, the log ending on the footer."""
    table, events = app.query_one(LayerTable), app.query_one(EventsLog)
    return (app._heights is not None and table.region.height == app._heights.table
            and events.region.height == app._heights.events
            and events.region.bottom == app.size.height - 1)


def _blank_lines_under_the_table(app) -> int:
    table = app.query_one(LayerTable)
    return table.region.height - (table.header_height + table.row_count)


async def test_a_small_model_leaves_no_blank_lines_under_its_table(fake_agent) -> None:
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await sampled(pilot, agent, app)  # three layers
        await until(pilot, lambda: _fitted(app), what="heights fitted to 3 rows")
        table, loss = app.query_one(LayerTable), app.query_one(LossPanel)
        events, gpu = app.query_one(EventsLog), app.query_one(GpuLine)
        legend = app.query_one(LegendLine)
        assert _blank_lines_under_the_table(app) == 0
        # the column legend right under the last row, then the chart
        assert legend.region.y == table.region.bottom and loss.region.y == legend.region.bottom
        assert loss.region.height == CHART_MAX + 1 > chart_rows(40) + 1
        assert str(loss.content).count("\n") == CHART_MAX  # drawn at its new height
        if gpu.display:  # the GPU line only for a run whose agent sees a GPU
            assert gpu.region.y == loss.region.bottom and events.region.y == gpu.region.bottom
        else:
            assert events.region.y == loss.region.bottom
        assert events.region.height > EVENTS_MAX // 2
        # the log ends on the footer's line: the whole screen is used
        assert events.region.bottom == app.size.height - 1

        await pilot.resize_terminal(120, 24)
        await until(pilot, lambda: app._heights is not None and app._heights.chart < CHART_MAX
                    and _fitted(app), what="heights fitted to 24 lines")
        assert _blank_lines_under_the_table(app) <= TABLE_MIN - 3  # at most the table's minimum
        assert events.region.bottom == app.size.height - 1


async def test_a_large_model_keeps_the_tables_share(fake_agent) -> None:
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await join(pilot, agent, app)
        agent.send(protocol.METRICS, 10, values={
            f"layer{i:02d}": {"weight_norm": 1.0 + i, "stable_rank": 2.0} for i in range(60)})
        agent.send(protocol.STATS, 10, loss=0.5, steps_per_s=8.0, overhead=0.004)
        await until(pilot, lambda: app.query_one(LayerTable).row_count == 60, what="60 rows")
        table, loss = app.query_one(LayerTable), app.query_one(LossPanel)
        # Fitted to the 60 rows, not still to the empty table before them (a loaded machine
        # read the earlier fit: a 13-line chart): the chart as on any 40-line screen.
        await until(pilot, lambda: _fitted(app) and loss.region.height == chart_rows(40) + 1,
                    what="heights fitted to 60 rows, the chart at a 40-line screen's rows")
        assert table.region.height > 3 * app.query_one(EventsLog).region.height - 3
        assert table.region.height < table.header_height + 60  # it scrolls


def test_a_log_with_few_events_gives_its_lines_to_the_table() -> None:
    """`no events yet` left ~17 blank rows under it at 120×40: the log keeps one line per
    event (at least one), a long table gets the rest."""
    none = main_heights(40, free=35, table_lines=1002, event_lines=0)
    assert none.events == 1 and none.table == 35 - 6 - 1
    some = main_heights(40, free=35, table_lines=1002, event_lines=3)
    assert some.events == 3 and some.table == 35 - 6 - 3
    many = main_heights(40, free=35, table_lines=1002, event_lines=500)
    assert many == main_heights(40, free=35, table_lines=1002)  # its usual share
