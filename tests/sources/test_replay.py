"""Replay: ReplaySource on a controlled clock, and the real Textual app driven by Pilot."""

from __future__ import annotations

import math

import pytest

from symwatch.core import protocol
from symwatch.sources.memory import ListSource
from symwatch.sources.replay import ReplaySource
from symwatch.state.run_state import FINISHED, LIVE, STALE
from symwatch.tui.app import SymwatchApp
from symwatch.tui.widgets.header import RunHeader
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

        header = app.query_one(RunHeader)
        await until(pilot, lambda: str(header.content).startswith(" REPLAY 1× "),
                    what="the replay and its speed in the header (it read LIVE)")
        await pilot.press("space")  # pause
        assert not source.playing
        clock.t = 1000.0
        await pilot.pause(0.2)
        assert app.state.step == 0
        assert app.state.connection(source.now()) == LIVE  # paused is not stale
        await until(pilot, lambda: str(header.content).startswith(" REPLAY paused 1× "),
                    what="paused, in the header")

        await pilot.press("space")  # play
        await pilot.press("plus")
        await pilot.press("plus")
        assert source.playing and source.speed == 4.0
        clock.t += 0.1  # 0.4 s of recording: about 40 messages
        await until(pilot, lambda: app.state.step and app.state.step >= 10, what="step 10")
        assert not app.state.finished
        await pilot.press("minus")
        assert source.speed == 2.0
        await until(pilot, lambda: str(header.content).startswith(" REPLAY 2× "),
                    what="the new speed in the header")

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


# -- seeking to a step (the scroll-back keys, "Go to step") --------------------------------------

def test_seek_step_stands_paused_at_a_step_and_starts_again_when_behind():
    clock = Clock()
    msgs = [msg("heartbeat", 100.0 + i, i, i, dropped=0, samples=0) for i in range(10)]
    src = ReplaySource(msgs, clock=clock)
    assert src.steps == (0, 9) and src.step is None
    src.seek_step(6)
    assert not src.playing and [m.step for m in src.poll()] == [0, 1, 2, 3, 4, 5, 6]
    clock.t = 100.0  # paused there: nothing more comes
    assert src.poll() == [] and src.step == 6 and "step 6" in src.status()
    generation = src.generation
    src.seek_step(8)  # ahead: the rest up to 8, no restart
    assert [m.step for m in src.poll()] == [7, 8] and src.generation == generation
    src.seek_step(2)  # behind: from the start again
    assert src.generation == generation + 1
    assert [m.step for m in src.poll()] == [0, 1, 2]
    assert ReplaySource([]).steps is None


def _footer_keys(app) -> dict[str, object]:
    from textual.widgets._footer import FooterKey

    return {key.description: key.region for key in app.screen.query(FooterKey)}


async def test_replay_seeks_with_the_history_keys_and_go_to_step(tmp_path):
    from symwatch.tui.screens.goto_step import GoToStepScreen

    path = tmp_path / "run.db"
    make_recording(path, 50)  # steps 1..50; fc1's numerical rank is min(step // 10, 4)
    clock = Clock()
    source = ReplaySource.open(path, clock=clock)
    app = SymwatchApp(source, tick_s=0.05, owns_source=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.step == 0, what="the first message")
        # The replay's speed keys are in the footer, on screen even 80 columns wide.
        await until(pilot, lambda: all(_footer_keys(app).get(name) for name in
                                       ("Play/pause", "Faster", "Slower")),
                    what="the speed keys in the footer, laid out")
        for name in ("Play/pause", "Faster", "Slower"):
            region = _footer_keys(app)[name]
            assert region.width and region.right <= 80, (name, region)

        await pilot.press("right_square_bracket")  # forward: the replay moves, paused
        await until(pilot, lambda: (app.state.step or 0) > 0, what="a step forward")
        assert not source.playing and app.window.live
        forward = app.state.step
        await pilot.press("right_curly_bracket")  # a tenth of the recording at least
        await until(pilot, lambda: (app.state.step or 0) > forward, what="a jump forward")
        jumped = app.state.step
        generation = source.generation
        await pilot.press("left_curly_bracket")  # back: from the start again, up to there
        await until(pilot, lambda: source.generation > generation
                    and app.state.step is not None and app.state.step < jumped,
                    what="a jump back")
        assert app.state.step == source.step and not source.playing

        await pilot.press("G")
        await until(pilot, lambda: isinstance(app.screen, GoToStepScreen), what="the prompt")
        await pilot.press("3", "0", "enter")
        await until(pilot, lambda: app.state.step == 30, what="step 30")
        await until(pilot, lambda: cell(app, "fc1", "numerical_rank").strip().endswith("3"),
                    what="step 30's value in the table")
        clock.t += 100.0
        await pilot.pause(0.2)
        assert app.state.step == 30  # paused there
        await pilot.press("space")  # and it plays on from there
        clock.t += 100.0
        await until(pilot, lambda: app.state.step == 50, what="the rest")
        assert app.tick_errors == 0, app.last_tick_error
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Go to step…" in titles


async def test_go_to_step_scrolls_a_live_view_back(tmp_path):
    from symwatch.core.recording import RecordingReader
    from symwatch.tui.screens.goto_step import GoToStepScreen, parse_step

    path = tmp_path / "run.db"
    make_recording(path, 50, goodbye=False)
    with RecordingReader(path) as reader:
        messages = list(reader)
    app = SymwatchApp(ListSource(messages), tick_s=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.step == 50, what="every message")
        await pilot.press("G")
        await until(pilot, lambda: isinstance(app.screen, GoToStepScreen), what="the prompt")
        await pilot.press("2", "5", "enter")
        await until(pilot, lambda: app.window.end == 25, what="the view at step 25")
        assert app.paused and app.state.step == 50  # a live source: the view scrolled back
        await until(pilot, lambda: cell(app, "fc1", "numerical_rank").strip().endswith("2"),
                    what="step 25's value in the table")
        assert app.tick_errors == 0, app.last_tick_error
    assert parse_step(" 1,200 ") == 1200 and parse_step("x") is None
