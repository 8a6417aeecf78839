"""Text snapshots of the real app's screen: what a user would read, without colours.

`screen_text(app)` renders the current screen (every layer of it: a modal over the dashboard
too) the way `App.export_screenshot` does, but exports plain text. `assert_snapshot` compares
it with tests/snapshots/NAME.txt; run with SYMWATCH_UPDATE_SNAPSHOTS=1 to (re)write the files
after a deliberate change to the view, then read the diff in git before keeping it.
"""

from __future__ import annotations

import difflib
import io
import os
import time
from pathlib import Path

from rich.console import Console

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
UPDATE_ENV = "SYMWATCH_UPDATE_SNAPSHOTS"


def screen_text(app) -> str:
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False,
                      safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    lines = console.export_text(styles=False).split("\n")[:height]
    return "\n".join(line.rstrip() for line in lines) + "\n"


async def settled_screen(pilot, app, timeout: float = 10.0) -> str:
    """The screen once it has stopped changing (the footer, for one, is recomposed after the
    bindings change): the same text twice in a row, a tenth of a second apart."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        app.clear_notifications()  # toasts time out: never part of a snapshot
        await pilot.pause(0.1)
        text = screen_text(app)
        if text == previous and text.splitlines()[-1].strip():  # the footer is drawn
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"the screen did not settle within {timeout} s:\n{text}")
        previous = text


def assert_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get(UPDATE_ENV) or not path.exists():
        if not os.environ.get(UPDATE_ENV):
            raise AssertionError(f"no snapshot {path} yet; run with {UPDATE_ENV}=1 to write it, "
                                 "then check the file")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"{path.name} (stored)", f"{path.name} (now)"))
        raise AssertionError(f"the screen differs from {path}; if the change is meant, rerun "
                             f"with {UPDATE_ENV}=1 and review the diff:\n{diff}")
