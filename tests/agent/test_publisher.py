"""The publisher thread is event-driven: it sleeps until a message, a late-join request, a stop
or a periodic job needs it, and loses nothing when wake-ups coalesce. Real ZeroMQ sockets on
loopback, real threads, a real fork."""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator

import pytest

from symwatch.core import protocol
from symwatch.transport.late_join import Snapshot, fetch_snapshot
from symwatch.core.history import History
from symwatch_agent.publish.publisher import MAX_SLEEP_S, Publisher
from waiting import until

# Well under MAX_SLEEP_S: an answer within this came from a wake-up, not from the safety cap.
PROMPT_S = MAX_SLEEP_S / 2


@pytest.fixture
def publisher() -> Iterator[Callable[..., Publisher]]:
    made: list[Publisher] = []

    def start(**options) -> Publisher:
        options.setdefault("report", lambda *_: None)
        pub = Publisher("tcp://127.0.0.1:0", run="pubtest", **options)
        pub.start()
        made.append(pub)
        return pub

    yield start
    for pub in made:
        pub.close()


def _event(text: str) -> dict[str, str]:
    return {"message": text, "severity": "info"}


def _settled(pub: Publisher) -> None:
    """Wait until the thread has sent everything queued and gone back to sleep."""
    assert until(lambda: pub._queue.empty())
    before = -1
    while before != pub.wakeups:  # no wake-up for 0.1 s: asleep in its poll
        before = pub.wakeups
        time.sleep(0.1)


def test_an_idle_publisher_with_a_history_socket_does_not_poll(publisher):
    # The old loop woke every 0.2 s to look for late-join requests: 5 wake-ups a second.
    pub = publisher(history=History())
    assert pub.history_endpoint
    pub.submit(protocol.EVENT, _event("started"), 0)
    assert until(lambda: pub.sent == 1)
    _settled(pub)
    before = pub.wakeups
    time.sleep(1.0)
    assert pub.wakeups - before <= 2


def test_a_late_join_request_wakes_an_idle_publisher(publisher):
    pub = publisher(history=History())
    pub.submit(protocol.EVENT, _event("before the viewer"), 3)
    assert until(lambda: pub.sent == 1)
    _settled(pub)
    asked = time.monotonic()
    result = fetch_snapshot(pub.history_endpoint, timeout_s=PROMPT_S)
    assert isinstance(result, Snapshot), result
    assert time.monotonic() - asked < PROMPT_S
    assert [m.payload["message"] for m in result.messages] == ["before the viewer"]
    assert result.end.complete
    assert until(lambda: pub.snapshots_served == 1)  # counted just after the end is sent


def test_a_burst_of_submits_is_all_sent_when_wake_ups_coalesce(publisher, collector):
    pub = publisher(history=History(), queue_size=1000)
    sub = collector(pub.endpoint)
    # The subscription takes a moment to reach the PUB socket: probe until one arrives.
    assert until(lambda: (pub.submit(protocol.EVENT, _event("probe"), 0),
                           sub.drain(0.05), bool(sub.messages))[-1])
    _settled(pub)
    sub.drain(0.2)
    first = pub.sent
    wakeups = pub.wakeups
    burst = 500
    accepted = [pub.submit(protocol.EVENT, _event(f"burst {i}"), i) for i in range(burst)]
    assert all(accepted) and pub.dropped == 0
    assert until(lambda: pub.sent == first + burst, PROMPT_S), pub.sent - first
    sub.wait_for(lambda m: m.step == burst - 1, timeout=PROMPT_S)
    got = [m.step for m in sub.of_kind(protocol.EVENT) if m.payload["message"].startswith("burst")]
    assert got == list(range(burst))
    # One byte in the pipe stands for everything queued: far fewer wake-ups than messages.
    assert pub.wakeups - wakeups < burst


def test_a_message_submitted_from_the_publisher_thread_is_sent_promptly(publisher):
    # The agent's report() submits an event from the publisher thread itself when a payload
    # cannot be built or a periodic job fails: that must wake the loop too, not wait for the cap.
    def report(what: str, problem: object) -> None:
        pub.submit(protocol.EVENT, _event(f"{what}: {problem}"), 0)

    def broken() -> dict[str, str]:
        raise RuntimeError("cannot read the tensor back")

    pub = publisher(history=History(), report=report)
    _settled(pub)
    pub.submit(protocol.METRICS, broken, 1)
    assert until(lambda: pub.sent == 1, PROMPT_S)
    (_, body), = pub._history.snapshot(1 << 20)[0]
    assert b"build:metrics" in body


def test_periodic_jobs_on_one_grid_share_wake_ups():
    calls: list[str] = []
    pub = Publisher("tcp://127.0.0.1:0", run="pubtest", report=lambda *_: None)
    pub.add_periodic(0.1, lambda: calls.append("often"))
    pub.add_periodic(0.2, lambda: calls.append("seldom"))
    pub.start()
    try:
        assert until(lambda: calls.count("seldom") >= 8)
        woke = pub.wakeups
        often = calls.count("often")
    finally:
        pub.close()
    # The slower job's turns fall on the faster one's (both keep to a grid from the same
    # start): it adds no wake-ups of its own. Due + interval, not now + interval, which
    # drifts a little each turn and puts the slower job a moment before the faster one.
    assert often >= 15 and woke <= often, (woke, calls)


def test_submit_and_close_after_the_thread_ended_are_harmless(publisher):
    pub = publisher(history=History())
    pub.close()
    assert pub._wake_r == pub._wake_w == -1  # closed, and no fd number kept to write into
    assert pub.submit(protocol.EVENT, _event("too late"), 0)  # queued; nobody sends it
    pub.close()


def test_a_forked_child_submitting_neither_blocks_nor_breaks_the_parent(publisher):
    # DataLoader workers fork the training process: they share the pipe but not the thread.
    pub = publisher(history=History())
    _settled(pub)
    pid = os.fork()
    if pid == 0:  # the child: no publisher thread here; submits must return at once
        code = 1
        try:
            for i in range(10_000):
                pub.submit(protocol.EVENT, _event("from the child"), i)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("a forked child blocked in submit()")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    pub.submit(protocol.EVENT, _event("from the parent"), 0)
    assert until(lambda: pub.sent == 1, PROMPT_S)
    assert pub.sent == 1  # the child's messages stayed in the child's copy of the queue


def test_a_wake_up_is_not_skipped_because_another_writer_holds_the_lock(publisher):
    # Seen with a real agent: the training thread wrote its byte and was preempted before it
    # released the lock; the publisher thread read that byte, then an event submitted from its
    # own build found the lock held and skipped its byte, and the stats queued behind waited
    # for the next heartbeat (up to a second). Every submit must get its item woken for.
    pub = publisher(history=History())
    _settled(pub)
    import threading
    pub._wake_lock.acquire()  # another writer, mid-write, its byte already read
    try:
        sender = threading.Thread(
            target=pub.submit, args=(protocol.EVENT, _event("behind the lock"), 0))
        sender.start()
        time.sleep(0.02)  # the submit is queued and its wake-up waits for the lock
    finally:
        pub._wake_lock.release()
    sender.join(5)
    assert until(lambda: pub.sent == 1, 1.0), "the item waited for the safety cap"


def test_a_periodic_job_rides_on_a_message_wake_up_and_keeps_its_grid(publisher):
    """The heartbeat, GPU and metadata jobs run early (within EARLY_FRACTION of their interval)
    when a submitted message has woken the thread anyway, instead of waking it again at their
    due time: on a VM each wake-up costs ~0.5 ms of CPU. They stay on their grid."""
    from symwatch_agent.publish.publisher import EARLY_FRACTION
    interval = 2.0
    calls: list[float] = []
    pub = publisher()
    pub.add_periodic(interval, lambda: calls.append(time.monotonic()))
    assert until(lambda: len(calls) == 1)  # the first turn, at once
    # due in ≤ 0.9 s from here: inside EARLY_FRACTION × interval (1 s)
    time.sleep(interval * (1 - EARLY_FRACTION) + 0.1)
    pub.submit(protocol.EVENT, _event("a message"), 1)
    assert until(lambda: len(calls) == 2)
    assert calls[1] - calls[0] < interval - 0.05, calls  # ran on the message's wake-up
    assert until(lambda: len(calls) == 3, 2 * interval + PROMPT_S)
    # the next turn is one interval after the *due* time, not after the early run
    assert calls[2] - calls[0] >= 2 * interval - 0.05, calls


def test_what_a_build_submits_goes_out_before_the_goodbye(publisher):
    """A sample's build submits its events (a divergence, a transition) from the publisher
    thread; at close they land behind the goodbye in the queue. They go out before it: after
    a goodbye nothing is sent, and a recording or a viewer would miss the run's last events."""
    pub = publisher()
    _settled(pub)
    sent: list[str] = []
    send = pub._send  # observed, not replaced: every message still goes out on the socket

    def observed(sock, kind, payload, step) -> None:
        sent.append(kind)
        send(sock, kind, payload, step)

    pub._send = observed

    def build() -> dict:
        time.sleep(0.2)  # the goodbye is queued meanwhile (or already was)
        pub.submit(protocol.EVENT, _event("divergence"), 7)
        return {"values": {}}

    pub.submit(protocol.METRICS, build, 7)
    pub.close(goodbye={"reason": "closed", "exit_code": None}, step=7)
    assert sent == ["metrics", "event", "goodbye"], sent
