"""`symwatch inject PID` and `symwatch attach --pid PID`: the command line of
symwatch/launch/inject/ (which does the injection and raises InjectError)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from symwatch.cli.common import (
    PUBLISH,
    UserError,
    add_agent_options,
    add_security_arguments,
    positive_float,
    positive_int,
    publisher_environment,
    subparser,
)
from symwatch.launch.inject import InjectError, inject
from symwatch.launch.inject.injection import DEFAULT_WAIT_S, Outcome
from symwatch.transport.subscriber import EndpointError, validate_endpoint

INJECT_EPILOG = (
    "examples:\n"
    "  symwatch inject 12345                         prints the endpoint once it publishes\n"
    "  symwatch inject 12345 --every 5 --name run-a --record run.db\n"
    "  symwatch inject 12345 --model 'trainer.model' --optimizer 'opt'\n"
    "  symwatch inject 12345 --method lldb           through lldb instead of gdb\n"
    "  symwatch inject 12345 --connect tcp://127.0.0.1:5557   publish to a `symwatch relay`\n"
    "  symwatch attach --pid 12345                   inject if needed, then open the UI\n\n"
    "The process keeps training: the agent starts after its next optimizer.step() and\n"
    "publishes from then on, and the weights it trains are exactly those it would have\n"
    "trained without. Python 3.14+: sys.remote_exec (symwatch on the same Python). Older:\n"
    "gdb, or lldb where gdb is missing (installed, and allowed to trace the process: same\n"
    "user, or root; see kernel.yama.ptrace_scope; CAP_SYS_PTRACE in containers); --method\n"
    "lldb to choose it. --model and --optimizer are evaluated in the frames of the\n"
    "process's main thread, then in its __main__.")


def add_inject_parser(subs: Any) -> None:
    inject_ = subparser(
        subs, "inject", "put the agent into a training process that is already running",
        "Inject the symwatch agent into a running PyTorch training process that never "
        "imported symwatch, and print the endpoint it publishes on (stdout, one line). The "
        "models and optimizers are found in the process unless named.",
        INJECT_EPILOG)
    inject_.add_argument("pid", type=positive_int, help="the training process's id")
    add_agent_options(
        inject_, endpoint_help="a private Unix socket",
        connect_help="a socket of the process's own",
        record_help="also record every message to this SQLite file")
    add_target_options(inject_)
    add_security_arguments(inject_, PUBLISH)
    inject_.add_argument("--quiet", action="store_true",
                         help="no `symwatch: injected ...` line on the process's stderr")
    inject_.set_defaults(func=cmd_inject)


def add_target_options(parser: argparse.ArgumentParser) -> None:
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
    for option in ("endpoint", "connect"):
        if getattr(args, option, None) is not None:
            try:
                setattr(args, option, validate_endpoint(getattr(args, option)))
            except EndpointError as exc:
                raise UserError(f"--{option}: {exc}") from None
    # `attach --pid` has a viewer's keys, not an agent's: its agent publishes privately.
    environment = (publisher_environment(args, "inject", environ={}) if command == "inject"
                   else {})
    options = {"name": getattr(args, "name", None), "every": getattr(args, "every", None),
               "budget": getattr(args, "budget", None),
               "full_every": getattr(args, "full_every", None),
               "endpoint": getattr(args, "endpoint", None),
               "connect": getattr(args, "connect", None),
               "record": getattr(args, "record", None)}
    try:
        return inject(pid, options, environment=environment, model=args.model,
                      optimizer=args.optimizer,
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
    elif args.connect:
        layers = f", {outcome.layers} layers" if outcome.layers is not None else ""
        _stderr(f"symwatch inject: process {args.pid} publishes to the relay at "
                f"{outcome.endpoint}{run}{layers}; view it: symwatch attach with the relay's "
                "--publish address")
    else:
        layers = f", {outcome.layers} layers" if outcome.layers is not None else ""
        _stderr(f"symwatch inject: process {args.pid} publishes on {outcome.endpoint}"
                f"{run}{layers}; view it: symwatch attach {outcome.run_id or outcome.endpoint}")
    print(outcome.endpoint, flush=True)
    return 0


def attach_pid_target(args: argparse.Namespace) -> str:
    """`symwatch attach --pid PID`: the endpoint to view, injecting the agent if needed."""
    if args.target is not None:
        raise UserError("give a run (ENDPOINT) or --pid, not both")
    outcome = inject_from_args(args, args.pid, "attach")
    if not outcome.already:
        _stderr(f"symwatch attach: injected into process {args.pid}; publishing on "
                f"{outcome.endpoint}")
    return outcome.endpoint
