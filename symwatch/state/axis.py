"""The one scaling rule every chart uses (the TUI's detail charts and table sparklines, the HTML
report's SVG): what range of values a chart spans, where its y ticks go and how they are written.
Pure functions, standard library only.

Three rules, so that a chart never exaggerates:
- **A minimum range.** A chart spans at least `REL_MIN_SPAN` of the values' magnitude (and at
  least `ABS_MIN_SPAN` near 0): a 0.8 % change of a value of 3.2 draws as a small move, not as a
  cliff from the bottom to the top, which is what scaling to the series' own min and max does.
- **Noise is nothing.** Values closer to 0 than `NOISE` are 0, and a series whose spread is
  under `NOISE` of its magnitude is constant: float noise around 0 (a balance of -5.1e-7) and a
  constant that wobbles in its last bits draw flat.
- **Nice ticks, enough digits.** Ticks are multiples of 1, 2, 2.5 or 5 × 10ⁿ; a constant series is
  centred on its own value (the middle tick is that value); labels get as many digits as it
  takes for them to differ (4.023, 4.123, 4.223 around a constant 4.123).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REL_MIN_SPAN = 0.05  # a chart spans at least 5 % of its values' magnitude
ABS_MIN_SPAN = 2e-6  # ... and at least this much, for values at or near 0
NOISE = 1e-6  # |x| under this is 0; a spread under this × the magnitude is constant
NICE = (1.0, 2.0, 2.5, 5.0)
LABEL_DIGITS = 4  # significant digits a constant's own value is written with


@dataclass(frozen=True)
class Extent:
    """The finite values' span after the noise rule: `low`/`high` their min and max,
    `min_span` the smallest range a chart of them may have, `flat` a constant series."""

    low: float
    high: float
    min_span: float
    flat: bool


@dataclass(frozen=True)
class Axis:
    """A y axis: the chart spans `lo`..`hi`; `ticks` (ascending) are evenly spaced by `step`,
    with half a step of margin at each end, so that n ticks label the centres of n equal bands
    (a text chart of n rows labels each row); `labels` are the ticks written out, all the same
    width. `flat`: the series is constant (its value is the middle tick)."""

    lo: float
    hi: float
    step: float
    ticks: tuple[float, ...]
    labels: tuple[str, ...]
    flat: bool

    def fraction(self, value: float) -> float:
        """Where `value` sits between lo (0) and hi (1), clamped. (Not denoised: a tick at
        5e-7 is a position on the axis; data goes through `denoise` before it is drawn.)"""
        return min(1.0, max(0.0, (value - self.lo) / (self.hi - self.lo)))


def denoise(value: float) -> float:
    """0 for float noise around 0, the value otherwise."""
    return 0.0 if abs(value) < NOISE else value


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite values (N/A, NaN and inf are gaps, never values), denoised."""
    return [denoise(float(v)) for v in values if v is not None and math.isfinite(v)]


def extent(values: Iterable[float | None], floor: float = ABS_MIN_SPAN) -> Extent | None:
    """The span of the finite values and the least range a chart of them may have (`floor`:
    the absolute least, in the values' unit); None when there is no finite value."""
    known = finite(values)
    if not known:
        return None
    low, high = min(known), max(known)
    magnitude = max(abs(low), abs(high))
    return Extent(low, high, max(REL_MIN_SPAN * magnitude, floor),
                  high - low <= NOISE * magnitude)


def baseline_range(values: Iterable[float | None]) -> tuple[float, float, bool] | None:
    """(lo, hi, flat) for a chart without ticks (a table cell's sparkline): the data's min at
    the bottom, and at least the minimum range above it, so a constant series is a baseline
    and a small move stays small."""
    ext = extent(values)
    if ext is None:
        return None
    return ext.low, max(ext.high, ext.low + ext.min_span), ext.flat


def nice_at_least(x: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10ⁿ that is ≥ x (x > 0)."""
    exp = math.floor(math.log10(x))
    for base in (*NICE, 10.0):
        step = base * 10.0 ** exp
        if step >= x * (1 - 1e-12):
            return step
    return 10.0 ** (exp + 1)  # (not reached: 10 × 10ⁿ ≥ x)


def _next_nice(step: float) -> float:
    return nice_at_least(step * 1.000001)


def axis(values: Iterable[float | None], ticks: int = 5, *, floor: float = ABS_MIN_SPAN
         ) -> Axis | None:
    """The y axis for these values with `ticks` ticks (≥ 2); None when none is finite.

    A constant series: ticks centred on its value, a step of the minimum range. Otherwise:
    the smallest nice step whose `ticks` bands cover the values (widened to the minimum range
    about their middle), the bands shifted so the values sit in the middle of the chart.
    `floor`: the least range in the values' unit (1 for percentages: a percentage point)."""
    ext = extent(values, floor)
    if ext is None:
        return None
    n = max(2, ticks)
    if ext.flat:
        mid = (ext.low + ext.high) / 2
        step = nice_at_least(ext.min_span / n)
        marks = tuple(mid + (i - (n - 1) / 2) * step for i in range(n))
        return Axis(marks[0] - step / 2, marks[-1] + step / 2, step, marks,
                    labels(marks, step, mid), True)
    low, high = ext.low, ext.high
    if high - low < ext.min_span:
        mid = (low + high) / 2
        low, high = mid - ext.min_span / 2, mid + ext.min_span / 2
    step = nice_at_least((high - low) / n)
    while True:
        first = math.floor((low + step / 2) / step)  # first tick's multiple: lo ≤ low
        if (first + n - 0.5) * step >= high:
            break
        step = _next_nice(step)
    # the room left above and below the values, in whole steps: share it out
    above = (first + n - 0.5) * step - high
    below = low - (first - 0.5) * step
    shift = round((above - below) / (2 * step))
    shift = max(-math.floor(below / step + 1e-9), min(math.floor(above / step + 1e-9), shift))
    first -= shift
    marks = tuple((first + i) * step for i in range(n))
    return Axis((first - 0.5) * step, (first + n - 0.5) * step, step, marks,
                labels(marks, step), False)


def labels(ticks: Sequence[float], step: float, value: float | None = None) -> tuple[str, ...]:
    """The ticks written with as many digits as they need to differ from each other (and, for
    a constant series, to show its `value` to `LABEL_DIGITS` significant digits), right-aligned
    to one width. Plain decimals between 1e-3 and 1e5, scientific notation outside."""
    biggest = max(abs(t) for t in ticks)
    scientific = biggest >= 1e5 or biggest < 1e-3
    if scientific:
        top = math.floor(math.log10(biggest)) if biggest > 0 else 0
        digits = max(0, top - math.floor(math.log10(step)))
    else:
        digits = _decimals(step)
        if value:  # as many as the value needs, up to LABEL_DIGITS significant: 6 → 6.0
            most = LABEL_DIGITS - 1 - math.floor(math.log10(abs(value)))
            digits = max(digits, next(d for d in range(max(0, most) + 1)
                                      if round(value, d) == round(value, max(0, most))))
    for extra in range(6):  # a safety net: rounding made two labels equal
        out = [_write(t, digits + extra, scientific, step) for t in ticks]
        if len(set(out)) == len(out):
            break
    width = max(len(s) for s in out)
    return tuple(s.rjust(width) for s in out)


def _decimals(step: float) -> int:
    """The decimals a multiple of `step` needs: 1 for 0.1 and 0.5, 2 for 0.25."""
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    scaled = step * 10 ** digits
    return digits + 1 if abs(scaled - round(scaled)) > 1e-6 * scaled else digits


def _write(value: float, digits: int, scientific: bool, step: float) -> str:
    if abs(value) < step * 1e-6:  # a tick at 0 computed as ±1e-17: write it as 0
        value = 0.0
    if scientific and value != 0:
        text = f"{value:.{digits}e}"
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2),
                      text)
    text = f"{value:.{digits}f}"
    return "0" if float(text) == 0 else text


def step_labels(first: int, last: int) -> tuple[str, str, str]:
    """The steps at the left end, the middle and the right end of a chart of steps
    first..last, written with thousands separators (a window reaching before step 0, as a
    live one early in a run does, starts at 0: no step is negative)."""
    return f"{max(first, 0):,}", f"{max((first + last) // 2, 0):,}", f"{last:,}"


def step_line(first: int, last: int, width: int) -> str:
    """A line of `width` characters with the first step at the left, the middle step centred
    and the last step at the right (the middle left out when it does not fit)."""
    left, middle, right = step_labels(first, last)
    if width <= 0:
        return ""
    if first == last or len(left) + len(right) + 1 > width:
        return right.rjust(width)[:width]
    line = left + " " * (width - len(left) - len(right)) + right
    start = (width - len(middle)) // 2
    if middle not in (left, right) and start > len(left) + 1 and \
            start + len(middle) < width - len(right) - 1:
        line = line[:start] + middle + line[start + len(middle):]
    return line


LOG_MIN_SPAN = math.log10(1 + REL_MIN_SPAN)  # a log chart spans at least a 5 % ratio


def log_axis(values: Iterable[float | None], ticks: int = 5) -> Axis | None:
    """A log-scale y axis: the same rule as `axis` applied to log10 of the positive finite
    values (a nice step in decades, a minimum range of a 5 % ratio, so a flat series draws
    flat), `lo`, `hi`, `step` and `ticks` in log10 units (draw log10 of the data against
    them), labels the ticks' values written out (3 significant digits, more when two would
    read the same). None when no value is positive. Unlike `axis`, values near 0 are kept:
    on a log scale 1e-9 is nine decades below 1, not float noise."""
    # no noise rule here: a log scale has no 0 to be near (a σ of 1e-9 is a value, not noise)
    logs = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    ax = axis(logs, ticks, floor=LOG_MIN_SPAN)
    if ax is None:
        return None
    return Axis(ax.lo, ax.hi, ax.step, ax.ticks, log_labels(ax.ticks), ax.flat)


def log_labels(ticks: Sequence[float]) -> tuple[str, ...]:
    """10**tick for log10 ticks, written with 3 significant digits (more where two labels
    would read the same), right-aligned to one width: 0.01, 0.1, 1, 10 for whole decades."""
    values = [10.0 ** t for t in ticks]
    for digits in range(3, 9):
        out = [_compact(v, digits) for v in values]
        if len(set(out)) == len(out):
            break
    width = max(len(s) for s in out)
    return tuple(s.rjust(width) for s in out)


def _compact(value: float, digits: int) -> str:
    """`value` to `digits` significant digits: plain between 1e-3 and 1e5, else scientific
    as `labels` writes it (1e-4, 2.5e6)."""
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}g}"
    text = f"{value:.{digits - 1}e}"
    mantissa, exponent = text.split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
