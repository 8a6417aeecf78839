"""Runs on another machine, through the system `ssh`: targets, discovery, supervised tunnels.

`symwatch attach ssh://[user@]host[:port][/RUN]` (also `ls`, `record`) works in three steps:

1. `SshTarget.parse` reads the target; `SshOptions` says how to call ssh (`$SYMWATCH_SSH`, `-o`
   options, `--remote-symwatch`, `--remote-runtime-dir`). The system `ssh` is used on purpose:
   `~/.ssh/config`, agents, keys, ProxyJump and ControlMaster work as they do for the user.
2. `list_remote_runs` runs `symwatch ls --json` on the host (`symwatch`, else
   `python3 -m symwatch`, unless `--remote-symwatch` names it) and returns its `RunEntry`s.
3. `Tunnel(target, entry, options)` forwards the run's PUB socket and its late-join history
   socket (`extra.history_endpoint`) to this machine: a child `ssh -N` with
   `ExitOnForwardFailure=yes`, `BatchMode=yes` and `ServerAliveInterval`, `-L local.sock:
   remote.sock` for ipc:// endpoints, `-L 127.0.0.1:LOCAL:HOST:PORT` for tcp:// ones. Each
   forward is probed (ZeroMQ's peer greets first, so a byte back means the path works end to
   end). Where the server forbids Unix-socket forwarding, a relay (`symwatch ssh-relay`, run on
   the host in an ssh session of its own) exposes the sockets on the host's loopback and those
   ports are forwarded instead. A supervisor thread restarts ssh when it dies (backoff up to
   5 s); `close()` ends the children and removes the local sockets.

Errors a person can act on (`SshError`, one line each): host unreachable, authentication
failed, host key unknown or changed, symwatch not installed on the host, no runs there,
forwarding refused by the server.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Sequence
from urllib.parse import unquote, urlsplit

from symwatch.core import runtime
from symwatch.transport.subscriber import BackgroundFeed
from symwatch.core.runtime import RunEntry
from symwatch.core.processes import die_with_parent, end_process, free_port

ENV_SSH = "SYMWATCH_SSH"  # the ssh command line, e.g. `ssh -F ~/.ssh/cluster_config`
ENV_REMOTE_SYMWATCH = "SYMWATCH_REMOTE_SYMWATCH"
ENV_REMOTE_RUNTIME_DIR = "SYMWATCH_REMOTE_RUNTIME_DIR"
NOT_INSTALLED_MARK = "symwatch-remote-not-found"
RELAY_READY = "symwatch-relay"
CONNECT_TIMEOUT_S = 10
COMMAND_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0  # a forwarded ZeroMQ socket greets at once; this bounds a stuck path
START_TIMEOUT_S = 15.0  # ssh -N: authenticate and open the forwards
MAX_BACKOFF_S = 5.0
# ssh is told to log at INFO so that a refused channel ("administratively prohibited") is
# visible on its stderr, whatever the user's config says.
SSH_DEFAULTS = ("-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=INFO")


class SshError(Exception):
    """A failure with a one-line message that says what to do next. `kind` is one of
    unreachable, auth, hostkey, not-installed, no-runs, forward-refused, no-socket, failed."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


def is_ssh_target(text: str | None) -> bool:
    return bool(text) and str(text).lower().startswith("ssh://")


@dataclass(frozen=True)
class SshTarget:
    """`ssh://[user@]host[:port][/RUN]`; `host` may be an alias from ~/.ssh/config."""

    host: str
    user: str | None = None
    port: int | None = None
    run: str | None = None

    @classmethod
    def parse(cls, text: str) -> SshTarget:
        if not is_ssh_target(text):
            raise SshError(f"{text!r} is not an SSH target; expected ssh://[user@]host[:port][/RUN]")
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            raise SshError(f"{text!r}: the port must be a number 1-65535, as in "
                           "ssh://host:2222") from None
        host = parts.hostname
        if not host:
            raise SshError(f"{text!r} names no host; expected ssh://[user@]host[:port][/RUN]")
        if parts.query or parts.fragment or parts.password:
            raise SshError(f"{text!r}: no password, ?query or #fragment; expected "
                           "ssh://[user@]host[:port][/RUN] (passwords: use ssh keys or an agent)")
        if ":" in host:  # urlsplit drops the brackets of an IPv6 literal; ssh wants it bare
            host = host.strip("[]")
        run = unquote(parts.path.strip("/")) or None
        if run is not None and "/" in run:
            raise SshError(f"{text!r}: after the host comes one run id or name, as in "
                           "ssh://host/my-run")
        return cls(host=host, user=unquote(parts.username) if parts.username else None,
                   port=port, run=run)

    @property
    def label(self) -> str:
        """How messages name the host: `user@host:port`, or what was given."""
        text = f"{self.user}@{self.host}" if self.user else self.host
        return f"{text}:{self.port}" if self.port else text

    def url(self, run: str | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"ssh://{self.user + '@' if self.user else ''}{host}"
        text += f":{self.port}" if self.port else ""
        run = run if run is not None else self.run
        return text + (f"/{run}" if run else "")


@dataclass
class SshOptions:
    """How to reach hosts: the ssh command, extra `-o` options, and the remote symwatch."""

    ssh_command: list[str] = field(default_factory=lambda: ["ssh"])
    options: list[str] = field(default_factory=list)  # each becomes `-o VALUE`
    remote_symwatch: str | None = None  # shell words, e.g. "/opt/venv/bin/symwatch"
    remote_runtime_dir: str | None = None  # the host's SYMWATCH_RUNTIME_DIR, when not default
    command_timeout_s: float = COMMAND_TIMEOUT_S

    @classmethod
    def from_env(cls, *, options: Sequence[str] = (), remote_symwatch: str | None = None,
                 remote_runtime_dir: str | None = None,
                 environ: dict[str, str] | None = None) -> SshOptions:
        env = os.environ if environ is None else environ
        command = shlex.split(env.get(ENV_SSH, "") or "ssh")
        if shutil.which(command[0]) is None:
            raise SshError(f"cannot find the ssh program {command[0]!r}; install OpenSSH's "
                           f"client or point ${ENV_SSH} at it", kind="failed")
        return cls(ssh_command=command, options=list(options),
                   remote_symwatch=remote_symwatch or env.get(ENV_REMOTE_SYMWATCH) or None,
                   remote_runtime_dir=(remote_runtime_dir or env.get(ENV_REMOTE_RUNTIME_DIR)
                                       or None))

    def argv(self, target: SshTarget, *extra: str) -> list[str]:
        """`ssh <defaults> <-o options> [-p port] [-l user] EXTRA... -- host`; the remote
        command, if any, is appended by the caller."""
        argv = [*self.ssh_command, *SSH_DEFAULTS]
        for option in self.options:
            argv += ["-o", option]
        if target.port:
            argv += ["-p", str(target.port)]
        if target.user:
            argv += ["-l", target.user]
        return [*argv, *extra, "--", target.host]

    def remote_script(self, *args: str) -> str:
        """The shell command line that runs `symwatch ARGS` on the host: the named remote
        symwatch, else `symwatch` on its PATH, else `python3 -m symwatch`; prints a marker and
        exits 127 when none is there."""
        env = (f"env {runtime.ENV_RUNTIME_DIR}={shlex.quote(self.remote_runtime_dir)} "
               if self.remote_runtime_dir else "")
        tail = " ".join(shlex.quote(a) for a in args)
        missing = f"{{ echo {NOT_INSTALLED_MARK} >&2; exit 127; }}"
        if self.remote_symwatch:
            words = shlex.split(self.remote_symwatch)
            return (f"command -v {shlex.quote(words[0])} >/dev/null 2>&1 || {missing}; "
                    f"exec {env}{self.remote_symwatch} {tail}")
        return (f"if command -v symwatch >/dev/null 2>&1; then exec {env}symwatch {tail}; "
                "elif python3 -c 'import symwatch' >/dev/null 2>&1; then "
                f"exec {env}python3 -m symwatch {tail}; else {missing}; fi")


# -- classifying ssh's failures ----------------------------------------------------------------

UNREACHABLE = ("connection refused", "no route to host", "could not resolve hostname",
               "connection timed out", "network is unreachable", "operation timed out",
               "name or service not known", "connection closed by", "connection reset by",
               "kex_exchange_identification")


def classify(target: SshTarget, stderr: str, returncode: int, options: SshOptions) -> SshError:
    """ssh's exit status and stderr as one actionable SshError."""
    text = stderr.lower()
    last = _last_line(stderr)
    host = target.label
    if returncode == 255 or "permission denied" in text or "host key" in text:
        if "permission denied" in text:
            return SshError(f"authentication to {host} failed ({last}); check that `ssh "
                            f"{host}` works without a password (ssh-add your key, or pass "
                            "-o IdentityFile=...)", kind="auth")
        if "host key verification failed" in text or "remote host identification" in text:
            return SshError(f"the host key of {host} is unknown or changed; connect once with "
                            f"`ssh {host}` to check and accept it", kind="hostkey")
        if any(word in text for word in UNREACHABLE):
            return SshError(f"cannot reach {host} ({last}); check the host name, the port and "
                            "that sshd runs there (`ssh -v` shows where it stops)",
                            kind="unreachable")
        return SshError(f"ssh to {host} failed ({last or f'exit status {returncode}'}); try "
                        f"`ssh -v {host}`", kind="failed")
    if returncode == 127 and (NOT_INSTALLED_MARK in stderr or "not found" in text) \
            or "no module named symwatch" in text:
        where = (f"--remote-symwatch {options.remote_symwatch!r}" if options.remote_symwatch
                 else "`symwatch` or `python3 -m symwatch`")
        return SshError(f"symwatch is not installed on {host} ({where} not found there); "
                        "install it there (pip install symwatch) or pass --remote-symwatch "
                        "/path/to/venv/bin/symwatch", kind="not-installed")
    return SshError(f"symwatch on {host} failed (exit status {returncode}: "
                    f"{last or 'no message'})", kind="failed")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()
             and NOT_INSTALLED_MARK not in ln]
    return lines[-1][:200] if lines else ""


def run_remote(target: SshTarget, options: SshOptions, *args: str,
               timeout_s: float | None = None) -> str:
    """Run `symwatch ARGS` on the host; its stdout, or SshError."""
    argv = options.argv(target) + [options.remote_script(*args)]
    timeout = timeout_s or options.command_timeout_s
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=die_with_parent())
    except subprocess.TimeoutExpired:
        raise SshError(f"no answer from {target.label} within {timeout:g} s; check that "
                       f"`ssh {target.label}` works", kind="unreachable") from None
    except OSError as exc:
        raise SshError(f"cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise classify(target, done.stderr, done.returncode, options)
    return done.stdout


def list_remote_runs(target: SshTarget, options: SshOptions) -> list[RunEntry]:
    """The live runs on the host, from its `symwatch ls --json`."""
    return [entry for entry, _ in _remote_listing(target, options, "ls", "--json")]


def list_remote_registered(target: SshTarget, options: SshOptions
                           ) -> list[tuple[RunEntry, bool]]:
    """Every run registered on the host, each with whether its process is alive (`symwatch ls
    --json --all`: a run that died without unregistering is listed as not alive, not dropped,
    so the Runs screen can call it lost rather than finished)."""
    return _remote_listing(target, options, "ls", "--json", "--all")


def _remote_listing(target: SshTarget, options: SshOptions, *args: str
                    ) -> list[tuple[RunEntry, bool]]:
    out = run_remote(target, options, *args)
    try:
        data = json.loads(out)
        if not isinstance(data, list):
            raise ValueError("not a list")
        runs = [(RunEntry.from_json(item), item.get("alive", True) is not False)
                for item in data]
    except (ValueError, TypeError, AttributeError) as exc:
        first = out.strip().splitlines()[0][:120] if out.strip() else "nothing"
        raise SshError(f"unexpected answer from `symwatch ls --json` on {target.label} "
                       f"({exc}; it printed {first!r}); is the symwatch there current?") from None
    return runs


def choose_run(target: SshTarget, runs: Sequence[RunEntry]) -> RunEntry:
    """The run the target names (id, name, unique id prefix), or the only one."""
    if not runs:
        raise SshError(f"no live symwatch runs on {target.label}; start one there "
                       "(symwatch run -- python train.py), or pass --remote-runtime-dir when "
                       "it uses another runtime directory", kind="no-runs")
    if target.run is None:
        if len(runs) == 1:
            return runs[0]
        listing = ", ".join(f"{r.run_id} ({r.name})" for r in runs)
        raise SshError(f"{len(runs)} live runs on {target.label}: {listing}; pick one with "
                       f"{target.url('RUN')}", kind="ambiguous")
    key = target.run
    for matches in ([r for r in runs if r.run_id == key], [r for r in runs if r.name == key],
                    [r for r in runs if r.run_id.startswith(key)]):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(f"{r.run_id} ({r.name})" for r in matches)
            raise SshError(f"{key!r} matches several runs on {target.label}: {ids}; pass a "
                           "run id", kind="ambiguous")
    names = ", ".join(f"{r.run_id} ({r.name})" for r in runs)
    raise SshError(f"no run {key!r} on {target.label}; its live runs: {names}", kind="no-runs")


# -- the tunnel --------------------------------------------------------------------------------

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
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip())

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 3.0) -> None:
        end_process(self.proc, timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._reader.join(1.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


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
        started.wait()
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
        self._ssh = _Child(self._ssh_argv())

    def _launch_and_probe(self) -> SshError | None:
        self._launch()
        for fwd in self.forwards:
            problem = self._probe(fwd)
            if problem is not None:
                return problem
        return None

    def _probe(self, fwd: Forward) -> SshError | None:
        """Connect to the local end until ZeroMQ's greeting comes back through the tunnel."""
        assert self._ssh is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if not self._ssh.alive():
                self._ssh.proc.wait()
                time.sleep(0.05)  # the stderr reader catches the last lines
                return self._ssh_failed(self._ssh)
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
            return SshError(f"ssh could not set up the forward here ({_last_line(text)})",
                            kind="failed")
        return classify(self.target, text, child.proc.returncode or 255, self.options)

    # -- the relay (Unix-socket forwarding forbidden) -------------------------------------------

    def _start_relay(self) -> None:
        paths = [fwd.remote[len("ipc://"):] for fwd in self.forwards
                 if fwd.remote.startswith("ipc://")]
        argv = self.options.argv(self.target, "-T") + [
            self.options.remote_script("ssh-relay", *paths)]
        self._relay = _Child(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
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
                                   f"({_last_line(err)}); the run may just have ended",
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
            reason = _last_line(dead.stderr) or f"ssh exited ({dead.proc.returncode})"
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


# -- the relay, on the host ----------------------------------------------------------------------

def relay_main(paths: Sequence[str], stdin: IO[bytes] | None = None,
               stdout: IO[str] | None = None) -> int:
    """`symwatch ssh-relay PATH...` (run by Tunnel on the host over ssh): listen on a loopback
    TCP port per Unix socket, print `symwatch-relay PORT...`, copy bytes both ways for every
    connection, and exit when stdin closes (the ssh session ended)."""
    out = stdout or sys.stdout
    for path in paths:
        if not os.path.exists(path):
            print(f"symwatch ssh-relay: no such socket {path}", file=sys.stderr, flush=True)
            return 3
    listeners = []
    for path in paths:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        listeners.append((srv, path))
        threading.Thread(target=_relay_accept, args=(srv, path), daemon=True).start()
    print(RELAY_READY, *(srv.getsockname()[1] for srv, _ in listeners), file=out, flush=True)
    source = stdin or sys.stdin.buffer
    try:
        while source.read(4096):
            pass
    except (OSError, ValueError):
        pass
    return 0


def _relay_accept(srv: socket.socket, path: str) -> None:
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        try:
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix.connect(path)
        except OSError:
            conn.close()
            continue
        for a, b in ((conn, unix), (unix, conn)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        src.close()


# -- remembered hosts (the Runs screen's) ------------------------------------------------------

def hosts_file() -> Path:
    """$XDG_CONFIG_HOME/symwatch/hosts: one ssh:// URL a line."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "symwatch" / "hosts"


def load_hosts(path: Path | None = None) -> list[str]:
    """The remembered hosts (ssh:// URLs); a missing or unreadable file is no hosts, and a line
    that is not a host (edited by hand) is skipped."""
    try:
        lines = (path or hosts_file()).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    hosts = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                hosts.append(normalise_host(line))
            except SshError:
                continue
    return hosts


def save_hosts(hosts: Sequence[str], path: Path | None = None) -> None:
    path = path or hosts_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{h}\n" for h in hosts), encoding="utf-8")
    os.replace(tmp, path)


def normalise_host(text: str) -> str:
    """`gpu-box`, `me@gpu-box:2222` or `ssh://…` as `ssh://…` without a run; SshError if bad."""
    text = text.strip()
    url = text if text.lower().startswith("ssh://") else f"ssh://{text}"
    return SshTarget.parse(url).url(run="")


# -- wiring for the command line and the TUI ---------------------------------------------------

def add_ssh_arguments(parser: argparse.ArgumentParser, short: bool = True) -> None:
    """The options every command that takes an ssh:// target shares (`short`: also `-o` for
    --ssh-option, where -o does not already mean --output)."""
    group = parser.add_argument_group(
        "remote runs (ssh://)", f"ssh is the system's (${ENV_SSH} overrides the command, e.g. "
        "'ssh -F ~/.ssh/cluster'), so ~/.ssh/config, agents and jump hosts apply")
    group.add_argument(*(("-o",) if short else ()), "--ssh-option", action="append",
                       default=[], metavar="OPT",
                       help="an ssh -o option, repeatable: --ssh-option Port=2222 "
                            "--ssh-option IdentityFile=~/.ssh/cluster")
    group.add_argument("--remote-symwatch", metavar="CMD", default=None,
                       help="symwatch on the host, when not on its PATH: "
                            "/opt/venv/bin/symwatch or '/opt/venv/bin/python -m symwatch' "
                            f"(also ${ENV_REMOTE_SYMWATCH}; default: symwatch, then "
                            "python3 -m symwatch)")
    group.add_argument("--remote-runtime-dir", metavar="DIR", default=None,
                       help="the host's symwatch runtime directory, when its runs set "
                            f"{runtime.ENV_RUNTIME_DIR} (also ${ENV_REMOTE_RUNTIME_DIR})")


def options_from_args(args: argparse.Namespace) -> SshOptions:
    return SshOptions.from_env(options=getattr(args, "ssh_option", None) or (),
                               remote_symwatch=getattr(args, "remote_symwatch", None),
                               remote_runtime_dir=getattr(args, "remote_runtime_dir", None))


class TunnelFeed(BackgroundFeed):
    """A BackgroundFeed on a Tunnel's local endpoints that owns the tunnel: `close()` ends
    both; while ssh reconnects, `last_error` says so (the TUI's banner shows it)."""

    def __init__(self, tunnel: Tunnel, **options: Any) -> None:
        self.tunnel = tunnel
        # what the TUI's header shows instead of the local forwarded socket
        self.where = tunnel.target.url(tunnel.entry.run_id)
        super().__init__(tunnel.endpoint, history_endpoint=tunnel.history_endpoint, **options)

    @property
    def last_error(self) -> str | None:
        if self.tunnel.state.startswith("reconnecting"):
            return f"ssh {self.tunnel.target.label}: {self.tunnel.state}"
        return super().last_error

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        self.tunnel.close()
