"""The ssh:// side of `symwatch attach`, `ls` and `record` (the logic is in symwatch/transport/ssh),
and the hidden `symwatch ssh-relay` those run on a host."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from symwatch.cli.common import UserError, err, ssh_options_from_args
from symwatch.core.runtime import RunEntry
from symwatch.sources.base import SourceError
from symwatch.sources.open import tunnel_feed
from symwatch.transport.ssh import (SshError, SshOptions, SshTarget, Tunnel,
                                    is_ssh_target, list_remote_registered, list_remote_runs,
                                    load_hosts, open_run, relay_main)


def add_ssh_relay_parser(subs: Any) -> None:
    # No help: run on a host by `symwatch attach ssh://…` when it forbids Unix-socket forwarding.
    relay = subs.add_parser("ssh-relay")
    relay.add_argument("paths", nargs="+")
    relay.set_defaults(func=lambda args: relay_main(args.paths))


def _user_error(command: str, exc: SshError) -> Exception:
    return UserError(str(exc), code=1)


def ssh_options(args: argparse.Namespace, command: str) -> SshOptions:
    try:
        return ssh_options_from_args(args)
    except SshError as exc:
        raise _user_error(command, exc) from None


def parse_target(text: str, command: str) -> SshTarget:
    try:
        return SshTarget.parse(text)
    except SshError as exc:
        raise UserError(str(exc)) from None


def open_remote(args: argparse.Namespace, command: str) -> tuple[RunEntry, Tunnel]:
    """The target's run and its started tunnel, or a UserError saying what to do."""
    target = parse_target(args.target, command)
    options = ssh_options(args, command)
    err(f"symwatch {command}: looking for runs on {target.label} over ssh…")
    try:
        return open_run(target, options, on_notice=lambda text: err(f"symwatch {command}: "
                                                                     f"{text}"))
    except SshError as exc:
        raise _user_error(command, exc) from None


def remote_runs(args: argparse.Namespace) -> list[tuple[RunEntry, bool]]:
    """`symwatch ls ssh://host`: the host's live runs (`--all`: every registered one), each
    with whether its process is alive."""
    target = parse_target(args.target, "ls")
    if target.run:
        raise UserError(f"`symwatch ls` lists every run on a host; drop /{target.run} from "
                        f"{args.target}")
    try:
        if getattr(args, "all", False):
            return list_remote_registered(target, ssh_options(args, "ls"))
        return [(run, True) for run in list_remote_runs(target, ssh_options(args, "ls"))]
    except SshError as exc:
        raise _user_error("ls", exc) from None


def _no_web(args: argparse.Namespace) -> None:
    if getattr(args, "web", False):
        raise UserError("--web does not take ssh:// runs yet; run `symwatch attach --web` on "
                        "that host and forward its port (ssh -L 8000:127.0.0.1:PORT HOST)")


def attach_remote(args: argparse.Namespace, theme: str | None, curve: Any) -> int:
    """`symwatch attach ssh://host[/RUN]`: the TUI (or the summary) through a Tunnel."""
    _no_web(args)
    if not is_ssh_target(args.target):
        raise UserError("--ssh-host opens the Runs screen: give it without a run, or name a "
                        "remote run as ssh://HOST/RUN")
    entry, tunnel = open_remote(args, "attach")
    name = f"{entry.name} on {tunnel.target.label}"
    try:
        feed = tunnel_feed(tunnel, curve=curve)  # closes the tunnel when the feed cannot start
    except SourceError as exc:
        raise UserError(str(exc)) from None
    if args.headless:
        from symwatch.consumers.summary import PrintEvents, follow  # noqa: PLC0415 (lazy: only --headless prints the summary; keeps start-up fast)

        with feed:
            follow(PrintEvents(feed, sys.stdout), sys.stdout, name=name)
        return 0
    from symwatch.tui.app import SymwatchApp  # noqa: PLC0415 (lazy: Textual, only when the UI opens)

    title = args.title or f"symwatch — {name} ({tunnel.target.url(entry.run_id)})"
    app = SymwatchApp(feed, title=title, owns_source=True, bell=args.bell, theme=theme)
    try:
        app.run()
    finally:
        feed.close()  # owns_source closes it on unmount; a failed start must not leak ssh
    return 0


def remembered_hosts_apply(args: argparse.Namespace) -> bool:
    """`symwatch attach` with no run here opens the Runs screen instead when hosts are
    remembered (a terminal UI, not --headless or --web)."""
    return (not args.headless and not getattr(args, "web", False) and sys.stdout.isatty()
            and bool(load_hosts()))


def attach_runs_screen(args: argparse.Namespace, theme: str | None, curve: Any) -> int:
    """No single run named: the Runs screen (local runs and those on --ssh-host hosts)."""
    _no_web(args)
    if args.headless:
        raise UserError("--headless follows one run: name it (a run id, or ssh://HOST/RUN)")
    from symwatch.tui.app import RunsApp  # noqa: PLC0415 (lazy: Textual, only when the UI opens)
    from symwatch.tui.screens.runs import RunsConfig  # noqa: PLC0415 (lazy: Textual, only when the UI opens)

    try:
        options: SshOptions | None = ssh_options_from_args(args)
    except SshError as exc:  # no ssh program: local runs still list
        if args.ssh_host:
            raise _user_error("attach", exc) from None
        options = None
    try:
        config = RunsConfig(hosts=list(args.ssh_host or []), options=options, curve=curve)
    except SourceError as exc:  # a malformed --ssh-host
        raise _user_error("attach", exc) from None
    RunsApp(config, bell=args.bell, theme=theme).run()
    return 0
