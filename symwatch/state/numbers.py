"""Compact, honest display of numbers: N/A for missing values, never a fake 0."""

from __future__ import annotations

import math
from typing import Any, Sequence

from symwatch.core import units
from symwatch.core.units import (
    is_fraction,  # re-exported: the TUI asks numbers.is_fraction
)

NA = "N/A"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compact(value: Any, digits: int = 4) -> str:
    """`digits` significant figures, k/M/G suffixes for big numbers, e-notation for tiny ones."""
    if not _is_number(value):
        return NA
    v = float(value)
    if v == int(v) and abs(v) < 10_000:
        return str(int(v))
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if a >= div:
            scale = 1e3 if suffix == "k" else div
            return f"{v / scale:.{max(1, digits - 1)}g}{suffix}"
    if a >= 1000:
        return f"{v:.0f}"
    if a < 1e-3:  # '3.3e-6', not '3.3e-06': the cell has room for 7 characters
        mantissa, exponent = f"{v:.{max(0, digits - 3)}e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{v:.{digits}g}"


def with_unit(value: Any, unit: str) -> str:
    """Three significant figures and the unit ('87%', '250 W'); N/A alone, without a unit."""
    s = compact(value, 3)
    return s if s == NA else f"{s}{unit}"


def percent(fraction: Any, digits: int = 1) -> str:
    """A fraction (0.0123) as a percentage ('1.2%'); N/A for what is not a number."""
    if not _is_number(fraction):
        return NA
    return units.percent(fraction, digits)


def indicator(name: str, value: Any) -> str:
    """An indicator value in its natural unit: fractions as %, ranks as integers when whole."""
    if not _is_number(value):
        return NA
    if is_fraction(name):
        return percent(value)
    if name.endswith("rank") and float(value) == int(value):
        return str(int(value))
    return compact(value)


def shape(dims: Sequence[int] | None) -> str:
    if dims is None:
        return "?"
    return "×".join(str(d) for d in dims) if dims else "scalar"


def gib(n_bytes: Any) -> str:
    if not _is_number(n_bytes):
        return NA
    return f"{float(n_bytes) / 2**30:.1f}"


def duration(seconds: float) -> str:
    """'42 s', '3 min', '2.5 h' for how long something has been quiet."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
