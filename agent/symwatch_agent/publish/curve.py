"""CurveZMQ on the agent's sockets: encryption, and only the listed viewers may connect.

Needed to publish on anything but loopback or a Unix socket (docs/security.md). The agent
holds the server's secret key (a file made by `symwatch keygen`, mode 0600) and a directory of
authorised client public keys; a ZAP authenticator thread (pyzmq's ThreadAuthenticator) in
the agent admits a connecting viewer only if its public key is in that directory. Viewers pin
the server's public key, so they cannot be talked to by an impostor either.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class CurveError(ValueError):
    """Keys that cannot be used (missing, unreadable, readable by others, no secret)."""


@dataclass(frozen=True)
class CurveServer:
    public: bytes
    secret: bytes
    authorized: str  # directory of client public certificates (*.key)

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server (before bind)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def authenticator(self, ctx: zmq.Context) -> Any:
        """A started ZAP handler admitting only the authorised client keys; stop() it after
        the sockets are closed. The key directory is read now (restart to add a key)."""
        auth = ThreadAuthenticator(ctx, log=_QuietLog())
        auth.start()
        auth.configure_curve(domain="*", location=self.authorized)
        return auth


def load_server(server_key: str | os.PathLike[str] | None = None,
                authorized: str | os.PathLike[str] | None = None) -> CurveServer | None:
    """The CURVE settings: `server_key` and `authorized` as given, or as AgentOptions found
    them in $SYMWATCH_CURVE_SERVER_KEY and $SYMWATCH_CURVE_AUTHORIZED; None when neither names
    a server key. Raises CurveError for keys that are given but unusable."""
    key, folder = server_key, authorized
    if key is None and folder is None:
        return None
    if key is None or folder is None:
        raise CurveError("CurveZMQ needs both a server secret key (curve_server_key= or "
                         "$SYMWATCH_CURVE_SERVER_KEY) and a directory of authorised client keys "
                         "(curve_authorized= or $SYMWATCH_CURVE_AUTHORIZED); run `symwatch "
                         "keygen`")
    key, folder = os.fspath(key), os.fspath(folder)
    public, secret = _load_secret(key)
    if not os.path.isdir(folder):
        raise CurveError(f"authorised keys directory {folder} does not exist")
    if not any(name.endswith(".key") for name in os.listdir(folder)):
        raise CurveError(f"no client public keys (*.key) in {folder}: nobody could connect")
    return CurveServer(public=public, secret=secret, authorized=folder)


def _load_secret(path: str) -> tuple[bytes, bytes]:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CurveError(f"cannot read the server key {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise CurveError(f"the secret key {path} is readable by others "
                         f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot load the server key {path}: {exc}") from None
    if not secret or not public:
        raise CurveError(f"{path} holds no secret key: pass the server's *.key_secret file")
    return public, secret


@dataclass(frozen=True)
class CurveClient:
    """The agent as a CURVE client of a relay: the relay's public key pinned, its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client (before connect)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    def authenticator(self, ctx: zmq.Context) -> None:
        return None  # the relay (the server) authenticates; a client has nothing to check


def load_relay_client(relay_key: str | os.PathLike[str] | None = None,
                      client_key: str | os.PathLike[str] | None = None) -> CurveClient | None:
    """The CURVE settings to publish to a relay that requires keys (`symwatch relay
    --server-key/--authorized`): the relay's public key and this agent's secret key, as
    AgentOptions found them in $SYMWATCH_CURVE_RELAY_KEY and $SYMWATCH_CURVE_CLIENT_KEY; None
    when neither is given."""
    relay, mine = relay_key, client_key
    if relay is None and mine is None:
        return None
    if relay is None or mine is None:
        raise CurveError("publishing to a relay with CurveZMQ needs both the relay's public key "
                         "($SYMWATCH_CURVE_RELAY_KEY) and this agent's secret key "
                         "($SYMWATCH_CURVE_CLIENT_KEY); run `symwatch keygen`")
    try:
        server_public, _ = zmq.auth.load_certificate(os.fspath(relay))
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot load the relay's public key {relay}: {exc}") from None
    public, secret = _load_secret(os.fspath(mine))
    return CurveClient(server_public=server_public, public=public, secret=secret)


class _QuietLog:
    """The authenticator logs every denial at DEBUG; nothing reaches the user's logging."""

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    info = warning = error = exception = debug
