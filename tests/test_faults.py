"""Faults: nothing a viewer or a recording does may block or crash the training run.

Each test runs a real torch training loop (in a subprocess where a process is killed or
limited) and real CLI subprocesses. Every wait has a deadline; nothing asserts on time."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from symwatch.core import protocol
from symwatch.core.recording import RecordingReader
from waiting import terminate, until

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="the training loop needs torch")

# Trains until the file STOP exists (or 120 s pass), writing its step count to PROGRESS.
TRAIN = textwrap.dedent("""
    import os, sys, time
    limit = int(os.environ.get("FSIZE_LIMIT", "0"))
    if limit:  # a tiny "disk": writes past `limit` bytes fail with EFBIG
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    import torch
    from torch import nn
    import symwatch
    stop, progress = sys.argv[1], sys.argv[2]
    record = os.environ.get("RECORD") or None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent = symwatch.watch(model, opt, every=1, budget=1.0, record=record, name="faulty",
                           heartbeat_interval=0.1)
    print("endpoint", agent.endpoint, flush=True)
    deadline = time.monotonic() + 120
    step = 0
    while not os.path.exists(stop) and time.monotonic() < deadline:
        loss = model(torch.randn(32, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        with open(progress + ".tmp", "w") as fh:
            fh.write(str(step))
        os.replace(progress + ".tmp", progress)
        time.sleep(0.005)
    failed = agent.recorder.failed if agent.recorder is not None else None
    agent.close("finished")
    print("trained", step, "recording-failed" if failed else "recording-ok", flush=True)
""")


class Training:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.script = tmp_path / "train.py"
        self.script.write_text(TRAIN)
        self.stop = tmp_path / "stop"
        self.progress = tmp_path / "progress"
        self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.stop),
                                      str(self.progress)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **env})
        line = self.proc.stdout.readline()  # blocks until the agent is up (or the script died)
        assert line.startswith("endpoint "), (line, self.proc.stderr.read())
        self.endpoint = line.split()[1]

    def steps(self) -> int:
        try:
            return int(self.progress.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def wait_steps(self, n: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.steps() < n:
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"training did not reach step {n}"
            time.sleep(0.02)
        return self.steps()

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        self.stop.write_text("")
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


def _rows(path: Path, kind: str | None = None) -> int:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            query = "SELECT COUNT(*) FROM messages" + (" WHERE kind=?" if kind else "")
            return db.execute(query, (kind,) if kind else ()).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_a_viewer_killed_mid_stream_does_not_stop_training(tmp_path):
    training = Training(tmp_path)
    viewer = subprocess.Popen([sys.executable, "-m", "symwatch", "attach", "--headless",
                               training.endpoint], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # the viewer is receiving the stream
            line = viewer.stdout.readline()
            assert line, viewer.stderr.read()
            if line.startswith("[live]"):
                break
            assert time.monotonic() < deadline
        viewer.send_signal(signal.SIGKILL)
        viewer.wait(30)
        at_kill = training.steps()
        training.wait_steps(at_kill + 50)  # training goes on without its viewer
        rc, out, err = training.finish()
    finally:
        if viewer.poll() is None:
            viewer.kill()
        training.kill()
    assert rc == 0, err
    assert out.strip().startswith("trained ")


def test_agent_killed_while_recording_leaves_a_readable_recording(tmp_path):
    path = tmp_path / "killed.db"
    training = Training(tmp_path, RECORD=str(path))
    try:
        reached = training.wait_steps(40)
        # wait (deadline-bound) until the file holds that step: it is committed while live
        deadline = time.monotonic() + 30
        while True:
            with RecordingReader(path) as reader:
                steps = [m.step for m in reader if m.kind == protocol.METRICS]
            if steps and steps[-1] >= reached:
                break
            assert time.monotonic() < deadline, "the recording never caught up"
            time.sleep(0.05)
        training.proc.send_signal(signal.SIGKILL)
        training.proc.wait(30)
    finally:
        training.kill()
    with RecordingReader(path) as reader:
        msgs = list(reader)
        assert reader.garbage == 0
    kinds = [m.kind for m in msgs]
    assert protocol.META in kinds and protocol.GOODBYE not in kinds  # killed: no goodbye
    metric_steps = [m.step for m in msgs if m.kind == protocol.METRICS]
    assert metric_steps == sorted(metric_steps) and metric_steps[-1] >= reached
    assert [m.seq for m in msgs] == list(range(len(msgs)))  # readable up to the kill, no holes
    result = subprocess.run([sys.executable, "-m", "symwatch", "replay", str(path),
                             "--headless"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "[stale] faulty" in result.stdout, result.stderr


def test_recording_into_a_read_only_directory_warns_once_and_trains(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits; /proc is read-only to all
        path = Path("/proc/symwatch-faults.db")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        path = ro / "run.db"
    training = Training(tmp_path, RECORD=str(path))
    try:
        training.wait_steps(30)
        rc, out, err = training.finish()
    finally:
        training.kill()
    assert rc == 0, err
    assert "recording-failed" in out
    warnings = [line for line in err.splitlines() if "recording" in line]
    assert len(warnings) == 1 and "recording stopped" in warnings[0], err
    assert not path.exists()


def test_disk_full_while_recording_warns_once_and_trains(tmp_path):
    """A tiny "disk": RLIMIT_FSIZE caps every file the training process writes (EFBIG, as
    SQLite sees a full disk or a failing write), no root needed."""
    path = tmp_path / "full.db"
    training = Training(tmp_path, RECORD=str(path), FSIZE_LIMIT=str(256 * 1024))
    try:
        deadline = time.monotonic() + 90
        # train until the limit is hit (the file stops growing), then some more
        while "stopped" not in _peek_stderr(training):
            assert training.proc.poll() is None, training.proc.communicate()
            assert time.monotonic() < deadline, "the recording never hit the size limit"
            time.sleep(0.05)
        training.wait_steps(training.steps() + 50)
        rc, out, err = training.finish()
    finally:
        training.kill()
    err = _STDERR.pop(training.proc.pid, "") + err
    assert rc == 0, err
    assert "recording-failed" in out
    warnings = [line for line in err.splitlines() if "recording" in line]
    assert len(warnings) == 1 and "recording stopped" in warnings[0], err
    with RecordingReader(path) as reader:  # what was committed before the failure is readable
        msgs = list(reader)
    assert protocol.META in {m.kind for m in msgs} and reader.garbage == 0


_STDERR: dict[int, str] = {}


def _peek_stderr(training: Training) -> str:
    """Read what the training process has written to stderr so far, without blocking."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(training.proc.stderr, selectors.EVENT_READ)
    text = _STDERR.get(training.proc.pid, "")
    while sel.select(timeout=0):
        chunk = os.read(training.proc.stderr.fileno(), 65536).decode(errors="replace")
        if not chunk:
            break
        text += chunk
    sel.close()
    _STDERR[training.proc.pid] = text
    return text


# -- faults inside the training process (in-process: nothing here can hang the suite) ----------

def _tiny_run(**options):
    import torch
    from torch import nn

    import symwatch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    options.setdefault("register", False)
    agent = symwatch.watch(model, opt, **options)

    def train(steps: int) -> float:
        for _ in range(steps):
            loss = model(torch.randn(16, 8)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    return agent, train


def _history_messages(agent) -> list[protocol.Message]:
    from symwatch.transport.late_join import fetch_snapshot

    snap = fetch_snapshot(agent._publisher.history_endpoint, timeout_s=10)
    assert not isinstance(snap, str), snap
    return snap.messages


def test_an_endpoint_already_in_use_is_a_clear_error_and_training_continues(capsys, zmq_ctx):
    import zmq

    ctx = zmq_ctx
    taken = ctx.socket(zmq.PUB)
    taken.linger = 0
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        agent, train = _tiny_run(endpoint=f"tcp://127.0.0.1:{port}")
        assert agent.error and "already in use" in agent.error.lower()
        err = capsys.readouterr().err
        assert f"symwatch: not watching this run: cannot publish on tcp://127.0.0.1:{port}" in err
        assert err.count("not watching") == 1
        train(50)  # trains on, no exception
        assert agent.steps == 0  # no hooks were left behind
        agent.close()
    finally:
        taken.close(0)


def test_an_indicator_that_raises_is_switched_off_and_reported_once(monkeypatch, capsys):
    from symwatch_agent.measure.indicators import IndicatorEngine

    calls: list[int] = []

    def broken(self, *args):
        calls.append(1)
        raise RuntimeError("boom in the mirror spectrum")

    monkeypatch.setattr(IndicatorEngine, "_mirrors", broken)
    agent, train = _tiny_run(every=1, budget=1.0)
    try:
        deadline = time.monotonic() + 60
        while not calls and time.monotonic() < deadline:
            train(5)
        assert calls, "the full tier never ran"
        samples = agent.samples
        train(40)
        assert agent.samples > samples  # sampling carries on
        assert until(lambda: "mirrors" in agent.engine.switched_off)
        messages = _history_messages(agent)
    finally:
        agent.close()
    assert len(calls) == 1  # switched off after its first failure
    err = capsys.readouterr().err
    assert err.count("indicator mirrors: RuntimeError: boom in the mirror spectrum") == 1
    assert "switched off" in err
    events = [m for m in messages if m.kind == protocol.EVENT and "mirrors" in m.get("message")]
    assert len(events) == 1 and events[0].get("severity") == "warning"
    latest = [m for m in messages if m.kind == protocol.METRICS][-1]
    for layer, values in latest.get("values").items():
        assert isinstance(values.get("weight_norm"), float), (layer, values)  # others go on
        assert values.get("mirror_rank") is None


def test_ten_thousand_optimizer_steps_are_all_counted_and_samples_published():
    import torch
    from torch import nn

    import symwatch

    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no gradients: a trivial, fast step
    agent = symwatch.watch(model, opt, every=100, register=False)
    try:
        for _ in range(10_000):
            opt.step()
        assert agent.steps == 10_000
        assert agent.samples >= 1  # the first step always samples; the budget may skip others
        assert until(lambda: any(m.kind == protocol.METRICS for m in _history_messages(agent)))
        messages = _history_messages(agent)
    finally:
        agent.close()
    metrics = [m for m in messages if m.kind == protocol.METRICS]
    assert all(m.step == 1 or m.step % 100 == 0 for m in metrics)
    assert len(metrics) <= agent.samples
    assert max(m.step for m in messages if m.kind == protocol.STATS) <= 10_000


def test_a_week_long_run_keeps_the_viewer_and_the_agent_history_bounded():
    from symwatch.core.protocol import Message
    from symwatch.state.run_state import RunState
    from symwatch.core.history import History

    # A week at ~1.7 steps/s is ~1,000,000 steps; sampled every 10 steps, stats as often,
    # a heartbeat and an event every 100 steps (10,000 events: ten times the history's cap).
    state = RunState()
    history = History()
    layers = [f"block{i}.fc" for i in range(8)]
    bodies = {kind: protocol.encode(kind, run="week", rank=0, restart=0, seq=0, time=0.0,
                                    step=0, payload=payload)
              for kind, payload in (
                  (protocol.METRICS, {"values": {n: {"weight_norm": 1.0, "stable_rank": 2.0}
                                                 for n in layers}}),
                  (protocol.STATS, {"loss": 0.5}),
                  (protocol.EVENT, {"message": "x" * 80, "severity": "transition"}),
                  (protocol.HEARTBEAT, {"dropped": 0, "samples": 1}))}
    seq = 0
    sizes = []
    for step in range(10, 1_000_001, 10):
        kinds = [protocol.METRICS, protocol.STATS]
        if step % 100 == 0:
            kinds += [protocol.HEARTBEAT, protocol.EVENT]
        for kind in kinds:
            payload = {protocol.METRICS: {"values": {n: {"weight_norm": step / 1e6}
                                                     for n in layers}},
                       protocol.STATS: {"loss": 1.0 / step},
                       protocol.HEARTBEAT: {"dropped": 0, "samples": step // 10},
                       protocol.EVENT: {"message": f"jump at {step}",
                                        "severity": "transition"}}[kind]
            state.fold(Message(kind, "week", 0, 0, seq, 0.0, step, payload), now=0.0)
            history.add(kind, seq, *bodies[kind])
            seq += 1
        if step % 100_000 == 0:
            sizes.append((len(history), history.bytes, len(state.events),
                          len(history._series[protocol.METRICS]),
                          len(history._series[protocol.STATS]), len(history._events),
                          max(len(s.store) for layer in state.layers.values()
                              for s in layer.indicators.values())))
    assert state.step == 1_000_000 and state.dropped == 0 and len(state.layers) == len(layers)
    bound = state.history.max_entries()  # the viewer keeps the whole run in tiers, bounded
    assert bound is not None and len(state.loss.store) <= bound
    oldest = next(state.loss.store.entries())[0]
    assert oldest < 100_000  # the whole run is still covered, coarsely at its start
    # Flat from the first checkpoint (100k steps) to the last (1M): every store at its bound.
    assert len(sizes) == 10
    assert all(s[0] <= 256 + 256 + 1000 + 2 for s in sizes)  # metrics, stats, events, latest
    assert max(s[1] for s in sizes) <= history.max_bytes
    assert max(s[1] for s in sizes) <= 2 * min(s[1] for s in sizes)
    assert {s[2] for s in sizes} == {state.events.maxlen}
    assert all(128 <= s[3] <= 256 and 128 <= s[4] <= 256 for s in sizes)
    assert {s[5] for s in sizes} == {1000}
    assert all(s[6] <= bound for s in sizes)  # a bounded sawtooth, whatever the length
    assert state.events_total == 10_000
    entries, complete = history.snapshot(10**9)
    assert complete and protocol.decode(list(entries[0])).kind in protocol.KINDS


# -- fuzz: random and malformed frames through a real socket into the viewer's fold path -------

try:  # in the `test` extra
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

if st is not None:
    _REFERENCE = sorted((Path(__file__).parent / "protocol").glob("*.json"))
    _scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
    _json = st.recursive(_scalars, lambda c: st.lists(c, max_size=4)
                         | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20)

    @st.composite
    def _frames(draw) -> list[bytes]:
        """Valid reference messages, the same with a field replaced or removed, random JSON
        under a real topic, random bytes, wrong frame counts."""
        choice = draw(st.integers(0, 5))
        if choice <= 2:
            body = json.loads(draw(st.sampled_from(_REFERENCE)).read_text())
            if choice >= 1 and body:
                key = draw(st.sampled_from(sorted(body)))
                if choice == 1:
                    body[key] = draw(_json)
                else:
                    del body[key]
            return [str(body.get("kind", "x")).encode(), json.dumps(body).encode()]
        if choice == 3:
            topic = draw(st.sampled_from([k.encode() for k in protocol.KINDS]))
            return [topic, json.dumps(draw(_json)).encode()]
        if choice == 4:
            return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
        return [draw(st.sampled_from([b"metrics", b"event"])), draw(st.binary(max_size=300))]

    @pytest.fixture(scope="module")
    def fuzz_pipe():
        import zmq

        from symwatch.transport.subscriber import Subscriber

        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.linger = 0
        pub.setsockopt(zmq.SNDHWM, 0)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub = Subscriber(f"tcp://127.0.0.1:{port}", context=ctx)
        sentinel_seq = [0]

        def sentinel() -> None:
            sentinel_seq[0] += 1
            pub.send_multipart(protocol.encode(
                protocol.HEARTBEAT, run="fuzz-sentinel", rank=0, restart=0,
                seq=sentinel_seq[0], time=0.0, step=0, payload={"dropped": 0, "samples": 0}))

        deadline = time.monotonic() + 10
        while not sub.poll(20):  # past the slow-joiner window
            assert time.monotonic() < deadline, "the fuzz subscriber never joined"
            sentinel()
        yield pub, sub, sentinel
        sub.close()
        pub.close(0)
        terminate(ctx)

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(_frames(), min_size=1, max_size=40))
    def test_fuzz_frames_through_a_socket_are_counted_never_a_crash(fuzz_pipe, batch):
        from symwatch.state.run_state import RunState

        pub, sub, sentinel = fuzz_pipe
        expected_bad = 0
        expected_good = 0
        for frames in batch:
            try:
                protocol.decode(frames)
                expected_good += 1
            except protocol.ProtocolError:
                expected_bad += 1
            pub.send_multipart(frames)
        sentinel()
        garbage, got = sub.garbage, []
        deadline = time.monotonic() + 10
        while not any(m.run == "fuzz-sentinel" for m in got):
            assert time.monotonic() < deadline, "the sentinel never arrived"
            got.extend(sub.poll(20))
        assert sub.garbage - garbage == expected_bad  # every bad frame counted, none missed
        fuzzed = [m for m in got if m.run != "fuzz-sentinel"]
        assert len(fuzzed) == expected_good
        state = RunState()
        state.fold_all(fuzzed + got)  # never raises, whatever passed validation
        assert state.messages == len(fuzzed) + len(got) - state.ignored


async def test_fuzzed_frames_through_a_socket_into_the_tui_never_crash_it(zmq_ctx):
    """Thousands of random and malformed frames (seeded) through a real PUB socket into the
    real app (Subscriber source, fold, every column view and the events screen): bad frames
    are counted in `garbage`, the rest drawn, no drawing error."""
    import random

    import zmq

    from symwatch.transport.subscriber import Subscriber
    from symwatch.tui.app import SymwatchApp

    rng = random.Random(0)
    reference = [json.loads(p.read_text())
                 for p in sorted((Path(__file__).parent / "protocol").glob("*.json"))]
    weird = [None, True, -1, 0, 2**70, 1e308, -0.0, "", "ä\u202e\U0001f600", [], {}, [[1]],
             {"x": {"y": None}}, "\x00\x1b[31m", 3.5, "N/A", {"weight_norm": 1e300}]

    def frames() -> list[bytes]:
        body = json.loads(json.dumps(rng.choice(reference)))
        body["run"] = "fuzz-tui"
        roll = rng.random()
        if roll < 0.6:  # a payload field replaced, added or removed: often still valid
            key = rng.choice(sorted(body))
            if key not in protocol.HEADER_FIELDS or roll < 0.1:
                action = rng.choice(("set", "del", "add"))
                if action == "set":
                    body[key] = rng.choice(weird)
                elif action == "del":
                    del body[key]
                else:
                    body[f"extra{rng.randint(0, 9)}"] = rng.choice(weird)
            if body.get("kind") == "metrics" and rng.random() < 0.5:
                body["values"] = {rng.choice(["fc1", "x" * 200, "", "é"]): {
                    rng.choice(["weight_norm", "new_indicator", "numerical_rank"]):
                        rng.choice([None, 1.5, 10**12, -3, 0])}}
            return [str(body.get("kind", "?")).encode(), json.dumps(body).encode()]
        if roll < 0.8:
            data = bytearray(json.dumps(body).encode())
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            return [str(body.get("kind")).encode(), bytes(data)]
        return [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 3))]

    batch = [frames() for _ in range(3000)]
    expected_bad = 0
    for f in batch:
        try:
            protocol.decode(f)
        except protocol.ProtocolError:
            expected_bad += 1
    assert 300 < expected_bad < 2900  # both kinds well represented

    ctx = zmq_ctx
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    source = Subscriber(f"tcp://127.0.0.1:{port}", context=ctx)
    app = SymwatchApp(source, owns_source=True, tick_s=0.05)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + 10
            seq = 0
            while app.state.messages == 0:  # past the slow-joiner window
                assert time.monotonic() < deadline, "the app never received anything"
                pub.send_multipart(protocol.encode(
                    protocol.HEARTBEAT, run="fuzz-tui", rank=0, restart=0, seq=seq, time=0.0,
                    step=0, payload={"dropped": 0, "samples": 0}))
                seq += 1
                await pilot.pause(0.05)
            for i, f in enumerate(batch):
                pub.send_multipart(f)
                if i % 500 == 0:
                    await pilot.press("v")
                    await pilot.pause(0.02)
            deadline = time.monotonic() + 30
            while source.garbage < expected_bad:
                assert time.monotonic() < deadline, (source.garbage, expected_bad)
                await pilot.pause(0.05)
            await pilot.press("e")  # the events timeline, with whatever got through
            await pilot.pause(0.2)
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert source.garbage == expected_bad  # every bad frame counted, exactly
            assert app.tick_errors == 0, app.last_tick_error
            assert app.state.garbage == expected_bad
    finally:
        pub.close(0)
