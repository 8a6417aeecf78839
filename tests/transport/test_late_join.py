"""Late join (ZeroMQ's Clone pattern): a viewer that attaches after hundreds of steps sees the
run's history, not an empty screen. Real sockets, a real torch run; every wait has a deadline
and nothing asserts on time."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time

import pytest
import zmq

from symwatch.core import protocol
from symwatch.transport.subscriber import BackgroundFeed
from symwatch.transport.late_join import LateJoin, fetch_snapshot, usable_history_endpoint
from symwatch.core.recording import RecordingReader
from symwatch.state.run_state import RunState
from waiting import until

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="the training run needs torch")


# -- the agent's bounded history (no sockets) ---------------------------------------------------

def _frames(kind: str, seq: int, step: int, **payload):
    return protocol.encode(kind, run="r", rank=0, restart=0, seq=seq, time=1.0, step=step,
                           payload=payload)


def _history(**kw):
    from symwatch.core.history import History

    return History(**kw)


@needs_torch
def test_history_keeps_the_first_sample_and_thins_the_old_half():
    h = _history(samples=16)
    for seq in range(1000):
        h.add(protocol.METRICS, seq, *_frames(protocol.METRICS, seq, seq, values={}))
    entries, complete = h.snapshot(10**9)
    seqs = [protocol.decode(list(f)).seq for f in entries]
    assert complete and seqs == sorted(seqs)
    assert len(seqs) <= 16 and seqs[0] == 0 and seqs[-1] == 999
    gaps = [b - a for a, b in zip(seqs, seqs[1:])]
    assert gaps[-1] == 1 and gaps[0] > gaps[-1]  # dense near now, sparse towards the start


@needs_torch
def test_history_snapshot_puts_meta_first_and_cuts_the_oldest_to_fit():
    h = _history(samples=64)
    for seq in range(40):
        h.add(protocol.METRICS, seq, *_frames(protocol.METRICS, seq, seq, values={}))
    meta = _frames(protocol.META, 40, 40, name="n", pid=1, host="h", command=[], started=0.0,
                   layers=[], indicators=[], every=1)
    h.add(protocol.META, 40, *meta)
    h.add(protocol.GOODBYE, 41, *_frames(protocol.GOODBYE, 41, 41, reason="x"))  # not kept
    entries, complete = h.snapshot(10**9)
    assert complete and entries[0] == meta and len(entries) == 41
    last_five = sum(len(t) + len(b) for t, b in entries[-5:])
    entries, complete = h.snapshot(len(meta[0]) + len(meta[1]) + last_five)
    assert not complete and entries[0] == meta
    assert [protocol.decode(list(f)).seq for f in entries[1:]] == [35, 36, 37, 38, 39]


@needs_torch
def test_history_stays_within_its_byte_cap():
    h = _history(samples=1000, events=1000, max_bytes=50_000)
    big = {f"layer{i}": {"weight_norm": 1.5} for i in range(20)}
    for seq in range(3000):
        kind = protocol.EVENT if seq % 3 == 0 else protocol.METRICS
        payload = ({"message": "m" * 50, "severity": "info"} if kind == protocol.EVENT
                   else {"values": big})
        h.add(kind, seq, *_frames(kind, seq, seq, **payload))
        assert h.bytes <= 50_000
    assert h.bytes == sum(len(t) + len(b) for t, b in h.snapshot(10**9)[0])


# -- the request/reply contract -----------------------------------------------------------------

def test_snapshot_request_and_end_round_trip_and_reject_garbage():
    assert protocol.decode_snapshot_request(protocol.encode_snapshot_request(1234)) == 1234
    end = protocol.SnapshotEnd(run="r", rank=1, restart=2, seq=41, count=7, complete=True)
    assert protocol.decode_snapshot_end(protocol.encode_snapshot_end(end)) == end
    for frames in ([b"snapshot"], [b"snapshot", b"{}"], [b"snapshot", b'{"v":1}'],
                   [b"snapshot", b'{"v":1,"max_bytes":true}'], [b"snapshot", b'{"v":2,"max_bytes":1}'],
                   [b"snapshot", b'{"v":1,"max_bytes":-1}'], [b"other", b'{"v":1,"max_bytes":1}'],
                   [b"snapshot", b"\xff"], [b"snapshot", b"[1]"],
                   [b"snapshot", b" " * (protocol.MAX_REQUEST_BYTES + 1)]):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_snapshot_request(frames)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_snapshot_end([b"snapshot_end", json.dumps(
            {"v": 1, "run": "r", "rank": 0, "restart": 0, "seq": 1, "count": True,
             "complete": True}).encode()])


def test_history_endpoint_must_be_on_the_publishers_own_host():
    assert usable_history_endpoint("tcp://10.0.0.5:5555", "tcp://0.0.0.0:6000") == \
        "tcp://10.0.0.5:6000"
    assert usable_history_endpoint("tcp://10.0.0.5:5555", "tcp://evil.example:6000") == \
        "tcp://10.0.0.5:6000"  # the port is taken, never another host
    assert usable_history_endpoint("ipc:///r/a.sock", "ipc:///r/a.history.sock") == \
        "ipc:///r/a.history.sock"
    assert usable_history_endpoint("ipc:///r/a.sock", "tcp://127.0.0.1:7000") == \
        "tcp://127.0.0.1:7000"
    for bad in ("tcp://10.1.1.1:7000", "http://x:1", "tcp://h:0", "tcp://h:port", 5, None):
        assert usable_history_endpoint("ipc:///r/a.sock", bad) is None
    assert usable_history_endpoint("tcp://127.0.0.1:5555", "ipc:///r/a.history.sock") is None


def test_a_late_join_without_history_lets_live_messages_through(fake_agent):
    agent = fake_agent()  # speaks v1 without a history socket
    with BackgroundFeed(agent.endpoint) as feed:
        assert until(lambda: (agent.heartbeat(), feed.wait_for_message(0.02))[1])
        assert feed.poll()[0].kind == protocol.HEARTBEAT
        assert feed.late_join.done and feed.late_join.error == "the agent serves no history"


def test_a_history_socket_that_never_answers_costs_a_deadline_only(zmq_ctx):
    ctx = zmq_ctx
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        result = fetch_snapshot(f"tcp://127.0.0.1:{port}", context=ctx, timeout_s=0.3)
        assert isinstance(result, str) and "no history" in result
        join = LateJoin("tcp://127.0.0.1:1", context=ctx, timeout_s=0.3,
                        history_endpoint=f"tcp://127.0.0.1:{port}")
        hb = protocol.decode(list(_frames(protocol.HEARTBEAT, 5, 5, dropped=0, samples=0)))
        assert join.process([hb]) == [hb] and join.done and "no history" in join.error
    finally:
        router.close(0)


def test_pruning_a_killed_run_removes_its_history_socket_too(runtime_dir):
    import os

    from symwatch.core import runtime

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stream = os.path.join(runtime_dir, "dead.sock")
    history = os.path.join(runtime_dir, "dead.history.sock")
    for path in (stream, history):
        open(path, "w").close()
    runtime.write_entry(runtime.RunEntry(
        run_id="dead", name="gone", pid=dead.pid, command=["x"], endpoint=f"ipc://{stream}",
        started=0.0, host="h", extra={"history_endpoint": f"ipc://{history}"}))
    assert runtime.live_runs() == []
    assert not os.path.exists(stream) and not os.path.exists(history)


# -- a real training run ------------------------------------------------------------------------

class LinearRun:
    """The demo's two-layer linear network (symwatch_agent.entry.demo) trained on a thread with the
    agent: `steps` steps, then it waits (the agent still publishing heartbeats) until
    `finish()`; so a viewer attaching late has something to catch up on and nothing racing it."""

    def __init__(self, steps: int = 560, **options) -> None:
        self.steps, self.options = steps, options
        self.trained = threading.Event()
        self._finish = threading.Event()
        self.agent = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.trained.wait(180), "the training run did not finish its steps"
        assert self.error is None, self.error

    def _run(self) -> None:
        import torch

        from symwatch_agent.agent import watch
        from symwatch_agent.entry.demo import DemoConfig, DemoModels, _random_orthogonal

        try:
            cfg = DemoConfig()
            torch.manual_seed(0)
            gen = torch.Generator().manual_seed(0)
            d, k = cfg.width, len(cfg.target_singular_values)
            u, v = _random_orthogonal(d, gen), _random_orthogonal(d, gen)
            target = (u[:, :k] @ torch.diag(torch.tensor(cfg.target_singular_values))
                      @ v[:, :k].T)
            models = DemoModels(cfg)
            opt = torch.optim.SGD(models.linear.parameters(), lr=cfg.linear_lr)
            with watch({"linear": models.linear}, opt, every=2, budget=1.0, name="late-join",
                       classifier=None, **self.options) as agent:
                self.agent = agent
                for _ in range(self.steps):
                    loss = 0.5 * (models.linear(torch.eye(d)).T - target).square().sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                self.trained.set()
                self._finish.wait(120)
        except BaseException as exc:  # noqa: BLE001 - reported by the constructor
            self.error = exc
            self.trained.set()

    def finish(self) -> None:
        self._finish.set()
        self.thread.join(30)


@pytest.fixture(scope="module")
def late_run():
    """One run for the module (training is the slow part): 520 steps, then idle. Loopback TCP,
    since each test's runtime directory (and an ipc socket in it) is removed after the test.
    The recording test, last, ends it."""
    if not HAVE_TORCH:
        pytest.skip("the training run needs torch")
    run = LinearRun(steps=520, endpoint="tcp://127.0.0.1:0")
    yield run
    run.finish()


def _assert_sees_the_early_staircase(state: RunState) -> None:
    layer = state.layers["linear.0"]
    assert layer.type == "Linear"
    store = layer.indicators["modes"].store  # the whole run, older parts merged
    assert store.first_step == 1  # the very first sample of the run (always taken)
    history = list(store.entries())  # (step, min, max, last value)
    early = {v for step, lo, hi, last in history if step < 300 for v in (lo, hi, last)}
    assert {1.0, 2.0, 3.0, 4.0} <= early, history[:40]  # the staircase, as it climbed
    assert [e[0] for e in history] == sorted(e[0] for e in history)  # history in order
    # the run's transitions, sent before the viewer came, reach it with their history (`modes`
    # rises at steps 7–61, inside the detector's warm-up; the loss's last drop is one)
    transitions = [e for e in state.events if e.severity == "transition"]
    assert transitions, [e.message for e in state.events]
    assert all(e.history for e in transitions)
    assert state.gap_dropped == 0  # a thinned history is not a loss


@needs_torch
def test_a_late_viewer_sees_the_runs_history_then_live_messages(late_run):
    run = late_run
    agent = run.agent
    assert agent.history is not None and agent._publisher.history_endpoint
    state = RunState(history=1000)
    with BackgroundFeed(agent.endpoint) as feed:
        assert until(lambda: (state.fold_all(feed.poll(50)), state.layers)[1], 20)
        join = feed.late_join
        assert join.done and join.error is None and join.snapshot_messages > 100
        _assert_sees_the_early_staircase(state)
        heartbeats = state.messages
        assert until(lambda: (state.fold_all(feed.poll(50)), state.messages > heartbeats)[1])
    assert agent._publisher.snapshots_served >= 1


@needs_torch
async def test_the_tui_attached_late_shows_the_history(late_run):
    from symwatch.tui.app import SymwatchApp
    from symwatch.tui.widgets.panels import EventsLog

    run = late_run
    app = SymwatchApp(BackgroundFeed(run.agent.endpoint), owns_source=True, tick_s=0.05)
    async with app.run_test(size=(140, 45)) as pilot:
        # The snapshot is folded in slices between redraws (and later than that on a busy
        # machine): wait until the events panel shows it, then check what was folded.
        deadline = time.monotonic() + 30
        log = app.query_one(EventsLog)
        while not str(log.content).strip() or "no events yet" in str(log.content):
            assert time.monotonic() < deadline, f"the app never showed the history: {log.content}"
            await pilot.pause(0.05)
        while True:
            try:
                _assert_sees_the_early_staircase(app.state)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                await pilot.pause(0.05)


@needs_torch
def test_the_history_socket_counts_and_ignores_anything_but_a_request(late_run, zmq_ctx):
    publisher = late_run.agent._publisher
    ctx = zmq_ctx
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(publisher.history_endpoint)
        for frames in ([b"snapshot", b"not json"], [b"metrics", b"{}"], [b"a", b"b", b"c"],
                       [b"snapshot", b'{"v":1,"max_bytes":"all"}']):
            dealer.send_multipart(frames)
        assert until(lambda: publisher.history_garbage == 4)
        assert not dealer.poll(200)  # nothing answered
        result = fetch_snapshot(publisher.history_endpoint, context=ctx, max_bytes=10**6)
        assert not isinstance(result, str), result
        assert result.end.count == len(result.messages) and result.end.complete
        assert result.messages[0].kind == protocol.META and result.garbage == 0
    finally:
        dealer.close(0)


@needs_torch
def test_symwatch_record_started_late_records_the_history(late_run, tmp_path):
    run = late_run  # ended here (its goodbye stops the recorder): keep this test last
    out = tmp_path / "late.db"
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "record", run.agent.endpoint,
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert until(lambda: out.exists() and _metrics_in(out) > 100, 30), proc.poll()
    finally:
        run.finish()  # goodbye: the recorder stops by itself
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err
    state = RunState(history=1000)
    with RecordingReader(out) as reader:
        state.fold_all(list(reader))
    assert [s for s, _ in state.layers["linear.0"].indicators["modes"].history][0] == 1
    assert state.gap_dropped == 0 and state.finished


def _metrics_in(path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM messages WHERE kind='metrics'").fetchone()[0]
    except sqlite3.Error:
        return 0
