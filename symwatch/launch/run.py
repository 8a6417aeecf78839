"""`symwatch run [options] -- COMMAND [ARGS...]`: watch a training command without changing it.

The agent is injected through the interpreter's start-up: the bootstrap directory
(`symwatch_agent/entry/bootstrap`, holding only a `sitecustomize.py`) goes first on PYTHONPATH and the
agent options go into `SYMWATCH_*` variables; then this process *becomes* the command
(`os.execvpe`), so its exit status, signals and stdin/stdout/stderr are the command's own.
This module never imports torch or the agent (it only locates the agent's files). How the
bootstrap finds the model, optimizer and loss: docs/launch.md.
"""

from __future__ import annotations

import argparse
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


def _package_roots() -> list[str]:
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
    env = build_env(base_env, options, bootstrap_dir(), _package_roots())
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


# -- the CLI subcommand ----------------------------------------------------------------------------

RUN_EPILOG = (
    "examples:\n"
    "  symwatch run -- python train.py --lr 3e-4\n"
    "  symwatch run --every 5 --name gan -- python -m mypkg.train\n"
    "  symwatch run --every 1 --budget 1 --full-every 100 -- python train.py\n"
    "                                every step sampled, spectra every 100th\n"
    "  symwatch run --endpoint tcp://127.0.0.1:5555 -- torchrun --nproc-per-node 4 train.py\n"
    "  symwatch run --record run.db -- ./train.py        an entry-point or #!python script\n"
    "  symwatch run --connect tcp://127.0.0.1:5557 -- torchrun --nproc-per-node 4 train.py\n"
    "                                every rank publishes to a `symwatch relay`\n\n"
    "Then, in another terminal: symwatch attach\n\n"
    "The command runs exactly as without symwatch: same exit status, signals, stdin and\n"
    "stdout (symwatch writes only to stderr). The agent starts on the first optimizer.step()\n"
    "of each training process; the models are the modules owning the optimizers' parameters,\n"
    "the loss is the scalar .backward() is called on. Options can also be set as environment\n"
    "variables: SYMWATCH_NAME, SYMWATCH_EVERY, SYMWATCH_BUDGET, SYMWATCH_FULL_EVERY,\n"
    "SYMWATCH_ENDPOINT, SYMWATCH_RECORD. Not possible with python -I, -E or -S (the command still runs).")


def add_run_parser(subs: Any, subparser: Callable[..., Any]) -> None:
    from symwatch.cli.main import _positive_int

    run = subparser(
        subs, "run", "run a training command with the agent injected, no code change",
        "Run any Python training command (python train.py, python -m pkg.train, torchrun ..., "
        "an entry-point script) with the symwatch agent injected at interpreter start-up. "
        "The model(s), optimizer(s) and loss are found automatically.",
        RUN_EPILOG)
    run.add_argument("--name", default=None, help="run name shown in the UI and `ls` "
                                                  "(default: the script's file name)")
    run.add_argument("--every", type=_positive_int, default=None, metavar="K",
                     help="sample the indicators at most every K optimizer steps (default 10)")
    run.add_argument("--budget", type=_fraction, default=None, metavar="F",
                     help="largest fraction of wall time the agent may take (default 0.01)")
    run.add_argument("--full-every", type=_positive_int, default=None, metavar="K",
                     help="at most one full sample (exact spectra, duplicate units) in every K "
                          "samples, the rest cheap (default: as often as the budget allows)")
    run.add_argument("--endpoint", default=None,
                     help="where to publish, tcp://127.0.0.1:PORT or ipc://PATH (default: a "
                          "private Unix socket per process, listed by `symwatch ls`)")
    run.add_argument("--connect", default=None, metavar="ENDPOINT",
                     help="publish to a `symwatch relay` at ENDPOINT (its --bind address) "
                          "instead of a socket of each process's own; for multi-node jobs")
    run.add_argument("--record", default=None, metavar="PATH",
                     help="also record every message to this SQLite file ({run}, {rank} expand)")
    run.add_argument("--quiet", action="store_true",
                     help="no `symwatch: watching ...` line on stderr when the agent starts")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                     help="the command to run")
    run.set_defaults(func=cmd_run)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from symwatch.cli.main import UserError
    from symwatch.transport.subscriber import EndpointError, validate_endpoint

    for option in ("endpoint", "connect"):
        if getattr(args, option, None) is not None:
            try:
                setattr(args, option, validate_endpoint(getattr(args, option)))
            except EndpointError as exc:
                raise UserError(f"--{option}: {exc}") from None
    options = {"name": args.name, "every": args.every, "budget": args.budget,
               "full_every": args.full_every, "endpoint": args.endpoint, "record": args.record, "quiet": args.quiet,
               "connect": getattr(args, "connect", None)}
    try:
        p = plan(args.command, options)
    except LaunchError as exc:
        raise UserError(str(exc)) from None
    for note in p.notes:
        print(f"symwatch run: note: {note}", file=sys.stderr)
    return execute(p)
