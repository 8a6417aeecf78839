"""How the main screen shares its height between the layer table, the loss chart and the
events log (the other lines, header, GPU line and so on, have fixed heights).

The table takes three shares of the flexible height and the events log one, the log between
EVENTS_MIN and EVENTS_MAX lines; the loss chart has a number of rows that grows with the
terminal (1 at 24 lines, 6 at 40 and more): 80×24 keeps the table's rows, a tall terminal shows
more of the run's history.

A table with fewer rows than its share would leave blank lines under it: a 5-layer model on a
40-line terminal left 14 of them between its last row and the loss chart. Such a table is cut
to its rows, and the lines it does not use go to the loss chart (up to CHART_MAX rows: a taller
chart shows a plateau and the jump that ends it more clearly) and then to the events log.

CSS fractions cannot say "at most its content, and give the rest to that one": with both the
table and the log capped Textual's fraction solver left blank lines or overflowed, so the
heights are computed here and set by the app (SymwatchApp._fit_heights).
"""

from __future__ import annotations

from dataclasses import dataclass

CHART_MAX = 12
EVENTS_MIN, EVENTS_MAX = 3, 12
TABLE_MIN = 4


@dataclass(frozen=True)
class MainHeights:
    table: int  # lines of the layer table, its header included
    chart: int  # rows of the loss chart (the loss panel is one line more: its text)
    events: int  # lines of the events log


def chart_rows(screen_height: int) -> int:
    """The loss chart's rows when the table uses its whole share."""
    return max(1, min(6, (screen_height - 24) // 3 + 1))


def main_heights(screen_height: int, free: int, table_lines: int,
                 event_lines: int = EVENTS_MAX) -> MainHeights:
    """Heights for a screen `screen_height` lines tall, with `free` lines left for the table,
    the loss chart's rows and the events log, and a table that needs `table_lines` lines to
    show every row (its header and any scrollbar included). `event_lines`: the events there
    are to show; a log with fewer than its share (`no events yet`: ~17 blank rows under it at
    120×40) keeps one line per event, at least one, and the table gets the rest."""
    chart = chart_rows(screen_height)
    flexible = max(0, free - chart)
    events = min(EVENTS_MAX, max(EVENTS_MIN, flexible // 4), max(1, event_lines))
    table = flexible - events
    if table < TABLE_MIN:  # a short terminal: the table keeps its minimum, the log what is left
        table = min(TABLE_MIN, flexible)
        events = flexible - table
    spare = table - max(TABLE_MIN, table_lines)
    if spare > 0:
        table -= spare
        grow = max(0, min(spare, CHART_MAX - chart))
        chart += grow
        events += spare - grow
    return MainHeights(table=table, chart=chart, events=events)
