"""Remembered hosts (the Runs screen's): one ssh:// URL a line in
$XDG_CONFIG_HOME/symwatch/hosts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from symwatch.transport.ssh.target import SshError, SshTarget


def hosts_file() -> Path:
    """$XDG_CONFIG_HOME/symwatch/hosts: one ssh:// URL a line."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "symwatch" / "hosts"


def load_hosts(path: Path | None = None) -> list[str]:
    """The remembered hosts (ssh:// URLs); a missing or unreadable file is no hosts, and a line
    that is not a host (edited by hand) is skipped."""
    try:
        lines = (path or hosts_file()).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    hosts = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                hosts.append(normalise_host(line))
            except SshError:
                continue
    return hosts


def save_hosts(hosts: Sequence[str], path: Path | None = None) -> None:
    path = path or hosts_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{h}\n" for h in hosts), encoding="utf-8")
    os.replace(tmp, path)


def normalise_host(text: str) -> str:
    """`gpu-box`, `me@gpu-box:2222` or `ssh://…` as `ssh://…` without a run; SshError if bad."""
    text = text.strip()
    url = text if text.lower().startswith("ssh://") else f"ssh://{text}"
    return SshTarget.parse(url).url(run="")
