"""The frame pacer (symwatch/tui/pacing.py) on its own, without Textual: its decisions on
injected clocks (wall and CPU time)."""

from __future__ import annotations

import pytest

from symwatch.tui.pacing import BURST_S, DATA_SHARE, MAX_DEFERRALS, MIN_FRAME_S, FramePacer


class Clocks:
    """A wall clock and a CPU clock that move only when told."""

    def __init__(self, wall: float = 100.0, cpu: float = 5.0) -> None:
        self.wall = wall
        self.cpu = cpu

    def pacer(self, **options: float) -> FramePacer:
        return FramePacer(clock=lambda: self.wall, cpu_clock=lambda: self.cpu, **options)

    def spend(self, wall: float, cpu: float | None = None) -> None:
        self.wall += wall
        self.cpu += wall if cpu is None else cpu


def redraw(clocks: Clocks, pacer: FramePacer, *, draw_s: float, show_s: float = 0.0,
           draw_cpu: float | None = None, show_cpu: float | None = None) -> None:
    """One tick that draws new data (taking `draw_s`) and the screen update after it."""
    frame = pacer.begin()
    pacer.drawing(frame)
    clocks.spend(draw_s, draw_cpu)
    pacer.drawn(frame)
    clocks.spend(show_s, show_cpu)
    pacer.shown(frame)


def test_a_fresh_pacer_draws_at_once():
    clocks = Clocks()
    pacer = clocks.pacer()
    assert pacer.due()
    assert pacer.delay() <= 0
    assert pacer.budget == BURST_S


def test_never_two_frames_within_min_frame_s():
    clocks = Clocks()
    pacer = clocks.pacer()
    redraw(clocks, pacer, draw_s=0.0)  # free: only the frame rate limits
    assert not pacer.due()
    assert pacer.delay() == pytest.approx(MIN_FRAME_S)
    clocks.spend(MIN_FRAME_S - 1e-6, 0.0)
    assert not pacer.due()
    clocks.spend(2e-6, 0.0)
    assert pacer.due()


def test_cheap_redraws_go_out_back_to_back_at_the_frame_rate():
    clocks = Clocks()
    pacer = clocks.pacer()
    for _ in range(20):  # 1 ms redraws: well within 40 % of the UI thread
        assert pacer.due()
        redraw(clocks, pacer, draw_s=0.001)
        clocks.spend(MIN_FRAME_S, 0.0)
    assert pacer.budget > 0


def test_after_a_slow_redraw_the_wall_clock_keeps_the_next_one_back():
    clocks = Clocks()
    pacer = clocks.pacer()
    # 50 ms of wall time, but little CPU (waiting for a core): CPU time would let it go at once
    redraw(clocks, pacer, draw_s=0.05, draw_cpu=0.001)
    wait = 0.05 * (1 / DATA_SHARE - 1)  # 75 ms: 40 % of the time for redraws
    assert pacer.next_frame_at() == pytest.approx(clocks.wall + wait)
    clocks.spend(wait - 0.001, 0.0)
    assert not pacer.due()
    clocks.spend(0.002, 0.0)
    assert pacer.due()


def test_the_cpu_budget_spaces_expensive_redraws_to_their_share():
    clocks = Clocks()
    pacer = clocks.pacer()
    # A redraw that costs 100 ms of CPU (tick to screen update) overdraws the 60 ms bucket
    # (full while it drew: what the screen update's 40 ms earned comes back).
    redraw(clocks, pacer, draw_s=0.06, show_s=0.04)
    assert pacer.budget == pytest.approx(BURST_S - 0.1 + 0.04 * DATA_SHARE)
    assert pacer.budget < 0
    # Out of budget: the next redraw waits until the bucket is back at zero.
    debt = -pacer.budget
    assert pacer.next_frame_at() == pytest.approx(clocks.wall + debt / DATA_SHARE)
    clocks.spend(debt / DATA_SHARE - 0.001, 0.0)
    assert not pacer.due()
    clocks.spend(0.002, 0.0)
    assert pacer.due()


def test_the_budget_refills_at_data_share_up_to_burst_s():
    clocks = Clocks()
    pacer = clocks.pacer()
    redraw(clocks, pacer, draw_s=0.05, draw_cpu=0.05)
    assert pacer.budget == pytest.approx(BURST_S - 0.05)  # it was full: nothing to refill
    clocks.spend(0.01, 0.0)
    pacer.due()  # looking refills
    assert pacer.budget == pytest.approx(BURST_S - 0.05 + 0.01 * DATA_SHARE)
    clocks.spend(10.0, 0.0)  # a long quiet stretch earns no more than one burst
    pacer.due()
    assert pacer.budget == BURST_S


def test_the_redraw_is_charged_before_the_screen_update_and_the_rest_after():
    clocks = Clocks()
    pacer = clocks.pacer(data_share=1.0)  # no refill in between: the charges alone
    frame = pacer.begin()
    pacer.drawing(frame)
    clocks.spend(0.0, 0.02)
    pacer.drawn(frame)
    assert frame.drawn_cost == pytest.approx(0.02)
    assert pacer.budget == pytest.approx(BURST_S - 0.02)  # charged before the screen update
    clocks.spend(0.0, 0.01)
    pacer.shown(frame)
    assert pacer.budget == pytest.approx(BURST_S - 0.03)
    assert pacer.frame_cost == pytest.approx(0.3 * 0.03)  # smoothed
    redraw(clocks, pacer, draw_s=0.0, draw_cpu=0.03)
    assert pacer.frame_cost == pytest.approx(0.7 * 0.3 * 0.03 + 0.3 * 0.03)


def test_the_pace_counts_from_the_start_of_the_drawing_tick():
    clocks = Clocks()
    pacer = clocks.pacer()
    frame = pacer.begin()
    clocks.spend(0.004, 0.0)  # folding before the drawing
    pacer.drawing(frame)
    assert pacer.last_tick_at == frame.started
    clocks.spend(0.002, 0.0)
    pacer.drawn(frame)
    assert pacer.last_draw_wall == pytest.approx(0.002)  # the drawing alone
    assert pacer.next_frame_at() == pytest.approx(frame.started + MIN_FRAME_S)


def test_a_tick_that_does_not_draw_changes_nothing():
    clocks = Clocks()
    pacer = clocks.pacer()
    pacer.begin()
    clocks.spend(0.001, 0.0)
    assert pacer.due()
    assert pacer.last_tick_at == 0.0 and pacer.budget == BURST_S


def test_input_first_but_not_forever():
    pacer = Clocks().pacer()
    assert not pacer.defer_for_input(False)
    for _ in range(MAX_DEFERRALS):
        assert pacer.defer_for_input(True)
    assert not pacer.defer_for_input(True)  # data must show in the end
    assert pacer.deferrals == 0
    assert pacer.defer_for_input(True)  # counted afresh
    assert not pacer.defer_for_input(False)
    assert pacer.deferrals == 0
