"""Runs on another machine, through the system `ssh`: targets, discovery, supervised tunnels.

`symwatch attach ssh://[user@]host[:port][/RUN]` (also `ls`, `record`) works in three steps:

1. `SshTarget.parse` reads the target; `SshOptions` says how to call ssh (`$SYMWATCH_SSH`, `-o`
   options, `--remote-symwatch`, `--remote-runtime-dir`). The system `ssh` is used on purpose:
   `~/.ssh/config`, agents, keys, ProxyJump and ControlMaster work as they do for the user.
   (target.py)
2. `list_remote_runs` runs `symwatch ls --json` on the host (`symwatch`, else
   `python3 -m symwatch`, unless `--remote-symwatch` names it) and returns its `RunEntry`s;
   `choose_run` picks the one the target names. (discovery.py)
3. `Tunnel(target, entry, options)` forwards the run's PUB socket and its late-join history
   socket (`extra.history_endpoint`) to this machine: a child `ssh -N` with
   `ExitOnForwardFailure=yes`, `BatchMode=yes` and `ServerAliveInterval`, `-L local.sock:
   remote.sock` for ipc:// endpoints, `-L 127.0.0.1:LOCAL:HOST:PORT` for tcp:// ones. Each
   forward is probed (ZeroMQ's peer greets first, so a byte back means the path works end to
   end). Where the server forbids Unix-socket forwarding, a relay (`symwatch ssh-relay`, run on
   the host in an ssh session of its own: far_relay.py) exposes the sockets on the host's
   loopback and those ports are forwarded instead. A supervisor thread restarts ssh when it dies
   (backoff up to 5 s); `close()` ends the children and removes the local sockets. (tunnel.py)

The Runs screen's remembered hosts are in hosts.py. The message source over a tunnel
(`TunnelFeed`) is symwatch.sources.tunnel's; the command-line options are symwatch.cli's.

Errors a person can act on (`SshError`, one line each): host unreachable, authentication
failed, host key unknown or changed, symwatch not installed on the host, no runs there,
forwarding refused by the server.
"""

from symwatch.transport.ssh.discovery import choose_run, list_remote_registered, list_remote_runs
from symwatch.transport.ssh.far_relay import relay_main
from symwatch.transport.ssh.hosts import hosts_file, load_hosts, normalise_host, save_hosts
from symwatch.transport.ssh.target import (ENV_REMOTE_RUNTIME_DIR, ENV_REMOTE_SYMWATCH, ENV_SSH,
                                           SshError, SshOptions, SshTarget, classify,
                                           is_ssh_target, run_remote)
from symwatch.transport.ssh.tunnel import Forward, Tunnel, open_run

__all__ = [
    "ENV_REMOTE_RUNTIME_DIR", "ENV_REMOTE_SYMWATCH", "ENV_SSH", "Forward", "SshError",
    "SshOptions", "SshTarget", "Tunnel", "choose_run", "classify", "hosts_file",
    "is_ssh_target", "list_remote_registered", "list_remote_runs", "load_hosts",
    "normalise_host", "open_run", "relay_main", "run_remote", "save_hosts",
]
