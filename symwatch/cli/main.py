"""The `symwatch` command line: the parser of every command (one module each in symwatch/cli/)
and the dispatch, the one place where errors become messages and exit codes. Textual and torch
are imported only when used."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Any, Sequence

from symwatch import __version__
from symwatch.cli.alert import add_alert_parser
from symwatch.cli.attach import add_attach_parser
from symwatch.cli.common import UserError, err
from symwatch.cli.demo import add_demo_parser
from symwatch.cli.detect import add_detect_parser
from symwatch.cli.inject import add_inject_parser
from symwatch.cli.inspect import add_inspect_parser
from symwatch.cli.keygen import add_keygen_parser
from symwatch.cli.ls import add_ls_parser
from symwatch.cli.record import add_recording_parsers
from symwatch.cli.relay import add_relay_parser
from symwatch.cli.remote import add_ssh_relay_parser
from symwatch.cli.run import add_run_parser


# Run by other commands (`attach ssh://…` runs it on the host), never typed: not offered.
HIDDEN_COMMANDS = frozenset({"ssh-relay"})


class _SymwatchParser(argparse.ArgumentParser):
    """An unknown COMMAND says the nearest command and the public ones, instead of
    argparse's list of every choice (the hidden ones too)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            public = [n for n in action.choices if n not in HIDDEN_COMMANDS]
            near = difflib.get_close_matches(value, public, n=1)
            hint = f" (did you mean `{near[0]}`?)" if near else ""
            raise argparse.ArgumentError(
                action, f"unknown command {value!r}{hint}; the commands: {', '.join(public)} "
                        "(symwatch --help says what each does)")
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    parser = _SymwatchParser(
        prog="symwatch", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Watch a live PyTorch training run layer by layer: parameter-symmetry "
                    "indicators (rank, dead and duplicate units, balance, ...) and the "
                    "transitions between its learning phases, as they happen.",
        epilog="examples:\n"
               "  symwatch demo                      train a small model and watch it\n"
               "  symwatch ls                        list live runs on this machine\n"
               "  symwatch attach                    watch the only live run (or pick one)\n"
               "  symwatch attach tcp://127.0.0.1:5555\n"
               "  symwatch alert --exec 'notify-send \"$SYMWATCH_TEXT\"'   act on transitions\n"
               "  symwatch record -o run.db          record the live run (replay, export it)\n"
               "  symwatch run -- python train.py    watch a script without changing it\n"
               "  symwatch inject 12345              the agent into a run already going\n"
               "  symwatch relay                     one view of a many-node job\n\n"
               "In your script:  import symwatch; symwatch.watch(model, optimizer)")
    parser.add_argument("--version", action="version", version=f"symwatch {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_attach_parser(subs)
    add_ls_parser(subs)
    add_demo_parser(subs)
    add_inspect_parser(subs)
    add_alert_parser(subs)
    add_recording_parsers(subs)  # record, export, replay, report
    add_detect_parser(subs)
    add_keygen_parser(subs)
    add_run_parser(subs)
    add_inject_parser(subs)
    add_relay_parser(subs)
    add_ssh_relay_parser(subs)  # hidden: what `attach ssh://…` runs on a host
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except UserError as exc:
        err(f"symwatch {args.command}: {exc}")
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `symwatch ls --json | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        return 1
    except PermissionError as exc:  # e.g. a runtime directory owned by someone else
        err(f"symwatch {args.command}: {exc}")
        return 1
