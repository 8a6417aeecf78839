"""`symwatch inject PID` / `attach --pid`: the agent put into a training process that is already
running and never imported symwatch. Real training subprocesses, real gdb, the real CLI, a
real ZeroMQ subscriber. The runs pause at fixed steps (a file tells them to go on), so where
the injection lands is known without timing anything; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from symwatch.cli import inject as inject_cli
from symwatch.cli.main import main
from symwatch.core import protocol
from symwatch.launch.inject import debuggers, injection
from symwatch.launch.inject import remote_exec as remote
from symwatch.launch.inject import snippet as snippets
from symwatch.launch.inject import target as targets

FIXTURES = Path(__file__).parents[1] / "fixtures"
TRAIN = str(FIXTURES / "inject_train.py")
SYMWATCH = [sys.executable, "-m", "symwatch"]
DEADLINE_S = 100  # a cold torch import on a loaded machine can take a while
STEPS = 200
# the fixture's Sequential (Linear, ReLU, Dropout, Linear), named by its class: it is no global
LAYERS = {"sequential.0", "sequential.3"}

# gdb's own words when the kernel refuses ptrace (gdb 13, a non-dumpable process of the same
# user; Yama and a container without CAP_SYS_PTRACE give the same line).
GDB_PTRACE_EPERM = "ptrace: Operation not permitted.\n"
GDB_ALREADY_TRACED = ("warning: process 4321 is already traced by process 4400\n"
                      "ptrace: Operation not permitted.\n")
# lldb's (lldb 14), the same for a process of another user and one already traced.
LLDB_PTRACE_EPERM = ("(lldb) process attach --pid 4321\n"
                     "error: attach failed: Operation not permitted\n")


def _attach_output(argv: list[str]) -> str:
    """What a debugger prints attached (`argv` + a pid) to a child of ours."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        return subprocess.run([*argv, str(child.pid)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60).stdout
    finally:
        child.kill()
        child.wait()


def _ptrace_works() -> str | None:
    """None if gdb can attach to a child of ours here, else why not (the skip reason)."""
    if shutil.which("gdb") is None:
        return "gdb is not installed (tests/setup.sh installs it)"
    out = _attach_output(["gdb", "-batch", "-nx", "-iex", "set auto-solib-add off", "-ex",
                          "echo ATTACHED\\n", "-p"])
    if "ptrace:" in out or "ATTACHED" not in out:
        return f"ptrace is not permitted in this environment: {out.strip()[-200:]}"
    return None


def _lldb_attach_works() -> str | None:
    """None if lldb can attach to a child of ours and evaluate there, else why not."""
    try:
        lldb = debuggers.find_lldb()
    except targets.InjectError:
        return "lldb is not installed (tests/setup.sh installs it)"
    out = _attach_output([lldb, "--batch", "--no-lldbinit", "-o", 'p "ATTACHED"', "-o",
                          "process detach", "-p"])
    if '= "ATTACHED"' not in out:
        return f"lldb cannot attach in this environment: {out.strip()[-200:]}"
    return None


_PROBLEMS: dict[str, str | None] = {}


def _skip_unless_attaches(debugger: str) -> None:
    if debugger not in _PROBLEMS:
        _PROBLEMS[debugger] = (_ptrace_works if debugger == "gdb" else _lldb_attach_works)()
    if _PROBLEMS[debugger]:
        pytest.skip(_PROBLEMS[debugger])


@pytest.fixture
def gdb_attach() -> None:
    _skip_unless_attaches("gdb")


@pytest.fixture
def lldb_attach() -> None:
    _skip_unless_attaches("lldb")


@pytest.fixture(params=["gdb", "lldb"])
def method(request) -> str:
    """Each debugger route (`--method`), skipped with the reason where it cannot attach."""
    request.getfixturevalue(f"{request.param}_attach")
    return request.param


class Run:
    """The fixture script in a subprocess, paused at known steps."""

    def __init__(self, tmp_path: Path, *extra: str, pauses: tuple[int, ...] = (),
                 python: str = sys.executable) -> None:
        self.go = {step: tmp_path / f"go{step}" for step in pauses}
        argv = [python, TRAIN, "--steps", str(STEPS), *extra]
        for step, path in self.go.items():
            argv += ["--pause-at", f"{step}:{path}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        self.pid = self.proc.pid

    def wait_paused(self, step: int) -> None:
        marker = Path(f"{self.go[step]}.paused")
        deadline = time.monotonic() + DEADLINE_S
        while not marker.exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"the run never reached step {step}"
            time.sleep(0.02)

    def resume(self, step: int) -> None:
        self.go[step].touch()

    def finish(self) -> tuple[str, str]:
        for path in self.go.values():
            path.touch()
        out, err = self.proc.communicate(timeout=DEADLINE_S)
        assert self.proc.returncode == 0, err
        return out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _result_lines(out: str) -> list[str]:
    """The final loss and the weights' hash."""
    lines = [line for line in out.splitlines() if line.startswith(("final loss", "weights"))]
    assert len(lines) == 2, out
    return lines


@pytest.fixture(scope="module")
def uninjected(tmp_path_factory) -> list[str]:
    """What the fixture run prints without any injection."""
    run = Run(tmp_path_factory.mktemp("plain"))
    try:
        return _result_lines(run.finish()[0])
    finally:
        run.kill()


class Lines:
    """A subprocess's stderr lines, read on a thread, with a deadline-bound wait."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline,
                                                                             "")), daemon=True)
        self._thread.start()

    def join(self) -> list[str]:
        self._thread.join(DEADLINE_S)
        return self.lines

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines}"
            time.sleep(0.02)


def _resume_when_armed(run: Run, step: int):
    """A progress callback that lets the paused run step once the hook is armed."""
    _resume_when_armed.said = []

    def progress(text: str) -> None:
        _resume_when_armed.said.append(text)
        if "armed" in text:
            run.resume(step)
    return progress


# -- the acceptance test -------------------------------------------------------------------------

def test_injected_mid_run_publishes_once_and_trains_the_same_weights(
        method, uninjected, tmp_path, collector, monkeypatch):
    # Paused at step 50 (running Python, not stepping) the injection lands mid-run; paused
    # again at step 100 the subscriber is surely connected before the next metrics are sent.
    run = Run(tmp_path, "--without-symwatch", "--report", pauses=(50, 100))
    try:
        run.wait_paused(50)
        inject = subprocess.Popen([*SYMWATCH, "inject", str(run.pid), "--every", "1",
                                   "--budget", "1", "--full-every", "2", "--method", method],
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        progress = Lines(inject.stderr)
        progress.wait_for("armed")  # the hook is in; the agent starts after the next step
        run.resume(50)
        assert inject.wait(DEADLINE_S) == 0, progress.join()
        endpoint = inject.stdout.read().strip()  # stdout: the endpoint, nothing else
        assert endpoint.startswith(("ipc://", "tcp://")) and "\n" not in endpoint
        assert any(f"publishes on {endpoint}" in line for line in progress.join())

        run.wait_paused(100)
        # Injecting again starts no second agent: answered from the registry without touching
        # the process, or (a registry elsewhere) by the process's own agent.
        again = injection.inject(run.pid, method=method)
        assert again.already and again.endpoint == endpoint
        monkeypatch.setenv("SYMWATCH_RUNTIME_DIR", str(tmp_path / "elsewhere"))
        inside = injection.inject(run.pid, method=method)
        assert inside.already and inside.endpoint == endpoint and inside.run_id == again.run_id

        sub = collector(endpoint)
        sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT, timeout=DEADLINE_S)  # joined
        run.resume(100)
        metrics = sub.wait_for(lambda m: m.kind == protocol.METRICS, timeout=DEADLINE_S)
        assert set(metrics.payload["values"]) == LAYERS
        assert 0 < metrics.step <= STEPS - 50  # steps are counted from the injection
        out, err = run.finish()
        sub.wait_for(lambda m: m.kind == protocol.GOODBYE, timeout=DEADLINE_S)
        warnings = [m.payload["message"] for m in sub.of_kind(protocol.EVENT)
                    if m.payload.get("severity") == "warning"]
        assert warnings == []
        # the agent options reached watch(): every step sampled, every second one full
        steps = sorted(m.step for m in sub.of_kind(protocol.METRICS))
        full = sorted(m.step for m in sub.of_kind(protocol.METRICS) if "detail" in m.payload)
        assert steps == list(range(steps[0], steps[-1] + 1)) and len(full) >= 2
        assert {b - a for a, b in zip(full, full[1:])} == {2}, full
    finally:
        run.kill()
    assert _result_lines(out) == uninjected  # exactly the same training
    assert err.count("symwatch: injected: watching") == 1
    # symwatch could not be imported there: the injector brought its own package roots.
    assert "symwatch_agent.agent" in out and "sys.path changed: True" in out


def test_tracer_named_then_models_named_by_expression(method, gdb_attach, tmp_path, capsys,
                                                     monkeypatch):
    run = Run(tmp_path, pauses=(20,))
    release = tmp_path / "release"
    try:
        run.wait_paused(20)
        # Another debugger holds the process until told to detach (killing it could leave the
        # process stopped): ptrace refuses a second tracer, and the message names the first.
        holder = subprocess.Popen(["gdb", "-p", str(run.pid), "-batch", "-nx", "-iex",
                                   "set auto-solib-add off", "-ex",
                                   f"shell while [ ! -e {release} ]; do sleep 0.05; done"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while f"TracerPid:\t{holder.pid}\n" not in Path(f"/proc/{run.pid}/status").read_text():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert main(["inject", str(run.pid), "--method", method]) == 1
            error = capsys.readouterr().err
            assert f"another debugger or tracer (process {holder.pid}) is attached" in error
        finally:
            release.touch()
            holder.wait(DEADLINE_S)

        # `model` is a local of main(): found in the frames of the main thread.
        assert main(["inject", str(run.pid), "--model", "nosuch_model", "--method",
                     method]) == 1
        error = capsys.readouterr().err
        assert "--model 'nosuch_model': NameError" in error
        monkeypatch.setattr(inject_cli, "_stderr", _resume_when_armed(run, 20))
        assert main(["inject", str(run.pid), "--model", "model[3]", "--optimizer", "opt",
                     "--name", "by-expression", "--method", method]) == 0
        said = "\n".join(_resume_when_armed.said)
        assert "1 layers" in said and "by-expression" in said
        _, err = run.finish()
    finally:
        run.kill()
    assert err.count("symwatch: injected: watching") == 1


def test_agent_that_cannot_be_imported_leaves_the_run_as_it_was(gdb_attach, uninjected,
                                                                  tmp_path, capsys):
    run = Run(tmp_path, "--without-symwatch", "--no-zmq", "--report", pauses=(30,))
    try:
        run.wait_paused(30)
        assert main(["inject", str(run.pid)]) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 2  # the progress line, then one line saying why
        assert "the agent cannot be imported" in error and "zmq" in error
        assert "into the process's environment" in error
        out, err = run.finish()
    finally:
        run.kill()
    assert _result_lines(out) == uninjected
    assert "symwatch modules: []" in out and "sys.path changed: False" in out
    assert "symwatch" not in err


def test_inject_connect_publishes_to_a_relay(gdb_attach, tmp_path, capsys, zmq_ctx):
    from symwatch.transport.relay import Relay
    from symwatch.transport.subscriber import Subscriber

    run = Run(tmp_path, "--without-symwatch", pauses=(30,))
    with Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", register=False) as relay:
        viewer = Subscriber(relay.publish_endpoint, context=zmq_ctx)
        try:
            run.wait_paused(30)
            done: list[int] = []
            thread = threading.Thread(target=lambda: done.append(main(
                ["inject", str(run.pid), "--every", "1", "--budget", "1", "--method", "gdb",
                 "--connect", relay.bind_endpoint])), daemon=True)
            thread.start()
            deadline = time.monotonic() + DEADLINE_S
            got: list[protocol.Message] = []
            while not any(m.kind == protocol.METRICS for m in got):
                assert time.monotonic() < deadline, f"nothing reached the relay: {got[:3]}"
                if not run.go[30].exists() and "armed" in capsys.readouterr().err:
                    run.resume(30)  # the hook is in; the agent starts after the next step
                got.extend(viewer.poll(50))
            thread.join(DEADLINE_S)
            assert done == [0]
            assert "to the relay at" in capsys.readouterr().err
            run.finish()
        finally:
            viewer.close()
            run.kill()
    assert any(m.kind == protocol.META for m in got)


def test_inject_connect_refuses_a_relay_on_another_host_without_keys(capsys):
    assert main(["inject", str(os.getpid()), "--connect", "tcp://10.11.12.13:5557"]) == 2
    err = capsys.readouterr().err
    assert "`symwatch inject --insecure`" in err and "--client-key" in err


@contextlib.contextmanager
def _blocked_in_read(then: str) -> Iterator[subprocess.Popen]:
    """A Python process (torch loaded) whose main thread sits in read(2) on its stdin pipe, so
    no Python code runs and no safe point comes; after one byte arrives it runs `then`. Killed
    on the way out if the test did not let it finish."""
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys, torch; print('ready', flush=True); "
                             f"sys.stdin.buffer.read(1); {then}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _woke_unharmed(proc: subprocess.Popen) -> None:
    """Send the byte it waits for: it must run its code and exit cleanly (no trap was left
    in it, which would kill it with SIGTRAP at its next pending call)."""
    out, err = proc.communicate("x", timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    assert out == "woke\n"


def test_process_blocked_in_c_is_left_untouched(method, monkeypatch, capsys):
    # The main thread sits in read(2) on a pipe: no Python code runs, so no safe point comes.
    monkeypatch.setattr(injection, "SAFE_POINT_WAIT_S", 1.0)
    with _blocked_in_read("print('woke', flush=True)") as proc:
        assert main(["inject", str(proc.pid), "--method", method]) == 1
        assert "ran no Python code in its main thread" in capsys.readouterr().err
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "\nTracerPid:\t0\n" in status  # detached
        assert "\nState:\tT" not in status  # and not left stopped
        # The queued no-op runs, harmless: no breakpoint was left in PyCallable_Check.
        _woke_unharmed(proc)


def test_lldb_that_goes_on_waiting_is_stopped_without_leaving_its_breakpoint(
        lldb_attach, monkeypatch, capsys):
    # Where the signal to the process cannot end lldb's wait (a process stopped by job
    # control), lldb itself is interrupted: here at once. It must detach and take its trap out
    # of PyCallable_Check, or the process dies of SIGTRAP at its next pending call.
    monkeypatch.setattr(injection, "SAFE_POINT_WAIT_S", 1.0)
    monkeypatch.setattr(debuggers, "LLDB_GIVE_UP_S", -1.0)
    with _blocked_in_read("callable(len); print('woke', flush=True)") as proc:
        assert main(["inject", str(proc.pid), "--method", "lldb"]) == 1
        assert "ran no Python code in its main thread" in capsys.readouterr().err
        assert "\nTracerPid:\t0\n" in Path(f"/proc/{proc.pid}/status").read_text()
        _woke_unharmed(proc)


def _other_python() -> str | None:
    """An interpreter of another minor version than this one, if the machine has one."""
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [shutil.which(f"python3.{minor}") for minor in range(10, 16)]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1*/bin/python3"))
    for path in filter(None, candidates):
        try:
            version = subprocess.run(
                [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if version and version != ours and tuple(map(int, version.split('.'))) >= (3, 10):
            return path
    return None


def test_other_python_version_is_told_apart(gdb_attach, tmp_path, capsys):
    other = _other_python()
    if other is None:
        pytest.skip("no Python of another minor version on this machine")
    # That interpreter has no torch: a stand-in module and a mapped "libtorch" make it pass for
    # a training process, so the injection really runs there, and the agent cannot be imported.
    fake = tmp_path / "libtorch_standin.so"
    shutil.copy(next(p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib64/libm.so.6",
                                 "/lib/aarch64-linux-gnu/libm.so.6") if os.path.exists(p)),
                fake)
    proc = subprocess.Popen([other, "-c", f"import ctypes, sys, time, types; "
                             f"ctypes.CDLL({str(fake)!r}); sys.modules['torch'] = "
                             f"types.ModuleType('torch'); print('ready', flush=True)\n"
                             f"while True: time.sleep(0.01)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        assert main(["inject", str(proc.pid)]) == 1
        error = capsys.readouterr().err.splitlines()[-1]
        ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
        assert "the agent cannot be imported" in error and f"symwatch runs Python {ours}" in error
        assert "install symwatch into the process's environment" in error
        assert proc.poll() is None  # still running, as it was
    finally:
        proc.kill()
        proc.communicate()


# -- refusals that need no debugger --------------------------------------------------------------

def test_no_such_process(capsys):
    assert main(["inject", "4194304"]) == 1  # above Linux's largest pid
    assert "no process with id 4194304" in capsys.readouterr().err


def test_not_a_python_process(capsys):
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert main(["inject", str(proc.pid)]) == 1
        error = capsys.readouterr().err
        assert f"process {proc.pid} (" in error and "sleep) is not a Python process" in error
    finally:
        proc.kill()
        proc.wait()


def test_python_without_torch(capsys):
    proc = subprocess.Popen([sys.executable, "-c", "import time; print(1, flush=True); "
                             "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        assert main(["inject", str(proc.pid)]) == 1
        assert "has not imported torch" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()


def test_gdb_missing(tmp_path, monkeypatch, capsys):
    # A process with torch loaded, and a PATH without gdb (nor lldb).
    proc = subprocess.Popen([sys.executable, "-c", "import torch, time; print(1, flush=True); "
                             "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        monkeypatch.setenv("PATH", str(tmp_path))
        assert main(["inject", str(proc.pid)]) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "gdb is not installed" in error
        assert "apt-get install gdb" in error
        assert main(["inject", str(proc.pid), "--method", "lldb"]) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "lldb is not installed" in error
        assert "apt-get install lldb" in error and "--method gdb" in error
    finally:
        proc.kill()
        proc.wait()


def test_attach_pid_and_target_exclude_each_other(capsys):
    assert main(["attach", "tcp://127.0.0.1:5555", "--pid", "1"]) == 2
    assert "--pid, not both" in capsys.readouterr().err


# -- parsing gdb's answers, and what is sent ----------------------------------------------

def _target() -> targets.Target:
    return targets.Target(4321, "/usr/bin/python3.11", ["python", "train.py"], (3, 11), True,
                           os.getuid())


def test_ptrace_refusal_says_what_to_change():
    message = debuggers.gdb_failure(GDB_PTRACE_EPERM, _target())
    assert "ptrace is not permitted" in message
    for advice in ("same user", "kernel.yama.ptrace_scope", "CAP_SYS_PTRACE"):
        assert advice in message
    other = debuggers.gdb_failure(GDB_ALREADY_TRACED, _target())
    assert "(process 4400) is attached" in other


def test_gdb_outcomes_are_told_apart():
    mark = debuggers.MARK
    assert debuggers.gdb_failure(f"{mark} attached\n{mark} python\n{mark} waiting\n"
                                f"{mark} safe point\n{mark} ran\n", _target()) is None
    not_python = f'{mark} attached\nNo symbol "Py_AddPendingCall" in current context.\n'
    assert "is not a Python process" in debuggers.gdb_failure(not_python, _target())
    gone = "ptrace: No such process.\n"
    assert "has exited" in debuggers.gdb_failure(gone, _target())
    blocked = f"{mark} attached\n{mark} python\n{mark} waiting\n{mark} no safe point\n"
    assert "ran no Python code" in debuggers.gdb_failure(blocked, _target())


def test_lldb_refusal_and_outcomes_are_told_apart():
    alive = targets.Target(os.getpid(), sys.executable, ["python", "train.py"], (3, 11), True,
                            os.getuid())  # a live process no debugger traces: this one
    message = debuggers.lldb_failure(LLDB_PTRACE_EPERM, alive)
    assert "ptrace is not permitted" in message
    for advice in ("same user", "kernel.yama.ptrace_scope", "CAP_SYS_PTRACE"):
        assert advice in message

    def printed(*marks: str) -> str:  # what lldb prints for `p "SYMWATCH: ..."`, echo first
        return "".join(f'(lldb) p "{debuggers.MARK} {mark}"\n(const char[30]) $0 = '
                       f'"{debuggers.MARK} {mark}"\n' for mark in marks)
    assert debuggers.lldb_failure(printed("attached", "python", "queued", "waiting",
                                         "safe point", "ran"), alive) is None
    not_python = printed("attached") + "error: use of undeclared identifier 'Py_AddPendingCall'\n"
    assert "is not a Python process" in debuggers.lldb_failure(not_python, alive)
    full = printed("attached", "python") + (f'(const char *) $5 = 0x00007f29eeecd420 '
                                            f'"{debuggers.MARK} pending calls full"\n')
    assert "too many pending calls" in debuggers.lldb_failure(full, alive)
    # The commands lldb echoes carry the marks' words: only what `p` printed counts.
    echoed_only = printed("attached", "python", "waiting") + (
        f'(lldb)  p "{debuggers.MARK} safe point"\n(lldb)  p "{debuggers.MARK} ran"\n')
    assert "ran no Python code" in debuggers.lldb_failure(echoed_only, alive)
    gone = targets.Target(4194304, "/usr/bin/python3.11", [], (3, 11), True, os.getuid())
    assert "has exited" in debuggers.lldb_failure("error: attach failed: Cannot get process "
                                                 "architecture\n", gone)


def test_lldb_chosen_where_gdb_is_missing(tmp_path, monkeypatch):
    # Only a versioned lldb-NN, as Debian's lldb-14 package alone installs, on the PATH.
    (tmp_path / "lldb-14").symlink_to(shutil.which("true") or "/bin/true")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert injection._choose_route(_target(), "auto") == "lldb"
    assert debuggers.find_lldb() == str(tmp_path / "lldb-14")
    assert injection._choose_route(_target(), "gdb") == "gdb"  # asked for, even if missing
    (tmp_path / "gdb").symlink_to(shutil.which("true") or "/bin/true")
    assert injection._choose_route(_target(), "auto") == "gdb"


def test_python_version_read_from_the_mapped_files():
    assert targets._python_version("/usr/bin/python3", {
        "/usr/lib/libpython3.12.so.1.0", "/usr/lib/libc.so.6"}) == (3, 12)
    assert targets._python_version("/opt/py/bin/python3.13t", set()) == (3, 13)
    assert targets._python_version("/usr/bin/myapp", {"/usr/lib/libc.so.6"}) is None


def test_old_python_refused():
    old = targets.Target(1, "/usr/bin/python3.8", [], (3, 8), True, 0)
    with pytest.raises(targets.InjectError, match="needs Python 3.10 or newer"):
        targets.check_target(old)


def test_snippet_is_valid_python_and_survives_gdb_quoting():
    request = {"result": "/tmp/x/result.json", "options": {"name": 'a "quoted" \\ name'}}
    code = snippets.snippet(request, ["/opt/sym watch"])
    compile(code, "<test>", "exec")
    script = debuggers.gdb_script(code, "x86_64")
    literal = script.split("PyRun_SimpleString(", 1)[1].rsplit(")", 1)[0]
    # gdb reads C string literals: undoing the escapes gives the code back.
    assert json.loads(literal) == code
    assert "$rdi == 0" in script and debuggers.gdb_script(code, "aarch64").count("$x0") == 1
    with pytest.raises(targets.InjectError, match="not supported on mips"):
        debuggers.gdb_script(code, "mips")
    # lldb: the same literal, read from the line its breakpoint command runs; a backtick
    # (which lldb evaluates in a command line) written as an octal escape.
    ticked = snippets.snippet({**request, "options": {"name": "`rm -rf`"}}, ["/opt/x"])
    script = debuggers.lldb_script(ticked, "x86_64")
    line = next(line for line in script.splitlines() if "PyRun_SimpleString)(" in line)
    literal = line.split("PyRun_SimpleString)(", 1)[1].rsplit(")", 1)[0]
    assert "`" not in literal and json.loads(literal.replace("\\140", "`")) == ticked
    assert "--condition '$rdi == 0'" in script
    assert "--condition '$x0 == 0'" in debuggers.lldb_script(code, "aarch64")
    # Our lines run only as the breakpoint's commands, after the wait is no longer
    # interruptible; then lldb detaches.
    body = script.split("breakpoint command add\n", 1)[1].split("DONE\n", 1)[0]
    assert body.index("--pass false SIGURG") < body.index("safe point") < body.index(
        "PyRun_SimpleString")
    assert script.rstrip().endswith("continue\nprocess detach")


def test_remote_exec_route_needs_the_same_python():
    py314 = targets.Target(1, "/usr/bin/python3.14", [], (3, 14), True, os.getuid())
    if sys.version_info[:2] != (3, 14):
        assert injection._choose_route(py314, "auto") == "gdb"
        with pytest.raises(targets.InjectError, match="same Python 3.14"):
            injection._choose_route(py314, "remote-exec")
    assert injection._choose_route(_target(), "gdb") == "gdb"


@pytest.mark.parametrize("raised, said", [
    (RuntimeError("Remote debugging is not enabled in the remote process"),
     "remote debugging is disabled"),
    (PermissionError(1, "Operation not permitted"), "kernel.yama.ptrace_scope"),
    (ProcessLookupError(3, "No such process"), "has exited"),
])
def test_remote_exec_refusals_are_explained(monkeypatch, tmp_path, raised, said):
    # Python 3.14's sys.remote_exec, which this interpreter may lack, stood in for by one that
    # raises what the real one raises (its messages from CPython's Python/remote_debugging.c).
    def remote_exec(pid, script):
        raise raised
    monkeypatch.setattr(sys, "remote_exec", remote_exec, raising=False)
    with pytest.raises(targets.InjectError, match=said):
        remote.run_remote_exec(_target(), tmp_path / "inject.py")


# -- the in-target part, in this process (no debugger) --------------------------------------------

@pytest.fixture
def hook_tables():
    """torch's global optimizer-step and forward hook tables, to compare before and after."""
    torch = pytest.importorskip("torch")
    from torch.nn.modules import module as module_mod
    from torch.optim import optimizer as optim_mod

    def snapshot():
        return (list(optim_mod._global_optimizer_post_hooks),
                list(module_mod._global_forward_pre_hooks))
    # The in-target hook watches every live optimizer by default: models and optimizers that
    # earlier tests left in cyclic garbage would join this test's model.
    gc.collect()
    before = snapshot()
    yield torch, snapshot
    # A test that failed half-way leaves its hooks armed; the next test must not inherit them.
    from symwatch_agent.entry import injected
    injected._pending = None
    for table, kept in zip((optim_mod._global_optimizer_post_hooks,
                            module_mod._global_forward_pre_hooks), before):
        for key in [k for k in table if k not in kept]:
            del table[key]


def _training(torch):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step():
        loss = model(torch.ones(3, 4)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt, step


def _request(tmp_path: Path, **extra) -> tuple[str, Path, Path]:
    result, waiting = tmp_path / "result.json", tmp_path / "waiting"
    waiting.touch()
    return json.dumps({"result": str(result), "waiting": str(waiting), **extra}), result, waiting


def test_in_target_hook_starts_one_agent_then_leaves_no_hook(hook_tables, tmp_path):
    torch, snapshot = hook_tables
    from symwatch_agent.entry import injected
    from symwatch_agent import open_agents

    model, opt, step = _training(torch)
    step()
    before = snapshot()
    request, result, _ = _request(tmp_path)
    injected.inject(request)
    assert json.loads(result.read_text())["state"] == "armed"
    step()  # the hook starts the agent after this step
    state = json.loads(result.read_text())
    assert state["state"] == "running" and state["layers"] == 2
    assert len(open_agents()) == 1
    step()  # its forward call withdraws the hook
    assert snapshot() == before
    injected.inject(request)  # again: the agent that runs answers
    assert json.loads(result.read_text())["state"] == "already"
    assert len(open_agents()) == 1


def test_in_target_hook_starts_nothing_once_the_observer_gave_up(hook_tables, tmp_path):
    torch, snapshot = hook_tables
    from symwatch_agent.entry import injected
    from symwatch_agent import open_agents

    _, _, step = _training(torch)
    before = snapshot()
    request, result, waiting = _request(tmp_path)
    injected.inject(request)
    waiting.unlink()  # the observer's deadline passed: it removed its folder
    step()
    step()
    assert json.loads(result.read_text())["state"] == "expired"
    assert open_agents() == [] and snapshot() == before


def test_in_target_injection_inside_an_optimizer_step_is_deferred(hook_tables, tmp_path):
    # Injected while a Python post-hook of some optimizer runs: adding to the hook table torch
    # iterates would raise in the training loop, so the hook is added at the next forward.
    torch, snapshot = hook_tables
    from symwatch_agent.entry import injected
    from symwatch_agent import open_agents

    _, opt, step = _training(torch)
    before = snapshot()
    request, result, _ = _request(tmp_path)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda *args: injected.inject(request))
    try:
        step()  # injects from inside the step's hook loop
    finally:
        handle.remove()
    assert json.loads(result.read_text())["state"] == "armed"
    step()  # forward: the hook goes in; the step: the agent starts
    assert json.loads(result.read_text())["state"] == "running"
    assert len(open_agents()) == 1
    step()
    assert snapshot() == before
