"""SSH targets and how to call ssh: `SshTarget` (`ssh://[user@]host[:port][/RUN]`), `SshOptions`
(`$SYMWATCH_SSH`, `-o` options, the remote symwatch), `run_remote` (`symwatch ARGS` on the host)
and `classify`, which turns ssh's exit status and stderr into one actionable `SshError`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import unquote, urlsplit

from symwatch.core import runtime
from symwatch.core.processes import die_with_parent

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
    unreachable, auth, hostkey, not-installed, no-runs, forward-refused, no-socket, failed,
    closed (the tunnel was closed while it opened)."""

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
    last = last_line(stderr)
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


def last_line(text: str) -> str:
    """The last line of ssh's stderr worth showing (its own marker left out), cut to 200."""
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
