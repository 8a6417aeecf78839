"""`symwatch run [options] -- COMMAND [ARGS...]`: watch a training command without changing it.

The agent is injected through the interpreter's start-up: the bootstrap directory
(`symwatch_agent/entry/bootstrap`, holding only a `sitecustomize.py`) goes first on PYTHONPATH and the
agent options go into `SYMWATCH_*` variables; then this process *becomes* the command
(`os.execvpe`), so its exit status, signals and stdin/stdout/stderr are the command's own.
This module never imports torch or the agent (it only locates the agent's files). How the
bootstrap finds the model, optimizer and loss: docs/launch.md. The command line (the options of
`symwatch run`): symwatch/cli/run.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ENV_LAUNCH = "SYMWATCH_LAUNCH"
ENV_AGENT_PATH = "SYMWATCH_AGENT_PATH"
ENV_BUDGET = "SYMWATCH_BUDGET"
ENV_QUIET = "SYMWATCH_QUIET"
OPTION_ENV = {"name": "SYMWATCH_NAME", "every": "SYMWATCH_EVERY", "budget": ENV_BUDGET,
              "full_every": "SYMWATCH_FULL_EVERY",
              "endpoint": "SYMWATCH_ENDPOINT", "record": "SYMWATCH_RECORD",
              "connect": "SYMWATCH_CONNECT"}

_PYTHON_RE = re.compile(r"^(python|pypy)(\d+(\.\d+)*)?[a-z]?$")
# Interpreter options that take a value (the value is the next argument unless attached).
_VALUE_OPTIONS = set("WXQ")


class LaunchError(Exception):
    """Something that stops `symwatch run` before it can start the command."""


@dataclass
class Plan:
    """What `symwatch run` will execute: the argv, the environment, notes for stderr."""

    argv: list[str]
    env: dict[str, str]
    injected: bool  # False: the command runs, but the agent cannot get in
    notes: list[str] = field(default_factory=list)


def bootstrap_dir() -> Path:
    """The directory holding the bootstrap `sitecustomize.py` (found without importing the
    agent, which would import torch)."""
    spec = importlib.util.find_spec("symwatch_agent")
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError("the symwatch agent (symwatch_agent) is not installed next to "
                          "symwatch; reinstall symwatch")
    path = Path(list(spec.submodule_search_locations)[0]) / "entry" / "bootstrap"
    if not (path / "sitecustomize.py").is_file():
        raise LaunchError(f"the agent's bootstrap is missing ({path}/sitecustomize.py); "
                          "reinstall symwatch")
    return path


def package_roots() -> list[str]:
    """Directories that make `symwatch_agent` and `symwatch` importable, for an interpreter
    other than this one (appended to its sys.path only if it cannot import the agent)."""
    roots: list[str] = []
    for name in ("symwatch_agent", "symwatch"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            root = str(Path(list(spec.submodule_search_locations)[0]).parent)
            if root not in roots:
                roots.append(root)
    return roots


def build_env(base: Mapping[str, str], options: Mapping[str, Any], bootstrap: Path,
              agent_path: Sequence[str] = ()) -> dict[str, str]:
    """The command's environment: `base` plus the bootstrap first on PYTHONPATH, the launch
    marker, and one `SYMWATCH_*` variable per option given (others keep their values)."""
    env = dict(base)
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                if p and os.path.normcase(p) != os.path.normcase(str(bootstrap))]
    env["PYTHONPATH"] = os.pathsep.join([str(bootstrap), *existing])
    env[ENV_LAUNCH] = "1"
    if agent_path:
        env[ENV_AGENT_PATH] = os.pathsep.join(agent_path)
    for key, var in OPTION_ENV.items():
        value = options.get(key)
        if value is not None:
            env[var] = str(value)
    if options.get("quiet"):
        env[ENV_QUIET] = "1"
    return env


def check_command(argv: Sequence[str],
                  env: Mapping[str, str] | None = None) -> tuple[bool, str | None]:
    """(can the agent be injected, a note for the user or None). Never refuses to run."""
    if not argv:
        raise LaunchError("no command given; usage: symwatch run [options] -- COMMAND [ARGS...]")
    program = argv[0]
    base = os.path.basename(program)
    if _PYTHON_RE.match(base):
        return _check_python_options(argv[1:], program)
    path = shutil.which(program, path=(env or os.environ).get("PATH"))
    shebang = _shebang(path) if path else None
    if shebang is not None:
        interpreter, flags = shebang
        if interpreter is not None:
            ok, note = _check_python_options(flags, program)
            return ok, note
    if path is None:
        return False, None  # execute() says "command not found"
    return False, (f"`{program}` is not a Python interpreter or a Python script: the agent can "
                   "only get into Python processes it starts (they inherit PYTHONPATH)")


def _shebang(path: str) -> tuple[str | None, list[str]] | None:
    """(python interpreter or None, its flags) from a script's `#!` line; None if no `#!`."""
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if w != "-S" and "=" not in w]
    if words and _PYTHON_RE.match(os.path.basename(words[0])):
        return words[0], words[1:]
    return None, []


def _check_python_options(args: Sequence[str], program: str) -> tuple[bool, str | None]:
    """Look at the interpreter's own options (before the script, -m or -c)."""
    blockers = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):  # --version, --help, --check-hash-based-pycs VALUE
            if arg == "--check-hash-based-pycs":
                i += 1
            i += 1
            continue
        letters = arg[1:]
        stop = False
        for j, letter in enumerate(letters):
            if letter in "IES":
                blockers.append(letter)
            if letter in ("c", "m"):
                stop = True
                break
            if letter in _VALUE_OPTIONS:
                if j == len(letters) - 1:
                    i += 1  # the value is the next argument
                break
        if stop:
            break
        i += 1
    if not blockers:
        return True, None
    why = {"I": "-I (isolated mode) ignores PYTHONPATH and the SYMWATCH_* variables",
           "E": "-E ignores PYTHONPATH and the SYMWATCH_* variables",
           "S": "-S skips the start-up (site) that loads the agent's bootstrap"}
    reasons = "; ".join(why[b] for b in dict.fromkeys(blockers))
    return False, (f"cannot inject the agent into `{program}`: {reasons}. The command runs "
                   "unwatched; drop that option, or call symwatch.watch(model, optimizer) in "
                   "the script")


def plan(command: Sequence[str], options: Mapping[str, Any],
         base_env: Mapping[str, str] | None = None) -> Plan:
    base_env = os.environ if base_env is None else base_env
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    injected, note = check_command(argv, base_env)
    env = build_env(base_env, options, bootstrap_dir(), package_roots())
    return Plan(argv, env, injected, [note] if note else [])


def execute(p: Plan, *, execvpe: Callable[..., Any] = os.execvpe) -> int:
    """Become the command (never returns on success). Returns 127/126 if it cannot start."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execvpe(p.argv[0], p.argv, p.env)
    except FileNotFoundError:
        print(f"symwatch run: {p.argv[0]}: command not found", file=sys.stderr)
        return 127
    except OSError as exc:
        print(f"symwatch run: cannot run {p.argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 126
    return 0  # only reached with a test double for execvpe
