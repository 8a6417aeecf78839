"""Which layers the layer table shows, and in which order: the `/` filter and the sort column.

Pure functions over RunState's layers, so they are tested without a terminal. The table keeps
a `TableOrder`; the app changes it (keys `s`/`S`, a click on a column header, `/`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any, Iterable

from symwatch.state.run_state import LayerState

INDICATOR_PREFIX = "ind:"  # the layer table's key for an indicator column
TEXT_COLUMNS = ("layer", "type", "shape")
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class TableOrder:
    """`column`: a layer table column key ('layer', 'type', 'shape', 'ind:NAME') or None for
    the run's own order (META's); `descending`; `filter`: see `matches`."""

    column: str | None = None
    descending: bool = False
    filter: str = ""

    def sorted_by(self, column: str | None) -> TableOrder:
        """Sort by `column`; the same column again flips the direction. Indicators start with
        the largest value on top (the layer to look at), names and types A to Z."""
        if column == self.column and column is not None:
            return replace(self, descending=not self.descending)
        return replace(self, column=column, descending=column_is_indicator(column))

    def reversed(self) -> TableOrder:
        return replace(self, descending=not self.descending)

    def filtered(self, pattern: str) -> TableOrder:
        return replace(self, filter=pattern.strip())


def column_is_indicator(column: str | None) -> bool:
    return bool(column) and str(column).startswith(INDICATOR_PREFIX)


def matches(layer: LayerState, pattern: str) -> bool:
    """Case-insensitive: a substring of the layer's name or type, or, when the pattern has
    * ? or [, a glob that may match anywhere in them ('h.1?.attn', 'conv*weight')."""
    if not pattern:
        return True
    needle = pattern.lower()
    haystacks = (layer.name.lower(), layer.type.lower())
    if GLOB_CHARS & set(needle):
        return any(fnmatchcase(h, f"*{needle}*") for h in haystacks)
    return any(needle in h for h in haystacks)


def sort_value(layer: LayerState, column: str) -> str | float | None:
    """The value a column sorts on; None (N/A, not measured) always sorts last."""
    if column == "layer":
        return layer.name.lower()
    if column == "type":
        return layer.type.lower()
    if column == "shape":
        return float(math.prod(layer.shape)) if layer.shape else None
    if column_is_indicator(column):
        value = layer.value(column[len(INDICATOR_PREFIX):])
        return None if value is None else float(value)
    return None


def ordered(layers: Iterable[LayerState], order: TableOrder) -> list[str]:
    """Names of the layers that pass the filter, in display order. Ties keep the run's order
    (the sort is stable in both directions); N/A values go last either way."""
    shown = [layer for layer in layers if matches(layer, order.filter)]
    if order.column is None:
        names = [layer.name for layer in shown]
        return names[::-1] if order.descending else names
    keyed = [(sort_value(layer, order.column), layer.name) for layer in shown]
    # one column holds one kind of value (all text, or all numbers), so they compare
    known: list[tuple[Any, str]] = [(v, name) for v, name in keyed if v is not None]
    known.sort(key=lambda item: item[0], reverse=order.descending)
    return [name for _, name in known] + [name for v, name in keyed if v is None]


def next_sort_column(current: str | None, indicator_columns: Iterable[str]) -> str | None:
    """The column `s` sorts by next: the run's order → layer name → each indicator column of
    the view → the run's order again."""
    cycle: list[str | None] = [None, "layer", *indicator_columns]
    try:
        i = cycle.index(current)
    except ValueError:
        i = 0
    return cycle[(i + 1) % len(cycle)]
