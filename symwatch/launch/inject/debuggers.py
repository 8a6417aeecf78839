"""Running the snippet through a debugger, the way `memray attach` does it: gdb (or lldb where
gdb is missing) attaches, queues a no-op pending call, stops where the main thread makes it
(between two bytecodes, the GIL held), runs the snippet there with `PyRun_SimpleString`, and
detaches. Here: the debuggers' scripts, running them with deadlines, and reading from their
output why our code did not run."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from symwatch.core import runtime
from symwatch.launch.inject.target import PTRACE_ADVICE, InjectError, Target

SAFE_POINT_WAIT_S = 20.0  # for the target's main thread to run Python code
ATTACH_WAIT_S = 60.0  # for gdb to attach and read libpython's symbols
MARK = "SYMWATCH:"  # prefixes the gdb script's progress lines

# The register holding a function's first argument at its entry: where the gdb script checks
# that PyCallable_Check was called with NULL (our pending call) and not by ordinary code.
FIRST_ARG_REGISTER = {"x86_64": "$rdi", "amd64": "$rdi", "aarch64": "$x0", "arm64": "$x0",
                      "ppc64le": "$r3", "s390x": "$r2", "riscv64": "$a0"}


# -- the scripts -------------------------------------------------------------------------------

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


# -- running gdb and lldb --------------------------------------------------------------------

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


# -- why our code did not run --------------------------------------------------------------

def lldb_failure(output: str, target: Target,
                 safe_point_wait_s: float | None = None) -> str | None:
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
    return _script_failure(marks, output, target, "lldb", safe_point_wait_s)


def _tracer(pid: int) -> int:
    """The process tracing `pid` (0: none), from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^TracerPid:\s*(\d+)", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def gdb_failure(output: str, target: Target,
                safe_point_wait_s: float | None = None) -> str | None:
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
    return _script_failure(output, output, target, "gdb", safe_point_wait_s)


def _script_failure(marks: str, output: str, target: Target, debugger: str,
                    safe_point_wait_s: float | None) -> str:
    """Why a debugger's script, attached, did not run our code: from its progress `marks`,
    else the last error line of its `output` (`safe_point_wait_s`: how long it waited for a
    safe point, SAFE_POINT_WAIT_S unless said)."""
    if safe_point_wait_s is None:
        safe_point_wait_s = SAFE_POINT_WAIT_S
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
                f"{safe_point_wait_s:.0f} s (blocked in a long C call, or training in another "
                "thread); it was left untouched; try again while it trains")
    return f"running the agent's set-up in {target.described} failed: {last[0]}"
