"""The per-layer table: Layer | Type | Shape | one value+sparkline column per indicator."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable

from symwatch import numbers
from symwatch.state import LayerState, RunState
from symwatch.tui.columns import label, view_indicators
from symwatch.tui.sparkline import sparkline

VALUE_WIDTH = 7  # '12.35k', '100.0%', '1.2e-04'
MAX_SPARK = 24
MIN_SPARK = 4  # a shorter sparkline says nothing; drop it and keep the values readable
CELL_PADDING = 1  # DataTable's default, on each side of every column


def column_key(indicator: str) -> str:
    return f"ind:{indicator}"


@dataclass(frozen=True)
class Layout:
    """Column widths for one terminal width and one set of layers/indicators."""

    indicators: tuple[str, ...]
    layer_w: int
    type_w: int
    shape_w: int
    spark_w: int
    header_style: int  # 1: long labels, 2: long labels on two lines, 0: short labels

    @property
    def header_height(self) -> int:
        return 2 if self.header_style == 2 else 1

    @property
    def cell_w(self) -> int:
        return VALUE_WIDTH + (1 + self.spark_w if self.spark_w else 0)


def compute_layout(state: RunState, width: int, view: str = "overview") -> Layout:
    """Widths that fit `width` for the indicators of `view`: full layer names and sparklines if
    possible, else shorter names (down to 16) to keep sparklines of MIN_SPARK, else values
    only."""
    names = view_indicators(view, state.indicator_names())
    n = max(1, len(names))
    layers = list(state.layers.values())
    name_need = _clamp(max([len(x.name) + 2 for x in layers] + [5]), 8, 40)
    type_w = _clamp(max([len(x.type) for x in layers] + [4]), 4, 14)
    shape_w = _clamp(max([len(numbers.shape(x.shape)) for x in layers] + [5]), 5, 14)
    # 2: the vertical scrollbar; every column has CELL_PADDING on both sides.
    usable = width - 2 - 2 * CELL_PADDING * (3 + len(names)) - type_w - shape_w
    spark_w = min(MAX_SPARK, (usable - name_need) // n - VALUE_WIDTH - 1)
    layer_w = name_need
    if spark_w < MIN_SPARK:
        min_layer = min(name_need, 16)
        spark_w = min(MAX_SPARK, (usable - min_layer) // n - VALUE_WIDTH - 1)
        if spark_w >= MIN_SPARK:
            layer_w = max(min_layer, usable - n * (VALUE_WIDTH + 1 + spark_w))
        else:
            spark_w = 0
            layer_w = _clamp(usable - n * VALUE_WIDTH, 8, name_need)
    cell_w = VALUE_WIDTH + (1 + spark_w if spark_w else 0)
    if all(len(label(x)) <= cell_w for x in names):
        header = 1
    elif all(max(len(w) for w in label(x).split(" ", 1)) <= cell_w for x in names):
        header = 2
    else:
        header = 0  # short labels on one line
    return Layout(names, layer_w, type_w, shape_w, spark_w, header)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _fit(text: str, width: int) -> str:
    """Keep the tail of long dotted names ('…h.11.attn.c_attn'): it is the informative part."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _signature(layer: LayerState) -> tuple[object, ...]:
    return (layer.updates, layer.nonfinite, layer.type, layer.shape, layer.announced,
            layer.flag)


def _header_label(indicator: str, layout: Layout) -> Text:
    words = label(indicator, short=layout.header_style == 0)
    if layout.header_style == 2:
        words = words.replace(" ", "\n", 1)
    return Text(words, style="bold", justify="right")


class LayerTable(DataTable[Text]):
    """Rows keyed by layer name; cells are updated in place and only when their text changes."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._layout: Layout | None = None
        self._shown: dict[tuple[str, str], str] = {}
        self._signature: dict[str, tuple[object, ...]] = {}
        self._restarts = -1
        self.view = "overview"  # which column family shows; see symwatch.tui.columns

    def sync(self, state: RunState) -> None:
        width = self.size.width or self.app.size.width
        layout = compute_layout(state, width, self.view)
        vanished = any(row.value not in state.layers for row in self.rows if row.value)
        if layout != self._layout or state.restarts != self._restarts or vanished:
            self._rebuild(state, layout)
            return
        for layer in state.layers.values():
            if layer.name not in self.rows:
                self._add_row(layer, layout)
            elif self._signature.get(layer.name) != _signature(layer):
                # Only rows with a new sample are re-rendered: sparklines of 1000 layers at
                # 5 Hz would otherwise cost the UI thread most of its time.
                self._update_row(layer, layout)

    def _rebuild(self, state: RunState, layout: Layout) -> None:
        cursor = self.cursor_row
        self.clear(columns=True)
        self._shown.clear()
        self._signature.clear()
        self._layout, self._restarts = layout, state.restarts
        self.header_height = layout.header_height
        self.add_column(Text("Layer", style="bold"), width=layout.layer_w, key="layer")
        self.add_column(Text("Type", style="bold"), width=layout.type_w, key="type")
        self.add_column(Text("Shape", style="bold"), width=layout.shape_w, key="shape")
        for name in layout.indicators:
            self.add_column(_header_label(name, layout), width=layout.cell_w, key=column_key(name))
        for layer in state.layers.values():
            self._add_row(layer, layout)
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1), scroll=False)

    def _cells(self, layer: LayerState, layout: Layout) -> dict[str, Text]:
        name = Text(no_wrap=True)
        marks = 0
        if layer.nonfinite:
            name.append("⚠ ", "bold red")
            marks += 2
        if layer.flag is not None and layer.flag.active(layer):
            # a transition in this layer, lately: which way it went
            name.append("▲ " if layer.flag.direction == "up" else "▼ ", "bold yellow")
            marks += 2
        name.append(_fit(layer.name, layout.layer_w - marks),
                    "" if layer.announced else "italic")
        cells = {
            "layer": name,
            "type": Text(_fit(layer.type, layout.type_w), style="dim"),
            "shape": Text(_fit(numbers.shape(layer.shape), layout.shape_w), style="dim"),
        }
        for ind in layout.indicators:
            cells[column_key(ind)] = self._indicator_cell(layer, ind, layout)
        return cells

    @staticmethod
    def _indicator_cell(layer: LayerState, indicator: str, layout: Layout) -> Text:
        series = layer.indicators.get(indicator)
        value = series.current if series else None
        text = Text(no_wrap=True)
        if layout.spark_w:
            history = series.values() if series else []
            text.append(sparkline(history, layout.spark_w), "cyan")
            text.append(" ")
        shown = numbers.indicator(indicator, value)
        text.append(shown.rjust(VALUE_WIDTH), "bold" if value is not None else "dim")
        return text

    def _add_row(self, layer: LayerState, layout: Layout) -> None:
        cells = self._cells(layer, layout)
        self.add_row(*cells.values(), key=layer.name)
        self._signature[layer.name] = _signature(layer)
        for key, text in cells.items():
            self._shown[(layer.name, key)] = text.plain

    def _update_row(self, layer: LayerState, layout: Layout) -> None:
        self._signature[layer.name] = _signature(layer)
        for key, text in self._cells(layer, layout).items():
            if self._shown.get((layer.name, key)) != text.plain:
                self.update_cell(layer.name, key, text)
                self._shown[(layer.name, key)] = text.plain
