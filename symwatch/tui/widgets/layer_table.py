"""The per-layer table: Layer | Type | Shape | one value+sparkline column per indicator."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.message import Message
from textual.widgets import DataTable
from textual.coordinate import Coordinate
from textual.widgets.data_table import ColumnKey, RowKey

from symwatch.state import numbers
from symwatch.state.run_state import LayerState, RunState
from symwatch.tui.columns import PENDING, label, measured_indicators, pending, view_indicators
from symwatch.tui.layer_order import TableOrder, matches, ordered
from symwatch.tui.history_view import HistoryWindow, steps_shown, value_at
from symwatch.tui.widgets.sparkline import is_baseline, sparkline

VALUE_WIDTH = 7  # '12.35k', '100.0%', '1.2e-04'
MAX_SPARK = 24
MIN_SPARK = 4  # a shorter sparkline says nothing; drop it and keep the values readable
# Rows just outside the viewport re-rendered too, so a short scroll shows fresh cells at once.
VISIBLE_MARGIN = 5
CELL_PADDING = 1  # DataTable's default, on each side of every column
# Cells' styles kept for the next frame (a few per cell on screen; cleared when over this).
MAX_CELL_STYLES = 20_000


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
    """Widths that fit `width` for the indicators of `view`, giving things up in this order
    while they do not fit: full layer names (down to 16 characters), then the Type and Shape
    columns (the detail screen shows them), then sparklines (values only), then more of the
    names (down to 8). So 120 columns keep sparklines and 80 columns readable names."""
    names = view_indicators(view, measured_indicators(state))
    n = max(1, len(names))
    layers = list(state.layers.values())
    name_need = _clamp(max([len(x.name) + 2 for x in layers] + [5]), 8, 40)
    min_layer = min(name_need, 16)
    full_type_w = _clamp(max([len(x.type) for x in layers] + [4]), 4, 14)
    full_shape_w = _clamp(max([len(numbers.shape(x.shape)) for x in layers] + [5]), 5, 14)

    def usable(type_w: int, shape_w: int) -> int:
        # 2: the vertical scrollbar; every shown column has CELL_PADDING on both sides.
        shown = 1 + len(names) + (2 if type_w else 0)
        return width - 2 - 2 * CELL_PADDING * shown - type_w - shape_w

    chosen: tuple[int, int, int, int] | None = None  # type_w, shape_w, spark_w, layer_w
    for type_w, shape_w in ((full_type_w, full_shape_w), (0, 0)):
        room = usable(type_w, shape_w)
        spark_w = min(MAX_SPARK, (room - name_need) // n - VALUE_WIDTH - 1)
        if spark_w >= MIN_SPARK:
            chosen = (type_w, shape_w, spark_w, name_need)
            break
        spark_w = min(MAX_SPARK, (room - min_layer) // n - VALUE_WIDTH - 1)
        if spark_w >= MIN_SPARK:
            chosen = (type_w, shape_w, spark_w,
                      max(min_layer, room - n * (VALUE_WIDTH + 1 + spark_w)))
            break
    if chosen is None:  # values only; Type and Shape only where names keep 16 characters
        for type_w, shape_w in ((full_type_w, full_shape_w), (0, 0)):
            room = usable(type_w, shape_w) - n * VALUE_WIDTH
            chosen = (type_w, shape_w, 0, _clamp(room, 8, name_need))
            if room >= min_layer:
                break
    assert chosen is not None
    type_w, shape_w, spark_w, layer_w = chosen
    cell_w = VALUE_WIDTH + (1 + spark_w if spark_w else 0)
    if all(len(label(x)) <= cell_w for x in names):
        header = 1
    elif all(max(len(w) for w in label(x).split(" ", 1)) <= cell_w for x in names):
        header = 2
    else:
        header = 0  # short labels on one line
    return Layout(names, layer_w, type_w, shape_w, spark_w, header)


# Colours against meaning, as nvitop colours values against thresholds: a share of units (or
# heads) dead, never active or merged is capacity the layer has lost; any is worth a look
# (yellow), half or more is most of the layer (red). Other indicators have no threshold that
# holds across layers and stay plain.
FRACTION_WARN, FRACTION_BAD = 0.0, 0.5


def value_style(indicator: str, value: object) -> str:
    if value is None:
        return "dim"
    if numbers.is_fraction(indicator) and isinstance(value, (int, float)):
        if value >= FRACTION_BAD:
            return "bold red"
        if value > FRACTION_WARN:
            return "bold yellow"
    return "bold"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _fit(text: str, width: int) -> str:
    """Keep the tail of long dotted names ('…h.11.attn.c_attn'): it is the informative part."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _signature(layer: LayerState) -> tuple[object, ...]:
    return (layer.updates, layer.nonfinite, layer.type, layer.shape, layer.announced,
            layer.flag, layer.meta.get("rank"))  # `rank`: its pending cells (columns.pending)


def _header_label(indicator: str, layout: Layout, arrow: str = "",
                  focus: bool = False) -> Text:
    words = label(indicator, short=layout.header_style == 0)
    if layout.header_style == 2:
        words = words.replace(" ", "\n", 1)
    return Text(arrow + words, style="bold underline" if focus else "bold", justify="right")


def _sort_arrow(order: TableOrder, column: str) -> str:
    """'▼ ' on the column the rows are sorted by (largest first), '▲ ' smallest first."""
    if order.column != column:
        return ""
    return "▼ " if order.descending else "▲ "


def _text_segments(cell: Text, console: Console) -> list[Segment]:
    """Text.render(console, end=""), for spans one after another (the table's cells: the
    sparkline, a space, the value); Rich's general way (spans may nest) costs three times as
    much. Anything else goes Rich's way."""
    plain = cell.plain
    get_style = console.get_style
    null = Style.null()
    base = get_style(cell.style, default=null)
    out: list[Segment] = []
    at = 0
    for span in cell.spans:
        start, end = span.start, span.end
        if start < at or end <= start or end > len(plain):
            return list(cell.render(console, end=""))  # nested, empty or out of range
        if start > at:
            out.append(Segment(plain[at:start], Style.combine((base,))))
        out.append(Segment(plain[start:end], Style.combine((base, get_style(span.style,
                                                                            default=null)))))
        at = end
    if at < len(plain):
        out.append(Segment(plain[at:], Style.combine((base,))))
    return out


def _apply_styles(line: list[Segment], styled: tuple[Style, Style, dict]) -> list[Segment]:
    """Segment.apply_style(line, style, post_style), each resulting style looked up in (or
    added to) `styled`'s table: the same segments, without building the same Style twice."""
    style, post_style, final = styled
    out = []
    for text, segment_style, control in line:
        if control:
            out.append(Segment(text, None, control))
            continue
        combined = final.get(segment_style)
        if combined is None:
            combined = style + segment_style if style else segment_style
            if post_style:
                combined = combined + post_style if combined else post_style
            final[segment_style] = combined
        out.append(Segment(text, combined, control))
    return out


class LayerName(Text):
    """The Layer cell: its text may be cut or marked (▲ ⚠), so it carries the layer's name
    for sorting (DataTable.sort hands the key function cells, not row keys)."""

    layer: str = ""


class LayerTable(DataTable[Text]):
    """Rows keyed by layer name; cells are updated in place and only when their text changes."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._layout: Layout | None = None
        self._shown: dict[tuple[str, str], str] = {}
        self._signature: dict[str, tuple[object, ...]] = {}
        self._restarts = -1
        self.view = "overview"  # which column family shows; see symwatch.tui.columns
        self.order = TableOrder()  # sort column and `/` filter; see symwatch.tui.layer_order
        self.shown_layers = 0  # rows that pass the filter, of `total_layers`
        self.total_layers = 0
        # The stretch of the run shown (symwatch.tui.history_view); live: the newest samples.
        self.window = HistoryWindow()
        self._state: RunState | None = None  # the last synced state, for rows scrolled into view
        # (row, column, styles) -> the cell's style, post style, {text style: final style}
        self._cell_styles: dict[tuple[object, ...], tuple[Style, Style, dict]] = {}
        self._row_styles: dict[tuple[object, ...], Style] = {}  # see _get_row_style
        self._on_screen_first = False  # the next sync renders no margin (a new window)
        # The column ←/→ points at (the rows have the cursor): its header is underlined and
        # the legend line under the table explains it (symwatch.tui.columns.legend).
        self.legend_column: str | None = None

    class LegendMoved(Message):
        """The column under the cursor changed: the legend line says what it is."""

    def legend_indicator(self) -> str | None:
        """The indicator under the column cursor (the first shown when it left the view)."""
        shown = self._layout.indicators if self._layout is not None else ()
        if not shown:
            return None
        return self.legend_column if self.legend_column in shown else shown[0]

    def action_cursor_right(self) -> None:
        self._move_legend(1)

    def action_cursor_left(self) -> None:
        self._move_legend(-1)

    def _move_legend(self, step: int) -> None:
        """←/→ move the column cursor between indicator columns (the rows keep the row
        cursor: Enter still opens a layer); the header of the one pointed at is underlined."""
        shown = self._layout.indicators if self._layout is not None else ()
        if not shown:
            return
        current = self.legend_indicator()
        index = shown.index(current) if current in shown else 0
        self.legend_column = shown[max(0, min(len(shown) - 1, index + step))]
        self._relabel()
        key = column_key(self.legend_column)
        if key in self.columns:
            self.scroll_to_column(self.get_column_index(key))
        self.post_message(self.LegendMoved())

    def scroll_to_column(self, index: int) -> None:
        self.move_cursor(column=index, scroll=True)

    def _relabel(self) -> None:
        """The indicator headers again, the one under the column cursor underlined."""
        layout = self._layout
        if layout is None:
            return
        focus = self.legend_indicator()
        for name in layout.indicators:
            column = self.columns.get(ColumnKey(column_key(name)))
            if column is not None:
                column.label = _header_label(name, layout, _sort_arrow(self.order,
                                                                       column_key(name)),
                                             focus=name == focus)
        self._update_count += 1  # the header's cached lines are drawn again
        self.refresh()

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> list[list[Segment]]:
        """DataTable's cell rendering, without Rich's general machinery for the cells this
        table has: one line of left-justified Text. DataTable renders each cell through
        Console.render_lines(Styled(Padding(cell))), ~0.2 ms a cell; a frame of 1,000 layers
        at 10 Hz re-renders 50 rows × 16 cells and a key press waited behind it. This builds
        the same segments directly (tests/tui/test_tui_widgets.py compares both on every kind
        of cell, so a Textual or Rich that renders differently is caught); anything else
        (the header, taller rows, other renderables) goes the general way."""
        try:
            row_key = self._row_locations.get_key(row_index)
            column_key = self._column_locations.get_key(column_index)
            cache_key = (row_key, column_key, base_style, cursor, hover,
                         self._show_hover_cursor, self._update_count, self._pseudo_class_state)
            cached = self._cell_render_cache.get(cache_key)
            if cached is not None:
                return cached
            cell = self._data[row_key][column_key]
            fast = (row_index >= 0 and column_index >= 0 and not self.fixed_rows
                    and not self.fixed_columns and self.rows[row_key].height == 1
                    and type(cell) in (Text, LayerName) and "\n" not in cell.plain
                    and cell.justify in (None, "default", "left"))
        except Exception:  # noqa: BLE001 - private parts moved: the general way still works
            fast = False
        if not fast:
            return super()._render_cell(row_index, column_index, base_style, width, cursor,
                                        hover)
        component_style, post_style = self._get_styles_to_render_cell(
            False, False, False, hover, cursor, self.show_cursor, self._show_hover_cursor,
            self.cursor_foreground_priority == "css", self.cursor_background_priority == "css")
        # The cell's style (its row and column in the meta, for clicks) and what each style of
        # its text becomes under it: Segment.apply_style makes each anew, a Style with a meta
        # unique to the cell every time (no cache hit), several per cell and frame. The same
        # cell on the next frame looks them up here.
        styles_key = (row_index, column_index, base_style, component_style, post_style)
        styled = self._cell_styles.get(styles_key)
        if styled is None:
            if len(self._cell_styles) > MAX_CELL_STYLES:
                self._cell_styles.clear()
            style = base_style + Style.from_meta({"row": row_index, "column": column_index}) \
                + component_style
            styled = self._cell_styles[styles_key] = (style, post_style, {})
        pad = self.cell_padding
        console = self.app.console
        if cell.spans:
            text = _text_segments(cell, console)  # spans over the Text's own style
        elif not cell.style:
            text = [Segment(cell.plain)]
        else:  # (Text.render leaves a Text without spans unstyled; a line of a wrap is not)
            text = [Segment(cell.plain, console.get_style(cell.style))]
        inner = Segment.adjust_line_length(text, max(0, width - 2 * pad), pad=True)
        line = [Segment(" " * pad), *inner, Segment(" " * pad)] if pad else inner
        lines = [_apply_styles(line, styled)]
        self._cell_render_cache[cache_key] = lines
        return lines

    def _render_line_in_row(self, row_key: RowKey, line_no: int, base_style: Style,
                            cursor_location: Coordinate, hover_location: Coordinate
                            ) -> tuple[list[list[Segment]], list[list[Segment]]]:
        """DataTable's, for this table's rows (a row cursor, no row labels, no fixed columns):
        the same segments (tests/tui/test_tui_snapshots.py compares both), without what DataTable
        looks up for every line of every frame and this table never uses (the header's and
        the background's styles, walking the DOM, ~0.2 ms a line). Other tables, the general
        way."""
        if self.cursor_type != "row" or self.fixed_columns or \
                (self._labelled_row_exists and self.show_row_labels):
            return super()._render_line_in_row(row_key, line_no, base_style, cursor_location,
                                               hover_location)
        cache_key = (row_key, line_no, base_style, cursor_location, hover_location,
                     self.cursor_type, self.show_cursor, self._show_hover_cursor,
                     self._update_count, self._pseudo_class_state)
        cached = self._row_render_cache.get(cache_key)
        if cached is not None:
            return cached
        row_index = self._row_locations.get(row_key) if row_key in self._row_locations else -1
        row_style = self._get_row_style(row_index, base_style)
        cursor = cursor_location.row == row_index  # a row cursor: the whole row is under it
        hover = hover_location.row == row_index
        scrollable: list[list[Segment]] = []
        table_width = self._row_label_column_width
        for column_index, column in enumerate(self.ordered_columns):
            width = column.get_render_width(self)
            table_width += width
            scrollable.append(self._render_cell(row_index, column_index, row_style, width,
                                                cursor=cursor, hover=hover)[line_no])
        # The row's style carried to the right edge of the table, as DataTable does.
        extend_style, _ = self._get_styles_to_render_cell(
            row_index == -1, False, False, hover_location.row == (row_index or 0), cursor,
            self.show_cursor, self._show_hover_cursor, False, False)
        extend_style = row_style + extend_style + Style.from_meta(
            {"row": row_index, "column": 0, "out_of_bounds": True})
        remaining = max(0, self.size.width - table_width)
        scrollable.append([Segment(" " * remaining, extend_style)])
        pair: tuple[list[list[Segment]], list[list[Segment]]] = ([], scrollable)
        self._row_render_cache[cache_key] = pair
        return pair

    def _get_row_style(self, row_index: int, base_style: Style) -> Style:
        """DataTable's, remembered: it looks the row's component style up by walking the DOM
        (Widget.rich_style, ~0.1 ms), once for every row of every frame."""
        kind = -1 if row_index == -1 else -2 if row_index < self.fixed_rows else row_index % 2
        key = (kind, base_style, self.zebra_stripes, self._pseudo_class_state, self.app.theme)
        style = self._row_styles.get(key)
        if style is None:
            if len(self._row_styles) > 64:
                self._row_styles.clear()
            style = self._row_styles[key] = super()._get_row_style(row_index, base_style)
        return style

    def notify_style_update(self) -> None:
        for cache in (getattr(self, "_row_styles", None), getattr(self, "_cell_styles", None)):
            if cache is not None:
                cache.clear()  # new CSS or theme: every style again
        super().notify_style_update()

    class Resized(Message):
        """The table's size changed: its columns must be fitted again (the app redraws)."""

    def on_resize(self, event: events.Resize) -> None:
        # The app draws on its clock, keyed on what changed; a new size of the table (known
        # only now, after the screen's layout) is one such change, even for a finished run.
        self.post_message(self.Resized())

    def set_order(self, order: TableOrder) -> None:
        """A new sort or filter: the next `sync` rebuilds the rows (and the header's arrow)."""
        self.order = order
        self._layout = None

    def set_window(self, window: HistoryWindow) -> None:
        """Show another stretch of the run: every row is re-rendered as it comes into view."""
        if window != self.window:
            self.window = window
            self._signature.clear()
            # The key's frame gets the rows on screen; the margin above and below follows
            # just after it (a 1,000-layer table: a quarter less work before the frame).
            self._on_screen_first = True

    def sync(self, state: RunState) -> None:
        self._state = state
        width = self.size.width or self.app.size.width
        layout = compute_layout(state, width, self.view)
        vanished = any(row.value not in state.layers for row in self.rows if row.value)
        self.total_layers = len(state.layers)
        if layout != self._layout or state.restarts != self._restarts or vanished:
            current = self._cursor_layer()
            self._rebuild(state, layout)
            self._apply_sort(state, keep=current)
            return
        changed = False
        first, last = self._visible_rows(0 if self._on_screen_first else VISIBLE_MARGIN)
        if self._on_screen_first:
            self._on_screen_first = False
            self.call_after_refresh(self._update_margin)
        in_view: list[LayerState] = []
        for layer in state.layers.values():
            if layer.name not in self.rows:
                if matches(layer, self.order.filter):
                    self._add_row(layer, layout)
                    changed = True
            elif self._signature.get(layer.name) != _signature(layer):
                # Only rows with a new sample are re-rendered, and only those in view (the
                # rest when scrolled to): sparklines of 1000 layers at 10 Hz would otherwise
                # cost the UI thread most of its time.
                changed = True
                if first <= self.get_row_index(layer.name) <= last:
                    in_view.append(layer)
        self._update_rows(in_view, layout)
        if changed:
            self._apply_sort(state)

    def _visible_rows(self, margin: int = VISIBLE_MARGIN) -> tuple[int, int]:
        """Indices of the rows in view, with a margin."""
        top = int(self.scroll_y)
        height = max(1, (self.size.height or self.app.size.height) - self.header_height)
        return top - margin, top + height + margin

    def _update_margin(self) -> None:
        if self._state is not None and self._layout is not None:
            self._update_visible(self._state, self._layout)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self._state is not None and self._layout is not None and \
                round(old_value) != round(new_value):
            self._update_visible(self._state, self._layout)

    def _update_visible(self, state: RunState, layout: Layout) -> None:
        """Rows that came into view with cells older than their layer's latest sample."""
        first, last = self._visible_rows()
        behind: list[LayerState] = []
        for row in self.ordered_rows[max(0, first):max(0, last + 1)]:
            layer = state.layers.get(str(row.key.value))
            if layer is not None and self._signature.get(layer.name) != _signature(layer):
                behind.append(layer)
        self._update_rows(behind, layout)

    def _apply_sort(self, state: RunState, keep: str | None = None) -> None:
        """Order the rows by `self.order`, the cursor staying on the layer it was on (`keep`,
        when the rows were just rebuilt)."""
        self.shown_layers = self.row_count
        resort = self.order.column is not None or self.order.descending  # else: run's order
        if not resort and keep is None:
            return  # rows were only added at the end or updated in place
        current = keep if keep is not None else self._cursor_layer()
        if resort:
            position = {name: i for i, name in
                        enumerate(ordered(state.layers.values(), self.order))}
            self.sort("layer",
                      key=lambda cell: position.get(getattr(cell, "layer", ""), 1 << 30))
            if self._layout is not None:  # rows the sort moved into view may be behind
                self._update_visible(state, self._layout)
        if current is not None and current in self.rows:
            self.move_cursor(row=self.get_row_index(current), scroll=False)

    def _cursor_layer(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - a cursor outside the rows: no layer
            return None

    def _rebuild(self, state: RunState, layout: Layout) -> None:
        cursor = self.cursor_row
        self.clear(columns=True)
        self._shown.clear()
        self._signature.clear()
        self._layout, self._restarts = layout, state.restarts
        self.header_height = layout.header_height
        for key, title, width in (("layer", "Layer", layout.layer_w),
                                  ("type", "Type", layout.type_w),
                                  ("shape", "Shape", layout.shape_w)):
            if not width:
                continue  # a narrow terminal: the detail screen shows type and shape
            self.add_column(Text(_sort_arrow(self.order, key) + title, style="bold"),
                            width=width, key=key)
        for name in layout.indicators:
            key = column_key(name)
            self.add_column(_header_label(name, layout, _sort_arrow(self.order, key),
                                          focus=name == self.legend_indicator()),
                            width=layout.cell_w, key=key)
        for layer in state.layers.values():
            if matches(layer, self.order.filter):
                self._add_row(layer, layout)
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1), scroll=False)

    def _cells(self, layer: LayerState, layout: Layout) -> dict[str, Text]:
        name = LayerName(no_wrap=True)
        name.layer = layer.name
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
        cells: dict[str, Text] = {"layer": name}
        if layout.type_w:
            cells["type"] = Text(_fit(layer.type, layout.type_w), style="dim")
            cells["shape"] = Text(_fit(numbers.shape(layer.shape), layout.shape_w), style="dim")
        for ind in layout.indicators:
            cells[column_key(ind)] = self._indicator_cell(layer, ind, layout)
        return cells

    def _indicator_cell(self, layer: LayerState, indicator: str, layout: Layout) -> Text:
        series = layer.indicators.get(indicator)
        window = self.window
        value = value_at(series, window)
        text = Text(no_wrap=True)
        if layout.spark_w:
            if series is None:
                history: list[float | None] = []
            elif window.live or self._state is None:
                history = series.values()
            else:  # paused or scrolled back: the window, as the other charts show it
                history = series.store.columns(*steps_shown(window, self._state), layout.spark_w)
            line = sparkline(history, layout.spark_w)
            # a constant series is a baseline, dimmed: nothing to look at here
            text.append(line, "dim cyan" if is_baseline(line) else "cyan")
            text.append(" ")
        if series is None and pending(layer, indicator):  # measured in turn: not there yet
            text.append(PENDING.rjust(VALUE_WIDTH), "dim")
            return text
        shown = numbers.indicator(indicator, value)
        text.append(shown.rjust(VALUE_WIDTH), value_style(indicator, value))
        return text

    def _add_row(self, layer: LayerState, layout: Layout) -> None:
        cells = self._cells(layer, layout)
        self.add_row(*cells.values(), key=layer.name)
        self._signature[layer.name] = _signature(layer)
        for key, text in cells.items():
            self._shown[(layer.name, key)] = text.plain

    def _update_rows(self, layers: list[LayerState], layout: Layout) -> None:
        """Re-render these rows' cells; only the cells whose text changed are replaced."""
        changes: dict[str, dict[str, Text]] = {}
        for layer in layers:
            self._signature[layer.name] = _signature(layer)
            changed: dict[str, Text] = {}
            for key, text in self._cells(layer, layout).items():
                if self._shown.get((layer.name, key)) != text.plain:
                    changed[key] = text
                    self._shown[(layer.name, key)] = text.plain
            if changed:
                changes[layer.name] = changed
        if changes:
            self._replace_cells(changes)

    def _replace_cells(self, changes: dict[str, dict[str, Text]]) -> None:
        """Put new cells in these rows ({row: {column: cell}}) and forget only those rows'
        rendering.

        DataTable.update_cell bumps a table-wide counter that is part of every render cache
        key, so each updated cell made the next frame render every visible cell again: with
        1,000 layers at 10 Hz that was ~150 ms of rendering per frame, and a key press waited
        behind it. Here the counter stays, and the caches lose only these rows' entries (cells
        and lines are keyed by row key, the per-row renderables by row index), in one pass
        over each cache for all the rows; the other rows' cached lines are reused. Textual's
        private caches: should a version rename them, the plain update_cell still works, only
        slower (tests/tui/test_tui_app.py notices)."""
        indices: set[int] = set()
        try:
            for row, cells in changes.items():
                data = self._data[RowKey(row)]
                for key, text in cells.items():
                    data[ColumnKey(key)] = text
                indices.add(self._row_locations.get(RowKey(row)))
            rows = set(changes)  # a RowKey hashes and compares as its string
            for cache, position, wanted in ((self._cell_render_cache, 0, rows),
                                            (self._row_render_cache, 0, rows),
                                            (self._row_renderable_cache, 1, indices)):
                for entry in [k for k in cache.keys() if k[position] in wanted]:
                    cache.discard(entry)
            self._line_cache.clear()  # keyed by screen line: cheap to rebuild from rows
        except (AttributeError, KeyError, TypeError, IndexError):
            for row, cells in changes.items():
                for key, text in cells.items():
                    self.update_cell(row, key, text)
            return
        for index in indices:
            if index is not None:
                self.refresh_row(index)
