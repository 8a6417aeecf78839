"""The runs on a host: `symwatch ls --json` over ssh, and the one an ssh:// target names."""

from __future__ import annotations

import json
from typing import Sequence

from symwatch.core.runtime import RunEntry
from symwatch.transport.ssh.target import SshError, SshOptions, SshTarget, run_remote


def list_remote_runs(target: SshTarget, options: SshOptions) -> list[RunEntry]:
    """The live runs on the host, from its `symwatch ls --json`."""
    return [entry for entry, _ in _remote_listing(target, options, "ls", "--json")]


def list_remote_registered(target: SshTarget, options: SshOptions
                           ) -> list[tuple[RunEntry, bool]]:
    """Every run registered on the host, each with whether its process is alive (`symwatch ls
    --json --all`: a run that died without unregistering is listed as not alive, not dropped,
    so the Runs screen can call it lost rather than finished)."""
    return _remote_listing(target, options, "ls", "--json", "--all")


def _remote_listing(target: SshTarget, options: SshOptions, *args: str
                    ) -> list[tuple[RunEntry, bool]]:
    out = run_remote(target, options, *args)
    try:
        data = json.loads(out)
        if not isinstance(data, list):
            raise ValueError("not a list")
        runs = [(RunEntry.from_json(item), item.get("alive", True) is not False)
                for item in data]
    except (ValueError, TypeError, AttributeError) as exc:
        first = out.strip().splitlines()[0][:120] if out.strip() else "nothing"
        raise SshError(f"unexpected answer from `symwatch ls --json` on {target.label} "
                       f"({exc}; it printed {first!r}); is the symwatch there current?") from None
    return runs


def choose_run(target: SshTarget, runs: Sequence[RunEntry]) -> RunEntry:
    """The run the target names (id, name, unique id prefix), or the only one."""
    if not runs:
        raise SshError(f"no live symwatch runs on {target.label}; start one there "
                       "(symwatch run -- python train.py), or pass --remote-runtime-dir when "
                       "it uses another runtime directory", kind="no-runs")
    if target.run is None:
        if len(runs) == 1:
            return runs[0]
        listing = ", ".join(f"{r.run_id} ({r.name})" for r in runs)
        raise SshError(f"{len(runs)} live runs on {target.label}: {listing}; pick one with "
                       f"{target.url('RUN')}", kind="ambiguous")
    key = target.run
    for matches in ([r for r in runs if r.run_id == key], [r for r in runs if r.name == key],
                    [r for r in runs if r.run_id.startswith(key)]):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(f"{r.run_id} ({r.name})" for r in matches)
            raise SshError(f"{key!r} matches several runs on {target.label}: {ids}; pass a "
                           "run id", kind="ambiguous")
    names = ", ".join(f"{r.run_id} ({r.name})" for r in runs)
    raise SshError(f"no run {key!r} on {target.label}; its live runs: {names}", kind="no-runs")
