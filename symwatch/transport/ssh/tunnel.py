"""The tunnel: a run's PUB and late-join history sockets forwarded over a supervised `ssh -N`.

ipc:// endpoints are forwarded as `-L local.sock:remote.sock`, tcp:// ones as
`-L 127.0.0.1:LOCAL:HOST:PORT`. Each forward is probed (ZeroMQ's peer greets first, so a byte
back means the path works end to end). Where the server forbids Unix-socket forwarding, a relay
(`symwatch ssh-relay`, symwatch.transport.ssh.far_relay, run on the host in an ssh session of
its own) exposes the sockets on the host's loopback and those ports are forwarded instead. A
supervisor thread restarts ssh when it dies (backoff up to 5 s); `close()` ends the children and
removes the local sockets.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from symwatch.core import runtime
from symwatch.core.processes import die_with_parent, end_process, free_port
from symwatch.core.runtime import RunEntry
from symwatch.transport.ssh.discovery import choose_run, list_remote_runs
from symwatch.transport.ssh.target import (MAX_BACKOFF_S, PROBE_TIMEOUT_S, RELAY_READY,
                                           START_TIMEOUT_S, SshError, SshOptions, SshTarget,
                                           classify, last_line)


@dataclass
class Forward:
    """One remote endpoint and where it appears here."""

    remote: str  # ipc:///path or tcp://host:port, as the host's registry says
    local: str = ""  # ipc://... or tcp://127.0.0.1:PORT, once planned
    spec: str = ""  # the -L argument
    relay_port: int | None = None  # on the host's loopback, when relayed


def _local_socket_dir() -> Path:
    """A private directory for the forwarded sockets, `ssh-<our pid>-<random>`; in the runtime
    directory when its paths fit a Unix socket, else in the temp directory. Those a killed
    symwatch left behind (its pid gone) are removed on the way."""
    base = runtime.runtime_dir()
    if len(str(base)) + 40 > runtime.MAX_IPC_PATH:
        base = Path(tempfile.gettempdir())
    for old in base.glob("ssh-*-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and old.is_dir() and old.stat().st_uid == os.getuid() \
                and not runtime.pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"ssh-{os.getpid()}-", dir=base))
    os.chmod(path, 0o700)
    return path


def _tcp_parts(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    if host in ("*", "0.0.0.0", "::", ""):  # bound to every interface: reach it on loopback
        host = "127.0.0.1"
    return host, int(port)


class _Child:
    """One ssh child and the last lines of its stderr (read by a thread, so it never fills)."""

    def __init__(self, argv: list[str], *, stdin: int | None = subprocess.DEVNULL,
                 stdout: int | None = subprocess.DEVNULL) -> None:
        self.argv = argv
        # start_new_session: the terminal's Ctrl-C reaches us, not ssh (we end it ourselves);
        # PDEATHSIG: a SIGKILLed symwatch still takes its ssh children with it.
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=die_with_parent())
        self.lines: deque[str] = deque(maxlen=50)
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="symwatch-ssh-stderr")
        self._reader.start()

    def _read(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        try:
            for raw in stderr:
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
        except (OSError, ValueError):
            pass
        finally:
            # Closed here, by its reader, at its end: closing it from stop() while this thread
            # is blocked in read() waits for the reader's lock, i.e. for every writer to go,
            # and a grandchild (a ProxyCommand) can hold the pipe long after ssh is gone.
            stderr.close()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 3.0) -> None:
        # The whole group (start_new_session made ssh its leader): ssh and whatever it started.
        end_process(self.proc, timeout, group=True)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._reader.join(1.0)  # the reader closes stderr at its end (see _read)


class Tunnel:
    """The run's sockets forwarded over ssh, supervised. `endpoint` and `history_endpoint` are
    the local addresses to connect to. Use as a context manager, or `start()` / `close()`.

    `state` is "starting", "up", "reconnecting: <why>" or "closed"; `restarts` counts the
    times ssh was started again after it died."""

    def __init__(self, target: SshTarget, entry: RunEntry, options: SshOptions, *,
                 probe_timeout_s: float = PROBE_TIMEOUT_S,
                 start_timeout_s: float = START_TIMEOUT_S,
                 on_notice: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.entry = entry
        self.options = options
        self.probe_timeout_s = probe_timeout_s
        self.start_timeout_s = start_timeout_s
        self.notice = on_notice or (lambda text: None)
        history = entry.extra.get("history_endpoint") if isinstance(entry.extra, dict) else None
        self.forwards = [Forward(entry.endpoint)]
        if isinstance(history, str) and history.startswith(("ipc://", "tcp://")):
            self.forwards.append(Forward(history))
        self.relayed = False
        self.state = "starting"
        self.restarts = 0
        self.last_error: str | None = None
        self._dir: Path | None = None
        self._ssh: _Child | None = None
        self._relay: _Child | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return self.forwards[0].local

    @property
    def history_endpoint(self) -> str | None:
        return self.forwards[1].local if len(self.forwards) > 1 else None

    def pids(self) -> list[int]:
        """The ssh children now running (for tests: none may outlive `close`)."""
        return [c.proc.pid for c in (self._ssh, self._relay) if c is not None and c.alive()]

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> Tunnel:
        """Open the forwards and check them; SshError when that is impossible. Every ssh child
        is started by the supervisor thread, which lives until `close`: Linux delivers
        PDEATHSIG when the *thread* that forked a child ends, so a short-lived caller thread
        (the TUI's) must not be the one."""
        self._dir = _local_socket_dir()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self._open()
            except BaseException as exc:  # noqa: BLE001 - re-raised in start()
                failure.append(exc)
                started.set()
                return
            self.state = "up"
            started.set()
            self._supervise()

        self._supervisor = threading.Thread(target=run, daemon=True,
                                            name=f"symwatch-tunnel {self.target.label}")
        self._supervisor.start()
        try:
            started.wait()
        except BaseException:
            # Ctrl-C while ssh connects: the supervisor would go on opening, and the ssh it
            # started would outlive the caller's clean-up (and its socket directory stay).
            self.close()
            raise
        if failure:
            self.close()
            raise failure[0]
        return self

    def _open(self) -> None:
        """Start ssh -N with the planned forwards and probe each; fall back to the relay when
        the server refuses Unix-socket forwarding."""
        self._plan()
        problem = self._launch_and_probe()
        if problem is None:
            return
        if problem.kind == "stream-refused" and not self.relayed:
            self.notice(f"{self.target.label} does not forward Unix sockets "
                        "(AllowStreamLocalForwarding); relaying them through loopback TCP "
                        "ports on the host instead (others logged in there could connect to "
                        "them; see docs/remote.md)")
            self._stop_children()
            self.relayed = True
            self._start_relay()
            self._plan()
            problem = self._launch_and_probe()
            if problem is None:
                return
        if problem.kind == "stream-refused":
            problem = SshError(str(problem), kind="no-socket")
        raise problem

    def _plan(self) -> None:
        assert self._dir is not None
        for i, fwd in enumerate(self.forwards):
            name = "pub" if i == 0 else "history"
            if fwd.remote.startswith("ipc://") and not self.relayed:
                local = self._dir / f"{name}.sock"
                local.unlink(missing_ok=True)
                fwd.local = f"ipc://{local}"
                fwd.spec = f"{local}:{fwd.remote[len('ipc://'):]}"
                continue
            if fwd.relay_port is not None:
                host, port = "127.0.0.1", fwd.relay_port
            else:
                host, port = _tcp_parts(fwd.remote)
            local_port = free_port()
            fwd.local = f"tcp://127.0.0.1:{local_port}"
            fwd.spec = f"127.0.0.1:{local_port}:{f'[{host}]' if ':' in host else host}:{port}"

    def _ssh_argv(self) -> list[str]:
        extra = ["-N", "-T", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                 "-o", "ClearAllForwardings=no"]
        for fwd in self.forwards:
            extra += ["-L", fwd.spec]
        return self.options.argv(self.target, *extra)

    def _launch(self) -> None:
        self._ssh = self._started_unless_closing(_Child(self._ssh_argv()))

    def _started_unless_closing(self, child: _Child) -> _Child:
        """`child`, unless `close()` ran while it started (it may have missed the child): then
        the child is stopped here and SshError says why."""
        if self._closing.is_set():
            child.stop()
            raise SshError(f"the tunnel to {self.target.label} was closed while it opened",
                           kind="closed")
        return child

    def _launch_and_probe(self) -> SshError | None:
        self._launch()
        for fwd in self.forwards:
            problem = self._probe(fwd)
            if problem is not None:
                return problem
        return None

    def _probe(self, fwd: Forward) -> SshError | None:
        """Connect to the local end until ZeroMQ's greeting comes back through the tunnel."""
        ssh = self._ssh
        assert ssh is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._closing.is_set():  # close() (e.g. Ctrl-C) while ssh still connects
                return SshError(f"the tunnel to {self.target.label} was closed while it "
                                "opened", kind="closed")
            if not ssh.alive():
                ssh.proc.wait()
                time.sleep(0.05)  # the stderr reader catches the last lines
                return self._ssh_failed(ssh)
            sock = _connect(fwd.local)
            if sock is None:  # ssh has not bound the local end yet (authenticating)
                if time.monotonic() > deadline:
                    return SshError(f"ssh to {self.target.label} did not open the forward "
                                    f"within {self.start_timeout_s:g} s", kind="unreachable")
                time.sleep(0.05)
                continue
            with sock:
                got = _first_bytes(sock, self.probe_timeout_s)
            if got:
                return None
            if self._closing.is_set():
                return SshError(f"the tunnel to {self.target.label} was closed while it "
                                "opened", kind="closed")
            time.sleep(0.1)  # ssh logs the channel failure just after closing our side
            return self._channel_failed(fwd, got)

    def _channel_failed(self, fwd: Forward, got: bytes | None) -> SshError:
        assert self._ssh is not None
        text = self._ssh.stderr.lower()
        host = self.target.label
        if got is None:
            return SshError(f"no answer from {fwd.remote} through ssh to {host} within "
                            f"{self.probe_timeout_s:g} s", kind="failed")
        if "administratively prohibited" in text:
            return SshError(f"{host} refuses port forwarding (sshd: AllowTcpForwarding "
                            "no / AllowStreamLocalForwarding no); ask its admins to allow it, "
                            "or run `symwatch attach` on that machine", kind="forward-refused")
        if fwd.remote.startswith("ipc://") and not self.relayed:
            # sshd says "open failed" both when it forbids Unix-socket forwarding and when
            # the socket is gone; the relay, which connects itself, tells them apart.
            return SshError(f"{host} did not open {fwd.remote}", kind="stream-refused")
        return SshError(f"the run's socket {fwd.remote} on {host} does not answer (the run "
                        "may just have ended); see `symwatch ls " + self.target.url("") + "`",
                        kind="no-socket")

    def _ssh_failed(self, child: _Child) -> SshError:
        text = child.stderr
        if "forwarding" in text.lower() and ("could not request" in text.lower()
                                             or "bind" in text.lower()):
            return SshError(f"ssh could not set up the forward here ({last_line(text)})",
                            kind="failed")
        return classify(self.target, text, child.proc.returncode or 255, self.options)

    # -- the relay (Unix-socket forwarding forbidden) -------------------------------------------

    def _start_relay(self) -> None:
        paths = [fwd.remote[len("ipc://"):] for fwd in self.forwards
                 if fwd.remote.startswith("ipc://")]
        argv = self.options.argv(self.target, "-T") + [
            self.options.remote_script("ssh-relay", *paths)]
        self._relay = self._started_unless_closing(
            _Child(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        assert self._relay.proc.stdout is not None
        line = _read_line(self._relay.proc.stdout, self.start_timeout_s)
        words = line.split()
        if len(words) != 1 + len(paths) or words[0] != RELAY_READY:
            try:  # no ready line: it failed (its status and stderr say how), or hangs
                self._relay.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.05)  # the stderr reader catches the last lines
            if self._relay.proc.poll() not in (None, 0):
                err = self._relay.stderr
                if "no such socket" in err:
                    raise SshError(f"the run's socket is gone on {self.target.label} "
                                   f"({last_line(err)}); the run may just have ended",
                                   kind="no-socket")
                raise classify(self.target, err, self._relay.proc.returncode or 1,
                               self.options)
            raise SshError(f"the relay on {self.target.label} did not start "
                           f"({line.strip()[:80] or 'no answer'})", kind="failed")
        ports = iter(int(w) for w in words[1:])
        for fwd in self.forwards:
            if fwd.remote.startswith("ipc://"):
                fwd.relay_port = next(ports)

    # -- supervision ---------------------------------------------------------------------------

    def _supervise(self) -> None:
        backoff = 0.5
        while not self._closing.is_set():
            ssh, relay = self._ssh, self._relay
            dead = next((c for c in (ssh, relay) if c is not None and not c.alive()), None)
            if dead is None:
                self._closing.wait(0.2)
                continue
            reason = last_line(dead.stderr) or f"ssh exited ({dead.proc.returncode})"
            self.state = f"reconnecting: {reason}"
            self.last_error = reason
            with self._lock:
                if self._closing.is_set():
                    return
                self._stop_children()
            if self._closing.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            try:
                with self._lock:
                    if self._closing.is_set():
                        return
                    self._restart()
                self.restarts += 1
                self.state = "up"
                backoff = 0.5
            except SshError as exc:
                self.last_error = str(exc)
                self.state = f"reconnecting: {exc}"
            except OSError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"

    def _restart(self) -> None:
        """The same local endpoints again (the viewer's sockets reconnect to them by
        themselves); a relay gets new ports on the host."""
        if self.relayed:
            self._start_relay()
            for fwd in self.forwards:
                host_port = fwd.relay_port if fwd.relay_port is not None else None
                if host_port is not None:
                    local = fwd.local.rpartition(":")[2]
                    fwd.spec = f"127.0.0.1:{local}:127.0.0.1:{host_port}"
        else:
            for fwd in self.forwards:
                if fwd.local.startswith("ipc://"):
                    Path(fwd.local[len("ipc://"):]).unlink(missing_ok=True)
        self._launch()
        # Wait for the forward to come up, without probing (a probe costs a connection).
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self._ssh is not None
            if not self._ssh.alive():
                raise self._ssh_failed(self._ssh)
            sock = _connect(self.forwards[0].local)
            if sock is not None:
                sock.close()
                return
            time.sleep(0.1)
        raise SshError(f"ssh to {self.target.label} did not come back within "
                       f"{self.start_timeout_s:g} s", kind="unreachable")

    # -- close ---------------------------------------------------------------------------------

    def _stop_children(self) -> None:
        for child in (self._ssh, self._relay):
            if child is not None:
                child.stop()
        self._ssh = self._relay = None

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._stop_children()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(5.0)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.state = "closed"

    def __enter__(self) -> Tunnel:
        if self._dir is None and self.state == "starting":
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(endpoint: str) -> socket.socket | None:
    try:
        if endpoint.startswith("ipc://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(1.0)
            sock.connect(endpoint[len("ipc://"):])
        else:
            host, port = _tcp_parts(endpoint)
            sock = socket.create_connection((host, port), timeout=1.0)
        return sock
    except OSError:
        return None


def _first_bytes(sock: socket.socket, timeout_s: float) -> bytes | None:
    """The first bytes the far end sends; b"" when the tunnel closed the connection, None on
    timeout."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(16)
    except socket.timeout:
        return None
    except OSError:
        return b""


def _read_line(stream: IO[bytes], timeout_s: float) -> str:
    """One line from a child's stdout, waiting at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf.decode("utf-8", "replace")


def open_run(target: SshTarget, options: SshOptions, *,
             on_notice: Callable[[str], None] | None = None) -> tuple[RunEntry, Tunnel]:
    """Discover the target's run and open its tunnel (started): what `attach` and `record`
    do with an ssh:// target."""
    entry = choose_run(target, list_remote_runs(target, options))
    return entry, Tunnel(target, entry, options, on_notice=on_notice).start()
