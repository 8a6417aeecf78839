"""Capture the loss without code changes: the scalar on which `.backward()` is called.

`torch.Tensor.backward` is wrapped once, process-wide, while at least one agent listens. The
wrapper keeps a detached reference to the scalar (no copy, no device sync) and calls the
original; whatever happens in a listener, the user's backward runs exactly as before.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

Listener = Callable[[torch.Tensor], None]

_lock = threading.Lock()
_listeners: list[Listener] = []
_original_backward: Any = None


def _backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    if self.numel() == 1 and _listeners:
        detached = self.detach()
        for listener in list(_listeners):
            try:
                listener(detached)
            except Exception:  # a listener must never break the user's backward
                pass
    return _original_backward(self, *args, **kwargs)


def add_listener(listener: Listener) -> None:
    global _original_backward
    with _lock:
        if _original_backward is None:
            _original_backward = torch.Tensor.backward
            torch.Tensor.backward = _backward  # type: ignore[method-assign]
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    global _original_backward
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        if not _listeners and _original_backward is not None:
            torch.Tensor.backward = _original_backward  # type: ignore[method-assign]
            _original_backward = None
