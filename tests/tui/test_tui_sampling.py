"""The header says what sets the sampling interval (STATS `sampling`), and the loss chart's
series takes every step of STATS `per_step`."""

from __future__ import annotations

from symwatch.core import protocol
from symwatch.transport.subscriber import Subscriber
from symwatch.tui.app import SymwatchApp
from symwatch.tui.run_text import sampling_text
from symwatch.tui.widgets.header import RunHeader
from waiting import pilot_until as until


def _app(agent) -> SymwatchApp:
    return SymwatchApp(Subscriber(agent.endpoint), owns_source=True, tick_s=0.05)


async def _join(pilot, agent, app) -> None:
    before = app.state.messages
    await until(pilot, lambda: app.state.messages != before, "a heartbeat", 5.0,
                step=0.05, tick=agent.heartbeat)


async def test_header_shows_the_interval_and_what_limits_it(fake_agent):
    agent = fake_agent()
    app = _app(agent)
    async with app.run_test(size=(200, 40)) as pilot:
        await _join(pilot, agent, app)
        agent.meta()
        agent.send(protocol.STATS, 400, loss=0.5, sampling={
            "interval": 190.0, "every": 10, "budget": 0.01, "limit": "budget"})
        header = app.query_one(RunHeader)
        await until(pilot, lambda: "sampling" in str(header.content), "the sampling field")
        assert "every ~190 steps: 1 % budget; --budget to change" in str(header.content)
        agent.send(protocol.STATS, 500, loss=0.4, sampling={
            "interval": 10.0, "every": 10, "budget": 1.0, "limit": "every"})
        await until(pilot, lambda: "every 10 steps (--every)" in str(header.content),
                    "the every-limited text")


def test_a_finished_runs_header_fits_120_columns_without_the_options_hint():
    """At 120 columns a finished run's first line was cut (`--budget to chang…`): the hint
    is for a run still going, and the room left was counted two columns short."""
    from symwatch.state.run_state import RunState
    from symwatch.tui.widgets.header import header_text

    state = RunState()
    for kind, payload in ((protocol.META, dict(name="plain.py", pid=6172, host="vm",
                                               command=["plain.py"], started=0.0, layers=[],
                                               indicators=[], every=10, device="cpu")),
                          (protocol.STATS, dict(loss=0.5, sampling={
                              "interval": 60.0, "every": 10, "budget": 0.01,
                              "limit": "budget", "layer_interval": 110.0})),
                          (protocol.GOODBYE, dict(reason="finished"))):
        state.fold(protocol.decode(list(protocol.encode(
            kind, run="r", rank=0, restart=0, seq=0, time=0.0, step=400, payload=payload))))
    top = header_text(state, "finished", endpoint="ipc://x", width=120).plain.splitlines()[0]
    assert len(top) <= 120 and "…" not in top and "--budget" not in top, top
    assert "sampling every ~60 steps" in top, top


async def test_every_steps_loss_folds_into_the_loss_series(fake_agent):
    agent = fake_agent()
    app = _app(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await _join(pilot, agent, app)
        agent.meta()
        agent.send(protocol.STATS, 30, loss=0.3, per_step={
            "loss": {"steps": list(range(1, 31)), "values": [1.0 / s for s in range(1, 31)]}})
        await until(pilot, lambda: app.state.loss.step == 30, "30 steps of loss")
        assert [s for s, _ in app.state.loss.history] == list(range(1, 31))


def test_sampling_text():
    assert sampling_text(None) == ""
    assert sampling_text({"interval": None, "every": 10, "limit": "every"}) == \
        "every 10 steps (--every)"
    assert sampling_text({"interval": 1.0, "every": 1, "limit": "every"}, hint=False) == \
        "every 1 step"
    assert sampling_text({"interval": 2345.0, "every": 100, "budget": 0.01, "limit": "budget"}
                         ) == "every ~2,345 steps: 1 % budget; --budget to change"
