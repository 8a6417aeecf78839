"""The `symwatch relay` command: run a relay (symwatch/transport/relay.py) in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from symwatch.cli.common import RELAY, UserError, add_security_arguments, subparser
from symwatch.transport import relay as relay_mod

EPILOG = (
    "examples:\n"
    "  symwatch relay                                 agents on this machine, viewers here\n"
    "  symwatch run --connect tcp://127.0.0.1:5557 -- torchrun --nproc-per-node 8 train.py\n"
    "  symwatch attach                                finds the relay in `symwatch ls`\n"
    "  symwatch relay --bind tcp://0.0.0.0:5557 --server-key keys/server.key_secret \\\n"
    "      --authorized keys/authorized           many nodes, encrypted (symwatch keygen)\n"
    "  symwatch relay --bind ipc:///tmp/sw-in.sock --publish ipc:///tmp/sw-out.sock\n\n"
    "Agents publish to the relay with watch(..., connect=ENDPOINT), $SYMWATCH_CONNECT or\n"
    "`symwatch run --connect ENDPOINT` (ENDPOINT: the relay's --bind address). Viewers attach\n"
    "to its --publish address and see every rank of every run; a viewer attaching late gets\n"
    "each run's history. Without keys only loopback and ipc endpoints are allowed; on other\n"
    "nodes, reach a loopback relay through SSH tunnels (ssh -R 5557:127.0.0.1:5557 node), or\n"
    "give CurveZMQ keys. See docs/distributed.md.")


def add_relay_parser(subs: Any) -> None:
    p = subparser(
        subs, "relay", "fan in many agents (many nodes) to one endpoint viewers attach to",
        "Run a relay: agents on any number of hosts publish to it (--bind), viewers subscribe "
        "to it (--publish) and see every rank of every run; a bounded history per publisher "
        "serves viewers that attach late. Runs until Ctrl-C.", EPILOG)
    p.add_argument("--bind", default=relay_mod.DEFAULT_BIND, metavar="ENDPOINT",
                   help=f"where agents connect (default {relay_mod.DEFAULT_BIND})")
    p.add_argument("--publish", default=relay_mod.DEFAULT_PUBLISH, metavar="ENDPOINT",
                   help=f"where viewers attach (default {relay_mod.DEFAULT_PUBLISH})")
    p.add_argument("--name", default="relay", help="its name in `symwatch ls` (default relay)")
    p.add_argument("--no-history", action="store_true",
                   help="keep no history for viewers that attach late")
    add_security_arguments(p, RELAY)
    p.add_argument("--status-every", type=float, default=10.0, metavar="S",
                   help="print a status line every S seconds (0: never; default 10)")
    p.set_defaults(func=cmd_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    try:
        curve = relay_mod.load_curve(args.server_key, args.authorized)
        relay = relay_mod.Relay(args.bind, args.publish, insecure=args.insecure, curve=curve,
                                history=not args.no_history, name=args.name).start()
    except relay_mod.RelayError as exc:
        raise UserError(str(exc), code=1) from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"symwatch relay: agents publish to {relay.bind_endpoint} "
          f"(watch(connect=...), SYMWATCH_CONNECT, symwatch run --connect)\n"
          f"symwatch relay: viewers attach to {relay.publish_endpoint}"
          + (f" (history {relay.history_endpoint})" if relay.history_endpoint else ""),
          flush=True)
    if relay.exposed:
        print("symwatch relay: WARNING: a network interface WITHOUT encryption "
              "(--insecure): anyone who can reach it reads the stream", file=sys.stderr)
    try:
        next_status = time.monotonic() + args.status_every
        while not stop.wait(0.2):
            if args.status_every > 0 and time.monotonic() >= next_status:
                next_status += args.status_every
                print(f"symwatch relay: {relay.status()}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        relay.close()
    print(f"symwatch relay: stopped; {relay.status()}", flush=True)
    return 0
