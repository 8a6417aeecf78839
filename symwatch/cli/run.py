"""`symwatch run [options] -- COMMAND [ARGS...]`: the command line of symwatch/launch/run.py
(which builds the environment and becomes the command)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from symwatch.cli.common import (
    PUBLISH,
    UserError,
    add_agent_options,
    add_security_arguments,
    publisher_environment,
    subparser,
)
from symwatch.launch.run import LaunchError, execute, plan
from symwatch.transport.subscriber import EndpointError, validate_endpoint

RUN_EPILOG = (
    "examples:\n"
    "  symwatch run -- python train.py --lr 3e-4\n"
    "  symwatch run --every 5 --name gan -- python -m mypkg.train\n"
    "  symwatch run --every 1 --budget 1 --full-every 100 -- python train.py\n"
    "                                every step sampled, spectra every 100th\n"
    "  symwatch run --endpoint tcp://127.0.0.1:5555 -- torchrun --nproc-per-node 4 train.py\n"
    "  symwatch run --record run.db -- ./train.py        an entry-point or #!python script\n"
    "  symwatch run --connect tcp://127.0.0.1:5557 -- torchrun --nproc-per-node 4 train.py\n"
    "                                every rank publishes to a `symwatch relay`\n"
    "  symwatch run --endpoint tcp://0.0.0.0:5555 --server-key keys/server.key_secret \\\n"
    "      --authorized keys/authorized -- python train.py   on the network, CurveZMQ\n\n"
    "Then, in another terminal: symwatch attach\n\n"
    "The command runs exactly as without symwatch: same exit status, signals, stdin and\n"
    "stdout (symwatch writes only to stderr). The agent starts on the first optimizer.step()\n"
    "of each training process; the models are the modules owning the optimizers' parameters,\n"
    "the loss is the scalar .backward() is called on. Options can also be set as environment\n"
    "variables: SYMWATCH_NAME, SYMWATCH_EVERY, SYMWATCH_BUDGET, SYMWATCH_FULL_EVERY,\n"
    "SYMWATCH_ENDPOINT, SYMWATCH_RECORD, SYMWATCH_INSECURE. Not possible with python -I, -E or -S (the command still runs).")


def add_run_parser(subs: Any) -> None:
    run = subparser(
        subs, "run", "run a training command with the agent injected, no code change",
        "Run any Python training command (python train.py, python -m pkg.train, torchrun ..., "
        "an entry-point script) with the symwatch agent injected at interpreter start-up. "
        "The model(s), optimizer(s) and loss are found automatically.",
        RUN_EPILOG)
    add_agent_options(
        run, endpoint_help="a private Unix socket per process, listed by `symwatch ls`",
        connect_help="a socket of each process's own; for multi-node jobs",
        record_help="also record every message to this SQLite file ({run}, {rank} expand)")
    run.add_argument("--quiet", action="store_true",
                     help="no `symwatch: watching ...` line on stderr when the agent starts")
    add_security_arguments(run, PUBLISH)
    # dest: not "command", the subcommand's own name (main's error prefix reads it)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                     help="the command to run")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    for option in ("endpoint", "connect"):
        if getattr(args, option, None) is not None:
            try:
                setattr(args, option, validate_endpoint(getattr(args, option)))
            except EndpointError as exc:
                raise UserError(f"--{option}: {exc}") from None
    options = {"name": args.name, "every": args.every, "budget": args.budget,
               "full_every": args.full_every, "endpoint": args.endpoint, "record": args.record,
               "quiet": args.quiet, "connect": getattr(args, "connect", None)}
    security = publisher_environment(args, "run")
    try:
        p = plan(args.argv, options)
    except LaunchError as exc:
        raise UserError(str(exc)) from None
    p.env.update(security)
    for note in p.notes:
        print(f"symwatch run: note: {note}", file=sys.stderr)
    return execute(p)
