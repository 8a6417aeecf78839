"""CurveZMQ keys on the observer side: `symwatch keygen`, and the client settings of
`symwatch attach --server-key FILE --client-key FILE` (docs/security.md)."""

from __future__ import annotations

import argparse
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zmq


class KeyFileError(ValueError):
    """Keys that cannot be used; shown to the user as one line."""


@dataclass(frozen=True)
class CurveClient:
    """A viewer's CURVE settings: the pinned server public key and the viewer's own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make `sock` a CURVE client (before connect)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def load_client(server_key: str | os.PathLike[str],
                client_key: str | os.PathLike[str]) -> CurveClient:
    """Read the server's public key file and this viewer's secret key file."""
    import zmq.auth

    server_key, client_key = os.fspath(server_key), os.fspath(client_key)
    try:
        server_public, _ = zmq.auth.load_certificate(server_key)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the server key {server_key}: {exc}") from None
    try:
        mode = stat.S_IMODE(os.stat(client_key).st_mode)
    except OSError as exc:
        raise KeyFileError(f"cannot read the client key {client_key}: {exc.strerror}") from None
    if mode & 0o077:
        raise KeyFileError(f"the secret key {client_key} is readable by others (mode {mode:o}); "
                        "chmod 600 it")
    try:
        public, secret = zmq.auth.load_certificate(client_key)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the client key {client_key}: {exc}") from None
    if not secret:
        raise KeyFileError(f"{client_key} holds no secret key: pass your *.key_secret file")
    if not server_public:
        raise KeyFileError(f"{server_key} holds no public key")
    return CurveClient(server_public=server_public, public=public, secret=secret)


def keygen(folder: str | os.PathLike[str], *, client: str = "client",
           server: bool = True) -> dict[str, Path]:
    """Make a server pair (unless `server` is False) and a client pair named `client` in
    `folder` (0700), secret files 0600, the client's public key also copied into
    `folder/authorized/`. Never overwrites an existing key."""
    import zmq.auth

    root = Path(folder)
    names = (["server"] if server else []) + [client]
    for name in names:
        for suffix in (".key", ".key_secret"):
            if (root / f"{name}{suffix}").exists():
                raise KeyFileError(f"{root / (name + suffix)} exists; not overwriting a key "
                                "(choose another directory or --client NAME)")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    authorized = root / "authorized"
    authorized.mkdir(mode=0o700, exist_ok=True)
    old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        made: dict[str, Path] = {}
        for name in names:
            public, secret = zmq.auth.create_certificates(str(root), name)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
            made[f"{name}_public"], made[f"{name}_secret"] = Path(public), Path(secret)
        shutil.copyfile(made[f"{client}_public"], authorized / f"{client}.key")
        made["authorized"] = authorized
    finally:
        os.umask(old)
    return made


# -- the `symwatch keygen` command ---------------------------------------------------------------

def add_keygen_parser(subs: Any, subparser: Callable[..., Any]) -> None:
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
    from symwatch.cli.main import UserError

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
