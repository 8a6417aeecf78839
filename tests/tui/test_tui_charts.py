"""Charts a newcomer can read (issue #18): the layer detail's charts have y tick labels and step
labels, a 0.8 % move is a small move, a constant and float noise around 0 draw flat, and the
table draws a constant as a dimmed baseline. The real app on the fixed stream (tests/tui_stream)
with one layer's series replaced by the issue's quoted cases; the screen read as text."""

from __future__ import annotations

import re

from tui_snapshots import screen_text
from tui_stream import LAYERS, FrozenSource, messages
from waiting import pilot_until

from symwatch.tui.app import SymwatchApp
from symwatch.tui.screens.layer_detail import CHART_ROWS, LayerDetailScreen
from symwatch.tui.themes import DARK
from symwatch.tui.widgets.layer_table import LayerTable, column_key
from symwatch.tui.widgets.sparkline import BARS

LAYER = "head"
STEPS = 120


def _quoted(step: int) -> dict[str, float]:
    """The issue's cases as one layer's series over steps 1..STEPS."""
    t = (step - 1) / (STEPS - 1)
    noise = (-5.1e-7, 3.0e-7, -2.2e-7, 4.9e-7)[step % 4]
    return {"weight_norm": round(3.211 - 0.027 * t, 6),  # 3.211 → 3.184: 0.8 %
            "stable_rank": 4.123,  # constant
            "balance": noise,  # float noise around 0
            "broken": round(0.2 + 0.7 * t, 6),  # far: the whole height
            "dead_fraction": 0.0}  # a constant cell in the table


def _source() -> FrozenSource:
    stream = messages(STEPS)
    for message in stream:
        values = message.payload.get("values") if message.kind == "metrics" else None
        if values and LAYER in values:
            values[LAYER].update(_quoted(message.step))
    return FrozenSource(stream, at=stream[-1].time + 0.5)


def _chart(screen: str, title: str) -> tuple[list[str], list[str], str]:
    """The y labels, the bar rows (labels cut off) and the step line of the chart titled
    `title` on the screen (inside the detail box's border)."""
    lines = [line.split("│")[1] if line.count("│") >= 2 else line for line in screen.split("\n")]
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(title + "  "))
    labels, rows = [], []
    for line in lines[at + 1:at + 1 + CHART_ROWS]:
        match = re.match(r"^ +(-?[0-9][0-9.,e+-]*) (.*)$", line)
        assert match, f"no y label on the chart row {line!r}"
        labels.append(match.group(1))
        rows.append(match.group(2))
    below = [line for line in lines[at + 1 + CHART_ROWS:at + 3 + CHART_ROWS] if "▲" not in line]
    return labels, rows, below[0]


def _heights(rows: list[str]) -> list[int]:
    """Eighths filled per drawn column (gaps left out)."""
    heights = [0] * max(len(r) for r in rows)
    for row in rows:
        for x, ch in enumerate(row):
            heights[x] += 8 if ch == BARS[-1] else (BARS.index(ch) + 1 if ch in BARS else 0)
    return [h for h in heights if h]


async def _detail(pilot, app) -> str:
    table = app.query_one(LayerTable)
    await pilot_until(pilot, lambda: table.row_count >= len(LAYERS), "the table to fill", 10,
                      step=0.05)
    table.move_cursor(row=table.get_row_index(LAYER))
    await pilot.press("enter")
    await pilot_until(pilot, lambda: isinstance(app.screen, LayerDetailScreen)
                      and "broken" in screen_text(app), "the detail's charts", 10, step=0.05)
    return screen_text(app)


async def test_detail_charts_have_axes_and_do_not_exaggerate():
    app = SymwatchApp(_source(), tick_s=0.05, theme=DARK)
    async with app.run_test(size=(100, 160)) as pilot:  # tall: every chart on the screen
        screen = await _detail(pilot, app)

    # 0.8 % down: y labels that differ, steps under it, a small move in the middle
    labels, rows, steps = _chart(screen, "weight norm")
    assert len(labels) == CHART_ROWS and len(set(labels)) == CHART_ROWS
    assert [float(s) for s in labels] == sorted((float(s) for s in labels), reverse=True)
    assert float(labels[-1]) < 3.184 and float(labels[0]) > 3.211
    assert steps.split() == ["0", "60", f"{STEPS}"] or steps.split()[-1] == f"{STEPS}"
    assert len(steps.split()) == 3 and steps.rstrip().endswith(str(STEPS))
    heights = _heights(rows)
    assert len(heights) > 40 and heights[0] > heights[-1]  # it does go down …
    assert max(heights) - min(heights) <= len(BARS) * CHART_ROWS // 4  # … by a small part
    assert min(heights) >= len(BARS)  # not from the bottom: in the middle

    # a constant: flat at mid-height, its value the middle label, said in words
    labels, rows, _ = _chart(screen, "stable rank")
    assert labels[CHART_ROWS // 2] == "4.123" and len(set(labels)) == CHART_ROWS
    heights = _heights(rows)
    assert len(set(heights)) == 1 and abs(heights[0] - len(BARS) * CHART_ROWS / 2) <= 1
    assert re.search(r"stable rank +now 4\.123 +min 4\.123 +max 4\.123 +constant", screen)

    # float noise around 0: flat at 0
    labels, rows, _ = _chart(screen, "balance ΣC")
    assert labels[CHART_ROWS // 2] == "0" and len(set(_heights(rows))) == 1

    # a real move (0.2 → 0.9) still spans the chart: the rule does not flatten everything
    labels, rows, _ = _chart(screen, "broken Δ")
    heights = _heights(rows)
    assert heights[-1] - heights[0] >= len(BARS) * CHART_ROWS * 0.6


async def test_a_constant_table_cell_is_a_dimmed_baseline():
    app = SymwatchApp(_source(), tick_s=0.05, theme=DARK)
    async with app.run_test(size=(160, 30)) as pilot:
        table = app.query_one(LayerTable)
        await pilot_until(pilot, lambda: table.row_count >= len(LAYERS), "the table to fill",
                          10, step=0.05)
        cell = table.get_cell(LAYER, column_key("dead_fraction"))
        spark = cell.plain.split()[0]
        assert set(spark) == {BARS[0]} and len(spark) >= 4  # a baseline, not ▄▄▄▄
        assert any("dim" in str(span.style) for span in cell.spans
                   if cell.plain[span.start:span.end].strip() == spark)
        moving = table.get_cell(LAYER, column_key("broken"))  # not constant: not dimmed
        assert set(moving.plain.split()[0]) - {BARS[0]}
        assert not any("dim" in str(span.style) for span in moving.spans
                       if BARS[-1] in moving.plain[span.start:span.end])
