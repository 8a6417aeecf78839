"""`SymwatchCallback` for `transformers.Trainer`; the implementation is
`symwatch_agent.entry.integrations.transformers`, imported (with torch and the framework) on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["SymwatchCallback"]


def __getattr__(name: str) -> Any:
    import importlib

    return getattr(importlib.import_module("symwatch_agent.entry.integrations.transformers"), name)
