"""symwatch: watch parameter-symmetry breaking and restoration in live PyTorch training runs.

`symwatch.watch(model, optimizer)` is the two-line integration; it forwards to the in-process
agent (`symwatch_agent`), imported lazily so that the observer side (CLI, TUI) never needs torch.
"""

from __future__ import annotations

from typing import Any

from symwatch.core.version import __version__

AGENT_NEEDS = ("torch", "numpy", "pynvml")  # the `agent` extra's modules

def watch(model: Any, optimizer: Any = None, **options: Any) -> Any:
    """Start the agent on `model` (and hook `optimizer`); returns a handle that is also a context
    manager. See `symwatch_agent.watch` for the options."""
    try:
        from symwatch_agent import watch as agent_watch  # noqa: PLC0415 (lazy: torch, only on use)
    except ModuleNotFoundError as exc:
        if exc.name not in AGENT_NEEDS:
            raise
        raise ModuleNotFoundError(
            f"symwatch.watch() runs the agent in this training process, which needs "
            f"{exc.name} (not installed here: this is the viewer-only install). Install the "
            "agent's extra: pip install torch==2.13.0 && pip install 'symwatch[agent]' "
            "(torch first, or pip fetches a multi-GB CUDA build)", name=exc.name) from None
    return agent_watch(model, optimizer, **options)


__all__ = ["watch", "__version__"]
