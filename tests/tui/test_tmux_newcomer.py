"""The newcomer test (issue #18): the real `symwatch demo` in a real terminal (tmux) at 120×40
and again at 80×24; each screen is opened and read back as text, and every word of the layer
table's header must be a whole column name with a legend entry (no `effecti`, no unexplained
`Δresc`), every cell a whole value, the legend line and tab strip present. tests/setup.sh
installs tmux; without it the test is skipped, saying so."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from symwatch.core.detection import KIND_ORDER
from symwatch.tui.columns import LABELS, LEGEND, VIEWS, per_head

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None,
                                 reason="tmux is not installed (tests/setup.sh installs it)"),
              pytest.mark.timeout(180)]

VALUE = re.compile(r"^(-?[\d.,]+(e[+-]?\d+)?[kMG%]?|N/A)$")
FIXED_WORDS = {"Layer", "Type", "Shape", "▼", "▲"}


def _header_words() -> set[str]:
    words = set(FIXED_WORDS)
    for long_, short in LABELS.values():
        words.update(long_.split())
        words.add(short)
        words.update(short.split())
    return words


HEADER_WORDS = _header_words()


def _known(word: str) -> bool:
    """A whole header word: part of a column's long or short name (per-head ones too), whose
    column has a legend entry."""
    if word in HEADER_WORDS:
        return True
    if re.fullmatch(r"h\d+", word):  # "QK σ₁ h3"
        return True
    for family, (_, short) in LABELS.items():  # "qkσ3": a head's short name
        if word.startswith(short) and word[len(short):].isdigit() and family in LEGEND:
            return per_head(f"{family}.h{word[len(short):]}") is not None
    return False


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30,
                          check=False).stdout


def _key(session: str, key: str) -> None:
    """One key, then a pause: an Escape followed at once by `e` reads as Alt+e."""
    _tmux("send-keys", "-t", session, key)
    time.sleep(0.4)


def _screen(session: str) -> str:
    return _tmux("capture-pane", "-p", "-t", session)


def _wait(session: str, predicate, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _screen(session)
        if predicate(screen):
            return screen
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; screen:\n{_screen(session)}")


def _table_lines(screen: str) -> tuple[list[str], list[str]]:
    """The layer table's header line(s) and its rows, read off the dashboard's text."""
    lines = screen.splitlines()
    top = next(i for i, line in enumerate(lines) if line.split()[:1] == ["Layer"])
    header, rows = [lines[top]], []
    for line in lines[top + 1:]:
        tokens = line.split()
        if not tokens or tokens[0] in ("filter", "loss") or "symmetric at" in line:
            break  # the table's end: the filter bar, the legend line, the loss chart
        if not any(VALUE.match(t) for t in tokens[1:]) and not rows:
            header.append(line)  # a two-line header's second line
        else:
            rows.append(line)
    return header, rows


def _check_dashboard(screen: str, where: str) -> None:
    header, rows = _table_lines(screen)
    lines = screen.splitlines()
    if any(set(line.strip()) <= set("▍▌▋▊▉█▏▎ ") and line.strip() for line in lines):
        # a view wider than the terminal scrolls sideways (its scrollbar is drawn): the
        # column at the edge is cut by the scroll, not by the table's fitting
        header = [line[:line.rstrip().rfind(" ")] for line in header]
        rows = [line[:line.rstrip().rfind(" ")] for line in rows]
    words = [w for line in header for w in line.split()]
    bad = [w for w in words if not _known(w)]
    assert not bad, f"{where}: header words cut or without a legend entry: {bad}\n{screen}"
    for row in rows:
        cells = [t for t in row.split()[1:] if not set(t) <= set("▁▂▃▄▅▆▇█ ")]
        cut = [c for c in cells if c.endswith("…") and not VALUE.match(c)]
        assert not cut, f"{where}: cells cut: {cut}\n{screen}"
    for line in screen.splitlines()[:2]:  # the run header: whole fields only
        assert not line.rstrip().endswith("…"), f"{where}: header cut: {line}"
    assert any(f" {view} " in screen for view in VIEWS), f"{where}: no tab strip\n{screen}"
    assert "symmetric at" in screen, f"{where}: no legend line\n{screen}"


# A toast's text, read off the screen (`▌` is its left border, its first line the title
# `step N`): every word must be whole, as the detector wrote it. Its words are the message's
# vocabulary: the kinds (KIND_ORDER), the display names (core/names.py), layer names, numbers
# and units, losses, and the sentence's few fixed words; a word cut by the toast's width or
# height (`win`, `weig…`) is none of them.
MESSAGE_WORDS = {"at", "step", "in", "the", "same", "window", "also", "and", "more", "moved",
                 "most:", "exogenous:", "optimizer", "back", "within", "samples", "a",
                 "non-finite", "value", "→", "…", "%", "lr", "weight_decay", "momentum",
                 # the loss's own kinds, `<loss> fell` / `<loss> rose`, `a loss spike`
                 "fell", "rose", "spike", "divergence"}
TOKEN = re.compile(r"^([−+-]?[\d.,]+(e[+-]?\d+)?%?|\(?×[\d.,]+(e[+-]?\d+)?\)?|\(?[−+]?[\d.]+%?\)?|%\)|"
                   r"[\w.]*loss|[\w]+(\.\d+)+)$")


def _toast(screen: str) -> list[str] | None:
    """The body lines of the newest transition toast on screen (None: none shown)."""
    lines = screen.splitlines()
    titles = [i for i, line in enumerate(lines) if re.search(r"▌ step [\d,]+\s*$", line)]
    if not titles:
        return None
    top = titles[-1]
    edge = lines[top].index("▌")
    body = []
    for line in lines[top + 1:]:
        if len(line) <= edge or line[edge] != "▌" or not line[edge + 1:].strip():
            break
        body.append(line[edge + 1:].strip())
    return body or None


def _check_toast(body: list[str], layers: set[str], where: str) -> None:
    words = set(MESSAGE_WORDS) | layers | HEADER_WORDS
    for kind in KIND_ORDER:
        words.update(kind.split())
    text = " ".join(body)
    tokens = [t.rstrip(";,:") for t in text.replace("[", " ").replace("]", " ").split()]
    cut = [t for t in tokens if t and (t.endswith("…") and t != "…" or
                                      not (t in words or t.rstrip(":") in words
                                           or TOKEN.match(t)))]
    assert not cut, f"{where}: toast words cut or unknown: {cut}\n{text}"


def _views(session: str, where: str) -> list[str]:
    """Each view in turn (`v`), each checked; the views seen, in order."""
    seen: list[str] = []
    for _ in range(len(VIEWS) + 1):
        screen = _screen(session)
        _check_dashboard(screen, where)
        strip = next(line for line in screen.splitlines() if "│" in line and
                     any(f" {v} " in line for v in VIEWS))
        tabs = [w for w in re.split(r"[│‹›]", strip) if w.strip() in VIEWS]
        assert tabs, f"{where}: no views in the tab strip {strip!r}"
        seen.append(",".join(t.strip() for t in tabs))
        if len(seen) > len(VIEWS):
            break
        _key(session, "v")
        time.sleep(0.6)
    return seen


def test_a_newcomer_reads_every_screen_of_the_demo(runtime_dir):
    session = f"symwatch-newcomer-{os.getpid()}"
    # COLUMNS/LINES (pytest's, or a tmux server's environment) would fix the app's size
    command = (f"env -u COLUMNS -u LINES SYMWATCH_RUNTIME_DIR={runtime_dir} {sys.executable} "
               f"-m symwatch demo --delay 0.03; sleep 5")
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    # detached, a window takes the default size unless its size is set by hand
    _tmux("set-option", "-t", session, "window-size", "manual")
    try:
        # the demo's first transitions (seeded: a mode learned at step 10) are toasted for 5 s
        # as soon as the table is live: one is read while it is on screen
        screen = _wait(session, lambda s: "LIVE" in s and _toast(s) is not None, 90,
                       "a transition toast")
        layers = {line.split()[0] for line in _table_lines(screen)[1] if line.split()}
        _check_toast(_toast(screen) or [], layers, "a toast at 120×40")
        _wait(session, lambda s: "LIVE" in s and "symmetric at" in s, 90, "the live table")
        for size, where in (((120, 40), "120×40"), ((80, 24), "80×24")):
            _tmux("resize-window", "-t", session, "-x", str(size[0]), "-y", str(size[1]))
            _wait(session, lambda s, w=size[0]: len(s.splitlines()[0]) <= w and "Layer" in s, 10,
                  f"the screen at {where}")
            time.sleep(1.0)
            seen = _views(session, where)
            assert not any("heads" in tabs for tabs in seen)  # the demo has no attention
            _key(session, "Right")
            screen = _wait(session, lambda s: "symmetric at" in s, 5, "the legend")
            _key(session, "?")
            screen = _wait(session, lambda s: "symwatch — help" in s, 10, "help")
            _key(session, "Escape")
            _key(session, "e")
            screen = _wait(session, lambda s: "what happened" in s, 10, "the events screen")
            assert "cause" in screen and "kind" in screen
            _key(session, "Escape")
            _key(session, "g")
            screen = _wait(session, lambda s: "reading from" in s, 10, "the g screen")
            _key(session, "Escape")
            _key(session, "Enter")
            screen = _wait(session, lambda s: "paired with" in s, 10, "a layer's detail")
            _key(session, "Escape")
            _wait(session, lambda s: "Layer" in s, 10, "the dashboard again")
        _key(session, "q")
    finally:
        _tmux("kill-session", "-t", session)
