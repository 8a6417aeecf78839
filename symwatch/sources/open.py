"""`open_source`: one way to open what a view reads from, whatever the target names.

- `tcp://HOST:PORT` or `ipc://PATH`: a live run, a BackgroundFeed (its own thread and socket,
  the agent's history first when it offers one);
- `ssh://[user@]host[:port][/RUN]`: a run on another machine, found with `symwatch ls --json`
  there and forwarded through a supervised ssh tunnel (a TunnelFeed);
- anything else: the path of a recording, replayed at its recorded pace (a ReplaySource).

Every failure to open is one `SourceError` carrying the original message.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from symwatch.core.protocol import Message
from symwatch.core.recording import RecordingError
from symwatch.sources.base import MessageSource, SourceError
from symwatch.sources.replay import ReplaySource
from symwatch.sources.tunnel import TunnelFeed
from symwatch.transport.ssh import (SshError, SshOptions, SshTarget, Tunnel, is_ssh_target,
                                    open_run)
from symwatch.transport.subscriber import BackgroundFeed, EndpointError


def open_source(target: str | os.PathLike[str], *, curve: Any = None,
                ssh_options: SshOptions | None = None,
                on_messages: Callable[[list[Message]], None] | None = None,
                history: bool = True, speed: float = 1.0,
                on_notice: Callable[[str], None] | None = None) -> MessageSource:
    """Open `target` (see the module docstring); SourceError when it cannot be.

    `curve`: CurveZMQ client settings (symwatch.transport.keys.CurveClient) for a live or
    ssh:// run; `ssh_options`: how to call ssh (default: SshOptions.from_env()); `on_messages`
    and `history`: as BackgroundFeed's; `speed`: a recording's playback speed; `on_notice`:
    called with what the tunnel tells the user while it opens (e.g. that it relays)."""
    text = os.fspath(target)
    if is_ssh_target(text):
        return _open_ssh(text, curve=curve, ssh_options=ssh_options, on_messages=on_messages,
                         history=history, on_notice=on_notice)
    if "://" in text:
        return open_endpoint(text, curve=curve, on_messages=on_messages, history=history)
    return open_recording(text, speed=speed)


def open_recording(path: str | os.PathLike[str], *, speed: float = 1.0) -> ReplaySource:
    """The recording at `path`, replayed at `speed` times its recorded pace."""
    try:
        return ReplaySource.open(path, speed=speed)
    except (RecordingError, OSError) as exc:
        raise SourceError(str(exc)) from exc


def open_endpoint(endpoint: str, *, curve: Any = None,
                  on_messages: Callable[[list[Message]], None] | None = None,
                  history: bool = True) -> BackgroundFeed:
    """A live run at `endpoint` (tcp:// or ipc://): a started BackgroundFeed."""
    try:
        return BackgroundFeed(endpoint, curve=curve, on_messages=on_messages, history=history)
    except EndpointError as exc:
        raise SourceError(str(exc)) from exc


def _open_ssh(text: str, *, curve: Any, ssh_options: SshOptions | None,
              on_messages: Callable[[list[Message]], None] | None, history: bool,
              on_notice: Callable[[str], None] | None) -> TunnelFeed:
    try:
        target = SshTarget.parse(text)
        options = ssh_options if ssh_options is not None else SshOptions.from_env()
        _, tunnel = open_run(target, options, on_notice=on_notice)
    except (SshError, OSError) as exc:
        raise SourceError(str(exc)) from exc
    return tunnel_feed(tunnel, curve=curve, on_messages=on_messages, history=history)


def tunnel_feed(tunnel: Tunnel, **options: Any) -> TunnelFeed:
    """A TunnelFeed that owns `tunnel` (a started symwatch.transport.ssh.Tunnel); the tunnel is
    closed when the feed cannot start."""
    try:
        return TunnelFeed(tunnel, **options)
    except EndpointError as exc:
        tunnel.close()
        raise SourceError(str(exc)) from exc
    except BaseException:
        tunnel.close()
        raise
