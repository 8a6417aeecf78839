"""The whole injection: choose the route, run the snippet in the target, wait for its result
file, and say where the agent publishes (`Outcome`) or why it does not (`InjectError`)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from symwatch.core import runtime
from symwatch.launch.inject.debuggers import (ATTACH_WAIT_S, SAFE_POINT_WAIT_S, find_gdb,
                                              find_lldb, gdb_failure, gdb_script, lldb_failure,
                                              lldb_script, run_gdb, run_lldb)
from symwatch.launch.inject.remote_exec import can_remote_exec, run_remote_exec
from symwatch.launch.inject.snippet import snippet
from symwatch.launch.inject.target import (InjectError, Target, check_target, inspect_target,
                                           registered_run)
from symwatch.launch.run import package_roots

DEFAULT_WAIT_S = 60.0  # for the next optimizer.step() of the target after the injection


@dataclass
class Outcome:
    """Where the injected agent publishes (or the agent that was already there)."""

    endpoint: str
    run_id: str | None = None
    name: str | None = None
    layers: int | None = None
    already: bool = False
    notes: list[str] = field(default_factory=list)


def inject(pid: int, options: dict[str, Any] | None = None, *,
           environment: dict[str, str] | None = None, model: str | None = None,
           optimizer: str | None = None, wait_s: float = DEFAULT_WAIT_S,
           method: str = "auto", quiet: bool = False,
           progress: Callable[[str], None] = lambda text: None,
           verbose: Callable[[str], None] | None = None) -> Outcome:
    """Put the agent into process `pid`; return where it publishes once it does (after the
    next optimizer step), or the run it already publishes. `environment`: `SYMWATCH_*`
    variables (the keys, insecure) the agent reads over the process's own environment, which
    stays untouched (symwatch_agent.options.injected). Raises InjectError."""
    entry = registered_run(pid)
    if entry is not None:
        return Outcome(entry.endpoint, entry.run_id, entry.name, already=True)
    target = inspect_target(pid)
    check_target(target)
    route = _choose_route(target, method)
    debugger = {"gdb": find_gdb, "lldb": find_lldb}.get(route, lambda: "")()
    folder = Path(tempfile.mkdtemp(prefix="symwatch-inject-"))
    keep_folder = False
    try:
        if os.geteuid() == 0 and target.uid != 0:  # root injecting into a user's process
            os.chown(folder, target.uid, -1)
        result = folder / "result.json"
        # The set-up refuses to arm after `arm_deadline` (sys.remote_exec may run it late,
        # after we gave up), the hook to start anything once `waiting` is gone (removed with
        # the folder when this function returns, whatever the outcome) or after `deadline`.
        waiting = folder / "waiting"
        waiting.touch()
        arm_wait_s = SAFE_POINT_WAIT_S + (ATTACH_WAIT_S if debugger else 0.0) + 5.0
        request = {"result": str(result), "waiting": str(waiting),
                   "arm_deadline": time.time() + arm_wait_s,
                   "deadline": time.time() + arm_wait_s + wait_s,
                   "options": dict(options or {}), "environment": dict(environment or {}),
                   "model": model, "optimizer": optimizer,
                   "quiet": quiet}
        code = snippet(request, package_roots())
        progress(f"getting into {target.described} ({target.version_text}, via {route})…")
        if route == "remote-exec":
            script = folder / "inject.py"
            script.write_text(code + "\n", encoding="utf-8")
            os.chmod(script, 0o644)
            run_remote_exec(target, script)
            # The target runs it at its next safe point: until then it must stay readable.
            keep_folder = True
            state = _wait_result(result, target, SAFE_POINT_WAIT_S, ("armed", "already",
                                                                    "error", "running"))
            if state is None:
                waiting.unlink()  # if it runs now, it arms nothing
                raise InjectError(
                    f"{target.described} ran no Python code in its main thread for "
                    f"{SAFE_POINT_WAIT_S:.0f} s; the queued set-up will do nothing when it "
                    "runs after the deadline")
            keep_folder = False
        else:
            script = folder / f"inject.{route}"
            if route == "lldb":
                script.write_text(lldb_script(code), encoding="utf-8")
                output = run_lldb(debugger, target, script, SAFE_POINT_WAIT_S, verbose)
                failure = lldb_failure(output, target, SAFE_POINT_WAIT_S)
            else:
                script.write_text(gdb_script(code), encoding="utf-8")
                output = run_gdb(debugger, pid, script, SAFE_POINT_WAIT_S, verbose)
                failure = gdb_failure(output, target, SAFE_POINT_WAIT_S)
            if failure is not None:
                raise InjectError(failure)
            state = _read_result(result)
            if state is None:
                raise InjectError(f"the agent's set-up ran in {target.described} but reported "
                                  "nothing (is its /tmp writable?)")
        state = _final_state(state, result, target, wait_s, progress)
        return _outcome(state, target)
    finally:
        if not keep_folder:
            shutil.rmtree(folder, ignore_errors=True)


def _choose_route(target: Target, method: str) -> str:
    if method == "remote-exec" or (method == "auto" and can_remote_exec(target)):
        if not can_remote_exec(target):
            raise InjectError(
                f"sys.remote_exec needs the process and symwatch on the same Python 3.14+; "
                f"{target.described} runs {target.version_text}, symwatch runs Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}; use --method gdb")
        return "remote-exec"
    if method == "auto":  # gdb where it is installed (memray's choice on Linux), else lldb
        return "lldb" if shutil.which("gdb") is None and _has_lldb() else "gdb"
    return method


def _has_lldb() -> bool:
    try:
        find_lldb()
    except InjectError:
        return False
    return True


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _wait_result(path: Path, target: Target, timeout_s: float,
                 states: Sequence[str]) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _read_result(path)
        if state is not None and state.get("state") in states:
            return state
        if not runtime.pid_alive(target.pid):
            raise InjectError(f"process {target.pid} exited before the agent started")
        time.sleep(0.05)
    return None


def _final_state(state: dict[str, Any], result: Path, target: Target, wait_s: float,
                 progress: Callable[[str], None]) -> dict[str, Any]:
    if state.get("state") == "armed":
        progress("armed; the agent starts after the process's next optimizer.step()…")
        final = _wait_result(result, target, wait_s, ("running", "already", "error",
                                                     "expired"))
        if final is None:
            raise InjectError(
                f"{target.described} made no optimizer.step() within {wait_s:.0f} s; the "
                "armed hook will start nothing after this deadline (try --wait longer)")
        state = final
    return state


def _outcome(state: dict[str, Any], target: Target) -> Outcome:
    kind = state.get("state")
    if kind in ("running", "already") and state.get("endpoint"):
        return Outcome(state["endpoint"], state.get("run_id"), state.get("name"),
                       state.get("layers"), already=kind == "already")
    error = state.get("error") or f"unexpected answer {state!r}"
    if kind == "already":
        raise InjectError(f"{target.described}: {error}; wait for it, or try again later")
    if kind == "expired":
        raise InjectError(f"{target.described} stepped only after the deadline; nothing was "
                          "started (try --wait longer)")
    if state.get("stage") == "import":
        theirs = state.get("python", "?")
        ours = platform.python_version()
        hint = ("install symwatch into the process's environment (pip install symwatch)"
                if theirs.rsplit(".", 1)[0] != ours.rsplit(".", 1)[0] else
                "install symwatch (or the missing package) into the process's environment")
        if "not imported torch" in error:
            raise InjectError(f"{target.described} has not imported torch: it is not a "
                              "PyTorch training process (yet)")
        raise InjectError(f"the agent cannot be imported in {target.described} (Python "
                          f"{theirs}, {state.get('executable', target.exe)}; symwatch runs "
                          f"Python {ours}): {error}; {hint}. The process was left as it was")
    raise InjectError(f"the agent did not start in {target.described}: {error}")
