"""symwatch: watch parameter-symmetry breaking and restoration in live PyTorch training runs.

`symwatch.watch(model, optimizer)` is the two-line integration; it forwards to the in-process
agent (`symwatch_agent`), imported lazily so that the observer side (CLI, TUI) never needs torch.
"""

from __future__ import annotations

from typing import Any

from symwatch.core.version import __version__


def watch(model: Any, optimizer: Any = None, **options: Any) -> Any:
    """Start the agent on `model` (and hook `optimizer`); returns a handle that is also a context
    manager. See `symwatch_agent.watch` for the options."""
    from symwatch_agent import watch as agent_watch  # noqa: PLC0415 (lazy: torch, only on use)

    return agent_watch(model, optimizer, **options)


__all__ = ["watch", "__version__"]
