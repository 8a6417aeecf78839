"""`symwatch inject PID` / `symwatch attach --pid PID`: put the agent into a Python training
process that is already running and never imported symwatch (docs/launch.md, "Attach to a run
already going").

The observer side, which never imports torch or the agent:

1. look at the process from /proc (exists, ours to trace, Python and which version, torch
   loaded) and refuse with one clear line when it cannot work (`target`);
2. have a few lines of Python (`snippet`) run in the target's main thread at a safe point,
   with the GIL held: on Python 3.14+ (when symwatch runs on the same version)
   `sys.remote_exec` (`remote_exec`); else through gdb, the way `memray attach` does it: queue
   a no-op pending call (`Py_AddPendingCall(PyCallable_Check, NULL)`), stop at the entry of
   that call, which the interpreter makes from its eval loop between two bytecodes, run the
   lines there with `PyRun_SimpleString`, detach; or the same through lldb where gdb is
   missing (`--method lldb`) (`debuggers`). A process that reaches no safe point within the
   deadline is interrupted and detached untouched;
3. those lines import `symwatch_agent.entry.injected` (our package root appended to the end of the
   target's `sys.path` if it cannot import it) and arm a one-shot optimizer step hook; they
   report through a JSON result file, and the agent starts after the next `optimizer.step()`;
4. wait for the result with a deadline (`injection.inject`, which returns an `Outcome` or
   raises `InjectError`).

The command line (printing the endpoint for `inject`, opening the UI on it for `attach --pid`)
is symwatch/cli/inject.py.
"""

from symwatch.launch.inject.injection import inject
from symwatch.launch.inject.target import InjectError

__all__ = ["InjectError", "inject"]
