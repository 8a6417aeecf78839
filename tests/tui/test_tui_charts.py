"""Charts a newcomer can read (issue #18): the layer detail's charts have y tick labels and step
labels, a 0.8 % move is a small move, a constant and float noise around 0 draw flat, and the
table draws a constant as a dimmed baseline. The real app on the fixed stream (tests/tui_stream)
with one layer's series replaced by the issue's quoted cases; the screen read as text."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import pytest
import torch
from tui_snapshots import screen_text
from tui_stream import LAYERS, STAIRCASE_LAYER, FrozenSource, frozen_source, messages
from waiting import pilot_until

from symwatch.core import protocol
from symwatch.core.recording import RecordingReader
from symwatch.state.axis import log_axis
from symwatch.state.run_state import RunState
from symwatch.tui.app import SymwatchApp
from symwatch.tui.screens.layer_detail import CHART_ROWS, LayerDetailScreen
from symwatch.tui.themes import DARK
from symwatch.tui.widgets.layer_structure import (
    SPECTRUM_ROWS,
    THRESHOLD,
    spectrum_chart,
)
from symwatch.tui.widgets.layer_table import LayerTable, column_key
from symwatch.tui.widgets.panels import BOUNDARY_MARK, LossPanel, loss_text
from symwatch.tui.widgets.sparkline import BARS
from tests.core.test_recording import make_recording

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
        def spark_of(metric: str) -> str:
            return table.get_cell(LAYER, column_key(metric)).plain.split()[0]

        # the rows come with the first samples, the sparks fill as the rest are folded in
        await pilot_until(pilot, lambda: table.row_count >= len(LAYERS)
                          and len(spark_of("dead_fraction")) >= 4, "the table to fill",
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


# --- the loss chart and the spectrum chart (issue #18: the last charts without axes) ---------

LABEL = re.compile(r"^ +(-?[0-9][0-9.e+-]*) (.*)$")


def _loss_source(loss) -> FrozenSource:
    """The fixed stream with its loss replaced by `loss(step)`."""
    stream = messages(STEPS)
    for message in stream:
        if message.kind == "stats" and "loss" in message.payload:
            message.payload["loss"] = loss(message.step)
    return FrozenSource(stream, at=stream[-1].time + 0.5)


async def _loss_chart(loss) -> tuple[str, list[str], list[str], str]:
    """The loss panel at 120×40 once the app has fitted its rows to the short table (12
    rows, so it has axes): its title line, y labels, bar rows (labels cut off) and step line,
    read from the rendered panel."""
    app = SymwatchApp(_loss_source(loss), tick_s=0.05, theme=DARK)
    async with app.run_test(size=(120, 40)) as pilot:
        panel = app.query_one(LossPanel)
        # Drawn for the rows the app fitted (`rows`, set after the first redraws): before, the
        # chart has the terminal's default 6 rows, other ticks, and a loaded machine read that
        # one or the fitted one by chance (a wait for two equal reads compared the first read
        # with itself). `rows` lines in all: the title, the bars and the step line.
        await pilot_until(pilot, lambda: f"–{STEPS:,}" in str(panel.content)
                          and panel.rows is not None
                          and str(panel.content).count("\n") == panel.rows,
                          "the loss chart at its fitted rows", 10, step=0.05)
        title, *chart = str(panel.content).split("\n")
    *bars, steps = chart
    labels, rows = [], []
    for line in bars:
        match = LABEL.match(line)
        assert match, f"no y label on the loss chart row {line!r}"
        labels.append(match.group(1))
        rows.append(match.group(2))
    return title, labels, rows, steps


def _values(labels: list[str]) -> list[float]:
    return [float(s) for s in labels]


async def test_loss_chart_has_y_ticks_and_step_labels():
    title, labels, rows, steps = await _loss_chart(
        lambda s: round(2.3 * math.exp(-s / 45) + 0.35, 5))  # 2.3 → 0.5: under ×20, linear
    assert "log scale" not in title
    ticks = _values(labels)
    assert len(ticks) >= 2 and len(set(labels)) == len(labels)
    assert ticks == sorted(ticks, reverse=True)
    step = ticks[0] - ticks[1]
    assert all(abs((a - b) - step) < 1e-9 for a, b in itertools.pairwise(ticks))  # evenly spaced
    # the ticks' bands cover the loss: 0.52 at the end, 2.62 at step 1
    assert ticks[-1] - step / 2 <= 2.3 * math.exp(-STEPS / 45) + 0.35
    assert ticks[0] + step / 2 >= 2.3 * math.exp(-1 / 45) + 0.35
    assert steps.split() == ["1", f"{(1 + STEPS) // 2}", f"{STEPS}"]
    # the step labels sit under the bars: the last step ends where the bars end
    assert len(steps) == len(rows[0]) + len(labels[0]) + 2 and steps.endswith(f"{STEPS}")
    heights = _heights(rows)
    assert heights[0] > heights[-1] + len(BARS) * len(rows) // 2  # a real drop spans it


async def test_loss_chart_flat_and_small_moves_draw_flat_and_small():
    _, labels, rows, _ = await _loss_chart(lambda s: 2.5)
    heights = _heights(rows)
    assert len(set(heights)) == 1  # flat, not noise blown up to the whole height
    ticks = _values(labels)
    assert min(ticks) < 2.5 < max(ticks) or 2.5 in ticks  # the value is inside the axis
    assert abs(heights[0] - len(BARS) * len(rows) / 2) <= len(BARS)  # at mid-height

    # 3.211 → 3.184 (0.8 %): a small move, not a cliff from the bottom to the top
    _, labels, rows, _ = await _loss_chart(lambda s: 3.211 - 0.027 * (s - 1) / (STEPS - 1))
    heights = _heights(rows)
    assert heights[0] > heights[-1]
    assert max(heights) - min(heights) <= len(BARS) * len(rows) // 4
    assert min(heights) >= len(BARS)


async def test_loss_chart_has_log_ticks_on_a_log_scale():
    title, labels, rows, steps = await _loss_chart(lambda s: 10.0 * math.exp(-s / 20) + 0.01)
    assert "log scale" in title  # 9.5 → 0.035: ×270
    ticks = _values(labels)
    assert ticks == sorted(ticks, reverse=True) and len(set(ticks)) == len(ticks)
    # log ticks: even ratios (written to 3 digits), not even differences
    ratios = [a / b for a, b in itertools.pairwise(ticks)]
    assert all(abs(r / ratios[0] - 1) < 0.02 for r in ratios) and ratios[0] > 1.5
    assert abs((ticks[0] - ticks[1]) - (ticks[-2] - ticks[-1])) > 0.5 * (ticks[0] - ticks[1])
    # the axis spans the data, from the end's 0.035 to the start's 9.5 (the title's min, max)
    lo, hi = (float(title.split(word)[1].split()[0]) for word in (" min ", " max "))
    assert ticks[-1] <= lo < ticks[-1] * ratios[0] and ticks[0] / ratios[0] < hi <= ticks[0]
    assert steps.split()[-1] == f"{STEPS}"
    heights = _heights(rows)
    # on a log scale the tail's fall (0.19 → 0.035) still shows: half a row or more, where a
    # linear scale to 9.5 would draw it as under one eighth
    third = heights[2 * len(heights) // 3:]
    assert third[0] - third[-1] >= len(BARS) // 2


def _spectrum(screen: str) -> tuple[list[str], list[str], str, str]:
    """The spectrum chart's y labels, bar rows and index line, and its footer line."""
    lines = [line.split("│")[1] if line.count("│") >= 2 else line for line in screen.split("\n")]
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("Singular values"))
    labels, rows = [], []
    for line in lines[at + 1:at + 1 + SPECTRUM_ROWS]:
        match = LABEL.match(line)
        assert match, f"no y label on the spectrum row {line!r}"
        labels.append(match.group(1))
        rows.append(match.group(2))
    return labels, rows, lines[at + 1 + SPECTRUM_ROWS], lines[at + 2 + SPECTRUM_ROWS]


async def test_spectrum_chart_has_y_ticks_index_labels_and_log_ticks():
    app = SymwatchApp(frozen_source(STEPS), tick_s=0.05, theme=DARK)
    async with app.run_test(size=(100, 160)) as pilot:
        table = app.query_one(LayerTable)
        await pilot_until(pilot, lambda: table.row_count >= len(LAYERS), "the table to fill",
                          10, step=0.05)
        table.move_cursor(row=table.get_row_index(STAIRCASE_LAYER))
        await pilot.press("enter")
        await pilot_until(pilot, lambda: isinstance(app.screen, LayerDetailScreen)
                          and "Singular values  at" in screen_text(app), "the spectrum", 10,
                          step=0.05)
        linear = screen_text(app)
        await pilot.press("l")
        await pilot_until(pilot, lambda: "log scale (l" in screen_text(app), "log scale", 10,
                          step=0.05)
        logged = screen_text(app)

    # linear: evenly spaced ticks from 0 up past σ₁ = 3, the 64 values' indices under the bars
    labels, rows, index, footer = _spectrum(linear)
    ticks = _values(labels)
    assert len(ticks) == SPECTRUM_ROWS and ticks[-1] == 0 and ticks[0] + 0.5 * (
        ticks[0] - ticks[1]) >= 3.0
    assert len({round(a - b, 9) for a, b in itertools.pairwise(ticks)}) == 1
    assert index.split() == ["1", "32", "64"] and "linear scale" in footer
    assert any(THRESHOLD in row for row in rows)  # τ = 0.9 drawn across its row
    # log: ticks with even ratios, from under σ_min = 0.00988 to over σ₁ = 3
    labels, rows, index, footer = _spectrum(logged)
    ticks = _values(labels)
    ratios = [a / b for a, b in itertools.pairwise(ticks)]
    assert all(abs(r / ratios[0] - 1) < 0.02 for r in ratios) and ratios[0] > 1.5
    assert ticks[-1] <= 0.00988 * math.sqrt(ratios[0]) and ticks[0] * math.sqrt(ratios[0]) >= 3
    assert index.split() == ["1", "32", "64"] and "log scale" in footer
    assert any(THRESHOLD in row for row in rows)


@pytest.mark.parametrize("width", [64, 768])
@pytest.mark.parametrize("init", ["default", "tiny", "orthogonal", "near", "rank1"])
def test_spectrum_chart_of_real_layers(width, init):
    """spectrum_chart on real singular values: PyTorch's default init, a tiny init (×1e-3),
    the symmetric state of an orthogonal layer (all σ equal: flat), slightly off it (σ within
    ~0.2 % of 1: still all but flat, not blown up to the full height), and a rank-1 layer
    (far from it: one σ, the rest float noise), at a small and an LLM width."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(width, width)
    with torch.no_grad():
        if init == "tiny":
            layer.weight.mul_(1e-3)
        elif init in ("orthogonal", "near"):
            torch.nn.init.orthogonal_(layer.weight)
            if init == "near":  # slightly off the symmetric state
                layer.weight.add_(1e-3 * torch.randn(width, width) / math.sqrt(width))
        elif init == "rank1":
            layer.weight.copy_(torch.outer(torch.randn(width), torch.randn(width)))
    sigma = torch.linalg.svdvals(layer.weight.detach().double()).tolist()
    tau = max(sigma) * width * 2.2e-16
    for log in (False, True):
        chart = spectrum_chart(sigma, tau, 90, SPECTRUM_ROWS, log)
        assert all(len(row) == 90 for row, _ in chart)
        *bars, (index, _) = chart
        assert index.split() == ["1", f"{(1 + width) // 2}", f"{width}"]
        ticks = [float(LABEL.match(" " + row).group(1))  # type: ignore[union-attr]
                 for row, _ in bars]
        assert ticks == sorted(ticks, reverse=True) and len(set(ticks)) == len(ticks)
        step = abs(ticks[0] - ticks[1])
        top = math.log10(ticks[0]) + 0.5 * math.log10(ticks[0] / ticks[1]) if log \
            else ticks[0] + step / 2
        assert top >= (math.log10(max(sigma)) if log else max(sigma)) - 1e-9
        heights = _heights([LABEL.match(" " + row).group(2)  # type: ignore[union-attr]
                            for row, _ in bars])
        if init == "orthogonal":  # σ all 1 (the symmetric state): drawn flat
            assert len(set(heights)) == 1
        elif init == "near":  # a 0.2 % spread: a small move, within one row
            assert max(heights) - min(heights) <= len(BARS)
        else:  # σ₁ on the left is the tallest column
            assert heights[0] == max(heights) and heights[0] > heights[-1]


def test_loss_chart_axes_after_a_restart(tmp_path):
    """After a restart the chart shows both runs: the restart mark `┊` in every bar row and in
    the step line, each run's steps under its own part (both recorded 1–30)."""
    make_recording(tmp_path / "a.db", 30, goodbye=True)
    with RecordingReader(tmp_path / "a.db") as reader:
        first = list(reader)
    state = RunState()
    state.fold_all(first)
    state.fold_all([dataclasses.replace(m, run="run-second") for m in first
                    if m.kind != protocol.GOODBYE])
    _, *chart = loss_text(state, 80, 5, axes=True).plain.split("\n")
    *bars, steps = chart
    assert all(LABEL.match(row) for row in bars)
    column = bars[0].index(BOUNDARY_MARK)
    assert all(row[column] == BOUNDARY_MARK for row in (*bars, steps))
    assert steps[:column].split() == ["1", "15", "30"]
    assert steps[column + 1:].split() == ["1", "15", "30"]


def test_log_axis_ticks():
    """axis.log_axis: nice ticks in decades (even ratios), a flat series' value in the middle
    of its axis, and nothing to draw without a positive value."""
    ax = log_axis([100.0, 10.0, 1.0, 0.1, 0.01], 5)
    assert ax is not None and [s.strip() for s in ax.labels] == ["0.01", "0.1", "1", "10", "100"]
    assert ax.lo <= -2 and ax.hi >= 2 and not ax.flat
    flat = log_axis([3.2] * 10, 5)
    assert flat is not None and flat.flat and flat.labels[2].strip() == "3.2"
    assert 10 ** flat.lo < 3.2 < 10 ** flat.hi and 10 ** flat.hi / 10 ** flat.lo < 1.2
    wide = log_axis([1e-9, 3.0], 6)  # (not float noise on a log scale: nine decades down)
    assert wide is not None and float(wide.labels[0]) <= 1e-9 and float(wide.labels[-1]) >= 1
    assert log_axis([0.0, -1.0, None, float("nan")], 5) is None
