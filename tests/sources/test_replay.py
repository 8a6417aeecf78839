"""Replay: ReplaySource on a controlled clock, and the real Textual app driven by Pilot."""

from __future__ import annotations

import math

import pytest

from symwatch.core import protocol
from symwatch.sources.memory import ListSource
from symwatch.sources.replay import ReplaySource
from symwatch.state.run_state import FINISHED, LIVE, STALE
from symwatch.tui.app import SymwatchApp
from symwatch.tui.widgets.layer_table import LayerTable, column_key
from waiting import pilot_until as until
from tests.core.test_recording import make_recording


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def msg(kind: str, t: float, step: int, seq: int, **payload) -> protocol.Message:
    return protocol.Message(kind=kind, run="r", rank=0, restart=0, seq=seq, time=t, step=step,
                            payload=payload)


def test_messages_are_released_at_their_recorded_pace_times_speed():
    clock = Clock()
    msgs = [msg("heartbeat", 100.0 + i, i, i, dropped=0, samples=0) for i in range(10)]
    src = ReplaySource(msgs, speed=2.0, clock=clock)
    assert [m.step for m in src.poll()] == [0]
    clock.t = 1.0  # two recorded seconds
    assert [m.step for m in src.poll()] == [1, 2]
    src.toggle_play()
    clock.t = 50.0
    assert src.poll() == [] and src.now() == 102.0  # paused: the position stands still
    src.toggle_play()
    src.poll()
    clock.t = 51.0
    assert [m.step for m in src.poll()] == [3, 4]
    src.faster()
    assert src.speed == 4.0
    src.slower()
    src.slower()
    assert src.speed == 1.0
    src.seek_end()
    assert [m.step for m in src.poll()] == [5, 6, 7, 8, 9] and src.exhausted
    generation = src.generation
    src.seek_start()
    assert src.generation == generation + 1 and [m.step for m in src.poll()] == [0]
    assert "replay playing, 1×" in src.status()


def test_long_silences_are_skipped():
    clock = Clock()
    msgs = [msg("heartbeat", 0.0, 0, 0, dropped=0, samples=0),
            msg("heartbeat", 3600.0, 1, 1, dropped=0, samples=0)]
    src = ReplaySource(msgs, clock=clock, max_gap_s=5.0)
    src.poll()
    clock.t = 0.1
    src.poll()
    clock.t = 1.2
    assert [m.step for m in src.poll()] == [1]


def test_max_speed_releases_everything():
    src = ReplaySource([msg("heartbeat", float(i), i, i, dropped=0, samples=0)
                        for i in range(100)], speed=math.inf)
    got = []
    while not src.exhausted:
        got += src.poll(10)
    assert len(got) == 100
    with pytest.raises(ValueError):
        ReplaySource([], speed=0)


def cell(app, layer: str, indicator: str) -> str:
    return app.query_one(LayerTable).get_cell(layer, column_key(indicator)).plain


async def test_replay_in_the_app_with_play_pause_speed_and_seek(tmp_path):
    path = tmp_path / "run.db"
    make_recording(path, 50)  # messages 10 ms apart
    clock = Clock()
    source = ReplaySource.open(path, clock=clock)
    app = SymwatchApp(source, tick_s=0.05, owns_source=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.query_one(LayerTable).row_count == 2, what="2 rows")
        assert app.state.step == 0 and app.state.name == "rec-run"

        await pilot.press("space")  # pause
        assert not source.playing
        clock.t = 1000.0
        await pilot.pause(0.2)
        assert app.state.step == 0
        assert app.state.connection(source.now()) == LIVE  # paused is not stale

        await pilot.press("space")  # play
        await pilot.press("plus")
        await pilot.press("plus")
        assert source.playing and source.speed == 4.0
        clock.t += 0.1  # 0.4 s of recording: about 40 messages
        await until(pilot, lambda: app.state.step and app.state.step >= 10, what="step 10")
        assert not app.state.finished
        await pilot.press("minus")
        assert source.speed == 2.0

        await pilot.press("end")
        await until(pilot, lambda: app.state.connection(source.now()) == FINISHED,
                    what="the goodbye")
        await until(pilot, lambda: cell(app, "fc1", "numerical_rank").strip().endswith("4"),
                    what="the last sample in the table")
        assert app.state.step == 50 and app.state.dropped == 0

        await pilot.press("home")  # back to the start: the view starts again
        await until(pilot, lambda: app.state.step == 0 and app.state.messages == 1,
                    what="a fresh state")
        assert app.tick_errors == 0, app.last_tick_error


async def test_a_recording_without_goodbye_turns_stale_at_its_end(tmp_path):
    path = tmp_path / "killed.db"
    make_recording(path, 10, goodbye=False)
    clock = Clock()
    source = ReplaySource.open(path, clock=clock)
    app = SymwatchApp(source, tick_s=0.05, owns_source=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("end")
        await until(pilot, lambda: app.state.step == 10, what="every message")
        clock.t += 10.0  # the replay plays on past the last message
        await until(pilot, lambda: app.state.connection(source.now()) == STALE, what="stale")


async def test_replay_keys_are_not_bound_for_a_live_source():
    app = SymwatchApp(ListSource([]), tick_s=0.05)
    async with app.run_test(size=(120, 30)) as pilot:
        assert app.check_action("replay", ("toggle_play",)) is False
        assert app.check_action("pause", ()) is True
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert not any(action.startswith("replay") for action in shown)
        await pilot.press("space", "end", "home", "plus")
        await pilot.pause(0.1)
        assert app.tick_errors == 0
