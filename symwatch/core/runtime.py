"""The per-user runtime directory and the registry of live runs (stdlib only; both halves use it).

Each agent writes one JSON entry `runs/<run_id>.json` when it starts, rewrites it now and then
with its step count, and removes it on exit. Observers (`symwatch ls`, `symwatch attach`) read
the entries and prune any whose process is gone (a run killed with SIGKILL cannot clean up).
The directory is created 0700 so that only the same user can see the runs or connect to their
Unix sockets.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ENV_RUNTIME_DIR = "SYMWATCH_RUNTIME_DIR"

# A Unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, 104 on macOS).
MAX_IPC_PATH = 100


def runtime_dir(create: bool = True) -> Path:
    """The runtime directory: $SYMWATCH_RUNTIME_DIR, else $XDG_RUNTIME_DIR/symwatch, else
    /tmp/symwatch-<uid>. Created with mode 0700; one owned by another user is refused and
    looser permissions on our own are tightened, since others could read or hijack the
    sockets."""
    override = os.environ.get(ENV_RUNTIME_DIR)
    if override:
        path = Path(override)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "symwatch"
    else:
        path = Path(tempfile.gettempdir()) / f"symwatch-{os.getuid()}"
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
        if st.st_uid != os.getuid():
            raise PermissionError(f"runtime directory {path} belongs to another user; "
                                  f"set {ENV_RUNTIME_DIR} to a directory of your own")
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)
        (path / "runs").mkdir(mode=0o700, exist_ok=True)
    return path


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback addresses (IPv6 may come in brackets): the hosts an
    endpoint may name and still be reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_ipc_endpoint(run_id: str) -> str | None:
    """`ipc://<runtime>/<run_id>.sock`, or None when that path is too long for a Unix socket
    (the caller then falls back to loopback TCP)."""
    path = runtime_dir() / f"{run_id}.sock"
    if len(str(path)) > MAX_IPC_PATH:
        return None
    return f"ipc://{path}"


def history_address(endpoint: str) -> str:
    """Where a history ROUTER binds next to a bound publishing endpoint (the agent's PUB, a
    relay's XPUB): `X.history.sock` beside an ipc socket (loopback TCP when that path is too
    long), the same interface with any free port for TCP."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        base = path[:-len(".sock")] if path.endswith(".sock") else path
        candidate = f"{base}.history.sock"
        return f"ipc://{candidate}" if len(candidate) <= MAX_IPC_PATH else "tcp://127.0.0.1:*"
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    return f"tcp://{host}:*"


@dataclass
class RunEntry:
    """What `symwatch ls` shows about one live run."""

    run_id: str
    name: str
    pid: int
    command: list[str]
    endpoint: str
    started: float
    host: str
    steps: int = 0
    updated: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunEntry:
        """An entry from `to_json`'s dict (a registry file, `symwatch ls --json`); unknown keys
        are ignored; TypeError when the required ones are missing or of the wrong type."""
        entry = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        if not (isinstance(entry.pid, int) and isinstance(entry.started, (int, float))
                and isinstance(entry.endpoint, str)):
            raise TypeError("malformed run entry")
        return entry


def _entry_path(run_id: str, root: Path | None = None) -> Path:
    return (root if root is not None else runtime_dir()) / "runs" / f"{run_id}.json"


def write_entry(entry: RunEntry, root: Path | None = None) -> Path:
    """Write (or rewrite) a run's entry atomically, so readers never see half a file. A long-
    lived writer passes the `root` it registered under, so that a later change of
    SYMWATCH_RUNTIME_DIR in its process cannot scatter its entries over two registries."""
    path = _entry_path(entry.run_id, root)
    # Unique per writer: the agent's thread and its owner may both write the same entry.
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(entry.to_json(), fh)
    os.replace(tmp, path)
    return path


def remove_entry(run_id: str, root: Path | None = None) -> None:
    try:
        _entry_path(run_id, root).unlink()
    except FileNotFoundError:
        pass


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def newest_run(runs: list[RunEntry], name: str | None, *, started_after: float | None = None,
               not_endpoint: str | None = None) -> RunEntry | None:
    """The newest of `runs` named `name` (any name: None): a restarted run is newer than what
    it replaced. With `started_after`, only one that started later (a restart, not another
    run of that name that was already going); `not_endpoint`: not the one followed now."""
    if name is not None:
        runs = [r for r in runs if r.name == name]
    if started_after is not None:
        runs = [r for r in runs if r.started > started_after]
    if not_endpoint is not None:
        runs = [r for r in runs if r.endpoint != not_endpoint]
    return max(runs, key=lambda r: r.started) if runs else None


def live_runs(prune: bool = True) -> list[RunEntry]:
    """Every registered run whose process is alive, oldest first. Entries of dead processes are
    deleted when `prune` is true; unreadable entries are skipped (and pruned) rather than
    failing the listing."""
    runs: list[RunEntry] = []
    folder = runtime_dir() / "runs"
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entry = RunEntry.from_json(data)
        except (OSError, ValueError, TypeError, AttributeError):
            if prune:
                path.unlink(missing_ok=True)
            continue
        if not pid_alive(entry.pid):
            if prune:
                path.unlink(missing_ok=True)
                _remove_stale_socket(entry.endpoint, folder.parent)
                history = entry.extra.get("history_endpoint") if isinstance(
                    entry.extra, dict) else None
                if isinstance(history, str):  # the late-join socket beside it
                    _remove_stale_socket(history, folder.parent)
            continue
        runs.append(entry)
    runs.sort(key=lambda e: e.started)
    return runs


def registered_runs() -> list[RunEntry]:
    """Every readable registry entry, alive or not, oldest first; nothing is pruned (the Runs
    screen shows a run whose process died without unregistering as lost)."""
    runs: list[RunEntry] = []
    for path in sorted((runtime_dir() / "runs").glob("*.json")):
        try:
            runs.append(RunEntry.from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    runs.sort(key=lambda e: e.started)
    return runs


def _remove_stale_socket(endpoint: str, root: Path) -> None:
    """A killed run leaves its Unix socket file behind; remove it if it is one of ours."""
    if not endpoint.startswith("ipc://"):
        return
    sock = Path(endpoint[len("ipc://"):])
    if sock.parent == root:
        sock.unlink(missing_ok=True)
