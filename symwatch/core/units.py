"""The unit each indicator's value is shown in, one rule for every place that writes one (the
table, the events' text, the layer detail, the export's readers): a fraction is shown as a
percentage, whatever its name says."""

from __future__ import annotations

# Indicators that are fractions although their names do not say so: shown as percent like
# `dead_fraction` (a `relu_dead 0.01562` beside a `1.6%` dead column read as two units).
FRACTIONS = frozenset({"relu_dead", "dead_heads"})


def is_fraction(name: str) -> bool:
    """Whether indicator `name`'s values are fractions of the units (shown as percent)."""
    return name.endswith("fraction") or name in FRACTIONS


def percent(fraction: float, digits: int = 1) -> str:
    """A fraction (0.0123) as a percentage ('1.2%')."""
    return f"{float(fraction) * 100:.{digits}f}%"
