"""A relaunched run is followed: the script restarted (same name, new process, new socket)
while a view is open. Real agents in this process, one after the other under one name, each
with its own socket and registry entry; the view (`attach`, `attach --follow`) offers the new
run (a notification naming `f`) or switches to it, and the loss chart marks the boundary;
`symwatch record --follow` goes on into the new run. Every wait is a deadline on a condition."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from symwatch.core import protocol
from symwatch.core.recording import RecordingReader
from symwatch.state.run_state import FINISHED
from symwatch.tui.app import make_app
from symwatch.tui.widgets.panels import BOUNDARY_MARK, LossPanel
from waiting import pilot_until, until

NAME = "relaunched"


class Script:
    """One run of the 'script': its own model, optimizer and agent (its own socket)."""

    def __init__(self) -> None:
        from symwatch_agent.agent import watch

        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                         torch.nn.Linear(8, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.agent = watch(self.model, self.opt, name=NAME, every=1, budget=1.0,
                           heartbeat_interval=0.1)
        assert self.agent.error is None, self.agent.error

    def steps(self, n: int) -> None:
        for _ in range(n):
            loss = self.model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()


@pytest.mark.parametrize("follow", [False, True])
async def test_the_view_offers_or_follows_a_restart_and_marks_it_in_the_loss_chart(follow):
    first = Script()
    second = None
    app = make_app(first.agent.endpoint, follow=follow)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot_until(pilot, lambda: app.state.name == NAME and app.state.step,
                              "the first run", tick=lambda: first.steps(1))
            await pilot_until(pilot, lambda: app.state.loss.store.count >= 3,
                              "the first run's loss", tick=lambda: first.steps(1))
            old_run = app.state.run_id
            first.agent.close()  # goodbye: the script ended
            await pilot_until(pilot, lambda: app.state.connection(app._clock()) == FINISHED,
                              "FINISHED")
            second = Script()  # relaunched: same name, another socket
            assert second.agent.endpoint != first.agent.endpoint
            if not follow:
                await pilot_until(pilot, lambda: app.restart_offer is not None,
                                  "the restart offered", tick=lambda: second.steps(1))
                assert app.restart_offer.run_id == second.agent.run_id
                # the notification is a message the app handles after the offer is set
                await pilot_until(pilot, lambda: any("press f" in n.message
                                                     for n in app._notifications),
                                  "the offer's notification naming f")
                assert app.state.run_id == old_run  # nothing switched by itself
                await pilot.press("f")
            await pilot_until(pilot, lambda: app.state.run_id == second.agent.run_id
                              and app.state.loss.store.count >= 2,
                              "the new run in the view", tick=lambda: second.steps(1))
            assert app.follows == 1 and app.restart_offer is None
            assert app.state.previous_loss is not None  # the old run's loss, before the mark
            await pilot_until(pilot, lambda: BOUNDARY_MARK in str(app.query_one(LossPanel)
                                                                   .render()),
                              "the restart marked in the loss chart",
                              tick=lambda: second.steps(1))
            assert any("replaces" in ev.message for ev in app.state.events)
            assert app.tick_errors == 0, app.last_tick_error
    finally:
        first.agent.close()
        if second is not None:
            second.agent.close()


def test_record_follow_goes_on_into_the_restarted_run(tmp_path):
    out = tmp_path / "both.db"
    first = Script()
    second = None
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "record", NAME, "-o", str(out),
                             "--follow", "--stale", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def runs_recorded() -> set[str]:
        try:
            with RecordingReader(out) as reader:
                return {m.run for m in reader.messages((protocol.METRICS,))}
        except Exception:  # noqa: BLE001 - not written yet
            return set()
    try:
        assert until(lambda: (first.steps(1), first.agent.run_id in runs_recorded())[1],
                     timeout=60), "the first run was not recorded"
        first.agent.close()
        second = Script()
        assert until(lambda: (second.steps(1), second.agent.run_id in runs_recorded())[1],
                     timeout=60), "the restarted run was not recorded"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert f"following run {second.agent.run_id}" in err
    finally:
        first.agent.close()
        if second is not None:
            second.agent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    with RecordingReader(out) as reader:
        messages = list(reader.messages())
    order = [m.run for m in messages]
    assert order.index(second.agent.run_id) > max(i for i, run in enumerate(order)
                                                  if run == first.agent.run_id)
    assert any(m.kind == protocol.GOODBYE and m.run == first.agent.run_id for m in messages)


def test_the_loss_chart_marks_the_restart_before_and_after_the_new_run_has_loss(tmp_path):
    import dataclasses

    from symwatch.state.run_state import RunState
    from symwatch.tui.widgets.panels import loss_text
    from tests.core.test_recording import make_recording

    make_recording(tmp_path / "a.db", 30, goodbye=True)
    with RecordingReader(tmp_path / "a.db") as reader:
        first = list(reader)
    second = [dataclasses.replace(m, run="run-second") for m in first
              if m.kind != protocol.GOODBYE]
    state = RunState()
    state.fold_all(first)
    assert BOUNDARY_MARK not in loss_text(state, 80, 3).plain
    state.fold(second[0])  # the new run's meta: no loss yet
    assert state.previous_loss is not None and state.loss.store.count == 0
    drawn = loss_text(state, 80, 3).plain
    assert "restarted" in drawn and drawn.count(BOUNDARY_MARK) == 1 + 3  # label, 3 chart rows
    state.fold_all(second[1:])
    drawn = loss_text(state, 80, 3).plain
    rows = drawn.splitlines()[1:]
    assert len(rows) == 3 and all(row.count(BOUNDARY_MARK) == 1 for row in rows)
    column = rows[0].index(BOUNDARY_MARK)
    assert 20 < column < 60  # two runs of 30 steps: the mark near the middle
