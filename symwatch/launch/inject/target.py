"""Looking at the process from /proc before anything touches it: is it there, ours to trace,
Python (which version), training with torch; and the run it may already publish."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from symwatch.core import runtime

PTRACE_ADVICE = (
    "ptrace is not permitted: run symwatch as the same user as the training process (or as "
    "root); if you are, the kernel's Yama setting forbids it: `sudo sysctl "
    "kernel.yama.ptrace_scope=0` (or 1 when symwatch runs as root); in a container, give it "
    "CAP_SYS_PTRACE (docker/podman run --cap-add=SYS_PTRACE; Kubernetes: "
    "securityContext.capabilities.add: [SYS_PTRACE])")


class InjectError(Exception):
    """Injection is impossible or failed: one line for the user, saying what to do."""


@dataclass
class Target:
    """What /proc tells about the process before anything touches it."""

    pid: int
    exe: str
    command: list[str]
    version: tuple[int, int] | None  # None: a Python we cannot date from its files
    torch_loaded: bool
    uid: int

    @property
    def described(self) -> str:
        command = " ".join(self.command) or self.exe
        if len(command) > 80:
            command = command[:79] + "…"
        return f"process {self.pid} ({command})"

    @property
    def version_text(self) -> str:
        return "Python " + ".".join(map(str, self.version)) if self.version else "Python"


_VERSION_RE = re.compile(r"(?:libpython|python)(\d)\.(\d+)")


def inspect_target(pid: int, proc: Path = Path("/proc")) -> Target:
    """Check the process from /proc, without touching it."""
    base = proc / str(pid)
    if pid <= 0 or not base.is_dir():
        raise InjectError(f"no process with id {pid} (see `ps` or `symwatch ls`)")
    try:
        uid = (base).stat().st_uid
        command = [part.decode("utf-8", "replace")
                   for part in (base / "cmdline").read_bytes().split(b"\0") if part]
    except FileNotFoundError:
        raise InjectError(f"process {pid} has exited") from None
    try:
        exe = os.readlink(base / "exe")
        maps = (base / "maps").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InjectError(f"process {pid} has exited") from None
    except PermissionError:
        if uid != os.geteuid():
            raise InjectError(f"process {pid} belongs to another user (uid {uid}): run "
                              "symwatch as that user (or as root)") from None
        raise InjectError(f"cannot look into process {pid} (its memory map is not "
                          f"readable): {PTRACE_ADVICE}") from None
    libraries = {line.split(None, 5)[5] for line in maps.splitlines()
                 if len(line.split(None, 5)) == 6}
    version = _python_version(exe, libraries)
    if version is None and not _exports_python_api(exe):
        raise InjectError(f"process {pid} ({exe}) is not a Python process")
    torch_loaded = any("libtorch" in Path(path).name for path in libraries)
    return Target(pid, exe, command, version, torch_loaded, uid)


def _python_version(exe: str, libraries: set[str]) -> tuple[int, int] | None:
    """The X.Y of the interpreter: from libpythonX.Y.so among the mapped files, else from
    the executable's name (python3.11)."""
    for path in sorted(libraries):
        match = _VERSION_RE.search(Path(path).name)
        if match and Path(path).name.startswith("libpython"):
            return int(match.group(1)), int(match.group(2))
    match = _VERSION_RE.fullmatch(Path(exe).name.rstrip("dtm"))
    if match:
        return int(match.group(1)), int(match.group(2))
    return None


def _exports_python_api(exe: str) -> bool:
    """A statically linked Python under another name still exports the C API."""
    try:
        with open(exe, "rb") as fh:
            return b"Py_AddPendingCall\0" in fh.read()
    except OSError:
        return False


def check_target(target: Target) -> None:
    if target.version is not None and target.version < (3, 10):
        raise InjectError(f"{target.described} runs {target.version_text}; the agent needs "
                          "Python 3.10 or newer")
    if not target.torch_loaded:
        raise InjectError(f"{target.described} has not imported torch: it is not a PyTorch "
                          "training process (yet); inject once it trains")


def registered_run(pid: int) -> runtime.RunEntry | None:
    """A live run the process already publishes (watch() in the script, symwatch run, or an
    earlier injection), from the registry."""
    for entry in runtime.live_runs():
        if entry.pid == pid:
            return entry
    return None

