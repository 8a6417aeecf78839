"""CurveZMQ keys on the observer side: making them (`symwatch keygen`, whose command line is
symwatch/cli/keygen.py), and the client settings of
`symwatch attach --server-key FILE --client-key FILE` (docs/security.md)."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    import zmq.auth  # noqa: PLC0415 (lazy: ~7 ms; every command imports this module, few load keys)

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


def load_server(server_key: str | os.PathLike[str], authorized: str | os.PathLike[str], *,
                what: str = "server key") -> tuple[bytes, bytes]:
    """Check an agent's CURVE server settings before it starts (`symwatch run`, `symwatch
    inject` with --server-key and --authorized): the secret key file is private and holds a
    secret key, the directory holds public keys; also the relay's. Returns the key pair;
    KeyFileError says what is wrong (`what` names the key in the message)."""
    import zmq.auth  # noqa: PLC0415 (lazy: ~7 ms; every command imports this module, few load keys)

    server_key, authorized = os.fspath(server_key), os.fspath(authorized)
    try:
        mode = stat.S_IMODE(os.stat(server_key).st_mode)
        public, secret = zmq.auth.load_certificate(server_key)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the {what} {server_key}: {exc}") from None
    if mode & 0o077:
        raise KeyFileError(f"the secret key {server_key} is readable by others (mode {mode:o}); "
                           "chmod 600 it")
    if not secret:
        raise KeyFileError(f"{server_key} holds no secret key: pass a *.key_secret file")
    if not os.path.isdir(authorized) or not any(n.endswith(".key")
                                                for n in os.listdir(authorized)):
        raise KeyFileError(f"no public keys (*.key) in {authorized}: nobody could connect")
    return public, secret


def keygen(folder: str | os.PathLike[str], *, client: str = "client",
           server: bool = True) -> dict[str, Path]:
    """Make a server pair (unless `server` is False) and a client pair named `client` in
    `folder` (0700), secret files 0600, the client's public key also copied into
    `folder/authorized/`. Never overwrites an existing key."""
    import zmq.auth  # noqa: PLC0415 (lazy: ~7 ms; only `symwatch keygen` makes keys)

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
