"""`symwatch attach --web`: the same run view, served to a browser with textual-serve.

textual-serve starts one process per browser tab from a shell command line and relays its
terminal over a websocket (xterm.js in the page). The command we give it is `symwatch attach`
with the target already resolved to an endpoint and the same options, run by this interpreter,
so the browser shows exactly what the terminal would. Loopback only unless --host says
otherwise: whoever reaches the port sees the run.
"""

from __future__ import annotations

import shlex
import sys
from typing import Sequence

from symwatch.core import runtime
from symwatch.core.processes import free_port

DEFAULT_HOST = "127.0.0.1"


class WebError(Exception):
    """A problem with --web's options or textual-serve; the message says what to do."""


def attach_command(endpoint: str, *, title: str | None = None, theme: str | None = None,
                   bell: bool = False, server_key: str | None = None,
                   client_key: str | None = None) -> str:
    """The shell command line textual-serve runs for each browser session."""
    argv: list[str] = [sys.executable, "-m", "symwatch", "attach", endpoint]
    if title:
        argv += ["--title", title]
    if theme:
        argv += ["--theme", theme]
    if bell:
        argv.append("--bell")
    if server_key:
        argv += ["--server-key", server_key]
    if client_key:
        argv += ["--client-key", client_key]
    return shlex.join(argv)


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def check_host(host: str, allow_remote: bool) -> None:
    if not runtime.is_loopback_host(host) and not allow_remote:
        raise WebError(f"--host {host} is not a loopback address: anyone who can reach it "
                       "would see the run (and could quit the view). Add --allow-remote if "
                       "that is what you want, or use an SSH tunnel: "
                       "ssh -L 8000:127.0.0.1:8000 HOST")


def serve(command: str, *, host: str = DEFAULT_HOST, port: int = 0, title: str = "symwatch",
          announce: Sequence[str] = ()) -> int:
    """Serve `command` until Ctrl+C / SIGTERM. Prints the URL first (stderr, flushed)."""
    try:
        from textual_serve.server import Server  # noqa: PLC0415 (lazy: an optional extra, only for --web)
    except ImportError:
        raise WebError("--web needs textual-serve: pip install textual-serve") from None
    if port == 0:
        port = free_port(host)
    url = url_for(host, port)
    for line in announce:
        print(line, file=sys.stderr, flush=True)
    print(f"symwatch: serving the run view at {url}  (open it in a browser; Ctrl+C stops)",
          file=sys.stderr, flush=True)
    server = Server(command, host=host.strip("[]"), port=port, title=title, public_url=url)
    try:
        server.serve()
    except OSError as exc:  # the port is taken, or the host is not an address of this machine
        raise WebError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; "
                       "choose another --port") from None
    return 0
