"""symwatch.state.axis: the one scaling rule of every chart, on the cases issue #18 quotes."""

from __future__ import annotations

import math

import pytest

from symwatch.state.axis import (
    ABS_MIN_SPAN,
    REL_MIN_SPAN,
    axis,
    baseline_range,
    denoise,
    extent,
    nice_at_least,
    step_line,
)


def _height(ax, value: float) -> float:
    return ax.fraction(denoise(value))  # as the charts draw data: denoised


@pytest.mark.parametrize("ticks", [3, 5])
def test_a_small_change_is_a_small_move_not_a_cliff(ticks):
    # issue #18: "a 0.8 % change (3.211 → 3.184) fills the whole chart"
    ax = axis([3.211, 3.205, 3.197, 3.184], ticks)
    assert not ax.flat and len(ax.ticks) == ticks
    move = abs(_height(ax, 3.211) - _height(ax, 3.184))
    assert 0 < move < 0.25  # visible, but a small part of the height
    assert 0.25 < _height(ax, 3.2) < 0.75  # and in the middle of the chart
    # the report's `broken` 0.875 → 0.870: the same
    ax = axis([0.875, 0.870], 5)
    assert abs(_height(ax, 0.875) - _height(ax, 0.870)) < 0.25


def test_a_move_larger_than_the_minimum_range_still_fills_the_chart():
    ax = axis([0.2, 0.9], 5)
    assert _height(ax, 0.9) - _height(ax, 0.2) > 0.6
    ax = axis([40, 39], 5)  # `emb numerical_rank 40 → 39`: 2.5 %, over half the minimum range
    assert 0.15 < _height(ax, 40) - _height(ax, 39) < 0.5


def test_a_constant_is_flat_at_mid_height_with_its_value_as_the_middle_tick():
    # "weight norm now 4.123 min 4.123 max 4.123" above a chart climbing from empty to full
    ax = axis([4.123] * 20, 3)
    assert ax.flat and _height(ax, 4.123) == pytest.approx(0.5)
    assert [s.strip() for s in ax.labels] == ["4.023", "4.123", "4.223"]  # labels differ
    # a constant whose last bits wobble is still constant
    assert axis([4.123, 4.123 * (1 + 1e-9), 4.123], 3).flat
    five = axis([7.0] * 3, 5)
    assert five.flat and five.labels[2].strip() == "7.0" and len(set(five.labels)) == 5  # 7, not 7.000


def test_float_noise_around_zero_is_flat_at_zero():
    # "balance ΣC now -5.1e-7" drawn as full-height noise
    noise = [-5.1e-7, 3.0e-7, -2.2e-7, 4.9e-7, 0.0]
    ax = axis(noise, 3)
    assert ax.flat and {round(_height(ax, v), 9) for v in noise} == {0.5}
    assert [s.strip() for s in ax.labels] == ["-1e-6", "0", "1e-6"]
    # a real value near 0 is not noise: it moves the chart
    ax = axis([-0.01, 0.02], 3)
    assert not ax.flat and _height(ax, 0.02) - _height(ax, -0.01) > 0.4


@pytest.mark.parametrize("values", [[3.211, 3.184], [0.875, 0.870], [1, 2, 3, 8],
                                    [1e6, 3e6], [1e-4, 3e-4], [-0.01, 0.02], [100, 0.1],
                                    [12.0] * 3, [0.0] * 3, [2.5e-3, 2.6e-3],
                                    [1234.5, 1234.6]])
@pytest.mark.parametrize("ticks", [3, 5])
def test_ticks_are_nice_cover_the_values_and_read_differently(values, ticks):
    ax = axis(values, ticks)
    assert ax.lo <= min(values) + 1e-12 and ax.hi >= max(values) - 1e-12
    assert len(ax.ticks) == ticks and len(set(ax.labels)) == ticks
    assert len({len(s) for s in ax.labels}) == 1  # right-aligned to one width
    gaps = {round(b - a, 12) for a, b in zip(ax.ticks, ax.ticks[1:])}
    assert len(gaps) == 1 and math.isclose(gaps.pop(), ax.step, rel_tol=1e-9)
    mantissa = ax.step / 10 ** math.floor(math.log10(ax.step))
    assert round(mantissa, 9) in (1.0, 2.0, 2.5, 5.0)
    assert ax.hi - ax.lo >= REL_MIN_SPAN * max(abs(v) for v in values) - 1e-12
    if not ax.flat:  # the ticks are multiples of the step: 0.85, 0.86, … not 0.8473
        assert all(abs(t / ax.step - round(t / ax.step)) < 1e-6 for t in ax.ticks)
    for tick, text in zip(ax.ticks, ax.labels):  # each label is its tick, to the step
        assert abs(float(text) - tick) <= ax.step / 2
    positions = [ax.fraction(t) for t in ax.ticks]  # evenly spaced, at the bands' centres
    assert positions == pytest.approx([(i + 0.5) / ticks for i in range(ticks)])


def test_minimum_range_is_relative_and_absolute():
    assert extent([3.2]).min_span == pytest.approx(REL_MIN_SPAN * 3.2)
    assert extent([0.0]).min_span == ABS_MIN_SPAN
    assert extent([None, math.nan, math.inf]) is None and axis([None], 3) is None
    assert extent([1.0, None, 2.0]).low == 1.0  # N/A is a gap, never a value


def test_a_table_sparkline_range_puts_a_constant_on_the_baseline():
    lo, hi, flat = baseline_range([2.0, 2.0])
    assert flat and lo == 2.0 and hi > lo
    lo, hi, flat = baseline_range([3.211, 3.184])
    assert not flat and lo == 3.184 and (3.211 - lo) / (hi - lo) < 0.25


def test_nice_steps():
    assert [nice_at_least(x) for x in (0.07, 0.1, 0.11, 0.21, 0.3, 3e5)] == \
        [0.1, 0.1, 0.2, 0.25, 0.5, 5e5]


def test_step_line_names_the_first_middle_and_last_step():
    line = step_line(0, 1000, 40)
    assert len(line) == 40 and line.startswith("0 ") and line.endswith(" 1,000")
    assert line.split() == ["0", "500", "1,000"]
    assert step_line(-50, 105, 30).split()[0] == "0"  # a window reaching before the run
    assert step_line(7, 7, 10).strip() == "7" and step_line(1, 2000, 5) == "2,000"
