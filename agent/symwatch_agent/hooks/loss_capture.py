"""Capture the loss without code changes: the scalar on which `.backward()` is called.

`torch.Tensor.backward` is wrapped once, process-wide, while at least one agent listens. The
wrapper keeps a detached reference to the scalar (no copy, no device sync) and calls the
original; whatever happens in a listener, the user's backward runs exactly as before.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import torch

Listener = Callable[[torch.Tensor], None]

_lock = threading.Lock()
_listeners: list[Listener] = []
_original_backward: Any = None
# The wrapper's own time, every call so far (seconds): ~2 µs a call, which each listening
# agent charges to its budget (Agent._on_step), a real share of a 1 ms step's 1 %.
spent_s = 0.0


def _backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    global spent_s
    began = time.perf_counter()
    if self.numel() == 1 and _listeners:
        detached = self.detach()
        for listener in list(_listeners):
            try:
                listener(detached)
            except Exception:  # a listener must never break the user's backward
                pass
    spent_s += time.perf_counter() - began
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


# -- labels: the targets `cross_entropy` is called with ------------------------------------------
#
# `torch.nn.functional.cross_entropy` is wrapped only while a listener waits (an agent armed for
# the forward of a sampled step, hooks/activations.py): between samples the user's loss runs the
# original function, with no wrapper in between. `nn.CrossEntropyLoss` looks the function up
# on every call, so it is seen; a name bound before arming (`from torch.nn.functional import
# cross_entropy`) is not, and `Agent.log(labels=…)` gives the labels instead. A caller that
# bound the wrapper itself keeps working after it is removed (the original is never dropped).

LabelListener = Callable[[torch.Tensor, Any], None]

_label_listeners: list[LabelListener] = []
_original_cross_entropy: Any = None


def _cross_entropy(input: torch.Tensor, target: Any, *args: Any, **kwargs: Any) -> Any:
    if _label_listeners and isinstance(input, torch.Tensor):
        for listener in list(_label_listeners):
            try:
                listener(input, target)
            except Exception:  # a listener must never break the user's loss
                pass
    return _original_cross_entropy(input, target, *args, **kwargs)


def add_label_listener(listener: LabelListener) -> None:
    global _original_cross_entropy
    with _lock:
        if _original_cross_entropy is None:
            _original_cross_entropy = torch.nn.functional.cross_entropy
        if torch.nn.functional.cross_entropy is not _cross_entropy:
            torch.nn.functional.cross_entropy = _cross_entropy
        if listener not in _label_listeners:
            _label_listeners.append(listener)


def remove_label_listener(listener: LabelListener) -> None:
    with _lock:
        if listener in _label_listeners:
            _label_listeners.remove(listener)
        if not _label_listeners and torch.nn.functional.cross_entropy is _cross_entropy:
            torch.nn.functional.cross_entropy = _original_cross_entropy
