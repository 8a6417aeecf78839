"""End to end, as a user sees it: `symwatch demo` in a real terminal (tmux, 120×40), the screen
read back as text. Skipped where tmux is not installed (.ci/run installs it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from symwatch.core import runtime

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.timeout(400)]  # a loaded 2-core box: torch start-up and the UI

NUMBER = re.compile(r"^-?\d+(\.\d+)?%?$")


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30).stdout


def _screen(session: str) -> str:
    return _tmux("capture-pane", "-p", "-t", session)


def _rank_of(screen: str, layer: str) -> int | None:
    """numerical_rank of `layer` in the overview: the second number after its shape."""
    for line in screen.splitlines():
        tokens = line.split()
        if tokens and tokens[0].lstrip("▲▼ ") == layer or tokens[1:2] == [layer]:
            numbers = [t for t in tokens[3:] if NUMBER.match(t)]
            return int(float(numbers[1])) if len(numbers) > 1 else None
    return None


def _wait(predicate, timeout: float, what: str, session: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _screen(session)
        value = predicate(screen)
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; screen:\n{_screen(session)}")


def test_demo_in_a_real_terminal_shows_the_rank_staircase(runtime_dir):
    session = f"symwatch-test-{os.getpid()}"
    command = (f"SYMWATCH_RUNTIME_DIR={runtime_dir} {sys.executable} -m symwatch demo "
               f"--delay 0.06; sleep 5")
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    try:
        _wait(lambda s: "LIVE" in s and "linear.0" in s, 90, "the live table", session)
        first = _wait(lambda s: re.search(r"step\s+([\d,]+)", s), 30, "a step", session)
        # the staircase climbing on screen: three consecutive counts, in order. Which three
        # depends on when the viewer came up (on a loaded machine the demo may be at 3 already)
        seen: list[int] = []
        deadline = time.monotonic() + 120

        def climbed() -> bool:
            return len(seen) >= 3 and seen[-3:] == list(range(seen[-3], seen[-3] + 3))

        while time.monotonic() < deadline and not climbed():
            rank = _rank_of(_screen(session), "linear.0")
            if rank is not None and (not seen or rank != seen[-1]):
                seen.append(rank)
            time.sleep(0.3)
        assert climbed(), f"modes of linear.0 seen, in order: {seen}"
        later = re.search(r"step\s+([\d,]+)", _screen(session))
        assert later and int(later[1].replace(",", "")) > int(first[1].replace(",", ""))
        _tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 20
        while runtime.live_runs() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert runtime.live_runs() == []  # quitting the UI stopped the demo run
    finally:
        _tmux("kill-session", "-t", session)
