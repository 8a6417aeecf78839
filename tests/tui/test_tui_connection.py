"""Connection states in the real app over a real socket: the agent's process dies (its socket
closes), the view says RECONNECTING at once (before the stale timeout), and the restarted
agent, on the same endpoint with a new run id, continues in the same view."""

from __future__ import annotations

import zmq

from symwatch.core import protocol
from symwatch.transport.subscriber import BackgroundFeed
from symwatch.state.run_state import LIVE, RECONNECTING
from symwatch.tui.app import SymwatchApp
from symwatch.tui.widgets.banner import ConnectionBanner
from symwatch.tui.widgets.header import RunHeader
from symwatch.tui.widgets.layer_table import LayerTable
from symwatch.tui.widgets.panels import EventsLog
from tests.tui.test_tui_app import join, publish_sample, sampled, text_of, until


def _restart_on_the_same_endpoint(agent, run: str) -> None:
    """What a restarted training process does: a new PUB socket on the same address."""
    ctx = agent.sock.context
    agent.sock.close(0)
    agent.sock = ctx.socket(zmq.PUB)
    agent.sock.setsockopt(zmq.LINGER, 0)
    agent.sock.bind(agent.endpoint)
    agent.run, agent.seq = run, 0


def feed_app(agent, **kw) -> SymwatchApp:
    """The app as `symwatch attach` makes it: a BackgroundFeed (its thread wakes the app)."""
    return SymwatchApp(BackgroundFeed(agent.endpoint, history=False), owns_source=True, **kw)


async def test_a_dropped_connection_shows_reconnecting_then_the_restarted_run(fake_agent):
    agent = fake_agent()
    # stale only after a minute: what the view shows below comes from the socket, not silence
    app = feed_app(agent, stale_after=60.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await sampled(pilot, agent, app)
        assert app.connection() == LIVE and "LIVE" in text_of(app.query_one(RunHeader))

        agent.sock.close(0)  # the training process died
        await until(pilot, lambda: app.connection() == RECONNECTING, timeout=10,
                    what="reconnecting")
        banner = app.query_one(ConnectionBanner)
        await until(pilot, lambda: "RECONNECTING" in text_of(app.query_one(RunHeader)))
        assert banner.display and "Reconnecting to" in text_of(banner)
        assert app.query_one("#main").has_class("-stale")  # styled like a stale run
        assert app.query_one(LayerTable).row_count == 3  # the last values stay on screen

        _restart_on_the_same_endpoint(agent, "run-bbbb")
        await until(pilot, lambda: app.connection() == LIVE, timeout=10, what="connected again")
        new_rows = ["head"]
        for _ in range(100):  # the new run's META (ZeroMQ's slow joiner: send until seen)
            agent.meta(name="second", layers=(("head", "Linear", [2, 2]),))
            agent.send(protocol.STATS, 3, loss=0.125)
            await pilot.pause(0.05)
            if [r.value for r in app.query_one(LayerTable).rows] == new_rows:
                break
        await until(pilot, lambda: [r.value for r in app.query_one(LayerTable).rows] ==
                    new_rows, what="the new run's layers")
        header = text_of(app.query_one(RunHeader))
        assert "LIVE" in header and "second" in header and "restarts 1" in header
        assert not banner.display
        assert "replaces fake-run" in text_of(app.query_one(EventsLog))
        assert app.state.restarts == 1 and app.state.loss.current == 0.125


async def test_data_is_drawn_when_it_arrives_not_on_the_clock(fake_agent):
    # a clock too slow to matter: only the feed's wake-up can put the sample on screen in time
    agent = fake_agent()
    app = feed_app(agent, tick_s=60.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await join(pilot, agent, app)
        publish_sample(agent, step=77)
        await until(pilot, lambda: "step 77" in text_of(app.query_one(RunHeader)), timeout=5,
                    what="the sample drawn on arrival")
        assert app.query_one(LayerTable).row_count == 3
        assert app.frame_cost > 0  # redraws are timed, to pace the next ones
