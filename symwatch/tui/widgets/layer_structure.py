"""The structural sections of the layer detail screen: the layer's metadata, its latest
singular-value spectrum with the numerical-rank threshold drawn, and its units as a strip of
cells (live, dead, duplicated with a group letter). Plain functions returning rich Text, fed by
`LayerState.detail` (the latest full-tier METRICS `detail`, docs/protocol.md) and its META row.
"""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text

from symwatch.state import axis, numbers
from symwatch.state.run_state import LayerState
from symwatch.tui.widgets.sparkline import label_width, sparkline_rows

SPECTRUM_ROWS = 6
UNIT_ROWS = 8  # the unit strip's height at most; wider layers share a cell between units
LIVE, DEAD = "·", "×"
GROUP_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
THRESHOLD = "╌"


def metadata_text(layer: LayerState) -> Text:
    """Type, shape, parameters, the layers reading its units, attention heads."""
    text = Text()
    text.append(" type ", "dim")
    text.append(layer.type)
    text.append("   shape ", "dim")
    text.append(numbers.shape(layer.shape))
    if layer.params is not None:
        text.append("   parameters ", "dim")
        text.append(f"{layer.params:,}")
    meta = layer.meta
    if "heads" in meta:
        text.append("   heads ", "dim")
        text.append(str(meta["heads"]))
        if meta.get("kv_heads") not in (None, meta["heads"]):
            text.append(f" (kv {meta['kv_heads']})")
        if "head_dim" in meta:
            text.append("   head dim ", "dim")
            text.append(str(meta["head_dim"]))
    feeds = meta.get("feeds")
    text.append("\n paired with ", "dim")
    if isinstance(feeds, list) and feeds:
        names = ", ".join(str(f) for f in feeds)
        text.append(names)
        # plain words: `(read this layer's units)` left a newcomer guessing who reads whom
        text.append(f"  ({names} {'reads' if len(feeds) == 1 else 'read'} this layer's "
                    "outputs)", "dim")
    else:
        text.append("none (no layer reads this layer's outputs directly)", "dim")
    return text


def spectrum_chart(spectrum: list[float], tau: float | None, width: int, rows: int,
                   log: bool, count: int | None = None) -> list[tuple[str, bool]]:
    """The spectrum as `rows` bar rows (σ₁ on the left), each led by its y tick label
    (symwatch.state.axis's rule: nice ticks, a minimum range so equal values draw flat; log
    ticks on a log scale), each value spread over its share of the columns; the threshold τ as
    a dashed line across the row it reaches; then the index line (σ index 1..n under the
    columns; `count`: the layer's number of singular values when `spectrum` is a sample of
    them, whose positions are not linear in the index: then only the ends, 1 and `count`, are
    labelled). Returns (row, is-the-threshold-row) pairs, top row first, all `width` wide.
    Linear scale from 0 up; log scale around the positive values (zeros: no bar)."""
    values = [float(v) for v in spectrum]
    if log:
        ax = axis.log_axis(values, rows)
        scaled: list[float | None] = [math.log10(v) if v > 0 else None for v in values]
        level = math.log10(tau) if tau and tau > 0 else None
    else:
        # σ ≥ 0 is read against 0: the bottom row is 0's (the axis centres the values; its
        # ticks are moved up to start at 0, which keeps every value in range)
        ax = axis.axis([0.0, *values], rows)
        if ax is not None and not ax.flat and ax.ticks[0] < 0:
            marks = tuple(i * ax.step for i in range(len(ax.ticks)))
            ax = axis.Axis(-ax.step / 2, marks[-1] + ax.step / 2, ax.step, marks,
                           axis.labels(marks, ax.step), False)
        scaled = [axis.denoise(v) for v in values]
        level = tau
    pad = label_width(ax)
    bars_w = max(1, width - pad)
    # fewer values than columns: each value spread over its share of the width (more values
    # than columns: sparkline_rows buckets them), so a column's index is linear in x
    n = len(scaled)
    spread = [scaled[c * n // bars_w] for c in range(bars_w)] if 0 < n < bars_w else scaled
    if ax is None:  # no positive value on a log scale: nothing to draw
        return [(" " * width, False)] * rows + [(" " * width, False)]
    bars = sparkline_rows(spread, bars_w, len(ax.ticks), lo=ax.lo, hi=ax.hi)
    marked = -1
    if level is not None:
        frac = (level - ax.lo) / (ax.hi - ax.lo)
        if 0 <= frac <= 1:
            marked = len(bars) - 1 - min(len(bars) - 1, int(frac * len(bars)))
    out = []
    for r, (label, row) in enumerate(zip(reversed(ax.labels), bars)):
        if r == marked:
            row = "".join(THRESHOLD if c == " " else c for c in row)
        out.append((label + " " + row, r == marked))
    if count is not None and count > n:  # a sample: only its ends are known indices
        line = "1" + f"{count:,}".rjust(bars_w - 1) if bars_w > len(f"{count:,}") + 1 \
            else f"{count:,}".rjust(bars_w)[:bars_w]
    else:
        line = axis.step_line(1, n, bars_w)
    out.append((" " * pad + line, False))
    return out


def spectrum_text(layer: LayerState, width: int, log: bool = False) -> Text:
    """The spectrum section: its summary line, the chart, and where its values come from."""
    detail = layer.detail or {}
    text = Text()
    text.append(" Singular values", "bold cyan")
    spectrum = detail.get("spectrum")
    if not isinstance(spectrum, list) or not spectrum:
        text.append("\n none yet: sent on full-tier samples of layers with a rank "
                    "(the agent computes no full spectrum above its size limit)", "dim")
        return text
    tau = detail.get("rank_threshold")
    count = detail.get("count") or len(spectrum)
    above = sum(1 for v in spectrum if tau is not None and v > tau)
    text.append(f"  at step {layer.detail_step:,}" if layer.detail_step is not None else "",
                "bold")
    text.append(f"   σ₁ {numbers.indicator('weight_norm', spectrum[0])}"
                f"   σ_min {numbers.indicator('weight_norm', spectrum[-1])}", "dim")
    if tau is not None:
        text.append(f"   τ {numbers.indicator('weight_norm', tau)}", "yellow")
        if len(spectrum) == count:
            text.append(f"   rank {above} of {count}", "bold")
    chart_w = max(10, width - 2)
    *chart, index = spectrum_chart(spectrum, tau, chart_w, SPECTRUM_ROWS, log, count)
    for row, is_threshold in chart:
        # the y label (right-aligned, no spaces in it) and one space, then the bars
        split = len(row) - len(row.lstrip(" "))
        split = row.find(" ", split) + 1 if row.find(" ", split) >= 0 else 0
        label, bars = row[:split], row[split:]
        text.append("\n ")
        text.append(label, "dim")
        if is_threshold:
            for c in bars:
                text.append(c, "yellow" if c == THRESHOLD else "cyan")
        else:
            text.append(bars, "cyan")
    text.append("\n " + index[0], "dim")
    text.append("\n ")
    text.append(THRESHOLD * 3, "yellow")
    text.append(" τ = numerical-rank threshold", "dim")
    text.append(f"   {'log' if log else 'linear'} scale (l: switch)", "dim italic")
    if len(spectrum) < count:
        text.append(f"   {len(spectrum)} of {count} values: the largest 64, then "
                    "evenly spaced quantiles of the rest", "dim")
    return text


def unit_cells(detail: dict[str, Any]) -> list[str]:
    """One cell per unit: LIVE, DEAD, or its duplicate group's letter (groups in the order
    sent; '#' past the 52nd)."""
    n = int(detail.get("units") or 0)
    cells = [LIVE] * n
    for k, group in enumerate(detail.get("duplicates") or ()):
        mark = GROUP_IDS[k] if k < len(GROUP_IDS) else "#"
        for i in group:
            if 0 <= i < n:
                cells[i] = mark
    for i in detail.get("dead") or ():
        if 0 <= i < n:
            cells[i] = DEAD
    return cells


def units_text(layer: LayerState, width: int) -> Text:
    """The unit strip (one cell per unit; more units than fit in UNIT_ROWS rows: each cell
    covers several, showing dead before duplicated before live) and the lists behind it."""
    detail = layer.detail or {}
    text = Text()
    text.append(" Units", "bold cyan")
    if "units" not in detail:
        text.append("\n none yet: sent on full-tier samples", "dim")
        return text
    n = int(detail["units"])
    dead = list(detail.get("dead") or ())
    groups = list(detail.get("duplicates") or ())
    dead_count = int(detail.get("dead_count", len(dead)))
    dup_count = int(detail.get("duplicate_count", sum(len(g) for g in groups)))
    text.append(f"  {n:,}", "bold")
    text.append("   dead ", "dim")
    text.append(f"{dead_count:,}", "bold red" if dead_count else "bold")
    text.append("   duplicated ", "dim")
    text.append(f"{dup_count:,}", "bold magenta" if dup_count else "bold")
    if "duplicates" in detail:
        text.append(f" in {len(groups)}{'+' if dup_count > sum(map(len, groups)) else ''} "
                    "groups", "dim")
    cells = unit_cells(detail)
    chart_w = max(10, width - 2)
    per = max(1, -(-len(cells) // (chart_w * UNIT_ROWS)))
    if per > 1:
        merged = []
        for k in range(0, len(cells), per):
            chunk = cells[k:k + per]
            merged.append(DEAD if DEAD in chunk else next(
                (c for c in chunk if c not in (LIVE, DEAD)), LIVE))
        cells = merged
    for r in range(0, len(cells), chart_w):
        text.append("\n ")
        for c in cells[r:r + chart_w]:
            text.append(c, "red" if c == DEAD else "dim green" if c == LIVE else "bold magenta")
    legend = f"\n {LIVE} live   {DEAD} dead   A B … duplicate group"
    if per > 1:
        legend += f"   (a cell: {per} units)"
    text.append(legend, "dim")
    if dead_count:
        text.append("\n dead: ", "dim")
        text.append(_indices(dead), "red")
        if dead_count > len(dead):
            text.append(f" … (first {len(dead)} of {dead_count:,})", "dim")
    for k, group in enumerate(groups[:26]):
        text.append(f"\n {GROUP_IDS[k]}: ", "bold magenta")
        text.append(_indices(group))
    if len(groups) > 26 or dup_count > sum(map(len, groups)):
        text.append(f"\n … {dup_count:,} duplicated units in all (lists capped)", "dim")
    return text


def _indices(values: list[int]) -> str:
    """Unit indices, runs of consecutive ones as a–b."""
    parts: list[str] = []
    start = prev = None
    for v in values:
        if prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        start = prev = v
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
    return ", ".join(parts)
