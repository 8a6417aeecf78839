"""Child processes and ports, the same way everywhere (the demo, ssh, the web server).

Standard library only: `die_with_parent` (a killed parent takes its children with it),
`end_process` (SIGTERM, then SIGKILL), `free_port` (a port the kernel just gave out).
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
from typing import Callable


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a preexec hook asking the kernel to SIGTERM the child when we die, so a
    killed (SIGKILL) `symwatch demo` cannot leave a run training forever. Resolved before
    fork: the hook itself only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook


def end_process(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM, then SIGKILL after `timeout` seconds; its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now on `host` (chosen by the kernel; a tiny race with other
    binders remains, so callers that can bind port 0 themselves should)."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((bare, 0))
        return int(sock.getsockname()[1])
