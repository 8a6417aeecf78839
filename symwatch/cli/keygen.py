"""`symwatch keygen`: make CurveZMQ key pairs (symwatch/transport/keys.py) and say where each
file goes (docs/security.md)."""

from __future__ import annotations

import argparse
from typing import Any

from symwatch.cli.common import UserError, subparser
from symwatch.transport.keys import KeyFileError, keygen


def add_keygen_parser(subs: Any) -> None:
    p = subparser(
        subs, "keygen", "make CurveZMQ keys to publish beyond this machine safely",
        "Make a CurveZMQ server key pair and a client key pair (secret files mode 0600), "
        "needed to publish on a network interface: the agent encrypts the stream and admits "
        "only the client keys in its authorised directory; viewers pin the server key.",
        "examples:\n"
        "  symwatch keygen ~/.symwatch-keys\n"
        "  symwatch keygen ~/.symwatch-keys --client alice   another viewer's key pair\n\n"
        "See docs/security.md for where each file goes.")
    p.add_argument("directory", nargs="?", default="symwatch-keys",
                   help="where to write the keys (default: ./symwatch-keys)")
    p.add_argument("--client", default=None, metavar="NAME",
                   help="only make a client pair NAME (the server pair exists already)")
    p.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        made = keygen(args.directory, client=args.client or "client",
                      server=args.client is None)
    except (KeyFileError, OSError) as exc:
        raise UserError(str(exc), code=1) from None
    name = args.client or "client"
    lines = ["symwatch keygen: made these keys (secret files are mode 0600: never copy or "
             "share them):", ""]
    if "server_secret" in made:
        lines += [f"  {made['server_secret']}",
                  "      the server's SECRET key: stays on the training host; give it to the "
                  "agent: watch(..., curve_server_key=...) or $SYMWATCH_CURVE_SERVER_KEY",
                  f"  {made['server_public']}",
                  "      the server's public key: copy to every viewer "
                  "(symwatch attach ... --server-key FILE)"]
    lines += [f"  {made[name + '_secret']}",
              "      the viewer's SECRET key: stays with the viewer "
              "(symwatch attach ... --client-key FILE)",
              f"  {made['authorized']}/{name}.key",
              "      the viewer's public key, in the agent's authorised-keys directory: "
              "watch(..., curve_authorized=DIR) or $SYMWATCH_CURVE_AUTHORIZED (copy it there "
              "on the training host)"]
    print("\n".join(lines))
    return 0
