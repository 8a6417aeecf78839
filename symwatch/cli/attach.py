"""`symwatch attach`: the terminal UI (or a text summary, or a browser) on one live run, or the
Runs screen to choose from."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from symwatch.cli.common import (NO_RUNS, UserError, absolute, add_curve_arguments, err,
                                 add_ssh_arguments, add_view_options, curve_client,
                                 positive_int, resolve_target, several_runs, subparser,
                                 theme_from_args)
from symwatch.cli.inject import add_target_options, attach_pid_target
from symwatch.cli.remote import attach_remote, attach_runs_screen, remembered_hosts_apply
from symwatch.core import runtime
from symwatch.launch.web import DEFAULT_HOST, WebError, attach_command, check_host, serve
from symwatch.transport.ssh import is_ssh_target
from symwatch.sources.base import SourceError
from symwatch.sources.open import open_endpoint


def add_attach_parser(subs: Any) -> None:
    attach = subparser(
        subs, "attach", "watch a live run in the terminal UI",
        "Attach the terminal UI to a run. With no argument: the only live run on this machine, "
        "or the Runs screen to choose from when there are several.",
        "examples:\n"
        "  symwatch attach                        the only live run, or choose from a list\n"
        "  symwatch attach 3f9c                   a run id, or a unique prefix of one\n"
        "  symwatch attach my-experiment          a run name from `symwatch ls`\n"
        "  symwatch attach tcp://127.0.0.1:5555   an endpoint\n"
        "  symwatch attach ipc:///run/user/1000/symwatch/3f9c.sock\n"
        "  symwatch attach --headless             print a text summary once a second instead\n"
        "  symwatch attach --bell                 ring the terminal bell on each transition\n"
        "  symwatch attach my-run --follow        on into each restart of the script\n"
        "  symwatch attach --pid 12345            a training process started without symwatch\n"
        "  symwatch attach --theme light          the light theme (default: follow the terminal)\n"
        "  symwatch attach --web                  serve the same view to a browser on localhost\n"
        "  symwatch attach 3f9c --web --port 8000\n"
        "  symwatch attach ssh://gpu-box          the run on another machine, over ssh\n"
        "  symwatch attach ssh://me@gpu-box:2222/my-experiment -o IdentityFile=~/.ssh/k\n"
        "  symwatch attach --ssh-host ssh://gpu-box   the Runs screen: runs here and there\n\n"
        "keys in the UI: q quit, ? help, / filter, s sort, Ctrl+P every command (docs/tui.md)")
    attach.add_argument("target", nargs="?", metavar="ENDPOINT",
                        help="tcp://HOST:PORT, ipc://PATH, ssh://[USER@]HOST[:PORT][/RUN] "
                             "(docs/remote.md), or a run id / run name")
    attach.add_argument("--headless", action="store_true",
                        help="no UI: print a compact summary about once a second, and each "
                             "event as it comes")
    attach.add_argument("--ssh-host", action="append", default=[], metavar="ssh://HOST",
                        help="also list this host's runs in the Runs screen (repeatable; "
                             "hosts added in the screen are remembered)")
    attach.add_argument("--bell", action="store_true",
                        help="ring the terminal bell on each detected transition")
    attach.add_argument("--follow", action="store_true",
                        help="when the run ends or goes silent and a new run of the same name "
                             "starts (a restarted script), switch to it (without: offered, "
                             "key f)")
    add_curve_arguments(attach)
    add_view_options(attach)
    add_ssh_arguments(attach)
    attach.add_argument("--pid", type=positive_int, default=None, metavar="PID",
                        help="a running training process, without symwatch: inject the agent "
                             "(like `symwatch inject PID`) unless it already publishes")
    add_target_options(attach)
    attach.set_defaults(func=cmd_attach)


def cmd_attach(args: argparse.Namespace) -> int:
    if (args.host is not None or args.port or args.allow_remote) and not args.web:
        raise UserError("--host, --port and --allow-remote go with --web")
    if args.web and args.headless:
        raise UserError("--web and --headless exclude each other: choose one")
    theme = theme_from_args(args)
    if is_ssh_target(args.target) or args.ssh_host:  # symwatch/cli/remote.py
        if args.target is None:
            return attach_runs_screen(args, theme, curve_client(args))
        return attach_remote(args, theme, curve_client(args))
    if args.pid is not None:  # symwatch/cli/inject.py: the agent injected unless already there
        args.target = attach_pid_target(args)
    runs = runtime.live_runs()
    if args.target is not None:
        endpoint, name = resolve_target(args.target, runs)
    elif not runs and not remembered_hosts_apply(args):  # else: the Runs screen, below
        raise UserError(NO_RUNS, code=1)
    elif len(runs) == 1:
        endpoint, name = runs[0].endpoint, runs[0].name
    elif args.headless or args.web or not sys.stdout.isatty():
        raise several_runs(runs)
    else:
        return attach_runs_screen(args, theme, curve_client(args))
    curve = curve_client(args)
    if args.headless:
        from symwatch.consumers.summary import PrintEvents, follow  # noqa: PLC0415 (lazy: only --headless prints the summary; keeps start-up fast)

        try:
            feed = open_endpoint(endpoint, curve=curve)
        except SourceError as exc:
            raise UserError(str(exc)) from None
        # Said once, on stderr: until the first message the status line reads `[waiting]`,
        # and a new user could not tell what for (a report: nothing said the endpoint).
        err(f"symwatch attach: following {name or endpoint}"
            + (f" ({endpoint})" if name else "")
            + "; `[waiting]` until its first message (start a run with `symwatch demo`, or "
              "call symwatch.watch(model, optimizer) in your training script); Ctrl-C stops")
        with feed:
            follow(PrintEvents(feed, sys.stdout), sys.stdout, name=name or endpoint)
        return 0
    title = args.title or f"symwatch — {name or endpoint}"
    if args.web:
        return serve_web(args, endpoint, title)
    from symwatch.tui.app import make_app  # noqa: PLC0415 (lazy: Textual, only when the UI opens)

    app = make_app(endpoint, title=title, bell=args.bell, curve=curve, theme=theme,
                   follow=args.follow)
    app.run()
    return 0


def serve_web(args: argparse.Namespace, endpoint: str, title: str) -> int:
    """`attach --web`: the same view, served to a browser (symwatch/launch/web.py)."""
    host = args.host or DEFAULT_HOST
    try:
        check_host(host, args.allow_remote)
        command = attach_command(endpoint, title=title, theme=args.theme, bell=args.bell,
                                 server_key=absolute(args.server_key),
                                 client_key=absolute(args.client_key))
        return serve(command, host=host, port=args.port, title=title)
    except WebError as exc:
        raise UserError(str(exc), code=1) from None
