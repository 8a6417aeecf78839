"""Text sparklines (▁▂▃▄▅▆▇█) for table cells and panels: plain functions, no Textual."""

from __future__ import annotations

import math
from typing import Sequence

from symwatch.state import axis

BARS = "▁▂▃▄▅▆▇█"
GAP = " "  # a missing (N/A) sample is a hole, never a bottom bar that would read as 0


def _bucket(values: Sequence[float | None], width: int) -> list[float | None]:
    """Squeeze `values` into at most `width` points, each the mean of its bucket's known values,
    so a long history still shows its whole shape (a rank step stays visible)."""
    n = len(values)
    if n <= width:
        return list(values)
    out: list[float | None] = []
    for i in range(width):
        chunk = [v for v in values[i * n // width:(i + 1) * n // width] if v is not None]
        out.append(sum(chunk) / len(chunk) if chunk else None)
    return out


def sparkline(values: Sequence[float | None], width: int, *, lo: float | None = None,
              hi: float | None = None) -> str:
    """A right-aligned sparkline of exactly `width` characters (newest sample on the right).

    Scaled to [lo, hi] (default: symwatch.state.axis's rule: the data's min at the bottom and
    at least the minimum range above it, so a constant series is a baseline ▁▁▁▁, never
    half-full, and a 0.8 % move stays small). None, NaN and inf are gaps. Fewer samples than
    `width` are padded with spaces on the left.
    """
    if width <= 0:
        return ""
    noise = axis.NOISE  # axis.denoise, inlined: this runs for every table cell drawn
    clean = [None if v is None or not math.isfinite(v) else float(v) if abs(v) >= noise else 0.0
             for v in values]
    points = _bucket(clean, width)
    known = [v for v in points if v is not None]
    if not known:
        return " " * width
    low, high, _ = axis.baseline_range(known) or (0.0, 1.0, True)
    low = low if lo is None else lo
    high = high if hi is None else hi
    span = high - low
    chars = []
    for v in points:
        if v is None:
            chars.append(GAP)
        elif span <= 0 or not math.isfinite(span):
            chars.append(BARS[0])
        else:
            frac = min(1.0, max(0.0, (v - low) / span))
            chars.append(BARS[min(len(BARS) - 1, int(frac * len(BARS)))])
    return "".join(chars).rjust(width)


def is_baseline(line: str) -> bool:
    """The sparkline draws nothing but its baseline (a constant series): the table dims it."""
    drawn = line.replace(GAP, "")
    return bool(drawn) and drawn == BARS[0] * len(drawn)


def sparkline_rows(values: Sequence[float | None], width: int, height: int, *,
                   lo: float | None = None, hi: float | None = None) -> list[str]:
    """A `height`-row bar chart, top row first, with eighth-block resolution per row; the same
    bucketing and gaps as `sparkline`. Scaled to [lo, hi] when given (an `axis.Axis`'s range),
    else to the data's min and max (a flat series mid-height). height 1 with neither given is
    exactly the data-scaled `sparkline` of old."""
    if height <= 1 and lo is None and hi is None:
        return [_minmax_line(values, width)]
    if width <= 0:
        return [""] * height
    clean = [None if v is None or not math.isfinite(v) else float(v) for v in values]
    points = _bucket(clean, width)
    known = [v for v in points if v is not None]
    rows = [[" "] * len(points) for _ in range(height)]
    if known:
        low = min(known) if lo is None else lo
        high = max(known) if hi is None else hi
        levels = height * len(BARS)
        for x, v in enumerate(points):
            if v is None:
                continue
            # At least one eighth, so the minimum is visible rather than blank.
            frac = 0.5 if high <= low else min(1.0, max(0.0, (v - low) / (high - low)))
            filled = max(1, min(levels, round(frac * levels)))
            for r in range(height):  # r = 0 is the bottom row
                in_row = filled - r * len(BARS)
                if in_row >= len(BARS):
                    rows[height - 1 - r][x] = BARS[-1]
                elif in_row > 0:
                    rows[height - 1 - r][x] = BARS[in_row - 1]
    return ["".join(row).rjust(width) for row in rows]


def _minmax_line(values: Sequence[float | None], width: int) -> str:
    """One row scaled to the data's own min and max (a flat series mid-height): the loss
    panel's one-row chart, which marks its min and max in words beside it."""
    if width <= 0:
        return ""
    clean = [None if v is None or not math.isfinite(v) else float(v) for v in values]
    points = _bucket(clean, width)
    known = [v for v in points if v is not None]
    if not known:
        return " " * width
    low, high = min(known), max(known)
    return sparkline(points, width, lo=low, hi=high) if high > low else "".join(
        GAP if v is None else BARS[len(BARS) // 2 - 1] for v in points).rjust(width)


def label_width(ax: axis.Axis | None) -> int:
    """The columns an `axis_chart`'s y labels take, with the space after them."""
    return len(ax.labels[0]) + 1 if ax is not None else 0


def axis_chart(points: Sequence[float | None], width: int, ax: axis.Axis | None, first: int,
               last: int) -> tuple[list[str], str]:
    """A chart with axes (symwatch.state.axis's rule): len(ax.ticks) rows of `width` bars,
    top row first, each led by the y tick at its centre (so n ticks label n rows), scaled to
    the axis; then the step line under the bars: the first, middle and last step of
    first..last. The rows and the line are `label_width(ax) + width` wide."""
    pad = label_width(ax)
    steps = " " * pad + axis.step_line(first, last, width)
    if ax is None:
        return [" " * width], steps
    clean = [axis.denoise(v) if v is not None and math.isfinite(v) else None for v in points]
    bars = sparkline_rows(clean, width, len(ax.ticks), lo=ax.lo, hi=ax.hi)
    return [label + " " + row for label, row in zip(reversed(ax.labels), bars)], steps
