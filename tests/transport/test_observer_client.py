"""The observer's subscriber: real SUB/PUB sockets on loopback, every wait with a deadline."""

from __future__ import annotations

import json
import threading
import time

import pytest

from symwatch.core import protocol
from symwatch.sources.memory import ListSource
from symwatch.transport.subscriber import BackgroundFeed, EndpointError, Subscriber, validate_endpoint
from waiting import until


def _joined(agent, sub: Subscriber, timeout: float = 5.0) -> list[protocol.Message]:
    """Send heartbeats until the subscription is live (the slow joiner window is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.heartbeat()
        got = sub.poll(50)
        if got:
            return got
    raise AssertionError("subscriber never received a heartbeat")


def _collect(sub: Subscriber, n: int, timeout: float = 5.0) -> list[protocol.Message]:
    out: list[protocol.Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.extend(sub.poll(50))
    return out


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://localhost:1",
                                      "tcp://[::1]:5555", "ipc:///tmp/x.sock", " ipc://rel.sock "])
def test_validate_endpoint_accepts(endpoint):
    assert validate_endpoint(endpoint) == endpoint.strip()


@pytest.mark.parametrize("endpoint", ["", "127.0.0.1:5555", "tcp://127.0.0.1", "tcp://h:0",
                                      "tcp://h:70000", "ipc://", "http://x:1", "ssh://host",
                                      "tcp://h:port"])
def test_validate_endpoint_rejects_with_a_clear_message(endpoint):
    with pytest.raises(EndpointError, match="expected tcp://HOST:PORT or ipc://PATH, got"):
        validate_endpoint(endpoint)


def test_validate_endpoint_suggests_tcp_for_host_port():
    with pytest.raises(EndpointError, match=r"did you mean tcp://127.0.0.1:5555\?"):
        validate_endpoint("127.0.0.1:5555")


def test_subscriber_decodes_messages_in_order(fake_agent):
    agent = fake_agent()
    with Subscriber(agent.endpoint) as sub:
        _joined(agent, sub)
        agent.meta()
        agent.send(protocol.METRICS, 10, values={"fc1": {"stable_rank": 2.5}})
        agent.send(protocol.STATS, 10, loss=0.5)
        got = _collect(sub, 3)
        assert [m.kind for m in got] == ["meta", "metrics", "stats"]
        assert got[1].payload["values"]["fc1"]["stable_rank"] == 2.5
        assert [m.seq for m in got] == sorted(m.seq for m in got)
        assert sub.garbage == 0 and sub.received >= 3


def test_poll_returns_within_its_timeout_when_nothing_arrives(fake_agent):
    agent = fake_agent()
    with Subscriber(agent.endpoint) as sub:
        t0 = time.monotonic()
        assert sub.poll(150) == []
        elapsed = time.monotonic() - t0
        assert 0.1 <= elapsed < 1.0
        t0 = time.monotonic()
        assert sub.poll(0) == []
        assert time.monotonic() - t0 < 0.1


def test_garbage_is_counted_and_ignored(fake_agent):
    agent = fake_agent()
    with Subscriber(agent.endpoint) as sub:
        _joined(agent, sub)
        good = json.loads(protocol.encode(protocol.HEARTBEAT, run="r", rank=0, restart=0, seq=0,
                                          time=0.0, step=0, payload={"dropped": 0,
                                                                     "samples": 0})[1])
        agent.raw(b"heartbeat", b"not json {")
        agent.raw(b"heartbeat", json.dumps({**good, "v": 99}).encode())
        agent.raw(b"only one frame")
        agent.raw(b"heartbeat", b"{}", b"third frame")
        agent.raw(b"meta", json.dumps(good).encode())  # topic does not match the kind
        agent.raw(b"heartbeat", b"\xff\xfe")  # not UTF-8
        agent.raw(b"heartbeat", b'{"v": 1, "kind": "heartbeat", "x": NaN}')
        agent.heartbeat()
        got = _collect(sub, 1)
        assert [m.kind for m in got] == ["heartbeat"]
        assert sub.garbage == 7
        assert "NaN" in (sub.last_error or "")


def test_wrong_version_error_says_what_to_do(fake_agent):
    agent = fake_agent()
    with Subscriber(agent.endpoint) as sub:
        _joined(agent, sub)
        agent.raw(b"heartbeat", json.dumps({"v": 2, "kind": "heartbeat"}).encode())
        assert until(lambda: sub.poll(10) == [] and sub.garbage == 1)
        assert "protocol version 2 is not 1" in sub.last_error


def test_oversize_message_is_counted_and_the_connection_heals(fake_agent):
    """ZeroMQ cuts a peer that sends a frame over MAXMSGSIZE and (after a protocol error) does
    not reconnect by itself; the subscriber counts it and reconnects."""
    agent = fake_agent()
    with Subscriber(agent.endpoint) as sub:
        _joined(agent, sub)
        agent.raw(b"metrics", b"x" * (protocol.MAX_MESSAGE_BYTES + 1))
        assert until(lambda: sub.poll(20) is not None and sub.resets == 1)
        assert sub.garbage == 1
        assert "protocol error" in sub.last_error
        assert _joined(agent, sub)  # messages flow again
        agent.meta()
        assert [m.kind for m in _collect(sub, 1)] == ["meta"]


def test_max_batch_bounds_one_poll(fake_agent):
    agent = fake_agent()
    with Subscriber(agent.endpoint, max_batch=5) as sub:
        _joined(agent, sub)
        for _ in range(12):
            agent.heartbeat()
        assert until(lambda: sub._sock.poll(0) != 0)
        time.sleep(0.1)
        assert len(sub.poll(100)) == 5
        assert len(_collect(sub, 7)) == 7


def test_close_is_idempotent_and_poll_after_close_is_empty(fake_agent):
    agent = fake_agent()
    sub = Subscriber(agent.endpoint)
    sub.close()
    sub.close()
    assert sub.poll(10) == []


def test_background_feed_queues_messages_and_closes(fake_agent):
    agent = fake_agent()
    feed = BackgroundFeed(agent.endpoint)
    try:
        assert feed.alive
        got: list[protocol.Message] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            agent.heartbeat()
            if feed.wait_for_message(0.05):
                got = feed.poll()
        assert got and got[0].kind == "heartbeat"
        agent.raw(b"garbage")
        agent.meta()
        assert until(lambda: feed.garbage == 1)
        assert any(m.kind == "meta" for m in feed.poll(500))
    finally:
        feed.close()
    assert not feed.alive


def test_background_feed_calls_back_in_its_own_thread(fake_agent):
    agent = fake_agent()
    seen: list[tuple[str, str]] = []

    def on_messages(batch):
        seen.extend((m.kind, threading.current_thread().name) for m in batch)

    with BackgroundFeed(agent.endpoint, on_messages=on_messages) as feed:
        assert until(lambda: (agent.heartbeat(), bool(seen))[1])
        assert feed.poll() == []  # callback mode does not queue
    assert seen[0][0] == "heartbeat"
    assert seen[0][1].startswith("symwatch-feed")


def test_background_feed_bounds_its_queue(fake_agent):
    agent = fake_agent()
    with BackgroundFeed(agent.endpoint, max_queue=10) as feed:
        assert until(lambda: (agent.heartbeat(), feed.wait_for_message(0.02))[1])
        for _ in range(50):
            agent.heartbeat()
        assert until(lambda: feed.overflow > 0)
        assert len(feed.poll()) <= 10


def test_background_feed_rejects_a_bad_endpoint():
    with pytest.raises(EndpointError):
        BackgroundFeed("localhost:5555")


def test_list_source_hands_out_in_batches():
    msgs = [protocol.decode(list(protocol.encode(
        protocol.HEARTBEAT, run="r", rank=0, restart=0, seq=i, time=0.0, step=i,
        payload={"dropped": 0, "samples": 0}))) for i in range(5)]
    src = ListSource(msgs, batch=2)
    assert [len(src.poll()) for _ in range(4)] == [2, 2, 1, 0]
    src.push(msgs[0])
    assert src.poll() == [msgs[0]]
    src.close()
    assert src.closed
