"""The big connection banner: waiting for a run, disconnected (stale), or finished."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from symwatch.state import numbers
from symwatch.state.run_state import FINISHED, RECONNECTING, STALE, WAITING, RunState


def banner_text(state: RunState, connection: str, *, endpoint: str,
                silent_for: float | None) -> Text:
    text = Text(justify="center")
    if connection == WAITING:
        text.append(f"Waiting for {endpoint}…\n\n", "bold")
        text.append("No message yet. Start a run with `symwatch demo`, or call "
                    "`symwatch.watch(model, optimizer)` in your training script.\n", "dim")
        text.append("A run that is already going shows up within a second (its heartbeat).",
                    "dim")
    elif connection == RECONNECTING:
        quiet = numbers.duration(silent_for or 0.0)
        text.append(f"Reconnecting to {endpoint}… the connection dropped "
                    f"(last message {quiet} ago)\n", "bold")
        step = f"step {state.step:,}" if state.step is not None else "no step yet"
        text.append(f"Showing the last known values ({step}). A restarted run continues "
                    "here; a new run id starts afresh in this view.", "dim")
    elif connection == STALE:
        quiet = numbers.duration(silent_for or 0.0)
        text.append(f"Disconnected — no message from {endpoint} for {quiet}\n", "bold")
        step = f"step {state.step:,}" if state.step is not None else "no step yet"
        text.append(f"Showing the last known values ({step}). The run may be stuck, paused in a "
                    "debugger, or gone.", "dim")
    elif connection == FINISHED:
        reason = state.goodbye_reason or "ended"
        code = "" if state.exit_code is None else f", exit code {state.exit_code}"
        step = f" at step {state.step:,}" if state.step is not None else ""
        text.append(f"Run finished: {reason}{code}{step}", "bold")
        text.append("   — press q to quit", "dim")
    return text


class ConnectionBanner(Static):
    """Hidden while live; the app sets a class per state so the stylesheet sizes and colours it."""

    def show(self, state: RunState, connection: str, *, endpoint: str,
             silent_for: float | None) -> None:
        for name in (WAITING, STALE, FINISHED):  # reconnecting looks like stale
            self.set_class(connection == name or (name == STALE and connection == RECONNECTING),
                           f"-{name}")
        self.display = connection in (WAITING, STALE, RECONNECTING, FINISHED)
        if self.display:
            self.update(banner_text(state, connection, endpoint=endpoint, silent_for=silent_for))
