"""`SymwatchCallback` for the standalone `pytorch_lightning` package: the same callback as
`lightning.py` (see there), built on `pytorch_lightning.Callback`, which a
`pytorch_lightning.Trainer` requires. pytorch_lightning is imported on first lookup."""

from __future__ import annotations

from typing import Any

from symwatch_agent.entry.integrations.lightning import build_callback

__all__ = ["SymwatchCallback"]  # noqa: F822 - made on first use, by __getattr__


def __getattr__(name: str) -> Any:
    if name == "SymwatchCallback":
        cls = build_callback("pytorch_lightning")
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
