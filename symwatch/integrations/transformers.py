"""`SymwatchCallback` for `transformers.Trainer`; the implementation is
`symwatch_agent.entry.integrations.transformers`, imported (with torch and the framework) on first use."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SymwatchCallback"]  # noqa: F822 - made on first use, by __getattr__


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module("symwatch_agent.entry.integrations.transformers"), name)
