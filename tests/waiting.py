"""Waiting for something another thread or process does, with a deadline (no test waits
forever, and none asserts on elapsed time)."""

from __future__ import annotations

import time
from typing import Callable


def until(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """True as soon as `predicate()` is truthy, polling every `step` seconds; False if it is
    still falsy after `timeout` seconds (one last look at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
