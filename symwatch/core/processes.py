"""Child processes and ports, the same way everywhere (the demo, ssh, the web server).

Standard library only: `die_with_parent` (a killed parent takes its children with it),
`end_process` (SIGTERM, then SIGKILL), `free_port` (a port the kernel just gave out).
"""

from __future__ import annotations

import ctypes
import os
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


def end_process(proc: subprocess.Popen[bytes], timeout: float, *,
                group: bool = False) -> int | None:
    """SIGTERM, then SIGKILL after `timeout` seconds; its exit status.

    `group`: signal the child's whole process group (a child started with
    `start_new_session=True` leads one), so what it started goes too: ssh's ProxyCommand,
    for one, holds ssh's stderr pipe open after ssh is gone, and whoever reads that pipe to
    its end would wait for it."""
    if group:
        _signal_group(proc, signal.SIGTERM)  # even if the leader has exited: its children
    if proc.poll() is None:
        if not group:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            if group:
                _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):  # the group is gone (or is not ours)
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now on `host` (chosen by the kernel; a tiny race with other
    binders remains, so callers that can bind port 0 themselves should)."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((bare, 0))
        return int(sock.getsockname()[1])
