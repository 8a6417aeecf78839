"""The TUI's hand-made charts against plotext (what textual-plotext's `PlotextPlot` widget
renders with), side by side: issue #18 asks for a well-kept plotting widget "unless a measured
reason (speed at 1,000 layers) says otherwise". Two workloads, each run alternately with both
drawers, medians of `--repeats` runs:

- **detail**: the layer detail screen's charts, 14 indicators of 5 rows × 94 columns over 120
  samples (symwatch.tui.widgets.sparkline.axis_chart, with symwatch.state.axis's ticks) against
  14 plotext line plots of the same size with their axes (`plt.build()`);
- **table**: the layer table's cells at 1,000 layers, 6 indicator sparklines of 6 columns per row
  (sparkline.sparkline) against one plotext plot of 6×1 per cell, frame and axes off.

plotext's `build()` is a lower bound of the widget's cost: `PlotextPlot.render` calls it, then
parses its ANSI output into a Rich Text, and is one Textual widget per chart (a table cell is
not a widget at all). plotext is not a dependency of symwatch: pass where it is installed, e.g.
`pip install --target /tmp/plotext textual-plotext plotext` then
`python benchmarks/charts.py --plotext-path /tmp/plotext`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable

from symwatch.state import axis
from symwatch.tui.widgets.sparkline import axis_chart, label_width, sparkline

DETAIL_CHARTS, DETAIL_W, DETAIL_ROWS, SAMPLES = 14, 94, 5, 120
TABLE_LAYERS, TABLE_CELLS, CELL_W = 1000, 6, 6


def _series(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    level, out = rng.uniform(0.5, 5.0), []
    for _ in range(n):
        level += rng.gauss(0, 0.02)
        out.append(level)
    return out


def hand_detail(series: list[list[float]]) -> int:
    drawn = 0
    for values in series:
        ax = axis.axis(values, DETAIL_ROWS)
        width = DETAIL_W - label_width(ax)
        rows, steps = axis_chart(values, width, ax, 1, len(values))
        drawn += sum(len(r) for r in rows) + len(steps)
    return drawn


def hand_table(cells: list[list[float]]) -> int:
    return sum(len(sparkline(values, CELL_W)) for values in cells)


def plotext_detail(plt, series: list[list[float]]) -> int:
    drawn = 0
    for values in series:
        plt.clf()
        plt.plotsize(DETAIL_W, DETAIL_ROWS + 2)  # + the x axis and its labels
        plt.plot(list(range(1, len(values) + 1)), values, marker="braille")
        drawn += len(plt.build())
    return drawn


def plotext_table(plt, cells: list[list[float]]) -> int:
    drawn = 0
    for values in cells:
        plt.clf()
        plt.plotsize(CELL_W, 1)
        plt.frame(False)
        plt.xaxes(False, False)
        plt.yaxes(False, False)
        plt.xticks([])
        plt.yticks([])
        plt.plot(values, marker="braille")
        drawn += len(plt.build())
    return drawn


def side_by_side(a: Callable[[], int], b: Callable[[], int], repeats: int
                 ) -> tuple[float, float]:
    """Median seconds of a and of b, run alternately (a drift in the machine's load hits both)."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        a()
        ta.append(time.perf_counter() - start)
        start = time.perf_counter()
        b()
        tb.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plotext-path", help="a folder where plotext is installed")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if args.plotext_path:
        sys.path.insert(0, args.plotext_path)
    import plotext as plt  # noqa: PLC0415 (lazy: not a dependency; found via --plotext-path)

    detail = [_series(SAMPLES, i) for i in range(DETAIL_CHARTS)]
    cells = [_series(64, i)[-64:] for i in range(TABLE_LAYERS * TABLE_CELLS)]
    result = {}
    for name, mine, theirs, repeats in (
            ("detail", lambda: hand_detail(detail), lambda: plotext_detail(plt, detail),
             args.repeats),
            ("table", lambda: hand_table(cells), lambda: plotext_table(plt, cells),
             max(3, args.repeats // 3))):
        t_mine, t_theirs = side_by_side(mine, theirs, repeats)
        result[name] = {"hand_made_ms": round(t_mine * 1e3, 2),
                        "plotext_build_ms": round(t_theirs * 1e3, 2),
                        "ratio": round(t_theirs / t_mine, 1) if t_mine else math.inf}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
