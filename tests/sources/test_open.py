"""open_source: one way to open a live endpoint, an ssh:// run or a recording, and one error
(SourceError) with the original message when it cannot. Real sockets, a real recording, the
real ssh client against a port nobody listens on."""

from __future__ import annotations

import shutil

import pytest

from symwatch.core import protocol
from symwatch.core.processes import free_port
from symwatch.sources.base import SourceError
from symwatch.sources.open import open_source
from symwatch.sources.replay import ReplaySource
from symwatch.transport.ssh import SshOptions
from symwatch.transport.subscriber import BackgroundFeed
from tests.core.test_recording import make_recording
from waiting import until


def test_an_endpoint_opens_a_live_feed_that_receives(fake_agent):
    agent = fake_agent()
    source = open_source(agent.endpoint, history=False)
    try:
        assert isinstance(source, BackgroundFeed)
        got: list[protocol.Message] = []

        def received() -> bool:
            agent.heartbeat()
            got.extend(source.poll(50))
            return bool(got)

        assert until(received, timeout=10), "no heartbeat reached the feed"
        assert got[0].kind == protocol.HEARTBEAT
    finally:
        source.close()


def test_a_path_opens_a_replay_of_the_recording(tmp_path):
    path = tmp_path / "run.db"
    sent = make_recording(path, steps=12)
    source = open_source(path, speed=float("inf"))
    try:
        assert isinstance(source, ReplaySource)
        got: list[protocol.Message] = []
        assert until(lambda: got.extend(source.poll(0)) or len(got) >= len(sent), timeout=10)
        assert [m.kind for m in got] == [m.kind for m in sent]
    finally:
        source.close()


@pytest.mark.parametrize("target, says", [
    ("tcp://127.0.0.1", "expected tcp://HOST:PORT or ipc://PATH"),
    ("no/such/recording.db", "recording.db"),
])
def test_what_cannot_be_opened_is_one_source_error_with_the_reason(target, says):
    with pytest.raises(SourceError, match=says) as caught:
        open_source(target)
    assert caught.value.__cause__ is not None  # the original error stays attached


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")
def test_an_unreachable_ssh_host_is_a_source_error_saying_so():
    options = SshOptions.from_env()
    with pytest.raises(SourceError) as caught:
        open_source(f"ssh://127.0.0.1:{free_port()}/run", ssh_options=options)
    assert "127.0.0.1" in str(caught.value)
