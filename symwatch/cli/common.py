"""What every `symwatch` command shares: the user-facing error, argument types, option groups
(view, CurveZMQ keys, ssh://) and the lookups of a run named on the command line.

Every cli module imports this one, never `symwatch.cli.main` (which imports them all).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from typing import Any, Callable, Mapping, Sequence

from symwatch.core import exposure, runtime
from symwatch.core.runtime import RunEntry
from symwatch.transport.keys import CurveClient, KeyFileError, load_client, load_server
from symwatch.transport.ssh import (
    ENV_REMOTE_RUNTIME_DIR,
    ENV_REMOTE_SYMWATCH,
    ENV_SSH,
    SshOptions,
)
from symwatch.transport.subscriber import EndpointError, validate_endpoint
from symwatch.tui.themes import CHOICES, ENV_THEME, ThemeError, resolve_theme

def no_runs(example: str) -> str:
    """The error of a command that follows a live run and found none; `example`: that
    command given an endpoint (what to type instead)."""
    return ("no live symwatch runs on this machine; start one with `symwatch demo`, "
            "`symwatch run -- python train.py` or `symwatch.watch(model, optimizer)` in your "
            f"script, or pass an endpoint: {example}")


NO_RUNS = no_runs("symwatch attach tcp://127.0.0.1:PORT")


class UserError(Exception):
    """A mistake on the command line: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def err(message: str) -> None:
    """One line (or a few) for the user, on stderr, at once."""
    print(message, file=sys.stderr, flush=True)


def subparser(subs: Any, name: str, help_: str, description: str, epilog: str) -> Any:
    """A command's parser, its description and examples shown as written."""
    return subs.add_parser(name, help=help_, description=description, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)


# -- argument types ----------------------------------------------------------------------------

def number(kind: Callable[[str], Any], check: Callable[[Any], bool], what: str) -> Any:
    """An argparse type: `kind(text)` that passes `check`, else "expected WHAT, got TEXT"."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


non_negative_int = number(int, lambda v: v >= 0, "an integer >= 0")
port_number = number(int, lambda v: 0 <= v <= 65535, "a port number, 0 to 65535")
positive_int = number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_seconds = number(float, lambda v: v >= 0 and v < float("inf"), "seconds >= 0")
positive_float = number(float, lambda v: 0 < v < float("inf"), "a number > 0")
non_negative_float = number(float, lambda v: 0 <= v < math.inf, "a number >= 0")
finite_float = number(float, math.isfinite, "a number")


def fraction(text: str) -> float:
    """A fraction in (0, 1], e.g. a time budget."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


# -- the view: --theme, --title, --web ---------------------------------------------------------

def add_view_options(parser: argparse.ArgumentParser) -> None:
    """--theme, --title and --web/--host/--port/--allow-remote (docs/tui.md)."""
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
    parser.add_argument("--port", type=port_number, default=0, metavar="N",
                        help="with --web: the port (default 0: a free one)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="with --web: allow a --host that is not loopback")


def theme_from_args(args: argparse.Namespace) -> str:
    """The Textual theme for --theme / $SYMWATCH_THEME; a bad $SYMWATCH_THEME is a UserError."""
    try:
        return resolve_theme(getattr(args, "theme", None))
    except ThemeError as exc:
        raise UserError(str(exc)) from None


# -- security: CurveZMQ keys and --insecure, one group for every command ---------------------

VIEW, PUBLISH, RELAY = "view", "publish", "relay"  # the roles of `add_security_arguments`
ENV_CURVE_SERVER_KEY = "SYMWATCH_CURVE_SERVER_KEY"  # the variables the agent reads
ENV_CURVE_AUTHORIZED = "SYMWATCH_CURVE_AUTHORIZED"  # (symwatch_agent/options.py)
ENV_CURVE_RELAY_KEY = "SYMWATCH_CURVE_RELAY_KEY"
ENV_CURVE_CLIENT_KEY = "SYMWATCH_CURVE_CLIENT_KEY"

_SECURITY_HELP = {
    VIEW: "CurveZMQ keys for a run (or relay) that publishes with keys (`symwatch keygen`; "
          "docs/security.md)",
    PUBLISH: "by default the agent publishes on loopback or ipc only; a network interface "
             "(or a relay on another host) needs CurveZMQ keys (`symwatch keygen`) or "
             f"--insecure. Variables: {ENV_CURVE_SERVER_KEY} and {ENV_CURVE_AUTHORIZED} "
             f"(binding), {ENV_CURVE_RELAY_KEY} and {ENV_CURVE_CLIENT_KEY} (--connect), "
             f"{exposure.ENV_INSECURE}=1 (docs/security.md)",
    RELAY: "the relay binds loopback or ipc only, unless given CurveZMQ keys (`symwatch "
           "keygen`) or --insecure (docs/security.md)",
}


def add_agent_options(parser: argparse.ArgumentParser, *, endpoint_help: str,
                      connect_help: str, record_help: str) -> None:
    """The agent's options, one declaration for every command that starts an agent (`run`,
    `inject`): name, sampling cadence and budget, where to publish, what to record. Defaults
    are the agent's own (None here: the agent decides, so `SYMWATCH_*` keep working)."""
    parser.add_argument("--name", default=None,
                        help="run name shown in the UI and `ls` (default: the script's name)")
    parser.add_argument("--every", type=positive_int, default=None, metavar="K",
                        help="sample the indicators at most every K optimizer steps "
                             "(default 10)")
    parser.add_argument("--budget", type=fraction, default=None, metavar="F",
                        help="largest fraction of wall time the agent may take (default 0.01)")
    parser.add_argument("--full-every", type=positive_int, default=None, metavar="K",
                        help="at most one full sample (exact spectra, duplicate units) in "
                             "every K samples, the rest cheap (default: as often as the "
                             "budget allows)")
    parser.add_argument("--endpoint", default=None,
                        help="where to publish, tcp://127.0.0.1:PORT or ipc://PATH (default: "
                             + endpoint_help + ")")
    parser.add_argument("--connect", default=None, metavar="ENDPOINT",
                        help="publish to a `symwatch relay` at ENDPOINT (its --bind address) "
                             "instead of " + connect_help)
    parser.add_argument("--record", default=None, metavar="PATH", help=record_help)


def add_security_arguments(parser: argparse.ArgumentParser, role: str = VIEW) -> None:
    """The CurveZMQ keys and --insecure, the same names for every command (docs/security.md).
    `role`: VIEW (attach, record, alert: a CURVE client of a run or relay), PUBLISH (run,
    inject: the agent binds, or connects to a relay with --connect), RELAY."""
    group = parser.add_argument_group("security", _SECURITY_HELP[role])
    server = {
        VIEW: "the public key file (*.key) of the agent, or relay, you subscribe to",
        PUBLISH: "binding: the agent's secret key file (*.key_secret); with --connect: the "
                 "relay's public key file (*.key)",
        RELAY: "the relay's secret key file (*.key_secret)",
    }[role]
    group.add_argument("--server-key", metavar="FILE", default=None, help=server)
    if role in (VIEW, PUBLISH):
        group.add_argument("--client-key", metavar="FILE", default=None,
                           help="your secret key file (*.key_secret), whose public key the "
                                "agent (or relay) authorises" if role == VIEW else
                                "with --connect: the agent's secret key file (*.key_secret), "
                                "whose public key the relay authorises")
    if role in (PUBLISH, RELAY):
        group.add_argument("--authorized", metavar="DIR", default=None,
                           help="the directory of the public keys (*.key) allowed to connect"
                                + (" (binding)" if role == PUBLISH else
                                   ": the agents' and the viewers'"))
        group.add_argument("--insecure", action="store_true",
                           help="publish on a network interface WITHOUT keys: anyone who can "
                                "reach it reads the stream" + (" and can send into it"
                                                               if role == RELAY else ""))


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """A viewer's CurveZMQ keys: `add_security_arguments(parser, VIEW)`."""
    add_security_arguments(parser, VIEW)


def curve_client(args: argparse.Namespace) -> CurveClient | None:
    """The CurveZMQ client settings from --server-key/--client-key, or None."""
    server_key = getattr(args, "server_key", None)
    client_key = getattr(args, "client_key", None)
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise UserError("CurveZMQ needs both --server-key (the agent's public key) and "
                        "--client-key (your secret key); see `symwatch keygen`")
    try:
        return load_client(server_key, client_key)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None


def publisher_environment(args: argparse.Namespace, launcher: str,
                          environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `SYMWATCH_*` variables an agent started by `symwatch run` or `symwatch inject`
    (`launcher`) gets for the security options given (keys as absolute paths), after checking
    them and the endpoint the agent will bind (or, with --connect, reach): a UserError saying
    what to type rather than an agent that refuses to publish later."""
    environ = os.environ if environ is None else environ
    connect = getattr(args, "connect", None) or environ.get("SYMWATCH_CONNECT") or None
    endpoint = (connect or getattr(args, "endpoint", None)
                or environ.get("SYMWATCH_ENDPOINT") or "")
    server_key = absolute(getattr(args, "server_key", None))
    client_key = absolute(getattr(args, "client_key", None))
    authorized = absolute(getattr(args, "authorized", None))
    command = f"symwatch {launcher}"
    env: dict[str, str] = {}
    if connect:
        if authorized is not None:
            raise UserError(f"{command} --connect: --authorized is for an agent that binds; "
                            "to a relay, give --server-key RELAY.key and --client-key "
                            "CLIENT.key_secret")
        if (server_key is None) != (client_key is None):
            raise UserError(f"{command} --connect needs both --server-key (the relay's public "
                            "key) and --client-key (the agent's secret key); see `symwatch "
                            "keygen`")
        if server_key is not None and client_key is not None:
            try:
                load_client(server_key, client_key)
            except KeyFileError as exc:
                raise UserError(str(exc)) from None
            env = {ENV_CURVE_RELAY_KEY: server_key, ENV_CURVE_CLIENT_KEY: client_key}
        secured = bool(env) or bool(environ.get(ENV_CURVE_RELAY_KEY)
                                    and environ.get(ENV_CURVE_CLIENT_KEY))
    else:
        if client_key is not None:
            raise UserError(f"{command}: --client-key goes with --connect (a relay); an agent "
                            "that binds takes --server-key SERVER.key_secret and --authorized "
                            "DIR")
        if (server_key is None) != (authorized is None):
            raise UserError(f"{command} needs both --server-key (the agent's secret key) and "
                            "--authorized (the viewers' public keys); see `symwatch keygen`")
        if server_key is not None and authorized is not None:
            try:
                load_server(server_key, authorized)
            except KeyFileError as exc:
                raise UserError(str(exc)) from None
            env = {ENV_CURVE_SERVER_KEY: server_key, ENV_CURVE_AUTHORIZED: authorized}
        secured = bool(env) or bool(environ.get(ENV_CURVE_SERVER_KEY)
                                    and environ.get(ENV_CURVE_AUTHORIZED))
    insecure = bool(getattr(args, "insecure", False))
    if insecure:
        env[exposure.ENV_INSECURE] = "1"
    refused = exposure.check(endpoint, secured=secured,
                             insecure=insecure or exposure.truthy(
                                 environ.get(exposure.ENV_INSECURE)),
                             launcher=launcher, connect=bool(connect))
    if refused is not None:
        raise UserError(refused)
    return env


# -- ssh:// targets ----------------------------------------------------------------------------

def add_ssh_arguments(parser: argparse.ArgumentParser, short: bool = True) -> None:
    """The options every command that takes an ssh:// target shares (`short`: also `-o` for
    --ssh-option, where -o does not already mean --output)."""
    group = parser.add_argument_group(
        "remote runs (ssh://)", f"ssh is the system's (${ENV_SSH} overrides the command, e.g. "
        "'ssh -F ~/.ssh/cluster'), so ~/.ssh/config, agents and jump hosts apply")
    group.add_argument(*(("-o",) if short else ()), "--ssh-option", action="append",
                       default=[], metavar="OPT",
                       help="an ssh -o option, repeatable: --ssh-option Port=2222 "
                            "--ssh-option IdentityFile=~/.ssh/cluster")
    group.add_argument("--remote-symwatch", metavar="CMD", default=None,
                       help="symwatch on the host, when not on its PATH: "
                            "/opt/venv/bin/symwatch or '/opt/venv/bin/python -m symwatch' "
                            f"(also ${ENV_REMOTE_SYMWATCH}; default: symwatch, then "
                            "python3 -m symwatch)")
    group.add_argument("--remote-runtime-dir", metavar="DIR", default=None,
                       help="the host's symwatch runtime directory, when its runs set "
                            f"{runtime.ENV_RUNTIME_DIR} (also ${ENV_REMOTE_RUNTIME_DIR})")


def ssh_options_from_args(args: argparse.Namespace) -> SshOptions:
    """How to call ssh, from the options `add_ssh_arguments` adds (and the environment);
    raises SshError where there is no ssh program."""
    return SshOptions.from_env(options=getattr(args, "ssh_option", None) or (),
                               remote_symwatch=getattr(args, "remote_symwatch", None),
                               remote_runtime_dir=getattr(args, "remote_runtime_dir", None))


# -- the run named on the command line ---------------------------------------------------------

def resolve_target(target: str, runs: Sequence[RunEntry]) -> tuple[str, str | None]:
    """(endpoint, run name) for an endpoint, a run id, a unique run id prefix or a run name."""
    if "://" in target:
        try:
            return validate_endpoint(target), None
        except EndpointError as exc:  # what else a target can be, which it did not say
            raise UserError(f"{exc}; or ssh://[USER@]HOST[/RUN] (docs/remote.md), or a run id "
                            "or name (`symwatch ls`)") from None
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


def several_runs(runs: Sequence[RunEntry]) -> UserError:
    """The error for a command that follows one run, given none while several are live."""
    listing = "\n".join(f"  {r.run_id}  {r.name}  {r.endpoint}" for r in runs)
    return UserError(f"{len(runs)} live runs; pass one of them:\n{listing}", code=1)


def say_unreadable_rows(command: str, reader: Any) -> None:
    """Rows of a recording that failed validation were skipped: said once, on stderr (every
    command that reads a recording says it; only `export` did)."""
    if reader.garbage:
        err(f"symwatch {command}: skipped {reader.garbage:,} unreadable rows of the recording "
            f"(last: {reader.last_error})")


def refuse_folder(path: str) -> None:
    """A folder named where a recording belongs is a UserError that says so (it read "no
    such recording", of a path that exists)."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, not a recording (name the .db file in it)", code=1)


def read_recording(path: str) -> Any:
    """A RecordingReader on `path`, or a UserError (exit status 1) saying why not."""
    from symwatch.core.recording import RecordingError, RecordingReader  # noqa: PLC0415 (lazy: sqlite3 only for the commands that read a recording)

    refuse_folder(path)
    try:
        return RecordingReader(path)
    except RecordingError as exc:
        raise UserError(str(exc), code=1) from None


def write_output(path: str | None, write: Callable[[Any], None], newline: str | None = None
                 ) -> None:
    """Run `write(file)` on `path` (None: standard output) so that a failure (a full disk,
    a file size limit, Ctrl-C) is a UserError that says so and loses nothing: a new or
    regular file is written beside itself and renamed over the old one (whose permissions it
    keeps) only once complete (a failed export or report left a truncated file where the
    previous good one was). A symlink (`/dev/stdout`), a device or a pipe is written in
    place, as is a file in a folder where nothing new can be created."""
    if path is None:
        try:
            write(sys.stdout)
            sys.stdout.flush()
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise UserError(f"cannot write to standard output: {exc}", code=1) from None
        return
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder; name a file", code=1)
    existed = os.path.lexists(path)
    regular = existed and os.path.isfile(path) and not os.path.islink(path)
    tmp = f"{path}.part-{os.getpid()}"
    if existed and not regular:
        _write_in_place(path, write, newline)
        return
    try:
        out = open(tmp, "w", encoding="utf-8", newline=newline)
    except OSError:  # a folder that takes no new file (read-only): the file itself, in place
        _write_in_place(path, write, newline)
        return
    done = False
    try:
        with out:
            write(out)
        if existed:
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
        done = True
    except OSError as exc:
        kept = " (the file there was left as it was)" if existed else ""
        raise UserError(f"cannot write {path}: {exc}{kept}", code=1) from None
    finally:
        if not done:  # a failure, or Ctrl-C: no part file left behind
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _write_in_place(path: str, write: Callable[[Any], None], newline: str | None) -> None:
    try:
        with open(path, "w", encoding="utf-8", newline=newline) as out:
            write(out)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc}", code=1) from None