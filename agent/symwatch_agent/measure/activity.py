"""Dead ReLU units: units whose ReLU output is zero on every example of a sampled batch.

For each layer whose output goes through a ReLU-family activation (ReLU, ReLU6; found by
pairing.py), `arm()` registers a forward hook at a sample step; the hook fires on the next
forward pass, records per unit whether any pre-activation was > 0, and removes itself at once.
The next sample publishes `relu_dead` = fraction of units never active. Not sampling costs
nothing: no hook is registered between that forward and the next sample. The hook's own cost
is one comparison and one reduction over the layer's output, on the training stream.

LeakyReLU is left out (its units never output exactly 0: it has no dead state), and so are
GELU/SiLU (a unit far in their negative tail is nearly but not exactly off; dead_fraction's
weight-based test covers collapsed units for every activation).
"""

from __future__ import annotations

from typing import Any

import torch

from symwatch_agent.measure.layers import CONV, NORM, Layer


class ActivityProbe:
    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self._handles: dict[int, Any] = {}
        self.pending: dict[int, torch.Tensor] = {}  # layer index -> (units,) bool "ever active"

    def arm(self) -> None:
        """Hook every ReLU-fed layer for its next forward call (no-op if already armed)."""
        for i, layer in enumerate(self.layers):
            if layer.relu and i not in self._handles:
                self._handles[i] = layer.module.register_forward_hook(self._hook_for(i))

    def _hook_for(self, i: int) -> Any:
        layer = self.layers[i]
        unit_dim = 1 if layer.kind == CONV or (layer.kind == NORM and layer.norm_scope == "channel") \
            else -1

        def hook(module: Any, args: Any, output: Any) -> None:
            handle = self._handles.pop(i, None)
            if handle is not None:
                handle.remove()
            try:
                # invisible to torch-function modes (e.g. the pairing tracer) and subclasses
                with torch._C.DisableTorchFunction():
                    self._record(i, output, unit_dim)
            except Exception:
                pass  # a probe must never break the forward pass
        return hook

    def _record(self, i: int, output: Any, unit_dim: int) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            return
        d = unit_dim if out.dim() > 1 else 0
        moved = out.detach().movedim(d, 0).reshape(out.shape[d], -1)
        if moved.shape[0] == self.layers[i].units:
            self.pending[i] = (moved > 0).any(1)

    def take(self) -> dict[int, torch.Tensor]:
        pending, self.pending = self.pending, {}
        return pending

    @property
    def armed(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self.pending.clear()
