"""Faults: nothing a viewer or a recording does may block or crash the training run.

Each test runs a real torch training loop (in a subprocess where a process is killed or
limited) and real CLI subprocesses. Every wait has a deadline; nothing asserts on time."""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from symwatch import protocol
from symwatch.recording import RecordingReader

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
