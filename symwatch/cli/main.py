"""The `symwatch` command line: attach, ls, demo (Textual and torch are imported only when used)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from symwatch import __version__
from symwatch.core import runtime
from symwatch.core.runtime import RunEntry
from symwatch.transport.ssh import add_ssh_arguments, is_ssh_target, relay_main

if TYPE_CHECKING:  # imported for real only by the commands that need them
    from symwatch.transport.subscriber import BackgroundFeed
    from symwatch.launch.demo import DemoProcess

NO_RUNS = ("no live symwatch runs on this machine; start one with `symwatch demo`, "
           "`symwatch run -- python train.py` or `symwatch.watch(model, optimizer)` in your "
           "script, or pass an endpoint: "
           "symwatch attach tcp://127.0.0.1:PORT")
DEMO_HINT = ("hint: the demo trains small PyTorch models in a subprocess "
             "(python -m symwatch_agent.entry.demo); it needs torch and the symwatch agent importable "
             "by {python}. Install torch (pip install torch) and try again.")
DEFAULT_HEADLESS_STEPS = 400
STARTUP_TIMEOUT_S = 60.0  # importing torch on a cold cache can take tens of seconds


class UserError(Exception):
    """A mistake on the command line: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- argument parsing --------------------------------------------------------------------------

def _subparser(subs: Any, name: str, help_: str, description: str, epilog: str) -> Any:
    return subs.add_parser(name, help=help_, description=description, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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

    attach = _subparser(
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
                        help="no UI: print a compact summary about once a second")
    attach.add_argument("--ssh-host", action="append", default=[], metavar="ssh://HOST",
                        help="also list this host's runs in the Runs screen (repeatable; "
                             "hosts added in the screen are remembered)")
    attach.add_argument("--bell", action="store_true",
                        help="ring the terminal bell on each detected transition")
    attach.add_argument("--server-key", metavar="FILE", default=None,
                        help="CurveZMQ: the agent's public key file (from `symwatch keygen`); "
                             "needed for an agent that publishes with keys (docs/security.md)")
    attach.add_argument("--client-key", metavar="FILE", default=None,
                        help="CurveZMQ: your secret key file (*.key_secret), whose public key "
                             "the agent authorises")
    _add_view_options(attach)
    add_ssh_arguments(attach)
    from symwatch.launch.inject import add_inject_parser, add_target_options  # symwatch/launch/inject.py

    attach.add_argument("--pid", type=_positive_int, default=None, metavar="PID",
                        help="a running training process, without symwatch: inject the agent "
                             "(like `symwatch inject PID`) unless it already publishes")
    add_target_options(attach, _positive_float)
    attach.set_defaults(func=cmd_attach)

    ls = _subparser(
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

    demo = _subparser(
        subs, "demo", "train a small demo model and watch it (needs torch)",
        "Start a small PyTorch training run in a subprocess with the agent attached, and watch "
        "it in the terminal UI. Quitting the UI (or Ctrl-C) stops the run.",
        "examples:\n"
        "  symwatch demo                          runs until you quit (q)\n"
        "  symwatch demo --steps 2000 --delay 0.01\n"
        "  symwatch demo --headless --steps 200   text summary, exits when the run ends")
    demo.add_argument("--headless", action="store_true",
                      help="no UI: print a summary about once a second, exit when the run ends")
    demo.add_argument("--steps", type=_non_negative_int, default=None, metavar="N",
                      help="training steps; 0 = until stopped (default: 0, or "
                           f"{DEFAULT_HEADLESS_STEPS} with --headless)")
    demo.add_argument("--delay", type=_non_negative_float, default=0.05, metavar="S",
                      help="seconds to sleep after each step, to make it watchable (default 0.05)")
    demo.add_argument("--every", type=_positive_int, default=1, metavar="K",
                      help="sample the indicators every K steps (default 1)")
    demo.add_argument("--name", default="demo", help="run name shown in the UI and `ls`")
    demo.add_argument("--endpoint", default=None,
                      help="where the demo publishes (default: a private Unix socket, else a "
                           "free loopback TCP port)")
    demo.add_argument("--theme", choices=("auto", "dark", "light", "terminal"), default=None,
                      help="colours, as for attach (default: $SYMWATCH_THEME, else auto)")
    demo.set_defaults(func=cmd_demo)

    inspect = _subparser(
        subs, "inspect", "every weight-based indicator of a saved model, once (needs torch)",
        "Compute every weight-based indicator once for a saved model: a torch.save'd "
        "state_dict or module, or a .safetensors file. Runs `python -m symwatch_agent.entry.inspect` "
        "in a subprocess (this command never imports torch itself).",
        "examples:\n"
        "  symwatch inspect model.pt\n"
        "  symwatch inspect model.safetensors --json | jq '.layers[0].values'\n"
        "  symwatch inspect whole_module.pt --trust   a pickled nn.Module (runs its code)\n"
        "  symwatch inspect gpt2_state_dict.pt --heads 12   attention heads of a state_dict")
    inspect.add_argument("path", help="the saved model")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--trust", action="store_true",
                         help="allow unpickling a whole module (runs code from the file)")
    inspect.add_argument("--heads", metavar="N[:KV]", default=None,
                         help="attention heads per module where the file does not say (a "
                              "state_dict never does; default: a config.json next to it)")
    inspect.set_defaults(func=cmd_inspect)

    from symwatch.cli.alert import add_alert_parser  # imported here: alert_cli imports cli

    add_alert_parser(subs, _subparser)
    from symwatch.cli.record import add_recording_parsers

    add_recording_parsers(subs, _subparser)
    from symwatch.cli.detect import add_detect_parser

    add_detect_parser(subs, _subparser)
    from symwatch.transport.keys import add_keygen_parser

    add_keygen_parser(subs, _subparser)
    from symwatch.launch.run import add_run_parser

    add_run_parser(subs, _subparser)
    add_inject_parser(subs, _subparser)
    from symwatch.cli.relay import add_relay_parser  # symwatch/cli/relay.py

    add_relay_parser(subs, _subparser)
    # No help: run on a host by `symwatch attach ssh://…` when it forbids Unix-socket forwarding.
    relay = subs.add_parser("ssh-relay")
    relay.add_argument("paths", nargs="+")
    relay.set_defaults(func=lambda args: relay_main(args.paths))
    return parser


def _add_view_options(parser: argparse.ArgumentParser) -> None:
    """--theme, --title and --web/--host/--port/--allow-remote (docs/tui.md)."""
    from symwatch.tui.themes import CHOICES, ENV_THEME

    parser.add_argument("--theme", choices=CHOICES, default=None,
                        help=f"colours: auto follows the terminal's background (COLORFGBG), "
                             f"else dark; terminal uses its own palette (default: "
                             f"${ENV_THEME}, else auto)")
    parser.add_argument("--title", default=None, help="the view's title (default: the run)")
    parser.add_argument("--web", action="store_true",
                        help="serve the view to a browser (textual-serve) instead of this "
                             "terminal; prints the URL")
    parser.add_argument("--host", default=None, metavar="HOST",
                        help="with --web: the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_non_negative_int, default=0, metavar="N",
                        help="with --web: the port (default 0: a free one)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="with --web: allow a --host that is not loopback")


def _theme(args: argparse.Namespace) -> str:
    """The Textual theme for --theme / $SYMWATCH_THEME; a bad $SYMWATCH_THEME is a UserError."""
    from symwatch.tui.themes import ThemeError, resolve_theme

    try:
        return resolve_theme(getattr(args, "theme", None))
    except ThemeError as exc:
        raise UserError(str(exc)) from None


def _serve_web(args: argparse.Namespace, endpoint: str, title: str) -> int:
    from symwatch.launch.web import DEFAULT_HOST, WebError, attach_command, check_host, serve

    host = args.host or DEFAULT_HOST
    try:
        check_host(host, args.allow_remote)
        command = attach_command(endpoint, title=title, theme=args.theme, bell=args.bell,
                                 server_key=_absolute(args.server_key),
                                 client_key=_absolute(args.client_key))
        return serve(command, host=host, port=args.port, title=title)
    except WebError as exc:
        raise UserError(str(exc), code=1) from None


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def _number(kind: Callable[[str], Any], check: Callable[[Any], bool], what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
_non_negative_float = _number(float, lambda v: v >= 0 and v < float("inf"), "seconds >= 0")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number > 0")


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
        _err(f"symwatch {args.command}: {exc}")
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `symwatch ls --json | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        return 1
    except PermissionError as exc:  # e.g. a runtime directory owned by someone else
        _err(f"symwatch {args.command}: {exc}")
        return 1


# -- attach ------------------------------------------------------------------------------------

def resolve_target(target: str, runs: Sequence[RunEntry]) -> tuple[str, str | None]:
    """(endpoint, run name) for an endpoint, a run id, a unique run id prefix or a run name."""
    from symwatch.transport.subscriber import EndpointError, validate_endpoint

    if "://" in target:
        try:
            return validate_endpoint(target), None
        except EndpointError as exc:
            raise UserError(str(exc)) from None
    for matches in ([r for r in runs if r.run_id == target],
                    [r for r in runs if r.name == target],
                    [r for r in runs if r.run_id.startswith(target)]):
        if len(matches) == 1:
            return matches[0].endpoint, matches[0].name
        if len(matches) > 1:
            ids = ", ".join(f"{r.run_id} ({r.name})" for r in matches)
            raise UserError(f"{target!r} matches several live runs: {ids}; pass a run id")
    try:
        validate_endpoint(target)
    except EndpointError as exc:
        raise UserError(f"{target!r} is not the id or name of a live run (see `symwatch ls`), "
                        f"nor an endpoint: {exc}") from None
    raise AssertionError("unreachable: an endpoint always contains ://")


def _curve_client(args: argparse.Namespace) -> Any:
    """The CurveZMQ client settings from --server-key/--client-key, or None."""
    server_key = getattr(args, "server_key", None)
    client_key = getattr(args, "client_key", None)
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise UserError("CurveZMQ needs both --server-key (the agent's public key) and "
                        "--client-key (your secret key); see `symwatch keygen`")
    from symwatch.transport.keys import KeyFileError, load_client

    try:
        return load_client(server_key, client_key)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None


def cmd_attach(args: argparse.Namespace) -> int:
    if (args.host is not None or args.port or args.allow_remote) and not args.web:
        raise UserError("--host, --port and --allow-remote go with --web")
    if args.web and args.headless:
        raise UserError("--web and --headless exclude each other: choose one")
    theme = _theme(args)
    if is_ssh_target(args.target) or args.ssh_host:  # symwatch/cli/remote.py, symwatch/transport/ssh.py
        from symwatch.cli.remote import attach_remote, attach_runs_screen

        if args.target is None:
            return attach_runs_screen(args, theme, _curve_client(args))
        return attach_remote(args, theme, _curve_client(args))
    if args.pid is not None:  # symwatch/launch/inject.py: the agent injected unless already there
        from symwatch.launch.inject import attach_pid_target

        args.target = attach_pid_target(args)
    from symwatch.cli.remote import remembered_hosts_apply

    runs = runtime.live_runs()
    if args.target is not None:
        endpoint, name = resolve_target(args.target, runs)
    elif not runs and not remembered_hosts_apply(args):  # else: the Runs screen, below
        raise UserError(NO_RUNS, code=1)
    elif len(runs) == 1:
        endpoint, name = runs[0].endpoint, runs[0].name
    elif args.headless or args.web or not sys.stdout.isatty():
        listing = "\n".join(f"  {r.run_id}  {r.name}  {r.endpoint}" for r in runs)
        raise UserError(f"{len(runs)} live runs; pass one of them:\n{listing}", code=1)
    else:
        from symwatch.cli.remote import attach_runs_screen

        return attach_runs_screen(args, theme, _curve_client(args))
    curve = _curve_client(args)
    if args.headless:
        from symwatch.transport.subscriber import BackgroundFeed
        from symwatch.consumers.summary import follow

        with BackgroundFeed(endpoint, curve=curve) as feed:
            follow(feed, sys.stdout, name=name)
        return 0
    title = args.title or f"symwatch — {name or endpoint}"
    if args.web:
        return _serve_web(args, endpoint, title)
    from symwatch.tui.app import make_app

    app = make_app(endpoint, title=title, bell=args.bell, curve=curve, theme=theme)
    app.run()
    return 0


# -- ls ----------------------------------------------------------------------------------------

def cmd_ls(args: argparse.Namespace) -> int:
    if args.target is not None and not is_ssh_target(args.target):
        raise UserError(f"{args.target!r}: `symwatch ls` takes no argument, or ssh://HOST")
    if args.target is not None:
        from symwatch.cli.remote import remote_runs

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
    from rich.console import Console
    from rich.table import Table

    from symwatch.tui.run_text import command_text, started_text

    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ("run id", "name", "pid", "command", "endpoint", "started", "steps")
    for col in columns + (("state",) if args.all else ()):
        table.add_column(col, overflow="fold",
                         justify="right" if col in ("pid", "steps") else "left")
    for r, a in zip(runs, alive):
        table.add_row(r.run_id, r.name, str(r.pid), command_text(r.command), r.endpoint,
                      started_text(r.started), f"{r.steps:,}",
                      *((("alive" if a else "[bold red]lost[/]"),) if args.all else ()))
    console = Console()
    if not console.is_terminal:  # piped: never fold the endpoint or command over two lines
        console = Console(width=1000)
    console.print(table)
    return 0


# -- demo --------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from symwatch.transport.subscriber import BackgroundFeed, EndpointError
    from symwatch.launch.demo import DemoProcess, free_endpoint

    theme = _theme(args)
    endpoint = args.endpoint or free_endpoint()
    steps = args.steps if args.steps is not None else (
        DEFAULT_HEADLESS_STEPS if args.headless else 0)
    demo = DemoProcess(endpoint, name=args.name, steps=steps, delay=args.delay, every=args.every)
    try:
        # Subscribe before the run starts, so its first messages are not lost to a slow join.
        feed = BackgroundFeed(endpoint)
    except EndpointError as exc:
        raise UserError(str(exc)) from None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            demo.start()
        except OSError as exc:
            return _demo_failed(demo, f"could not start {demo.argv[0]}: {exc}")
        _err(f"symwatch demo: started `{' '.join(demo.argv[1:])}`; waiting for its first "
             "message (importing torch can take a while)…")
        if not _wait_first_message(feed, demo, STARTUP_TIMEOUT_S):
            rc = demo.poll()
            if rc == 0:  # it ran and ended before our subscription reached it
                _err("symwatch demo: the demo run finished before symwatch could connect; "
                     "give it more --steps or a longer --delay")
                return 0
            return _demo_failed(demo, "the demo run did not start" if rc is not None else
                                f"the demo run sent nothing within {STARTUP_TIMEOUT_S:.0f} s")
        if args.headless:
            return _demo_headless(feed, demo, args.name)
        from symwatch.tui.app import SymwatchApp

        SymwatchApp(feed, title=f"symwatch — demo ({endpoint})", theme=theme).run()
        rc = demo.poll()
        if rc not in (None, 0):
            return _demo_failed(demo, f"the demo run exited with status {rc}")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        feed.close()
        demo.stop()
        demo.cleanup()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _wait_first_message(feed: BackgroundFeed, demo: DemoProcess, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if feed.wait_for_message(0.2):
            return True
        if demo.poll() is not None:
            return bool(feed.wait_for_message(0.5))  # it may have published and exited at once
    return False


def _demo_headless(feed: BackgroundFeed, demo: DemoProcess, name: str) -> int:
    from symwatch.consumers.summary import follow

    state = follow(feed, sys.stdout, should_stop=lambda: demo.poll() is not None, name=name)
    rc = demo.wait(10.0)
    if rc is None:
        return _demo_failed(demo, "the demo run said goodbye but did not exit within 10 s")
    if rc != 0:
        return _demo_failed(demo, f"the demo run exited with status {rc}")
    if not state.finished:
        _err("symwatch demo: warning: the run exited without a goodbye message")
    return 0


def _demo_failed(demo: DemoProcess, what: str) -> int:
    _err(f"symwatch demo: {what}.")
    tail = demo.output_tail()
    if tail:
        _err("--- demo output (last lines) ---\n" + tail + "\n---")
    _err(DEMO_HINT.format(python=sys.executable))
    return 1


INSPECT_MODULE = "symwatch_agent.entry.inspect"


def cmd_inspect(args: argparse.Namespace) -> int:
    """Run the agent-side inspector (it imports torch; this process must not)."""
    import subprocess

    argv = [sys.executable, "-m", INSPECT_MODULE, args.path]
    argv += ["--json"] if args.json else []
    argv += ["--trust"] if args.trust else []
    argv += ["--heads", args.heads] if getattr(args, "heads", None) else []
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
    except OSError as exc:
        raise UserError(f"cannot run {sys.executable} -m {INSPECT_MODULE}: {exc}", 1) from None
