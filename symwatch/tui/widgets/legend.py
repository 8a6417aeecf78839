"""The lines that name what the layer table shows: the tab strip of column views (k9s,
lazygit: the current one highlighted, `v` moves along it) and the legend line of the column
under the cursor (←/→): what it is, its symmetric state, which way is breaking."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from symwatch.tui.columns import legend, shown_views

TAB_STYLE = "bold reverse"  # the current view's tab
LEGEND_HINT = "   ←/→ column"


def tabs_text(views: list[str], current: str, width: int) -> Text:
    """` overview │ rank │ units …   v next`: every view this run has columns for. A strip
    wider than `width` keeps the current tab and its neighbours, never cutting a name."""
    names = views if current in views else views + [current]
    hint = "  v next view"
    parts = [f" {name} " for name in names]
    index = names.index(current)
    # drop tabs from the far end of the current one until the strip fits
    lo, hi = 0, len(parts)
    def wide(a: int, b: int) -> int:
        return sum(len(p) + 1 for p in parts[a:b]) + (a > 0) + (b < len(parts))
    while wide(lo, hi) > width and hi - lo > 1:
        if index - lo > hi - 1 - index:
            lo += 1
        else:
            hi -= 1
    text = Text(no_wrap=True, overflow="crop")
    if lo:
        text.append("‹", "dim")
    for i in range(lo, hi):
        text.append(parts[i], TAB_STYLE if i == index else "dim")
        if i < hi - 1:
            text.append("│", "dim")
    if hi < len(parts):
        text.append("›", "dim")
    if wide(lo, hi) + len(hint) <= width:
        text.append(hint, "dim")
    return text


def cut_at_word(line: Text, width: int) -> Text:
    """`line` (one line) cut to `width` cells at the last space before the edge, with `…`:
    never mid-word (a word cut short reads as another word: `in th…`)."""
    if width <= 0 or line.cell_len <= width:
        return line
    plain = line.plain[:max(0, width - 1)]
    cut = plain.rstrip().rfind(" ")
    line = line[:cut if cut > 0 else len(plain)]
    line.rstrip()
    line.append("…", "dim")
    return line


def legend_text(indicator: str | None, width: int) -> Text:
    """The legend of one column, cut at a word (never mid-word) to `width`."""
    text = Text(no_wrap=True, overflow="crop")
    if indicator is None:
        return text
    line = " " + legend(indicator)
    if len(line) + len(LEGEND_HINT) <= width:
        line += LEGEND_HINT
    elif len(line) > width:
        line = line[:max(0, width - 1)]
        cut = line.rfind(" ")
        line = (line[:cut] if cut > 0 else line) + "…"
    short, _, rest = line.partition("  ")
    text.append(short, "bold cyan")
    text.append("  " + rest if rest else "")
    return text


class ViewTabs(Static):
    """One line above the table: the views, the current one highlighted."""

    def show(self, views: list[str], current: str) -> None:
        self.update(tabs_text(views, current, self.size.width or self.app.size.width),
                    layout=False)


class LegendLine(Static):
    """One line under the table: the column under the cursor explained."""

    def show(self, indicator: str | None) -> None:
        self.update(legend_text(indicator, self.size.width or self.app.size.width),
                    layout=False)


__all__ = ["LegendLine", "ViewTabs", "legend_text", "shown_views", "tabs_text"]
