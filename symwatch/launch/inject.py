"""`symwatch inject PID` / `symwatch attach --pid PID`: put the agent into a Python training
process that is already running and never imported symwatch (docs/launch.md, "Attach to a run
already going").

The observer side, which never imports torch or the agent:

1. look at the process from /proc (exists, ours to trace, Python and which version, torch
   loaded) and refuse with one clear line when it cannot work;
2. have a few lines of Python run in the target's main thread at a safe point, with the GIL
   held: on Python 3.14+ (when symwatch runs on the same version) `sys.remote_exec`; else
   through gdb, the way `memray attach` does it: queue a no-op pending call
   (`Py_AddPendingCall(PyCallable_Check, NULL)`), stop at the entry of that call, which the
   interpreter makes from its eval loop between two bytecodes, run the lines there with
   `PyRun_SimpleString`, detach; or the same through lldb where gdb is missing (`--method
   lldb`). A process that reaches no safe point within the deadline is interrupted and
   detached untouched;
3. those lines import `symwatch_agent.entry.injected` (our package root appended to the end of the
   target's `sys.path` if it cannot import it) and arm a one-shot optimizer step hook; they
   report through a JSON result file, and the agent starts after the next `optimizer.step()`;
4. wait for the result with a deadline, print the endpoint (`inject`) or open the UI on it
   (`attach --pid`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from symwatch.core import runtime

DEFAULT_WAIT_S = 60.0  # for the next optimizer.step() of the target after the injection
SAFE_POINT_WAIT_S = 20.0  # for the target's main thread to run Python code
ATTACH_WAIT_S = 60.0  # for gdb to attach and read libpython's symbols
SNIPPET_FILENAME = "<symwatch inject>"
MARK = "SYMWATCH:"  # prefixes the gdb script's progress lines

# The register holding a function's first argument at its entry: where the gdb script checks
# that PyCallable_Check was called with NULL (our pending call) and not by ordinary code.
FIRST_ARG_REGISTER = {"x86_64": "$rdi", "amd64": "$rdi", "aarch64": "$x0", "arm64": "$x0",
                      "ppc64le": "$r3", "s390x": "$r2", "riscv64": "$a0"}

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


@dataclass
class Outcome:
    """Where the injected agent publishes (or the agent that was already there)."""

    endpoint: str
    run_id: str | None = None
    name: str | None = None
    layers: int | None = None
    already: bool = False
    notes: list[str] = field(default_factory=list)


# -- looking at the process ------------------------------------------------------------------

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


# -- what runs in the target -----------------------------------------------------------------

def package_roots() -> list[str]:
    """Where `symwatch_agent` and `symwatch` are imported from here: appended to the end of
    the target's sys.path when it cannot import them itself (never shadowing its packages)."""
    from symwatch.launch.run import _package_roots

    return _package_roots()


def snippet(request: dict[str, Any], roots: Sequence[str]) -> str:
    """The Python run in the target's main thread. Quick and exception-proof: it checks that
    torch is there, imports `symwatch_agent.entry.injected` and calls `inject`, which arms a hook
    and never raises. A failure to import is reported to the result file and undone: the
    path entries added and the modules imported are removed again."""
    inner = f"""\
import sys
_result = {request["result"]!r}
_added = []
_before = set(sys.modules)
try:
    if "torch" not in sys.modules:
        raise RuntimeError("this process has not imported torch")
    for _root in {list(roots)!r}:
        if _root not in sys.path:
            sys.path.append(_root)
            _added.append(_root)
    from symwatch_agent.entry.injected import inject as _inject
except BaseException as _exc:
    for _root in _added:
        if _root in sys.path:
            sys.path.remove(_root)
    for _name in set(sys.modules) - _before:
        if _name.partition(".")[0] in ("symwatch", "symwatch_agent"):
            sys.modules.pop(_name, None)
    try:
        import json, os
        with open(_result + ".tmp", "w") as _fh:
            json.dump({{"state": "error", "stage": "import",
                       "error": type(_exc).__name__ + ": " + str(_exc),
                       "python": sys.version.split()[0], "executable": sys.executable}}, _fh)
        os.replace(_result + ".tmp", _result)
    except BaseException:
        pass
else:
    _inject({json.dumps(request)!r})
"""
    # Run in a namespace of its own: nothing is defined in the target's __main__.
    return f"exec(compile({inner!r}, {SNIPPET_FILENAME!r}, 'exec'), {{}})"


def c_string(text: str) -> str:
    """`text` as a C string literal for gdb's and lldb's expression parsers. A backtick is
    written as an octal escape: lldb would evaluate `...` in a command line as an expression."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("`", "\\140"))
    return f'"{escaped}"'


def gdb_script(code: str, machine: str | None = None) -> str:
    """The gdb commands: check the process is Python, queue a no-op pending call, stop where
    the main thread makes it (between two bytecodes, GIL held), run `code` there, detach.
    Any error aborts the script and gdb detaches, leaving the process as it was."""
    machine = (machine or platform.machine()).lower()
    register = FIRST_ARG_REGISTER.get(machine)
    if register is None:
        raise InjectError(f"attaching through gdb is not supported on {machine} yet")
    return f"""\
set pagination off
set confirm off
set unwindonsignal on
handle SIGINT stop nopass
sharedlibrary libc
sharedlibrary libpython
echo {MARK} attached\\n
info address Py_AddPendingCall
info address PyCallable_Check
info address PyRun_SimpleString
echo {MARK} python\\n
set $symwatch_queued = (int)Py_AddPendingCall(&PyCallable_Check, (void*)0)
if $symwatch_queued != 0
  echo {MARK} pending calls full\\n
  detach
  quit
end
break *PyCallable_Check if {register} == 0
echo {MARK} waiting\\n
continue
delete
if (long)$pc == (long)&PyCallable_Check
  echo {MARK} safe point\\n
  handle SIGINT SIGTERM SIGHUP SIGQUIT SIGUSR1 SIGUSR2 SIGPIPE SIGALRM SIGCHLD nostop noprint pass
  set $symwatch_rc = (int)PyRun_SimpleString({c_string(code)})
  echo {MARK} ran\\n
  print $symwatch_rc
else
  echo {MARK} no safe point\\n
end
detach
quit
"""


# Signals that reach the process as usual while lldb holds it: lldb's defaults would stop the
# wait at most of them, and keep a Ctrl-C from the process.
LLDB_PASSED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2",
                       "SIGPIPE", "SIGALRM", "SIGCHLD", "SIGWINCH", "SIGVTALRM", "SIGPROF",
                       "SIGIO", "SIGCONT")
# What ends lldb's wait for a safe point, sent to the process: lldb stops on it and swallows
# it (a signal to lldb itself does not stop a `continue` of its batch mode). SIGURG because
# its default action is to be ignored: one that arrives just after lldb detached does nothing.
LLDB_INTERRUPT = signal.SIGURG
LLDB_GIVE_UP_S = 20.0  # after the first LLDB_INTERRUPT, before lldb itself is interrupted


def lldb_script(code: str, machine: str | None = None) -> str:
    """The lldb commands doing what `gdb_script` does: check the process is Python, queue a
    no-op pending call, stop where the main thread makes it, run `code` there, detach. lldb
    has no `if`: the lines run at the safe point are the breakpoint's own commands, so they
    run only if it is reached; a wait stopped by `LLDB_INTERRUPT` goes on to the detach. Any
    error stops the batch and lldb detaches as it exits."""
    machine = (machine or platform.machine()).lower()
    register = FIRST_ARG_REGISTER.get(machine)
    if register is None:
        raise InjectError(f"attaching through lldb is not supported on {machine} yet")
    interrupt = LLDB_INTERRUPT.name
    return f"""\
p "{MARK} attached"
p (void *)&Py_AddPendingCall
p (void *)&PyCallable_Check
p (void *)&PyRun_SimpleString
p "{MARK} python"
process handle --stop false --notify false --pass true {" ".join(LLDB_PASSED_SIGNALS)}
process handle --stop true --notify true --pass false {interrupt}
expr -- void *$symwatch_check = (void *)&PyCallable_Check
expr -- int (*$symwatch_add)(void *, void *) = (int (*)(void *, void *))&Py_AddPendingCall
expr -- int $symwatch_queued = $symwatch_add($symwatch_check, (void *)0)
p $symwatch_queued == 0 ? "{MARK} queued" : "{MARK} pending calls full"
breakpoint set --name PyCallable_Check --skip-prologue false --condition '{register} == 0'
breakpoint command add
process handle --stop false --notify false --pass false {interrupt}
p "{MARK} safe point"
breakpoint disable
expr -- (int)((int (*)(const char *))&PyRun_SimpleString)({c_string(code)})
p "{MARK} ran"
DONE
p "{MARK} waiting"
continue
process detach
"""


_LLDB_MARK_RE = re.compile(r'= (?:0x[0-9a-fA-F]+ )?"(' + re.escape(MARK) + r' [^"]*)"')


def lldb_marks(output: str) -> str:
    """The progress marks in lldb's output, one a line: the values its `p "SYMWATCH: ..."`
    printed (not the commands it echoes, which carry the same words)."""
    return "".join(match.group(1) + "\n" for match in _LLDB_MARK_RE.finditer(output))


# -- running gdb -----------------------------------------------------------------------------

def find_gdb() -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        raise InjectError(
            "gdb is not installed; it (or lldb) is needed to get into a process running "
            "Python < 3.14 (install it: apt-get install gdb, dnf install gdb; on Python 3.14+ "
            "run symwatch with the same Python as the process instead)")
    return gdb


def run_gdb(gdb: str, pid: int, script: Path, safe_point_wait_s: float,
            verbose: Callable[[str], None] | None = None) -> str:
    """Run the script; interrupt gdb (it then detaches) if the target reaches no safe point
    in time. Never kills gdb while our code runs in the target. Returns gdb's output."""
    argv = [gdb, "-p", str(pid), "-batch", "-nx", "-nw", "-iex", "set auto-solib-add off",
            "-iex", "set auto-load off", "-x", str(script)]
    return _run_debugger(argv, "gdb", safe_point_wait_s, marks=lambda output: output,
                         interrupt=lambda proc: proc.send_signal(signal.SIGINT),
                         verbose=verbose)


def _run_debugger(argv: list[str], name: str, safe_point_wait_s: float, *,
                  marks: Callable[[str], str],
                  interrupt: Callable[[subprocess.Popen], None],
                  verbose: Callable[[str], None] | None,
                  give_up_on: tuple[str, ...] = (),
                  interrupt_again_s: float | None = None) -> str:
    """Run a debugger's script, following its progress marks (`marks` picks them out of its
    output); `interrupt` it (its script then detaches) if the target reaches no safe point in
    time or a mark in `give_up_on` appears, again every `interrupt_again_s` if it goes on.
    Never interrupts while our code runs in the target. Returns the debugger's output."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)  # the terminal's Ctrl-C is ours to pass
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    # The wait for a safe point starts when the script says it waits (attaching and reading
    # libpython's symbols come first, and take longer on a loaded machine).
    attach_deadline = time.monotonic() + ATTACH_WAIT_S
    waiting_since: float | None = None
    interrupted_at: float | None = None
    try:
        while proc.poll() is None:
            time.sleep(0.05)
            text = marks("".join(lines))
            if f"{MARK} safe point" in text:
                continue  # our code runs in the target: the debugger finishes and detaches
            now = time.monotonic()
            if interrupted_at is not None:
                if interrupt_again_s is not None and now > interrupted_at + interrupt_again_s:
                    interrupt(proc)
                    interrupted_at = now
                continue
            if waiting_since is None and f"{MARK} waiting" in text:
                waiting_since = now
            if (any(mark in text for mark in give_up_on)
                    or (now > waiting_since + safe_point_wait_s if waiting_since is not None
                        else now > attach_deadline)):
                interrupt(proc)  # stops the wait; the script then detaches
                interrupted_at = now
    except KeyboardInterrupt:
        if f"{MARK} safe point" not in marks("".join(lines)):
            interrupt(proc)
        proc.wait()  # our code may be running in the target: let the debugger finish, detach
        raise
    reader.join(5.0)
    output = "".join(lines)
    if verbose is not None:
        verbose(f"{name} exited with {proc.returncode}; its output:\n{output}")
    return output


def find_lldb() -> str:
    """lldb, or lldb-NN (what a versioned Debian/Ubuntu package alone installs), newest first."""
    lldb = shutil.which("lldb")
    if lldb is None:
        versioned = []
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            for path in Path(folder or ".").glob("lldb-[0-9]*"):
                if re.fullmatch(r"lldb-\d+", path.name) and os.access(path, os.X_OK):
                    versioned.append((int(path.name[5:]), str(path)))
        lldb = max(versioned)[1] if versioned else None
    if lldb is None:
        raise InjectError(
            "lldb is not installed (install it: apt-get install lldb, dnf install lldb), or "
            "use --method gdb")
    return lldb


def lldb_argv(lldb: str, pid: int, script: Path) -> list[str]:
    # Symbols are read when looked up, not for every library at attach (torch's are large).
    return [lldb, "--batch", "--no-lldbinit",
            "-O", "settings set target.preload-symbols false",
            "-p", str(pid), "-s", str(script),
            # A crash of the process while lldb holds it ends the batch: then these run.
            "-k", "process detach"]


def run_lldb(lldb: str, target: Target, script: Path, safe_point_wait_s: float,
             verbose: Callable[[str], None] | None = None) -> str:
    """Run the lldb script: what `run_gdb` does, with lldb's own ways. Its wait is ended by a
    signal to the process (`LLDB_INTERRUPT`), resent while lldb goes on; if lldb is still
    there after LLDB_GIVE_UP_S (a process stopped by job control cannot take the signal), lldb
    is sent SIGINT, twice: it then exits, detaching and taking its breakpoint out (killed, it
    would leave the breakpoint's trap in the process). A process lldb leaves stopped (a known
    lldb bug, which `memray attach` works around too) is continued."""
    was_stopped = _stopped(target.pid)
    first_interrupt: list[float] = []

    def interrupt(proc: subprocess.Popen) -> None:
        first_interrupt[:] = first_interrupt or [time.monotonic()]
        if time.monotonic() > first_interrupt[0] + LLDB_GIVE_UP_S:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            return
        try:
            os.kill(target.pid, LLDB_INTERRUPT)
        except OSError:
            pass  # exited: lldb ends by itself

    try:
        return _run_debugger(lldb_argv(lldb, target.pid, script), "lldb", safe_point_wait_s,
                             marks=lldb_marks, interrupt=interrupt, verbose=verbose,
                             give_up_on=(f"{MARK} pending calls full",),
                             interrupt_again_s=5.0)
    finally:
        if not was_stopped and _stopped(target.pid):
            try:
                os.kill(target.pid, signal.SIGCONT)
            except OSError:
                pass


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T), not traced-stopped (t) by a debugger."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["T"]


def lldb_failure(output: str, target: Target) -> str | None:
    """Why the lldb script did not run our code, from lldb's output (None: it ran)."""
    marks = lldb_marks(output)
    if f"{MARK} ran" in marks:
        return None
    if "attach failed: Operation not permitted" in output:
        tracer = _tracer(target.pid)
        if tracer:
            return (f"cannot attach to {target.described}: another debugger or tracer "
                    f"(process {tracer}) is attached to it; detach it first")
        return f"cannot attach to {target.described}: {PTRACE_ADVICE}"
    if not runtime.pid_alive(target.pid):
        return (f"process {target.pid} exited while symwatch waited for it"
                if f"{MARK} attached" in marks else f"process {target.pid} has exited")
    return _script_failure(marks, output, target, "lldb")


def _tracer(pid: int) -> int:
    """The process tracing `pid` (0: none), from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^TracerPid:\s*(\d+)", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def gdb_failure(output: str, target: Target) -> str | None:
    """Why the gdb script did not run our code, from gdb's output (None: it ran)."""
    if f"{MARK} ran" in output:
        return None
    if "ptrace: Operation not permitted" in output or "Could not attach to process" in output:
        traced = re.search(r"already traced by process (\d+)", output)
        if traced:
            return (f"cannot attach to {target.described}: another debugger or tracer "
                    f"(process {traced.group(1)}) is attached to it; detach it first")
        return f"cannot attach to {target.described}: {PTRACE_ADVICE}"
    if "ptrace: No such process" in output:
        return f"process {target.pid} has exited"
    return _script_failure(output, output, target, "gdb")


def _script_failure(marks: str, output: str, target: Target, debugger: str) -> str:
    """Why a debugger's script, attached, did not run our code: from its progress `marks`,
    else the last error line of its `output`."""
    lines = [line for line in output.splitlines() if line.strip()]
    last = ([line for line in lines if line.startswith("error:")] or lines)[-1:] or ["no output"]
    if f"{MARK} attached" not in marks:
        return f"{debugger} could not attach to {target.described}: {last[0]}"
    if f"{MARK} python" not in marks:
        return (f"{target.described} is not a Python process ({debugger} finds no Python C "
                "API in it)")
    if f"{MARK} pending calls full" in marks:
        return f"{target.described} has too many pending calls queued; try again"
    if "exited" in output and f"{MARK} safe point" not in marks:
        return f"process {target.pid} exited while symwatch waited for it"
    if f"{MARK} no safe point" in marks or f"{MARK} safe point" not in marks:
        return (f"{target.described} ran no Python code in its main thread for "
                f"{SAFE_POINT_WAIT_S:.0f} s (blocked in a long C call, or training in another "
                "thread); it was left untouched; try again while it trains")
    return f"running the agent's set-up in {target.described} failed: {last[0]}"


# -- Python 3.14+: sys.remote_exec --------------------------------------------------------------

def can_remote_exec(target: Target) -> bool:
    return (target.version is not None and target.version >= (3, 14)
            and sys.version_info[:2] == target.version and hasattr(sys, "remote_exec"))


def run_remote_exec(target: Target, script: Path) -> None:
    """Python 3.14+ (PEP 768): the interpreter itself runs the script in the target's main
    thread at its next safe point. (Not exercised by the tests, which run on 3.11.)"""
    try:
        sys.remote_exec(target.pid, str(script))  # type: ignore[attr-defined]
    except PermissionError:
        raise InjectError(f"cannot attach to {target.described}: {PTRACE_ADVICE}") from None
    except ProcessLookupError:
        raise InjectError(f"process {target.pid} has exited") from None
    except (RuntimeError, OSError) as exc:
        text = str(exc)
        if "not enabled" in text.lower() or "disabled" in text.lower():
            raise InjectError(
                f"remote debugging is disabled in {target.described} (started with "
                "PYTHON_DISABLE_REMOTE_DEBUG=1 or -X disable_remote_debug, or built "
                "--without-remote-debug); restart it without, or use --method gdb") from None
        if getattr(exc, "errno", None) == 1:  # EPERM
            raise InjectError(f"cannot attach to {target.described}: {PTRACE_ADVICE}") from None
        raise InjectError(f"sys.remote_exec into {target.described} failed: {text}") from None


# -- the whole injection -------------------------------------------------------------------------

def registered_run(pid: int) -> runtime.RunEntry | None:
    """A live run the process already publishes (watch() in the script, symwatch run, or an
    earlier injection), from the registry."""
    for entry in runtime.live_runs():
        if entry.pid == pid:
            return entry
    return None


def inject(pid: int, options: dict[str, Any] | None = None, *, model: str | None = None,
           optimizer: str | None = None, wait_s: float = DEFAULT_WAIT_S,
           method: str = "auto", quiet: bool = False,
           progress: Callable[[str], None] = lambda text: None,
           verbose: Callable[[str], None] | None = None) -> Outcome:
    """Put the agent into process `pid`; return where it publishes once it does (after the
    next optimizer step), or the run it already publishes. Raises InjectError."""
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
                   "options": dict(options or {}), "model": model, "optimizer": optimizer,
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
                failure = lldb_failure(output, target)
            else:
                script.write_text(gdb_script(code), encoding="utf-8")
                output = run_gdb(debugger, pid, script, SAFE_POINT_WAIT_S, verbose)
                failure = gdb_failure(output, target)
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


# -- the CLI -------------------------------------------------------------------------------------

INJECT_EPILOG = (
    "examples:\n"
    "  symwatch inject 12345                         prints the endpoint once it publishes\n"
    "  symwatch inject 12345 --every 5 --name run-a --record run.db\n"
    "  symwatch inject 12345 --model 'trainer.model' --optimizer 'opt'\n"
    "  symwatch inject 12345 --method lldb           through lldb instead of gdb\n"
    "  symwatch attach --pid 12345                   inject if needed, then open the UI\n\n"
    "The process keeps training: the agent starts after its next optimizer.step() and\n"
    "publishes from then on, and the weights it trains are exactly those it would have\n"
    "trained without. Python 3.14+: sys.remote_exec (symwatch on the same Python). Older:\n"
    "gdb, or lldb where gdb is missing (installed, and allowed to trace the process: same\n"
    "user, or root; see kernel.yama.ptrace_scope; CAP_SYS_PTRACE in containers); --method\n"
    "lldb to choose it. --model and --optimizer are evaluated in the frames of the\n"
    "process's main thread, then in its __main__.")


def add_inject_parser(subs: Any, subparser: Callable[..., Any]) -> None:
    from symwatch.cli.main import _positive_float, _positive_int
    from symwatch.launch.run import _fraction

    inject_ = subparser(
        subs, "inject", "put the agent into a training process that is already running",
        "Inject the symwatch agent into a running PyTorch training process that never "
        "imported symwatch, and print the endpoint it publishes on (stdout, one line). The "
        "models and optimizers are found in the process unless named.",
        INJECT_EPILOG)
    inject_.add_argument("pid", type=_positive_int, help="the training process's id")
    inject_.add_argument("--name", default=None,
                         help="run name shown in the UI and `ls` (default: its script's name)")
    inject_.add_argument("--every", type=_positive_int, default=None, metavar="K",
                         help="sample the indicators at most every K optimizer steps "
                              "(default 10)")
    inject_.add_argument("--budget", type=_fraction, default=None, metavar="F",
                         help="largest fraction of wall time the agent may take "
                              "(default 0.01)")
    inject_.add_argument("--full-every", type=_positive_int, default=None, metavar="K",
                         help="at most one full sample (exact spectra, duplicate units) in "
                              "every K samples (default: as often as the budget allows)")
    inject_.add_argument("--endpoint", default=None,
                         help="where to publish, tcp://127.0.0.1:PORT or ipc://PATH (default: "
                              "a private Unix socket)")
    inject_.add_argument("--record", default=None, metavar="PATH",
                         help="also record every message to this SQLite file")
    add_target_options(inject_, _positive_float)
    inject_.add_argument("--quiet", action="store_true",
                         help="no `symwatch: injected ...` line on the process's stderr")
    inject_.set_defaults(func=cmd_inject)


def add_target_options(parser: argparse.ArgumentParser,
                       positive_float: Callable[[str], float]) -> None:
    """Options shared by `inject` and `attach --pid`."""
    parser.add_argument("--model", default=None, metavar="EXPR",
                        help="the model(s), as a Python expression in the process "
                             "(default: found: the outermost modules the optimizers train)")
    parser.add_argument("--optimizer", default=None, metavar="EXPR",
                        help="the optimizer(s), as a Python expression in the process "
                             "(default: every live optimizer)")
    parser.add_argument("--wait", type=positive_float, default=DEFAULT_WAIT_S, metavar="S",
                        help="how long to wait for the process's next optimizer step "
                             f"(default {DEFAULT_WAIT_S:.0f})")
    parser.add_argument("--method", choices=("auto", "gdb", "lldb", "remote-exec"),
                        default="auto",
                        help="how to get in (default: sys.remote_exec on Python 3.14+ when "
                             "symwatch runs on the same version, else gdb, else lldb)")
    parser.add_argument("--verbose", action="store_true", help="show the debugger's output")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def inject_from_args(args: argparse.Namespace, pid: int, command: str) -> Outcome:
    """Run `inject` with the CLI's options; InjectError becomes the CLI's one-line error."""
    from symwatch.cli.main import UserError
    from symwatch.transport.subscriber import EndpointError, validate_endpoint

    endpoint = getattr(args, "endpoint", None)
    if endpoint is not None:
        try:
            endpoint = validate_endpoint(endpoint)
        except EndpointError as exc:
            raise UserError(str(exc)) from None
    options = {"name": getattr(args, "name", None), "every": getattr(args, "every", None),
               "budget": getattr(args, "budget", None),
               "full_every": getattr(args, "full_every", None), "endpoint": endpoint,
               "record": getattr(args, "record", None)}
    try:
        return inject(pid, options, model=args.model, optimizer=args.optimizer,
                      wait_s=args.wait, method=args.method,
                      quiet=getattr(args, "quiet", False),
                      progress=lambda text: _stderr(f"symwatch {command}: {text}"),
                      verbose=_stderr if args.verbose else None)
    except InjectError as exc:
        raise UserError(str(exc), code=1) from None


def cmd_inject(args: argparse.Namespace) -> int:
    outcome = inject_from_args(args, args.pid, "inject")
    run = f" (run {outcome.run_id}{', ' + outcome.name if outcome.name else ''})" \
        if outcome.run_id else ""
    if outcome.already:
        _stderr(f"symwatch inject: process {args.pid} already publishes on "
                f"{outcome.endpoint}{run}; nothing injected")
    else:
        layers = f", {outcome.layers} layers" if outcome.layers is not None else ""
        _stderr(f"symwatch inject: process {args.pid} publishes on {outcome.endpoint}"
                f"{run}{layers}; view it: symwatch attach {outcome.run_id or outcome.endpoint}")
    print(outcome.endpoint, flush=True)
    return 0


def attach_pid_target(args: argparse.Namespace) -> str:
    """`symwatch attach --pid PID`: the endpoint to view, injecting the agent if needed."""
    from symwatch.cli.main import UserError

    if args.target is not None:
        raise UserError("give a run (ENDPOINT) or --pid, not both")
    outcome = inject_from_args(args, args.pid, "attach")
    if not outcome.already:
        _stderr(f"symwatch attach: injected into process {args.pid}; publishing on "
                f"{outcome.endpoint}")
    return outcome.endpoint
