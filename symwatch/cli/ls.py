"""`symwatch ls`: the live runs registered on this machine (or on a host, over ssh)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from symwatch.cli.common import UserError, add_ssh_arguments, subparser
from symwatch.cli.remote import remote_runs
from symwatch.core import runtime
from symwatch.state.optimizer import groups_of, settings_text
from symwatch.transport.ssh import is_ssh_target
from symwatch.tui.run_text import command_text, sampling_text, started_text


def add_ls_parser(subs: Any) -> None:
    ls = subparser(
        subs, "ls", "list live runs on this machine",
        "List the live runs registered in the runtime directory "
        f"(${runtime.ENV_RUNTIME_DIR} overrides where that is).",
        "examples:\n"
        "  symwatch ls\n"
        "  symwatch ls --json | jq '.[0].endpoint'\n"
        "  symwatch ls ssh://gpu-box              the runs on another machine (docs/remote.md)\n"
        "  symwatch ls --all                      also runs that died without unregistering")
    ls.add_argument("target", nargs="?", metavar="ssh://HOST",
                    help="list the runs on this host over ssh instead")
    ls.add_argument("--json", action="store_true", help="print the entries as a JSON list")
    ls.add_argument("--all", action="store_true",
                    help="also list runs whose process died without unregistering (kept, not "
                         "pruned; with --json each entry says \"alive\")")
    add_ssh_arguments(ls)
    ls.set_defaults(func=cmd_ls)


def cmd_ls(args: argparse.Namespace) -> int:
    if args.target is not None and not is_ssh_target(args.target):
        raise UserError(f"{args.target!r}: `symwatch ls` takes no argument, or ssh://HOST")
    if args.target is not None:
        listing = remote_runs(args)
        runs, alive = [r for r, _ in listing], [a for _, a in listing]
    elif args.all:
        runs = runtime.registered_runs()
        alive = [runtime.pid_alive(r.pid) for r in runs]
    else:
        runs = runtime.live_runs()
        alive = [True] * len(runs)
    if args.json:
        entries = [r.to_json() | ({"alive": a} if args.all else {}) for r, a in zip(runs, alive)]
        print(json.dumps(entries, indent=2))
        return 0
    if not runs:
        print("no runs registered" if args.all else "no live runs")
        return 0
    from rich.console import Console  # noqa: PLC0415 (lazy: rich only for the table, not for --json)
    from rich.table import Table  # noqa: PLC0415 (lazy: rich only for the table, not for --json)

    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ("run id", "name", "pid", "command", "endpoint", "started", "steps", "sampling",
               "optimizer")
    for col in columns + (("state",) if args.all else ()):
        table.add_column(col, overflow="fold",
                         justify="right" if col in ("pid", "steps") else "left")
    for r, a in zip(runs, alive):
        table.add_row(r.run_id, r.name, str(r.pid), command_text(r.command), r.endpoint,
                      started_text(r.started), f"{r.steps:,}",
                      sampling_text((r.extra or {}).get("sampling"), hint=False) or "?",
                      settings_text(groups_of((r.extra or {}).get("optimizer"))) or "?",
                      *((("alive" if a else "[bold red]lost[/]"),) if args.all else ()))
    console = Console()
    if not console.is_terminal:  # piped: never fold the endpoint or command over two lines
        console = Console(width=1000)
    console.print(table)
    return 0
