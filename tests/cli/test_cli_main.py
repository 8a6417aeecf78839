"""The `symwatch` CLI, through main() and through real subprocesses (`python -m symwatch`)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from symwatch import __version__
from symwatch.cli.common import NO_RUNS, UserError, resolve_target
from symwatch.cli.main import main
from symwatch.core import protocol, runtime
from symwatch.launch import demo as launcher
from waiting import interruptible, until

TORCH_BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('torch', 'symwatch_agent'):
                raise ImportError(name + ' is blocked in this test')
            return None
    sys.meta_path.insert(0, Block())
""")


def _symwatch(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "symwatch", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def _register(run_id: str, name: str, endpoint: str = "tcp://127.0.0.1:5555",
              started: float | None = None) -> runtime.RunEntry:
    entry = runtime.RunEntry(run_id=run_id, name=name, pid=os.getpid(), command=["train.py"],
                             endpoint=endpoint, started=started or time.time(), host="h",
                             steps=7)
    runtime.write_entry(entry)
    return entry


# -- basics ------------------------------------------------------------------------------------

def test_version_and_bare_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"symwatch {__version__}"
    assert main([]) == 0
    assert "symwatch attach" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["attach", "--help"], ["ls", "--help"],
                                  ["demo", "--help"]])
def test_every_help_has_examples(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "usage: symwatch" in out


def test_usage_errors_return_2_without_traceback(capsys):
    assert main(["frobnicate"]) == 2
    assert main(["demo", "--steps", "-3"]) == 2
    assert main(["demo", "--every", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "expected an integer >= 0" in err


def test_an_unknown_command_names_the_nearest_and_the_public_ones_only(capsys):
    """A typo gets the command it was probably meant to be; the list of commands leaves out
    the hidden one that `attach ssh://…` runs on a host (argparse listed every choice)."""
    assert main(["atach"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'atach' (did you mean `attach`?)" in err, err
    assert "replay" in err and "ssh-relay" not in err, err
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err and "the commands: attach, ls" in err, err
    assert main(["ssh-relay", "--help"]) == 0  # hidden from the list, still there


def test_help_works_with_torch_blocked():
    code = TORCH_BLOCKER + textwrap.dedent("""
        from symwatch.cli.main import main
        codes = [main(['--help']), main(['attach', '--help']), main(['ls']), main(['attach'])]
        print('CODES', codes)
        print('TORCH', sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "CODES [0, 0, 0, 1]" in result.stdout and "TORCH []" in result.stdout
    assert "symwatch attach [-h]" in result.stdout
    assert NO_RUNS in result.stderr


# -- ls ----------------------------------------------------------------------------------------

def test_ls_empty(capsys):
    assert main(["ls"]) == 0
    assert capsys.readouterr().out.strip() == "no live runs"
    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_ls_lists_live_runs_and_prunes_dead_ones(capsys):
    a = _register("aaaa00001111", "alpha", started=time.time() - 5)
    b = _register("bbbb00001111", "beta")
    dead = runtime.RunEntry(run_id="dead00001111", name="ghost", pid=2 ** 22 + 12345,
                            command=["x"], endpoint="tcp://127.0.0.1:1", started=0.0, host="h")
    runtime.write_entry(dead)
    assert main(["ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [a.to_json(), b.to_json()]
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for text in ("run id", "alpha", "beta", "aaaa00001111", str(os.getpid()), "train.py",
                 "tcp://127.0.0.1:5555", time.strftime("%H:%M:%S", time.localtime(a.started)),
                 "steps"):
        assert text in out
    assert "ghost" not in out


def test_ls_all_keeps_dead_runs_and_says_which_are_alive(capsys):
    a = _register("aaaa00002222", "alpha")
    dead = runtime.RunEntry(run_id="dead00002222", name="ghost", pid=2 ** 22 + 12345,
                            command=["x"], endpoint="tcp://127.0.0.1:1", started=0.0, host="h")
    runtime.write_entry(dead)
    assert main(["ls", "--all", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [dead.to_json() | {"alive": False}, a.to_json() | {"alive": True}]
    assert main(["ls", "--all"]) == 0
    out = capsys.readouterr().out
    assert "ghost" in out and "lost" in out and "alive" in out
    assert main(["ls", "--json"]) == 0  # the default listing prunes it
    assert [e["run_id"] for e in json.loads(capsys.readouterr().out)] == [a.run_id]
    assert main(["ls", "--all", "--json"]) == 0
    assert [e["run_id"] for e in json.loads(capsys.readouterr().out)] == [a.run_id]


def test_ls_json_in_a_subprocess():
    _register("cccc00001111", "gamma")
    result = _symwatch("ls", "--json")
    assert result.returncode == 0, result.stderr
    assert [e["name"] for e in json.loads(result.stdout)] == ["gamma"]


# -- attach ------------------------------------------------------------------------------------

def test_attach_without_runs(capsys):
    assert main(["attach"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"symwatch attach: {NO_RUNS}"


def test_attach_without_runs_in_a_subprocess():
    result = _symwatch("attach")
    assert result.returncode == 1
    assert NO_RUNS in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("target, fragment", [
    ("http://host:1", "expected tcp://HOST:PORT or ipc://PATH, got 'http://host:1'; or "
                      "ssh://[USER@]HOST[/RUN] (docs/remote.md), or a run id or name"),
    ("tcp://nohost", "expected tcp://HOST:PORT or ipc://PATH"),
    ("localhost:5555", "did you mean tcp://localhost:5555?"),
    ("no-such-run", "not the id or name of a live run"),
])
def test_attach_bad_target_is_a_clear_error(target, fragment, capsys):
    assert main(["attach", target]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_resolve_target_by_id_prefix_and_name():
    runs = [_register("abc000000001", "alpha", "tcp://127.0.0.1:1001"),
            _register("abd000000002", "beta", "tcp://127.0.0.1:1002"),
            _register("ffff00000003", "beta", "tcp://127.0.0.1:1003")]
    runs = runtime.live_runs()
    assert resolve_target("abc000000001", runs) == ("tcp://127.0.0.1:1001", "alpha")
    assert resolve_target("abd", runs) == ("tcp://127.0.0.1:1002", "beta")
    assert resolve_target("alpha", runs) == ("tcp://127.0.0.1:1001", "alpha")
    assert resolve_target("ipc:///tmp/x.sock", runs) == ("ipc:///tmp/x.sock", None)
    with pytest.raises(UserError, match="matches several live runs"):
        resolve_target("ab", runs)
    with pytest.raises(UserError, match="matches several live runs"):
        resolve_target("beta", runs)


def test_attach_with_several_runs_and_no_terminal_lists_them(capsys):
    _register("aaaa00001111", "alpha")
    _register("bbbb00001111", "beta")
    assert main(["attach", "--headless"]) == 1
    err = capsys.readouterr().err
    assert "2 live runs; pass one of them" in err and "aaaa00001111" in err


def test_attach_headless_by_run_name_follows_until_goodbye(fake_agent, capsys):
    agent = fake_agent()
    _register(agent.run, "fake-run", agent.endpoint)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(["attach", "--headless",
                                                                  "fake-run"])))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        agent.meta(name="fake-run")
        while thread.is_alive() and time.monotonic() < deadline:
            agent.send(protocol.METRICS, 5, values={"fc1": {"numerical_rank": 3,
                                                            "stable_rank": 2.5}})
            agent.send(protocol.EVENT, 0, message="not measured: net.raw (Raw)",
                       severity="info")
            agent.send(protocol.EVENT, 4, message="a mode learned: fc1 modes 2 → 3 at step 4",
                       severity="transition", layer="fc1", metric="modes", before=2, after=3)
            agent.send(protocol.GOODBYE, 5, reason="finished", exit_code=0)
            thread.join(0.1)
    finally:
        thread.join(10)
    assert result == [0]
    captured = capsys.readouterr()
    assert "[finished] fake-run step 5" in captured.out and "numerical_rank       3" in captured.out
    # each event as it comes, not only the summary (it said nothing of what happened)
    assert "event step 4: a mode learned: fc1 modes 2 → 3 at step 4\n" in captured.out
    assert "info step 0: not measured: net.raw (Raw)\n" in captured.out
    # what it follows is said once up front (a new user saw only `[waiting]` lines)
    assert captured.err.startswith(f"symwatch attach: following fake-run ({agent.endpoint})")


# -- demo (with a torch-free stand-in for symwatch_agent.entry.demo) ---------------------------------

FAKE_DEMO = textwrap.dedent("""
    import argparse, json, os, sys, time
    import zmq
    from symwatch.core import protocol
    p = argparse.ArgumentParser()
    for flag, kind in (("--endpoint", str), ("--name", str), ("--steps", int),
                       ("--delay", float), ("--every", int)):
        p.add_argument(flag, type=kind, required=True)
    a = p.parse_args()
    with open(os.environ["FAKE_DEMO_LOG"], "w") as fh:
        json.dump({"argv": sys.argv[1:], "pid": os.getpid()}, fh)
    if os.environ.get("FAKE_DEMO_FAIL"):
        raise ModuleNotFoundError("No module named 'torch'")
    sock = zmq.Context().socket(zmq.PUB)
    sock.linger = 1000
    sock.bind(a.endpoint)
    seq = 0
    def send(kind, step, **payload):
        global seq
        sock.send_multipart(protocol.encode(kind, run="fake0000run", rank=0, restart=0, seq=seq,
                                            time=time.time(), step=step, payload=payload))
        seq += 1
    time.sleep(0.3)  # let the observer's subscription arrive
    step = 0
    while a.steps == 0 or step < a.steps:
        step += 1
        if step % 10 == 1:
            send("meta", step, name=a.name, pid=os.getpid(), host="h", command=sys.argv,
                 started=time.time(), every=a.every, indicators=list(protocol.INDICATORS),
                 layers=[{"name": "fc1", "type": "Linear", "shape": [4, 4], "params": 16}])
        if step % a.every == 0:
            send("metrics", step, values={"fc1": {"numerical_rank": step % 5, "stable_rank": 1.5}})
        send("stats", step, loss=1.0 / step)
        if step == 10:  # what the agent's detector publishes
            send("event", step, message="a mode learned: fc1 modes 1 → 2 at step 10",
                 severity="transition", layer="fc1", metric="modes")
        time.sleep(a.delay)
    send("goodbye", step, reason="finished", exit_code=0)
    time.sleep(0.2)
""")


@pytest.fixture
def fake_demo(tmp_path, monkeypatch):
    (tmp_path / "fake_demo_mod.py").write_text(FAKE_DEMO)
    monkeypatch.setattr(launcher, "DEMO_MODULE", "fake_demo_mod")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "demo.json"
    monkeypatch.setenv("FAKE_DEMO_LOG", str(log))
    return log


def test_demo_headless_runs_the_subprocess_and_exits_0(fake_demo, capsys):
    assert main(["demo", "--headless", "--steps", "40", "--delay", "0.02", "--every", "2",
                 "--name", "fake"]) == 0
    out = capsys.readouterr().out
    assert "[finished] fake step 40" in out and "fc1" in out and "numerical_rank" in out
    # each event is printed as it comes, before the run's end
    assert "event step 10: a mode learned: fc1 modes 1 → 2 at step 10\n" in out
    assert out.index("event step 10") < out.index("[finished]")
    argv = json.loads(fake_demo.read_text())["argv"]
    assert argv[0] == "--endpoint" and argv[1].startswith(("ipc://", "tcp://127.0.0.1:"))
    assert argv[2:] == ["--name", "fake", "--steps", "40", "--delay", "0.02", "--every", "2"]
    assert not os.listdir(runtime.runtime_dir() / "runs")
    assert not [f for f in os.listdir(runtime.runtime_dir()) if f.endswith((".sock", ".log"))]


def test_demo_that_fails_to_start_prints_its_stderr_and_a_hint(fake_demo, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DEMO_FAIL", "1")
    assert main(["demo", "--headless", "--steps", "5"]) == 1
    err = capsys.readouterr().err
    assert "the demo run did not start" in err
    assert "No module named 'torch'" in err and "pip install torch" in err


def _cli_with_fake_demo(*args: str) -> subprocess.Popen[str]:
    """`symwatch ARGS` in a subprocess whose demo module is the stand-in (PYTHONPATH has it)."""
    code = ("import sys; from symwatch.cli.main import main; "
            "from symwatch.launch import demo as launcher; "
            "launcher.DEMO_MODULE = 'fake_demo_mod'; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=interruptible)  # takes the SIGINT the tests send


def _wait_for_line(proc: subprocess.Popen[str], fragment: str, timeout: float = 30) -> None:
    """Wait until a stdout line contains `fragment`; a reader thread keeps it deadline-bound.

    The thread reads the pipe to its end, not just to that line: `--headless` keeps printing,
    and a child whose pipe fills blocks in write() and in its exit-time flush, so it could
    never exit after Ctrl-C (the cause of this test's failures on a loaded machine)."""
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            if fragment in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"no line with {fragment!r} within {timeout} s"


def test_demo_ctrl_c_stops_the_subprocess(fake_demo):
    proc = _cli_with_fake_demo("demo", "--headless", "--steps", "0", "--delay", "0.01")
    try:
        _wait_for_line(proc, "[live]")
        child = json.loads(fake_demo.read_text())["pid"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    deadline = time.monotonic() + 10
    while runtime.pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runtime.pid_alive(child)


def _started_pid(log) -> int | None:
    try:
        return json.loads(log.read_text())["pid"]
    except (OSError, ValueError):  # not written yet, or half-written
        return None


def test_demo_ctrl_c_while_waiting_for_the_first_message(fake_demo):
    """Ctrl-C as soon as the demo's process exists, before it has published anything:
    symwatch still ends it and exits 130."""
    proc = _cli_with_fake_demo("demo", "--headless", "--steps", "0", "--delay", "0.01")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # the pipe never fills
    try:
        assert until(lambda: _started_pid(fake_demo) is not None or proc.poll() is not None,
                     timeout=30), "the demo process did not start"
        child = _started_pid(fake_demo)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert child is not None
    assert until(lambda: not runtime.pid_alive(child), timeout=10), "the demo outlived Ctrl-C"


def test_demo_child_dies_when_symwatch_is_killed(fake_demo):
    proc = _cli_with_fake_demo("demo", "--headless", "--steps", "0", "--delay", "0.01")
    try:
        _wait_for_line(proc, "[live]")
        child = json.loads(fake_demo.read_text())["pid"]
        proc.kill()  # SIGKILL: no finally block runs in symwatch
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    deadline = time.monotonic() + 10
    while runtime.pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if runtime.pid_alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the demo subprocess outlived a killed symwatch")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None
                    or importlib.util.find_spec("symwatch_agent.entry.demo") is None,
                    reason="the real demo needs torch and symwatch_agent")
def test_real_demo_headless_in_a_subprocess():
    result = _symwatch("demo", "--headless", "--steps", "40", "--delay", "0.01", "--every", "5",
                       timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[finished]" in result.stdout and "linear.0" in result.stdout
