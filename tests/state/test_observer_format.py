"""Number formatting and the headless summary: N/A for missing values, never a fake 0."""

from __future__ import annotations

import io
import math

import pytest

from symwatch.state import numbers
from symwatch.core import protocol
from symwatch.sources.memory import ListSource
from symwatch.state.run_state import RunState
from symwatch.consumers.summary import follow, summary_lines


@pytest.mark.parametrize("value, text", [
    (None, "N/A"), (math.nan, "N/A"), (math.inf, "N/A"), (True, "N/A"), ("3", "N/A"),
    (0, "0"), (0.0, "0"), (3, "3"), (3.14159, "3.142"), (123.456, "123.5"), (9999.9, "10000"),
    (12345.6, "12.3k"), (1.5e6, "1.5M"), (2e9, "2G"), (0.000123, "1.2e-4"), (-2.5, "-2.5"),
])
def test_compact(value, text):
    assert numbers.compact(value) == text


def test_indicator_units():
    assert numbers.indicator("dead_fraction", 0.125) == "12.5%"
    assert numbers.indicator("numerical_rank", 12.0) == "12"
    assert numbers.indicator("stable_rank", 3.4567) == "3.457"
    assert numbers.indicator("anything", None) == "N/A"
    assert numbers.percent(0.0042, 2) == "0.42%"
    assert numbers.shape((256, 128)) == "256×128" and numbers.shape(()) == "scalar"
    assert numbers.gib(2 ** 31) == "2.0" and numbers.gib(None) == "N/A"
    assert numbers.duration(5) == "5 s" and numbers.duration(600) == "10 min"


def _msg(kind, step=0, seq=0, **payload):
    return protocol.decode(list(protocol.encode(kind, run="r", rank=0, restart=0, seq=seq,
                                                time=0.0, step=step, payload=payload)))


def test_summary_lines_show_step_loss_state_and_ranks():
    s = RunState()
    s.fold(_msg(protocol.STATS, 42, 0, loss=0.25))
    s.fold(_msg(protocol.METRICS, 42, 1, values={
        "fc1": {"modes": 3, "numerical_rank": 8, "stable_rank": 2.5},
        "fc2": {"modes": None}}))
    lines = summary_lines(s, name="demo")
    assert lines[0].startswith("[live] demo step 42 loss 0.25")
    assert "fc1" in lines[1] and "modes" in lines[1] and " 3 " in lines[1] + " "
    assert "2.5" in lines[1] and "numerical_rank" not in lines[1]
    assert "N/A" in lines[2]


def test_follow_prints_until_goodbye():
    src = ListSource([_msg(protocol.STATS, 1, 0, loss=1.0),
                      _msg(protocol.GOODBYE, 2, 1, reason="finished", exit_code=0)])
    out = io.StringIO()
    state = follow(src, out, interval=0.05)
    assert state.finished
    assert "[finished]" in out.getvalue().splitlines()[-1]


def test_follow_stops_when_told():
    out = io.StringIO()
    state = follow(ListSource(), out, should_stop=lambda: True, drain_after_stop=0.05)
    assert not state.finished and "[waiting]" in out.getvalue()
