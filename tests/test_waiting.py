"""The shared test helpers themselves: waiting.until / pilot_until keep their deadlines, and
waiting.terminate (behind the zmq_ctx fixture) ends a context whose sockets were left open."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys

import pytest
import zmq

from waiting import interruptible, pilot_until, terminate, until


def test_until_is_true_at_once_or_false_at_the_deadline():
    calls = itertools.count()
    assert until(lambda: next(calls) >= 3, timeout=5, step=0.001)
    assert until(lambda: False, timeout=0.05, step=0.01) is False


class _Pilot:
    def __init__(self) -> None:
        self.pauses = 0

    async def pause(self, delay: float) -> None:
        self.pauses += 1


async def test_pilot_until_ticks_between_looks_and_names_what_it_waited_for():
    pilot, ticks = _Pilot(), []
    await pilot_until(pilot, lambda: len(ticks) >= 3, "three ticks", tick=lambda: ticks.append(1))
    assert len(ticks) == 3 and pilot.pauses == 3
    with pytest.raises(AssertionError, match="waiting for nothing ever"):
        await pilot_until(pilot, lambda: False, "nothing ever", timeout=0.05)


def test_terminate_closes_sockets_a_test_leaked():
    ctx = zmq.Context()
    leaked = ctx.socket(zmq.PUB)  # default linger, never closed: ctx.term() alone would block
    leaked.bind_to_random_port("tcp://127.0.0.1")
    leaked.send(b"queued for nobody")
    connected = ctx.socket(zmq.PUSH)
    connected.connect("tcp://127.0.0.1:1")  # nothing there
    connected.send(b"pending", zmq.NOBLOCK)
    terminate(ctx, timeout=5)
    assert leaked.closed and connected.closed and ctx.closed


def test_the_zmq_ctx_fixture_is_a_live_context(zmq_ctx):
    sock = zmq_ctx.socket(zmq.PAIR)  # left open on purpose: the fixture closes it
    sock.bind_to_random_port("tcp://127.0.0.1")
    assert not zmq_ctx.closed


def _ignored_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_interruptible_children_take_sigint_even_when_the_suite_ignores_it():
    """As under `pytest &` from a script: SIGINT ignored here, and so in every child, unless
    the child is started `interruptible`; that one exits on SIGINT with KeyboardInterrupt."""
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        plain = subprocess.Popen(sleeper, stdout=subprocess.PIPE, text=True)
        fixed = subprocess.Popen(sleeper, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, preexec_fn=interruptible)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert plain.stdout.readline() == fixed.stdout.readline() == "up\n"
        bit = 1 << (signal.SIGINT - 1)
        assert _ignored_signals(plain.pid) & bit  # the trap: the child would never see it
        assert not _ignored_signals(fixed.pid) & bit
        fixed.send_signal(signal.SIGINT)
        _, err = fixed.communicate(timeout=20)
        assert "KeyboardInterrupt" in err and fixed.returncode != 0
    finally:
        for proc in (plain, fixed):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
