"""When the stream may leave this machine in clear text, and the one refusal that says what to
type instead (docs/security.md).

Every publisher follows one rule: it binds (or, publishing to a relay, connects to) only
loopback and ipc endpoints, unless it has CurveZMQ keys or is told `insecure`. The agent
(`watch()`, `symwatch run`, `symwatch inject`) and the relay (`symwatch relay`) refuse with
`refusal(...)`, which names the keys and the insecure switch in the words of the command that
was refused: a keyword argument for `watch()`, a flag or a variable for the commands.
"""

from __future__ import annotations

from symwatch.core.runtime import is_loopback_host

ENV_INSECURE = "SYMWATCH_INSECURE"  # "1": publish on a network interface without keys

WATCH, RUN, INJECT, RELAY = "watch", "run", "inject", "relay"
LAUNCHERS = (WATCH, RUN, INJECT, RELAY)

# What to type to accept clear text, per way of starting a publisher.
_INSECURE = {
    WATCH: f"insecure=True (or {ENV_INSECURE}=1)",
    RUN: f"`symwatch run --insecure` (or {ENV_INSECURE}=1)",
    INJECT: "`symwatch inject --insecure`",
    RELAY: "`symwatch relay --insecure`",
}
# What to type to give CurveZMQ keys: (binding, connecting to a relay).
_KEYS = {
    WATCH: ("curve_server_key= and curve_authorized= (or $SYMWATCH_CURVE_SERVER_KEY and "
            "$SYMWATCH_CURVE_AUTHORIZED)",
            "$SYMWATCH_CURVE_RELAY_KEY (the relay's public key) and $SYMWATCH_CURVE_CLIENT_KEY "
            "(this agent's secret key)"),
    RUN: ("`symwatch run --server-key SERVER.key_secret --authorized DIR`",
          "`symwatch run --connect ... --server-key RELAY.key --client-key CLIENT.key_secret`"),
    INJECT: ("`symwatch inject --server-key SERVER.key_secret --authorized DIR`",
             "`symwatch inject --connect ... --server-key RELAY.key "
             "--client-key CLIENT.key_secret`"),
    RELAY: ("`symwatch relay --server-key SERVER.key_secret --authorized DIR`",
            "`symwatch relay --server-key SERVER.key_secret --authorized DIR`"),
}


def truthy(text: str | None) -> bool:
    """A yes/no environment variable: 1, true, yes, on (any case) are yes; anything else no."""
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def tcp_host(endpoint: str) -> str | None:
    """The host of a tcp:// endpoint (None for anything else)."""
    if not endpoint.startswith("tcp://"):
        return None
    return endpoint[len("tcp://"):].rpartition(":")[0] or None


def exposed(endpoint: str) -> bool:
    """True when `endpoint` is reachable from other hosts: tcp:// on anything but loopback."""
    host = tcp_host(endpoint)
    return host is not None and not is_loopback_host(host)


def refusal(host: str, *, launcher: str = WATCH, connect: bool = False) -> str:
    """The message refusing to publish on (or, `connect`, to a relay at) `host` in clear text,
    saying what to type for `launcher` (one of LAUNCHERS)."""
    launcher = launcher if launcher in _INSECURE else WATCH
    keys = _KEYS[launcher][1 if connect else 0]
    if connect:
        what = f"refusing to send the stream in clear text to {host!r}"
        ssh = "reach the relay through an SSH tunnel on 127.0.0.1"
    elif launcher == RELAY:
        what = f"refusing to bind {host!r} without encryption"
        ssh = "use 127.0.0.1 with SSH tunnels"
    else:
        what = (f"refusing to publish on {host!r}: only loopback (127.0.0.1) and ipc:// "
                "endpoints are private")
        ssh = "view remote runs through SSH"
    return (f"{what}; {ssh}, give CurveZMQ keys (`symwatch keygen`; {keys}), or pass "
            f"{_INSECURE[launcher]} if you accept that anyone who can reach it reads the stream")


def check(endpoint: str, *, secured: bool, insecure: bool, launcher: str = WATCH,
          connect: bool = False) -> str | None:
    """The refusal for publishing on (or to) `endpoint`, or None when it is allowed."""
    if secured or insecure or not exposed(endpoint):
        return None
    return refusal(tcp_host(endpoint) or endpoint, launcher=launcher, connect=connect)
