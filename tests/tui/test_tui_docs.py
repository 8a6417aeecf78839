"""docs/tui.md names every view, every column and every key exactly as the screen does: the
view names of the tab strip, each indicator's long and short label (core/names.py, the table's
headers), and each key of the app's bindings as its footer or help shows it."""

from __future__ import annotations

import re
from pathlib import Path

from symwatch.core.names import display
from symwatch.tui.app import SymwatchApp
from symwatch.tui.columns import LEGEND, VIEWS

DOC = (Path(__file__).parents[2] / "docs" / "tui.md").read_text()


def _missing(names) -> list[str]:
    return sorted(n for n in set(names) if n and n not in DOC)


def test_every_view_of_the_tab_strip_is_named_in_the_docs():
    # the tab strip as the page draws it, every view in the screen's order
    strip = " │ ".join(VIEWS)
    assert f"`{strip}`" in DOC, strip


def test_every_column_label_the_table_shows_is_in_the_docs():
    # the columns of every view (the heads view shows per-head names, documented by pattern)
    columns = {c for cols in VIEWS.values() for c in cols} | set(LEGEND)
    columns = {c for c in columns if ".h" not in c}
    long_names = [display(c) for c in columns]
    short_names = [display(c, short=True) for c in columns]
    assert _missing(long_names) == [], "long labels missing from docs/tui.md"
    assert _missing(short_names) == [], "short labels missing from docs/tui.md"


def test_every_key_is_in_the_docs():
    keys = []
    for binding in SymwatchApp.BINDINGS:
        shown = binding.key_display or binding.key.split(",")[0]
        keys.append(shown if len(shown) <= 2 else shown.lower())
    # a key is written in backticks in the docs (`q`, `[`, `ctrl+c`, `home`)
    missing = [k for k in set(keys) if not re.search(r"`[^`]*" + re.escape(k) + r"[^`]*`", DOC)]
    assert sorted(missing) == []
