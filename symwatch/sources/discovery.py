"""Finding runs to open (the Runs screen's): this machine's registry, the remembered SSH hosts
and theirs, and opening a listed run.

A scan is a list of (RunEntry, alive) pairs: every registered run, each with whether its
process is alive (a run that died without unregistering is listed, not dropped, so the Runs
screen can call it lost rather than finished). Hosts are ssh:// URLs without a run, remembered
in $XDG_CONFIG_HOME/symwatch/hosts (symwatch.transport.ssh.hosts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from symwatch.core import runtime
from symwatch.core.runtime import RunEntry
from symwatch.sources.base import MessageSource, SourceError
from symwatch.sources.open import open_endpoint, tunnel_feed
from symwatch.transport.ssh import (SshError, SshOptions, SshTarget, Tunnel,
                                    list_remote_registered, load_hosts, normalise_host,
                                    save_hosts)

__all__ = ["Scan", "SshOptions", "add_host", "default_ssh_options", "host_label",
           "open_host_run", "open_local_run", "remembered_hosts", "remove_host", "scan_host",
           "scan_local"]

Scan = list[tuple[RunEntry, bool]]
NO_SSH = "no ssh program here (set $SYMWATCH_SSH)"


def scan_local() -> Scan:
    """Every run registered on this machine, each with whether its process is alive."""
    return [(e, runtime.pid_alive(e.pid)) for e in runtime.registered_runs()]


def scan_host(url: str, options: SshOptions | None) -> Scan | str:
    """A host's registered runs, each with whether its process is alive, or its error line."""
    if options is None:
        return NO_SSH
    try:
        return list_remote_registered(SshTarget.parse(url), options)
    except SshError as exc:
        return str(exc)


def host_label(url: str) -> str:
    """How messages name a host URL: `user@host:port`, or what was given."""
    return SshTarget.parse(url).label


def default_ssh_options() -> SshOptions | None:
    """How to call ssh by default ($SYMWATCH_SSH...), or None without an ssh program here."""
    try:
        return SshOptions.from_env()
    except SshError:
        return None


# -- remembered hosts --------------------------------------------------------------------------

def remembered_hosts(given: Sequence[str] = (), path: Path | None = None) -> list[str]:
    """The remembered hosts and the `given` ones (remembered too, when new); SourceError for a
    given host that is not one. Failing to remember is no error: listing them still works."""
    try:
        new = [normalise_host(h) for h in given]
    except SshError as exc:
        raise SourceError(str(exc)) from exc
    known = load_hosts(path)
    hosts = list(dict.fromkeys(known + new))
    if any(h not in known for h in new):
        try:
            save_hosts(hosts, path)
        except OSError:
            pass  # remembering is a convenience; listing them still works
    return hosts


def add_host(hosts: list[str], text: str, path: Path | None = None) -> str:
    """Add the host `text` names to `hosts` and remember them; its URL. SourceError when `text`
    is not a host, OSError when the hosts file cannot be written."""
    try:
        url = normalise_host(text)
    except SshError as exc:
        raise SourceError(str(exc)) from exc
    if url not in hosts:
        hosts.append(url)
        save_hosts(hosts, path)
    return url


def remove_host(hosts: list[str], url: str, path: Path | None = None) -> None:
    if url in hosts:
        hosts.remove(url)
        save_hosts(hosts, path)


# -- opening a listed run ----------------------------------------------------------------------

def open_local_run(entry: RunEntry, *, curve: Any = None) -> MessageSource:
    """A live feed on a run of this machine; SourceError when its endpoint is unusable."""
    return open_endpoint(entry.endpoint, curve=curve)


def open_host_run(url: str, entry: RunEntry, options: SshOptions | None, *,
                  curve: Any = None) -> MessageSource:
    """A run listed on the host `url`, through a started ssh tunnel (this takes seconds: call
    it off the UI thread); SourceError when ssh cannot get there."""
    try:
        if options is None:
            raise SshError(NO_SSH)
        tunnel = Tunnel(SshTarget.parse(url), entry, options).start()
    except (SshError, OSError) as exc:
        raise SourceError(str(exc)) from exc
    return tunnel_feed(tunnel, curve=curve)
