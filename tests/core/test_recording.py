"""Recordings: the Recorder (SQLite, its own thread), the reader, downsampling, the agent's
`record=`, and the `record` / `export` / `replay` commands as real subprocesses."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from pathlib import Path

from symwatch.core import protocol
from symwatch.core.recording import Downsample, Recorder, RecordingError, RecordingReader
from symwatch.state.run_state import RunState
from waiting import until

RUN = "rec0000run01"


class Stream:
    """Encodes messages like the agent's publisher and hands them to a Recorder."""

    def __init__(self, recorder: Recorder, run: str = RUN, rank: int = 0) -> None:
        self.recorder, self.run, self.rank = recorder, run, rank
        self.seq = 0
        self.t = 1_700_000_000.0
        self.sent: list[protocol.Message] = []

    def send(self, kind: str, step: int, *, skip: int = 0, dt: float = 0.01, **payload):
        self.seq += skip
        self.t += dt
        topic, body = protocol.encode(kind, run=self.run, rank=self.rank, restart=0,
                                      seq=self.seq, time=self.t, step=step, payload=payload)
        self.sent.append(protocol.decode([topic, body]))
        self.recorder.submit(kind, self.run, self.rank, 0, self.seq, self.t, step, body)
        self.seq += 1

    def meta(self, step: int = 0, name: str = "rec-run", layers=("fc1", "fc2")) -> None:
        self.send(protocol.META, step, name=name, pid=1, host="h", command=["train.py"],
                  started=1_700_000_000.0, every=1, indicators=list(protocol.INDICATORS),
                  layers=[{"name": n, "type": "Linear", "shape": [4, 4], "params": 16}
                          for n in layers])


def make_recording(path, steps: int = 50, *, goodbye: bool = True, **kw) -> list[protocol.Message]:
    """A small synthetic run: meta, metrics + stats per step, a gpu sample, an event."""
    with Recorder(path, **kw) as rec:
        s = Stream(rec)
        s.meta()
        for step in range(1, steps + 1):
            s.send(protocol.METRICS, step, values={
                "fc1": {"numerical_rank": min(step // 10, 4), "stable_rank": 1.5},
                "fc2": {"numerical_rank": None, "stable_rank": 2.0}})
            s.send(protocol.STATS, step, loss=1.0 / step, steps_per_s=None,
                   scalars={"lr": 0.1})
            if step == 20:
                s.send(protocol.EVENT, step, message="fc1: numerical rank 1 → 2 at step 20",
                       severity="transition", layer="fc1", metric="numerical_rank",
                       direction="up", before=1, after=2, score=7.5)
                s.send(protocol.GPU, step, available=True, devices=[
                    {"index": 0, "name": "H100", "util": 55.0, "mem_used": None,
                     "mem_total": 8.0e10, "temp": None, "power": 200.0, "power_limit": None}])
        if goodbye:
            s.send(protocol.GOODBYE, steps, reason="finished", exit_code=0)
    assert rec.failed is None
    return s.sent


def count_rows(path) -> int:
    try:
        db = sqlite3.connect(path, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def symwatch(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "symwatch", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


# -- the recorder and the reader ---------------------------------------------------------------

def test_round_trip_keeps_every_message_in_order(tmp_path):
    path = tmp_path / "run.db"
    sent = make_recording(path)
    with RecordingReader(path) as reader:
        got = list(reader)
        assert reader.garbage == 0
    assert got == sent
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = db.execute("SELECT kind, run, rank, restart, seq, time, step, body FROM messages "
                     "WHERE kind='event'").fetchone()
    db.close()
    [event] = [m for m in sent if m.kind == protocol.EVENT]
    assert row[:7] == ("event", RUN, 0, 0, event.seq, event.time, 20)
    assert json.loads(row[7])["score"] == 7.5  # the body is plain JSON, queryable in SQL


def test_rows_are_committed_while_the_recorder_runs(tmp_path):
    """Committed at least every commit_interval: another process-like reader sees them
    without the recorder being closed (what a kill -9 leaves behind)."""
    path = tmp_path / "live.db"
    rec = Recorder(path).start()
    try:
        s = Stream(rec)
        s.meta()
        for step in range(1, 30):
            s.send(protocol.STATS, step, loss=1.0)
        assert until(lambda: count_rows(path) == 30, 20), "not 30 committed rows"
        with RecordingReader(path) as reader:
            assert [m.step for m in reader] == list(range(30))
    finally:
        rec.close()


def test_appending_to_an_existing_recording(tmp_path):
    path = tmp_path / "run.db"
    first = make_recording(path, 5)
    second = make_recording(path, 3)
    with RecordingReader(path, renumber=False) as reader:
        assert list(reader) == first + second


def test_downsampling_is_sublinear_and_keeps_events_goodbye_and_changed_meta(tmp_path):
    sizes = {}
    for n in (4000, 16000):
        path = tmp_path / f"long{n}.db"
        # a queue deep enough for the whole burst: this test is about thinning, not about
        # what a full queue drops (a loaded machine may not drain 16,000 rows in time)
        with Recorder(path, downsample=Downsample(recent=100), queue_size=100_000) as rec:
            s = Stream(rec)
            layers = ("fc1", "fc2")
            s.meta(layers=layers)
            for step in range(1, n + 1):
                s.send(protocol.METRICS, step, values={"fc1": {"stable_rank": float(step)}})
                if step % 500 == 0:
                    s.meta(step, layers=layers)  # the periodic re-send: not stored again
                    s.send(protocol.EVENT, step, message=f"notice {step}", severity="info")
                if step == n // 2:
                    layers = ("fc1", "fc2", "fc3")
                    s.meta(step, layers=layers)  # changed: stored
            s.send(protocol.GOODBYE, n, reason="finished")
        assert rec.dropped == 0
        with RecordingReader(path) as reader:
            msgs = list(reader)
        kinds = [m.kind for m in msgs]
        metrics = [m for m in msgs if m.kind == protocol.METRICS]
        sizes[n] = len(metrics)
        # about recent × (1 + log2(n / recent)) rows: 100 × 6.3 and 100 × 8.3
        assert len(metrics) < 100 * (2 + (n // 100).bit_length())
        assert kinds.count(protocol.EVENT) == n // 500
        assert kinds.count(protocol.GOODBYE) == 1
        assert kinds.count(protocol.META) == 2
        # the newest 100 samples are all there; older ones get sparser, never out of order
        steps = [m.step for m in metrics]
        assert steps == sorted(steps) and steps[-100:] == list(range(n - 99, n + 1))
        assert steps[0] == 1 or steps[0] <= 2 ** 8
        # thinning is not loss: a replay of the recording shows no dropped messages
        state = RunState()
        state.fold_all(msgs)
        assert state.dropped == 0 and state.finished
    assert sizes[16000] < 1.5 * sizes[4000]  # 4 × the samples, far less than 4 × the rows


def test_real_gaps_survive_renumbering(tmp_path):
    path = tmp_path / "gaps.db"
    with Recorder(path, downsample=Downsample(recent=10)) as rec:
        s = Stream(rec)
        s.meta()
        for step in range(1, 200):
            s.send(protocol.METRICS, step, values={}, skip=3 if step == 150 else 0)
    with RecordingReader(path) as reader:
        state = RunState()
        state.fold_all(list(reader))
    assert state.dropped == 3


def test_unwritable_path_warns_once_and_never_raises(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    warnings: list[str] = []
    rec = Recorder(blocker / "run.db", warn=warnings.append).start()
    assert not rec.wait_open(10)
    for step in range(100):
        assert rec.submit(protocol.STATS, RUN, 0, 0, step, 0.0, step, b"{}") is False
    rec.close()
    assert len(warnings) == 1 and "recording stopped" in warnings[0]
    assert rec.failed and rec.dropped == 100


def test_a_file_that_is_not_a_recording_is_refused(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello, I am not SQLite" * 100)
    with pytest.raises(RecordingError):
        RecordingReader(junk)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(RecordingError, match="not a symwatch recording"):
        RecordingReader(other)
    with pytest.raises(RecordingError, match="no such recording"):
        RecordingReader(tmp_path / "missing.db")
    warnings: list[str] = []
    rec = Recorder(other, warn=warnings.append).start()  # never write into a foreign file
    rec.close()
    assert rec.failed and len(warnings) == 1


def test_tampered_rows_are_counted_not_trusted(tmp_path):
    path = tmp_path / "run.db"
    sent = make_recording(path, 5)
    db = sqlite3.connect(path)
    ids = [r[0] for r in db.execute("SELECT id FROM messages ORDER BY id")]
    db.execute("UPDATE messages SET body='{not json' WHERE id=?", (ids[1],))
    db.execute("UPDATE messages SET kind='metrics' WHERE id=?", (ids[2],))  # a stats row
    db.execute("UPDATE messages SET body=? WHERE id=?",
               (json.dumps({"v": 2, "kind": "stats"}), ids[3]))
    db.execute("UPDATE messages SET kind=X'00ff' WHERE id=?", (ids[4],))
    db.execute("UPDATE messages SET lost=-5 WHERE id=?", (ids[5],))
    db.commit()
    db.close()
    with RecordingReader(path) as reader:
        got = list(reader)
        assert reader.garbage == 4
    assert len(got) == len(sent) - 4


# -- the agent records -------------------------------------------------------------------------

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="the agent needs torch")


def _train(agent_options: dict, steps: int = 12):
    import torch
    from torch import nn

    import symwatch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=2, budget=1.0,
                           **agent_options)
    with agent:
        for _ in range(steps):
            loss = model(torch.randn(16, 8)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return agent


@needs_torch
def test_agent_records_every_message_it_publishes(tmp_path):
    path = tmp_path / "agent.db"
    agent = _train({"record": path})
    assert agent.recorder is not None and agent.recorder.failed is None
    with RecordingReader(path) as reader:
        msgs = list(reader)
        assert reader.garbage == 0
    kinds = [m.kind for m in msgs]
    assert kinds[-1] == protocol.GOODBYE and protocol.META in kinds
    assert [m.step for m in msgs if m.kind == protocol.METRICS] == [1, 2, 4, 6, 8, 10, 12]
    assert {m.run for m in msgs} == {agent.run_id}
    assert [m.seq for m in msgs] == list(range(len(msgs)))  # nothing lost, nothing thinned


@needs_torch
def test_agent_records_to_the_path_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMWATCH_RECORD", str(tmp_path / "run-{run}-rank{rank}.db"))
    agent = _train({}, steps=3)
    path = tmp_path / f"run-{agent.run_id}-rank0.db"
    with RecordingReader(path) as reader:
        assert [m.kind for m in reader][-1] == protocol.GOODBYE


@needs_torch
def test_agent_with_an_unwritable_recording_warns_once_and_trains(tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    agent = _train({"record": blocker / "run.db"}, steps=20)
    assert agent.steps == 20 and agent.recorder.failed
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "symwatch" in line]
    assert len(lines) == 1 and "recording stopped" in lines[0]
    assert "training continues" in lines[0]


# -- the commands, as real subprocesses --------------------------------------------------------

def test_record_command_records_a_live_run_until_goodbye(tmp_path, fake_agent):
    agent = fake_agent()
    path = tmp_path / "cli.db"
    make_recording(path, 3)  # an earlier run in the file: this one is appended
    before = count_rows(path)
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "record", agent.endpoint,
                             "-o", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # heartbeats until the subscription has joined and rows reach the file
        deadline = time.monotonic() + 30
        while count_rows(path) == before:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the recorder never received anything"
            agent.heartbeat()
            time.sleep(0.05)
        agent.meta(name="fake-run")
        for step in range(1, 6):
            agent.send(protocol.METRICS, step, values={"fc1": {"numerical_rank": step}})
        agent.send(protocol.GOODBYE, 5, reason="finished", exit_code=0)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    added = count_rows(path) - before
    # what this command wrote, not the file's total (it read "N messages in" the file)
    assert f"the run ended; {added:,} messages added to {path}" in err, err
    with RecordingReader(path) as reader:
        msgs = list(reader)
    assert [m.step for m in msgs if m.kind == protocol.METRICS] == [1, 2, 3, 1, 2, 3, 4, 5]
    assert msgs[-1].kind == protocol.GOODBYE


def test_record_command_errors(tmp_path):
    result = symwatch("record", "-o", str(tmp_path / "x.db"),
                      env={**os.environ, "SYMWATCH_RUNTIME_DIR": str(tmp_path / "rt")})
    assert result.returncode == 1 and "no live symwatch runs" in result.stderr
    # what to type next is a `record` (it said `symwatch attach tcp://…`)
    assert "symwatch record tcp://127.0.0.1:PORT -o run.db" in result.stderr, result.stderr
    result = symwatch("record", "tcp://127.0.0.1:1", "-o", str(tmp_path / "nodir" / "x.db"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"there is no folder {tmp_path / 'nodir'}" in result.stderr, result.stderr


def test_an_output_through_a_link_or_a_device_is_written_there(tmp_path):
    """The write beside the output and the rename over it are for a regular file only: a
    symlink was replaced by a new file (its target left old), `-o /dev/stdout` failed (and as
    root could have replaced /dev/stdout); a file's permissions are kept."""
    path = tmp_path / "run.db"
    make_recording(path, 20)
    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    link.symlink_to(target)
    result = symwatch("export", str(path), "--format", "csv", "-o", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and target.read_text().startswith("kind,time,rank,step")
    again = symwatch("export", str(path), "--format", "csv", "-o", str(target))
    assert again.returncode == 0 and (target.stat().st_mode & 0o777) == 0o640
    if Path("/dev/stdout").exists():
        out = symwatch("export", str(path), "--format", "csv", "-o", "/dev/stdout")
        assert out.returncode == 0 and out.stdout.startswith("kind,time,rank,step"), out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "run.db", "target.csv"]


def test_damaged_rows_are_skipped_counted_and_named_by_every_reading_command(tmp_path):
    """Bodies that are not JSON, or JSON without a protocol version: each command skips them
    and says how many, as export did (report and detect said nothing); and a row with no
    version is "not a symwatch message", not advice to upgrade symwatch."""
    path = tmp_path / "run.db"
    make_recording(path, 30)
    db = sqlite3.connect(path)
    db.execute("UPDATE messages SET body = '{not json' WHERE kind = 'metrics' AND step <= 3")
    db.execute("UPDATE messages SET body = '{}' WHERE kind = 'metrics' AND step IN (4, 5)")
    db.commit()
    db.close()
    for command in (("export", "--format", "csv", "-o", str(tmp_path / "x.csv")),
                    ("report", "-o", str(tmp_path / "r.html")), ("detect",)):
        result = symwatch(command[0], str(path), *command[1:])
        assert result.returncode == 0, result.stderr
        assert f"symwatch {command[0]}: skipped 5 unreadable rows of the recording (last: not " \
               "a symwatch message (protocol version None))" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [("replay", "--headless"), ("export", "--format", "csv"),
                                     ("report", "-o", "r.html"), ("detect",)])
def test_a_folder_named_as_a_recording_is_called_a_folder(tmp_path, command):
    """It read "no such recording", of a path that exists."""
    result = symwatch(command[0], str(tmp_path), *command[1:], cwd=tmp_path)
    assert result.returncode == 1 and "is a folder, not a recording" in result.stderr, \
        result.stderr


def test_export_jsonl_records(tmp_path):
    path = tmp_path / "run.db"
    make_recording(path, 30)
    result = symwatch("export", str(path), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    recs = [json.loads(line) for line in result.stdout.splitlines()]
    metric = next(r for r in recs if r["kind"] == "metric" and r["layer"] == "fc2"
                  and r["metric"] == "numerical_rank")
    assert list(metric) == ["kind", "time", "rank", "step", "layer", "metric", "value", "label",
                            "run", "restart"]
    assert metric["run"] == "rec0000run01" and metric["restart"] == 0
    assert metric["value"] is None  # N/A stays null, never 0
    assert metric["label"] == "numerical rank"  # as the screen names it (core/names.py)
    loss = [r for r in recs if r["kind"] == "metric" and r["metric"] == "loss"]
    assert len(loss) == 30 and loss[0]["layer"] is None and loss[0]["value"] == 1.0
    assert any(r["metric"] == "lr" and r["value"] == 0.1 for r in recs)
    speed = next(r for r in recs if r["metric"] == "steps_per_s")
    assert speed["value"] is None
    [event] = [r for r in recs if r["kind"] == "event"]
    assert list(event) == ["kind", "time", "rank", "step", "layer", "metric", "direction",
                           "before", "after", "score", "message", "run", "restart"]
    assert event["step"] == 20 and event["direction"] == "up" and event["after"] == 2
    [gpu] = [r for r in recs if r["kind"] == "gpu"]
    assert gpu == {"kind": "gpu", "time": gpu["time"], "rank": 0, "step": 20, "index": 0,
                   "name": "H100", "util": 55.0, "mem_used": None, "mem_total": 8.0e10,
                   "temp": None, "power": 200.0, "power_limit": None, "sm_clock_mhz": None,
                   "sm_clock_max_mhz": None, "throttle": None, "run": "rec0000run01",
                   "restart": 0}  # an older agent: no clocks
    only_events = symwatch("export", str(path), "--format", "jsonl", "--kind", "events")
    assert [json.loads(x)["kind"] for x in only_events.stdout.splitlines()] == ["event"]


def test_export_csv_to_a_file(tmp_path):
    path = tmp_path / "run.db"
    make_recording(path, 10)
    out = tmp_path / "m.csv"
    result = symwatch("export", str(path), "--format", "csv", "--kind", "metrics", "-o", str(out))
    assert result.returncode == 0 and result.stdout == "", result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["kind", "time", "rank", "step", "layer", "metric", "value",
                             "label", "run", "restart"]
    na = next(r for r in rows if r["layer"] == "fc2" and r["metric"] == "numerical_rank")
    assert na["value"] == ""  # empty, never 0
    loss = next(r for r in rows if r["metric"] == "loss")
    assert loss["layer"] == "" and float(loss["value"]) == 1.0
    everything = symwatch("export", str(path), "--format", "csv")
    header = everything.stdout.splitlines()[0].split(",")
    assert header[:7] == ["kind", "time", "rank", "step", "layer", "metric", "value"]
    assert "power_limit" in header and "message" in header
    # new fields come last: `label` after the GPU clocks, then the run's id and restart
    assert header[-3:] == ["label", "run", "restart"]
    bad = symwatch("export", str(tmp_path / "missing.db"), "--format", "csv")
    assert bad.returncode == 1 and "no such recording" in bad.stderr


def _file_size_limit(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("command", [("export", "--format", "jsonl"), ("report",)])
def test_an_output_that_cannot_be_written_is_a_clear_error_and_keeps_the_old_file(tmp_path,
                                                                                  command):
    """A full disk (here a file size limit; /dev/full) is an error that says so, with no
    traceback, and the previous good file is left whole (a failed export or report left a
    truncated one, half an SVG, where it was)."""
    path = tmp_path / "run.db"
    # a report longer than the 32 KiB SQLite's reader needs under the same limit (its -shm)
    make_recording(path, 3000 if command[0] == "report" else 400)
    out = tmp_path / "out"
    first = symwatch(*command, str(path), "-o", str(out))
    assert first.returncode == 0, first.stderr
    good = out.read_bytes()
    limited = symwatch(*command, str(path), "-o", str(out),
                       preexec_fn=_file_size_limit(len(good) - 1))
    assert limited.returncode == 1 and "Traceback" not in limited.stderr, limited.stderr
    assert f"cannot write {out}: [Errno 27] File too large (the file there was left as it " \
           "was)" in limited.stderr, limited.stderr
    assert out.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == [
        "out", "run.db"]  # no partial file beside it either
    if Path("/dev/full").exists():
        full = symwatch(*command, str(path), "-o", "/dev/full")
        assert full.returncode == 1 and "cannot write /dev/full: [Errno 28]" in full.stderr, \
            full.stderr


def test_replay_headless_prints_the_recorded_run(tmp_path):
    path = tmp_path / "run.db"
    make_recording(path, 40)
    result = symwatch("replay", str(path), "--headless")
    assert result.returncode == 0, result.stderr
    assert "[finished] rec-run step 40" in result.stdout
    assert "fc1" in result.stdout and "numerical_rank       4" in result.stdout
    # each event as it passes, as `attach --headless` prints it
    assert "event step 20: fc1: numerical rank 1 → 2 at step 20\n" in result.stdout


def test_replay_headless_of_a_run_without_goodbye_ends_stale(tmp_path):
    path = tmp_path / "killed.db"
    make_recording(path, 10, goodbye=False)
    result = symwatch("replay", str(path), "--headless", "--speed", "1000")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-3].startswith("[stale] rec-run step 10")


def test_a_full_queue_still_takes_transitions_and_the_goodbye(tmp_path):
    """Under pressure samples are dropped (and counted), but the rare irreplaceable messages
    (events, goodbye) use a reserve that samples cannot fill."""
    rec = Recorder(tmp_path / "r.db", queue_size=10)  # not started: nothing drains the queue
    body = b"{}"
    accepted = [rec.submit(protocol.METRICS, "run", 0, 0, seq, 0.0, seq, body) for seq in range(15)]
    assert accepted == [True] * 10 + [False] * 5 and rec.dropped == 5
    assert rec.submit(protocol.EVENT, "run", 0, 0, 15, 0.0, 15, body)
    assert rec.submit(protocol.GOODBYE, "run", 0, 0, 16, 0.0, 16, body)
    assert rec.dropped == 5
