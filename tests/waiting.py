"""Waiting for something another thread or process does, with a deadline (no test waits
forever, and none asserts on elapsed time). The one place for it:

- `until(predicate)`: poll from plain code; True, or False at the deadline (`assert until(...)`).
- `pilot_until(pilot, predicate, what)`: the same inside a Textual `run_test()`, pausing with
  the pilot so the app keeps running; raises at the deadline.
- `terminate(ctx)`: end a ZeroMQ context without hanging on a socket a test left open (the
  `zmq_ctx` fixture in conftest.py uses it).
- `interruptible`: the `preexec_fn` of a child a test will SIGINT, so that the wait for its
  exit waits on something that can happen.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable

import zmq


def until(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """True as soon as `predicate()` is truthy, polling every `step` seconds; False if it is
    still falsy after `timeout` seconds (one last look at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


async def pilot_until(pilot: Any, predicate: Callable[[], object], what: str = "condition",
                      timeout: float = 20.0, *, step: float = 0.03,
                      tick: Callable[[], object] | None = None) -> None:
    """Return as soon as `predicate()` is truthy, calling `tick()` (e.g. send a heartbeat) and
    then `await pilot.pause(step)` between looks; AssertionError naming `what` after `timeout`
    seconds. (The deadline only bounds a failure: a passing wait returns at once.)"""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if tick is not None:
            tick()
        await pilot.pause(step)


def terminate(ctx: zmq.Context, timeout: float = 5.0) -> None:
    """End `ctx` as pyzmq's own test suite does: every socket still open is closed with linger 0
    (`ctx.destroy(linger=0)`), on a daemon thread with a deadline, so a socket a test leaked, or
    a thread still blocked on one, fails that test instead of hanging the suite."""
    done = threading.Event()

    def end() -> None:
        ctx.destroy(linger=0)
        done.set()

    threading.Thread(target=end, name="zmq-terminate", daemon=True).start()
    if not done.wait(timeout):
        raise AssertionError(f"the ZeroMQ context did not terminate within {timeout} s "
                             "(a socket still in use on another thread?)")


def interruptible() -> None:
    """`preexec_fn` for a child process a test sends SIGINT (Ctrl-C): SIGINT back to its
    default action, which Python turns into KeyboardInterrupt.

    A shell without job control starts a background job (`pytest ... &` in a script, some CI
    runners) with SIGINT and SIGQUIT ignored, and an ignored signal stays ignored through fork
    and exec; Python then installs no handler, the child never sees the test's SIGINT, and the
    test waits out its deadline ("did not exit within 20 s of SIGINT")."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
