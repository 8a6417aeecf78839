"""Remote runs over a real sshd on 127.0.0.1 (tests/sshd.py) and a real training run (the demo
agent in a subprocess): discovery with `symwatch ls ssh://`, the Tunnel (Unix-socket forwards,
the relay when the server forbids them, reconnection, clean-up), and each error a person can
act on, through `symwatch.cli.main.main`. Skipped, with the reason, without sshd/ssh/ssh-keygen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from symwatch.core import protocol, runtime
from symwatch.cli.main import main
from symwatch.core.runtime import RunEntry
from symwatch.sources.tunnel import TunnelFeed
from symwatch.transport.ssh import (SshError, SshOptions, SshTarget, Tunnel, choose_run,
                                    list_remote_runs, open_run)

sys.path.insert(0, str(Path(__file__).parents[1]))
from sshd import Sshd, SshdUnavailable, missing_tools  # noqa: E402
from waiting import interruptible, until  # noqa: E402

pytestmark = pytest.mark.skipif(bool(missing_tools()),
                                reason="OpenSSH missing: " + ", ".join(missing_tools())
                                + " (tests/setup.sh installs it)")

REMOTE_SYMWATCH = f"{sys.executable} -m symwatch"
ROOT = Path(__file__).resolve().parents[2]


def start_sshd(**settings: str) -> Sshd:
    try:
        return Sshd.start(settings=settings)
    except SshdUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    server = start_sshd()
    yield server
    server.close()


@pytest.fixture(scope="module")
def remote_run() -> Iterator[tuple[str, RunEntry]]:
    """A real training run (the demo: torch and the agent in a subprocess) registered in a
    runtime directory of its own, which only the "remote" side is told about."""
    root = tempfile.mkdtemp(prefix="sw-remote-")
    env = dict(os.environ, SYMWATCH_RUNTIME_DIR=root,
               PYTHONPATH=os.pathsep.join([str(ROOT / "agent"), str(ROOT)]))
    proc = subprocess.Popen([sys.executable, "-m", "symwatch_agent.entry.demo", "--steps", "0",
                             "--delay", "0.02", "--name", "ssh-demo"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=interruptible)
    runs_dir = Path(root) / "runs"
    deadline = time.monotonic() + 90
    entry = None
    while entry is None:
        files = list(runs_dir.glob("*.json")) if runs_dir.exists() else []
        if files:
            try:
                entry = RunEntry.from_json(json.loads(files[0].read_text()))
            except ValueError:
                pass
        if proc.poll() is not None:
            pytest.fail(f"the demo run exited: {proc.stderr.read().decode()[-500:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the demo run did not register within 90 s")
        time.sleep(0.1)
    yield root, entry
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def options_for(server: Sshd, runtime_dir: str | None, **kw: object) -> SshOptions:
    return SshOptions(ssh_command=server.ssh_command.split(), remote_symwatch=REMOTE_SYMWATCH,
                      remote_runtime_dir=runtime_dir, **kw)  # type: ignore[arg-type]


def cli_args(server: Sshd, runtime_dir: str) -> list[str]:
    return ["--remote-symwatch", REMOTE_SYMWATCH, "--remote-runtime-dir", runtime_dir]


def wait_metrics(feed: TunnelFeed, timeout: float = 20.0) -> list[protocol.Message]:
    got: list[protocol.Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += feed.poll(100)
        if any(m.kind == protocol.METRICS and m.snapshot_seq is None for m in got):
            return got
    raise AssertionError(f"no live METRICS through the tunnel within {timeout} s "
                         f"({len(got)} messages; last error {feed.last_error})")


def child_pids(parent: int, name: str | None = None) -> list[int]:
    """The live child processes of `parent` (from /proc: no procps needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:]
        state, ppid = rest.split()[:2]
        if int(ppid) == parent and state != "Z" and (name is None or comm == name):
            found.append(int(stat.parent.name))
    return found


def pids_gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone too (its waiter reaps it)
                if fh.read().split(")")[-1].split()[0] != "Z":
                    return False
        except FileNotFoundError:
            continue
    return True


# -- targets -----------------------------------------------------------------------------------

def test_target_parsing():
    t = SshTarget.parse("ssh://alice@gpu-box:2222/my-run")
    assert (t.host, t.user, t.port, t.run) == ("gpu-box", "alice", 2222, "my-run")
    assert SshTarget.parse("ssh://gpu-box") == SshTarget("gpu-box")
    assert SshTarget.parse("ssh://[::1]:22/").host == "::1"
    assert t.url() == "ssh://alice@gpu-box:2222/my-run" and t.label == "alice@gpu-box:2222"
    for bad in ("ssh://", "ssh://h:99999", "ssh://h/a/b", "ssh://u:pw@h", "tcp://h:1"):
        with pytest.raises(SshError):
            SshTarget.parse(bad)
    argv = SshOptions(ssh_command=["ssh", "-F", "cfg"], options=["Compression=yes"]).argv(t)
    assert argv[:3] == ["ssh", "-F", "cfg"] and "BatchMode=yes" in argv
    assert argv[-4:] == ["-l", "alice", "--", "gpu-box"] and "Compression=yes" in argv


# -- discovery and the tunnel ------------------------------------------------------------------

def test_ls_over_ssh_lists_the_remote_run(sshd, remote_run, monkeypatch, capsys):
    root, entry = remote_run
    monkeypatch.setenv("SYMWATCH_SSH", sshd.ssh_command)
    deadline = time.monotonic() + 30
    while True:
        assert main(["ls", sshd.target, "--json", *cli_args(sshd, root)]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [r["run_id"] for r in listed] == [entry.run_id]
        assert listed[0]["extra"]["history_endpoint"].startswith("ipc://")
        # the demo's first rank step (step ~25) lands in the registry for the Runs screen
        last = listed[0]["extra"].get("last_transition")
        if last or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert last and " at step " in last["message"] and last["step"] > 0, listed[0]
    assert main(["ls", sshd.target, *cli_args(sshd, root)]) == 0  # the table, for people
    assert entry.run_id in capsys.readouterr().out


def test_attach_through_tunnel_sees_history_and_live_metrics(sshd, remote_run):
    root, entry = remote_run
    target = SshTarget.parse(f"{sshd.target}/ssh-demo")
    found, tunnel = open_run(target, options_for(sshd, root))
    assert found.run_id == entry.run_id
    assert tunnel.endpoint.startswith("ipc://") and tunnel.endpoint != entry.endpoint
    local_socket = Path(tunnel.endpoint[len("ipc://"):])
    assert local_socket.exists() and tunnel.history_endpoint is not None
    feed = TunnelFeed(tunnel)
    pids = tunnel.pids()
    try:
        got = wait_metrics(feed)
        # the late-join history came through the forwarded history socket
        assert feed.late_join.error is None and feed.late_join.snapshot_messages > 0
        metas = [m for m in got if m.kind == protocol.META]
        assert metas and {"linear.0", "linear.1"} <= {lay["name"] for lay in
                                                      metas[-1].payload["layers"]}
        assert all(m.run == entry.run_id for m in got)
    finally:
        feed.close()
    assert tunnel.state == "closed" and tunnel.pids() == []
    assert pids_gone(pids), "an ssh child outlived the tunnel"
    assert not local_socket.exists() and not local_socket.parent.exists()


def test_tunnel_reconnects_when_ssh_dies(sshd, remote_run):
    root, entry = remote_run
    with Tunnel(SshTarget.parse(sshd.target), entry, options_for(sshd, root)) as tunnel:
        feed = TunnelFeed(tunnel, history=False)
        try:
            wait_metrics(feed)
            first = tunnel.pids()
            os.kill(first[0], signal.SIGKILL)
            deadline = time.monotonic() + 20
            while tunnel.restarts == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert tunnel.restarts == 1 and tunnel.state == "up", tunnel.last_error
            assert tunnel.pids() and tunnel.pids() != first
            feed.poll(0)
            wait_metrics(feed)  # the same local endpoint: the SUB socket reconnected by itself
        finally:
            feed.close()


def test_relay_when_the_server_forbids_unix_socket_forwarding(remote_run):
    root, entry = remote_run
    with start_sshd(AllowStreamLocalForwarding="no") as server:
        notices: list[str] = []
        tunnel = Tunnel(SshTarget.parse(server.target), entry, options_for(server, root),
                        on_notice=notices.append).start()
        feed = TunnelFeed(tunnel)
        try:
            assert tunnel.relayed and tunnel.endpoint.startswith("tcp://127.0.0.1:")
            assert notices and "AllowStreamLocalForwarding" in notices[0]
            wait_metrics(feed)
            assert feed.late_join.snapshot_messages > 0
        finally:
            pids = tunnel.pids()
            feed.close()
        assert pids_gone(pids)


def test_choose_run_by_name_prefix_and_errors():
    runs = [RunEntry("aaaa1111", "alpha", 1, [], "ipc:///a", 0.0, "h"),
            RunEntry("aabb2222", "beta", 2, [], "ipc:///b", 0.0, "h")]
    assert choose_run(SshTarget("h", run="beta"), runs).run_id == "aabb2222"
    assert choose_run(SshTarget("h", run="aaaa"), runs).name == "alpha"
    for run, kind in ((None, "ambiguous"), ("aa", "ambiguous"), ("zeta", "no-runs")):
        with pytest.raises(SshError) as err:
            choose_run(SshTarget("h", run=run), runs)
        assert err.value.kind == kind
    with pytest.raises(SshError, match="no live symwatch runs on h"):
        choose_run(SshTarget("h"), [])


# -- errors a person can act on: one line, exit status 1, no traceback --------------------------

def _fails(capsys, argv: list[str], expected: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert expected in last, err
    return last


def test_wrong_key_is_an_authentication_error(sshd, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SYMWATCH_SSH", sshd.wrong_key_command())
    _fails(capsys, ["attach", "--headless", sshd.target, *cli_args(sshd, str(tmp_path))],
           "authentication to")


def test_closed_port_is_unreachable(sshd, monkeypatch, capsys, tmp_path):
    from symwatch.core.processes import free_port

    monkeypatch.setenv("SYMWATCH_SSH", sshd.ssh_command)
    line = _fails(capsys, ["ls", f"ssh://127.0.0.1:{free_port()}", *cli_args(sshd, "/x")],
                  "cannot reach 127.0.0.1")
    assert "check the host name, the port" in line


def test_symwatch_missing_on_the_host(sshd, monkeypatch, capsys):
    monkeypatch.setenv("SYMWATCH_SSH", sshd.ssh_command)
    _fails(capsys, ["ls", sshd.target, "--remote-symwatch", "/nonexistent/bin/symwatch"],
           "symwatch is not installed on symwatch-test")


def test_no_runs_on_the_host(sshd, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SYMWATCH_SSH", sshd.ssh_command)
    _fails(capsys, ["attach", "--headless", sshd.target, *cli_args(sshd, str(tmp_path))],
           "no live symwatch runs on symwatch-test")


def test_forwarding_refused_by_the_server(remote_run, monkeypatch, capsys):
    root, _ = remote_run
    with start_sshd(AllowStreamLocalForwarding="no", AllowTcpForwarding="no") as server:
        monkeypatch.setenv("SYMWATCH_SSH", server.ssh_command)
        _fails(capsys, ["attach", "--headless", server.target, *cli_args(server, root)],
               "refuses port forwarding")
        assert list_remote_runs(SshTarget.parse(server.target), options_for(server, root))


# -- record and the Runs screen through the tunnel ---------------------------------------------

def _recorded_metrics(path: Path) -> int:
    from symwatch.core.recording import RecordingReader

    if not path.exists():
        return 0
    try:
        with RecordingReader(path) as reader:
            return sum(m.kind == protocol.METRICS for m in reader)
    except Exception:  # noqa: BLE001 - the file may be mid-creation
        return 0


def _record_over_ssh(server: Sshd, root: str, out: Path, ssh_command: str | None = None,
                     **env: str) -> subprocess.Popen[str]:
    """`symwatch record ssh://…/ssh-demo -o OUT` in a subprocess that takes SIGINT."""
    return subprocess.Popen(
        [sys.executable, "-m", "symwatch", "record", f"{server.target}/ssh-demo", "-o", str(out),
         *cli_args(server, root)],
        env=dict(os.environ, SYMWATCH_SSH=ssh_command or server.ssh_command, **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)


def _interrupt(proc: subprocess.Popen[str]) -> str:
    """SIGINT; its stderr once it exited (20 s at most), read to the end."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    return err


def _socket_dirs_of(pid: int) -> list[Path]:
    """The tunnel's local socket directories a symwatch with this pid made."""
    return [d for base in (runtime.runtime_dir(), Path(tempfile.gettempdir()))
            for d in base.glob(f"ssh-{pid}-*")]


def _wait_recording(proc: subprocess.Popen[str], out: Path) -> None:
    # A few live samples, not a number per second: under load the demo samples slowly
    # (13 in 30 s was seen), and this only needs to know that recording has begun.
    assert until(lambda: _recorded_metrics(out) >= 5 or proc.poll() is not None,
                 timeout=90, step=0.3), "nothing recorded within 90 s"
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""


def test_record_over_ssh_until_interrupted(sshd, remote_run, tmp_path):
    root, _ = remote_run
    out = tmp_path / "remote.db"
    proc = _record_over_ssh(sshd, root, out)
    try:
        _wait_recording(proc, out)
        children = child_pids(proc.pid)
        assert children, "record runs its ssh as a child"
        err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert "Traceback" not in err
    assert pids_gone(children)
    assert not _socket_dirs_of(proc.pid)


def _ssh_wrapper(server: Sshd, tmp_path: Path) -> str:
    """An ssh command whose forwarding session (`-N`) leaves a grandchild holding ssh's
    stderr open, as a ProxyCommand does; with $SLOW_MARK set, it first touches that file and
    waits a minute (the tunnel is still connecting)."""
    script = tmp_path / "ssh-wrapper"
    script.write_text(f"""#!/bin/sh
case " $* " in
  *" -N "*)
    if [ -n "$SLOW_MARK" ]; then : > "$SLOW_MARK"; sleep 60; fi
    sleep 300 &
    ;;
esac
exec {server.ssh_command} "$@"
""")
    script.chmod(0o755)
    return str(script)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = child_pids(todo.pop())
        found += kids
        todo += kids
    return found


def test_record_over_ssh_interrupted_when_ssh_left_a_child_holding_its_stderr(
        sshd, remote_run, tmp_path):
    """Ending the tunnel ends ssh's whole process group, and nothing waits on ssh's stderr
    pipe while a grandchild still holds it: stop() used to close that pipe under its reader,
    which waited for the grandchild (here 300 s), so Ctrl-C never ended `symwatch record`."""
    root, _ = remote_run
    out = tmp_path / "remote.db"
    proc = _record_over_ssh(sshd, root, out, ssh_command=_ssh_wrapper(sshd, tmp_path))
    try:
        _wait_recording(proc, out)
        family = _descendants(proc.pid)
        assert any(child_pids(pid, "sleep") for pid in family), "no grandchild holds stderr"
        err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert until(lambda: pids_gone(family), timeout=10), "ssh or its child outlived record"


def test_record_over_ssh_interrupted_while_the_tunnel_connects(sshd, remote_run, tmp_path):
    """Ctrl-C while ssh is still opening the forwards: the tunnel is closed (its ssh and
    socket directory gone), `record` says it was interrupted and exits 130."""
    root, _ = remote_run
    mark = tmp_path / "connecting"
    proc = _record_over_ssh(sshd, root, tmp_path / "never.db",
                            ssh_command=_ssh_wrapper(sshd, tmp_path), SLOW_MARK=str(mark))
    try:
        assert until(lambda: mark.exists() or proc.poll() is not None, timeout=60), \
            "the tunnel's ssh did not start"
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        family = _descendants(proc.pid)
        assert family and _socket_dirs_of(proc.pid)
        err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert until(lambda: pids_gone(family), timeout=10), "the connecting ssh outlived record"
    assert not _socket_dirs_of(proc.pid)
    assert not (tmp_path / "never.db").exists()


async def test_runs_screen_lists_the_remote_run_and_enter_attaches_through_ssh(
        sshd, remote_run, tmp_path, monkeypatch):
    from symwatch.tui.widgets.layer_table import LayerTable
    from symwatch.tui.app import RunsApp
    from symwatch.tui.screens.runs import RunsConfig, RunsScreen

    root, entry = remote_run
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = RunsConfig(hosts=[sshd.target], options=options_for(sshd, root))
    app = RunsApp(config)
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 30

        async def until(predicate, what):
            while not predicate():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await pilot.pause(0.05)

        await until(lambda: isinstance(app.screen, RunsScreen) and app.screen.scans, "a scan")
        screen = app.screen
        key = f"{sshd.target}/{entry.run_id}"
        await until(lambda: key in screen.rows, "the remote row")
        assert screen.rows[key].state == "running" and not screen.host_errors
        table = screen.query_one("#runs-table")
        table.move_cursor(row=[str(r.key.value) for r in table.ordered_rows].index(key))
        await pilot.press("enter")
        await until(lambda: not isinstance(app.screen, RunsScreen), "the dashboard")
        assert isinstance(app.source, TunnelFeed)
        tunnel = app.source.tunnel
        await until(lambda: app.query_one(LayerTable).row_count >= 4, "the remote run's layers")
        assert {"linear.0", "linear.1"} <= set(app.state.layers)
        assert "on symwatch-test" in app.title
        # opened on a short-lived thread, yet ssh was not killed with it (PDEATHSIG)
        assert tunnel.restarts == 0 and tunnel.state == "up"
        pids = tunnel.pids()
    assert tunnel.state == "closed" and pids_gone(pids)  # quitting ended the tunnel


def test_ssh_children_die_with_a_killed_symwatch(sshd, remote_run, tmp_path):
    """SIGKILL leaves symwatch no chance to clean up; the kernel ends its ssh (PDEATHSIG)."""
    root, _ = remote_run
    env = dict(os.environ, SYMWATCH_SSH=sshd.ssh_command)
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "record", sshd.target,
                             "-o", str(tmp_path / "k.db"), *cli_args(sshd, root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        children: list[int] = []
        while not (children and (tmp_path / "k.db").exists()) and proc.poll() is None \
                and time.monotonic() < deadline:  # the recording opens once the tunnel is up
            time.sleep(0.2)
            children = child_pids(proc.pid, "ssh")
        assert children, proc.stderr.read() if proc.poll() is not None else "no ssh child"
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while not pids_gone(children):
            assert time.monotonic() < deadline, "ssh outlived a SIGKILLed symwatch"
            time.sleep(0.1)
        # its forwarded sockets' directory is left behind; the next tunnel removes it
        from symwatch.core import runtime
        from symwatch.transport.ssh.tunnel import _local_socket_dir

        left = list(runtime.runtime_dir().glob(f"ssh-{proc.pid}-*"))
        assert left
        fresh = _local_socket_dir()
        assert not any(p.exists() for p in left)
        fresh.rmdir()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_unknown_host_key_is_never_accepted_silently(sshd, monkeypatch, capsys):
    config = sshd.root / "ssh_config_no_known_hosts"
    config.write_text(sshd.ssh_config.read_text().replace(
        f"UserKnownHostsFile {sshd.root / 'known_hosts'}", "UserKnownHostsFile /dev/null"))
    monkeypatch.setenv("SYMWATCH_SSH", f"ssh -F {config}")
    _fails(capsys, ["ls", sshd.target], "the host key of symwatch-test is unknown or changed")


def test_a_remote_run_that_died_is_listed_lost_not_finished(sshd, remote_run, monkeypatch):
    """`symwatch ls --json --all` over ssh keeps a dead run's entry (alive: false), so the
    Runs screen calls it lost; the plain listing still shows only live runs."""
    from symwatch.sources.discovery import scan_host
    from symwatch.tui.screens.runs import LOST, RUNNING, RunsModel

    root, entry = remote_run
    monkeypatch.setenv("SYMWATCH_RUNTIME_DIR", root)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is surely gone
    dead = RunEntry("dead0000beef", "crashed", proc.pid, ["python", "crashed.py"],
                    "ipc:///nonexistent.sock", time.time() - 60, "remote", steps=7)
    runtime.write_entry(dead)
    try:
        options = options_for(sshd, root)
        listed = scan_host(sshd.target, options)
        assert not isinstance(listed, str), listed
        assert {e.run_id: alive for e, alive in listed} == {entry.run_id: True,
                                                            dead.run_id: False}
        model = RunsModel()
        model.fold(sshd.target, listed, now=0.0)
        states = {r.entry.run_id: r.state for r in model.rows()}
        assert states == {entry.run_id: RUNNING, dead.run_id: LOST}
        # the default listing drops it (and prunes it: `ls` cleans the registry up)
        assert [e.run_id for e in list_remote_runs(SshTarget.parse(sshd.target), options)] \
            == [entry.run_id]
    finally:
        runtime.remove_entry(dead.run_id)
