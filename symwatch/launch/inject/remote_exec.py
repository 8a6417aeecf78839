"""Python 3.14+ (PEP 768): `sys.remote_exec` runs the snippet in the target, no debugger."""

from __future__ import annotations

import sys
from pathlib import Path

from symwatch.launch.inject.target import PTRACE_ADVICE, InjectError, Target


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
