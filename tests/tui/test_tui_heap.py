"""The TUI keeps a long run's series out of the garbage collector's full passes (gc.freeze),
once there are enough of them to make a full pass a pause a key press would wait for."""

from __future__ import annotations

import gc

import pytest

from symwatch.tui.heap import GROWTH, MIN_SERIES, LongLivedHistory


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # frozen objects go back to the oldest generation: nothing leaks


def test_a_small_run_is_left_to_the_collector(unfrozen):
    heap = LongLivedHistory()
    assert not heap.update(MIN_SERIES - 1)
    assert gc.get_freeze_count() == 0 and heap.freezes == 0


def test_series_alive_when_the_run_is_large_are_frozen_then_again_as_it_grows(unfrozen):
    heap = LongLivedHistory()
    history = [[float(i)] for i in range(MIN_SERIES)]  # stand-ins for the run's series
    assert heap.update(MIN_SERIES)
    frozen = gc.get_freeze_count()
    assert frozen >= len(history) and heap.frozen_at == MIN_SERIES
    assert not heap.update(int(MIN_SERIES * GROWTH) - 1)  # grown too little: no new pause
    assert heap.update(int(MIN_SERIES * GROWTH) + 1) and heap.freezes == 2
    heap.restart()  # a new run in the same view counts its series afresh
    assert heap.frozen_at == 0


def test_garbage_is_collected_before_it_could_be_frozen(unfrozen):
    gc.collect()
    cycle: list = []
    cycle.append(cycle)
    collected: list[bool] = []

    class Watch:
        def __del__(self):
            collected.append(True)
    cycle.append(Watch())
    del cycle
    LongLivedHistory().update(MIN_SERIES)
    assert collected == [True]


def test_the_apps_own_objects_are_frozen_once_and_handed_back_when_it_ends(unfrozen):
    heap = LongLivedHistory()
    widgets = [[float(i)] for i in range(MIN_SERIES)]  # stand-ins for the app's objects
    assert heap.settle() and gc.get_freeze_count() >= len(widgets)
    assert not heap.settle()  # once: later objects are the run's (update) or short-lived
    heap.release()
    assert gc.get_freeze_count() == 0 and heap.freezes == 0


async def test_the_app_settles_after_its_first_screen_and_releases_on_exit(unfrozen):
    from symwatch.sources.memory import ListSource
    from symwatch.tui.app import SymwatchApp

    app = SymwatchApp(ListSource(), tick_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        deadline = 50
        while not app.long_lived.settled and deadline:
            await pilot.pause(0.05)
            deadline -= 1
        assert app.long_lived.settled and gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0  # the view ended: its objects are the collector's again
