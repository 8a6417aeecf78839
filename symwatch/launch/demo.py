"""Start, watch and stop the torch demo run as a subprocess (the observer never imports torch)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import zmq

from symwatch.core import runtime
from symwatch.core.processes import die_with_parent, end_process, free_port

DEMO_MODULE = "symwatch_agent.entry.demo"


def free_endpoint() -> str:
    """A Unix socket in the runtime directory when ZeroMQ supports it and the path fits, else a
    free loopback TCP port (chosen by the kernel; a tiny race with other binders remains)."""
    if zmq.has("ipc"):
        endpoint = runtime.default_ipc_endpoint(f"demo-{os.getpid()}-{secrets.token_hex(3)}")
        if endpoint:
            return endpoint
    return f"tcp://127.0.0.1:{free_port()}"


class DemoProcess:
    """`python -m symwatch_agent.entry.demo ...` with its output in a log file (so it cannot draw over
    the TUI) and stdin closed (so it cannot steal the TUI's keys)."""

    def __init__(self, endpoint: str, *, name: str = "demo", steps: int = 0, delay: float = 0.05,
                 every: int = 10, python: str = sys.executable) -> None:
        self.endpoint = endpoint
        self.argv = [python, "-m", DEMO_MODULE, "--endpoint", endpoint, "--name", name,
                     "--steps", str(steps), "--delay", str(delay), "--every", str(every)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self) -> None:
        fd, path = tempfile.mkstemp(prefix="demo-", suffix=".log", dir=runtime.runtime_dir())
        self.log_path = Path(path)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=fd,
                                         stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=die_with_parent())
        finally:
            os.close(fd)

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate, then kill after `timeout` seconds; returns the exit status."""
        if self.proc is None:
            return None
        end_process(self.proc, timeout)
        self._remove_socket()
        return self.proc.returncode

    def output_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def cleanup(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def _remove_socket(self) -> None:
        # A demo killed before it could clean up leaves its Unix socket file behind.
        if self.endpoint.startswith("ipc://"):
            Path(self.endpoint[len("ipc://"):]).unlink(missing_ok=True)
