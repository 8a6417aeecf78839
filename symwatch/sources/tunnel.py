"""TunnelFeed: a live source on a run of another machine, through an ssh Tunnel
(symwatch.transport.ssh)."""

from __future__ import annotations

from typing import Any

from symwatch.transport.ssh import Tunnel
from symwatch.transport.subscriber import BackgroundFeed


class TunnelFeed(BackgroundFeed):
    """A BackgroundFeed on a Tunnel's local endpoints that owns the tunnel: `close()` ends
    both; while ssh reconnects, `last_error` says so (the TUI's banner shows it)."""

    def __init__(self, tunnel: Tunnel, **options: Any) -> None:
        self.tunnel = tunnel
        # what the TUI's header shows instead of the local forwarded socket
        self.where = tunnel.target.url(tunnel.entry.run_id)
        super().__init__(tunnel.endpoint, history_endpoint=tunnel.history_endpoint, **options)

    @property
    def last_error(self) -> str | None:
        if self.tunnel.state.startswith("reconnecting"):
            return f"ssh {self.tunnel.target.label}: {self.tunnel.state}"
        return super().last_error

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        self.tunnel.close()
