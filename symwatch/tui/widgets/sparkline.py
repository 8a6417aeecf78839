"""Text sparklines (▁▂▃▄▅▆▇█) for table cells and panels: plain functions, no Textual."""

from __future__ import annotations

import math
from typing import Sequence

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

    Scaled to [lo, hi] (default: the data's min and max); a flat series sits mid-height.
    None, NaN and inf are gaps. Fewer samples than `width` are padded with spaces on the left.
    """
    if width <= 0:
        return ""
    clean = [None if v is None or not math.isfinite(v) else float(v) for v in values]
    points = _bucket(clean, width)
    known = [v for v in points if v is not None]
    if not known:
        return " " * width
    low = min(known) if lo is None else lo
    high = max(known) if hi is None else hi
    span = high - low
    chars = []
    for v in points:
        if v is None:
            chars.append(GAP)
        elif span <= 0 or not math.isfinite(span):
            chars.append(BARS[len(BARS) // 2 - 1])
        else:
            frac = min(1.0, max(0.0, (v - low) / span))
            chars.append(BARS[min(len(BARS) - 1, int(frac * len(BARS)))])
    return "".join(chars).rjust(width)


def sparkline_rows(values: Sequence[float | None], width: int, height: int) -> list[str]:
    """A `height`-row bar chart, top row first, with eighth-block resolution per row; the same
    bucketing, scaling and gaps as `sparkline`. height 1 is exactly `sparkline`."""
    if height <= 1:
        return [sparkline(values, width)]
    if width <= 0:
        return [""] * height
    clean = [None if v is None or not math.isfinite(v) else float(v) for v in values]
    points = _bucket(clean, width)
    known = [v for v in points if v is not None]
    rows = [[" "] * len(points) for _ in range(height)]
    if known:
        low, high = min(known), max(known)
        levels = height * len(BARS)
        for x, v in enumerate(points):
            if v is None:
                continue
            # At least one eighth, so the minimum is visible rather than blank.
            frac = 0.5 if high <= low else (v - low) / (high - low)
            filled = max(1, min(levels, round(frac * levels)))
            for r in range(height):  # r = 0 is the bottom row
                in_row = filled - r * len(BARS)
                if in_row >= len(BARS):
                    rows[height - 1 - r][x] = BARS[-1]
                elif in_row > 0:
                    rows[height - 1 - r][x] = BARS[in_row - 1]
    return ["".join(row).rjust(width) for row in rows]
