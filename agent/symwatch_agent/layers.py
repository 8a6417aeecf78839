"""Discover the layers the agent measures and describe each as a matrix (rows = units)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

# Layer types the foundation indicators understand. A Conv's weight (out, in/groups, *k) is read
# as the matrix (out, in/groups·∏k): one row per output channel, i.e. per unit.
MEASURED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Layer:
    """One measured layer: where its weights live and which layer reads its output."""

    name: str
    module: nn.Module
    weight: torch.Tensor  # the Parameter itself, never a copy
    bias: torch.Tensor | None
    # The weight of the next layer when it consumes this layer's units directly (same model,
    # next in module order, input width == this layer's output width, no groups). Its columns
    # are each unit's outgoing weights, which the dead-unit test needs.
    next_weight: torch.Tensor | None = None

    @property
    def type_name(self) -> str:
        return type(self.module).__name__

    @property
    def matrix_shape(self) -> tuple[int, int]:
        out = self.weight.shape[0]
        return out, math.prod(self.weight.shape[1:])

    def describe(self) -> dict[str, object]:
        """This layer's row in the META layer table."""
        params = self.weight.numel() + (self.bias.numel() if self.bias is not None else 0)
        return {"name": self.name, "type": self.type_name, "shape": list(self.weight.shape),
                "params": int(params)}


def _input_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1:
        return module.in_channels
    return None


def discover(models: Mapping[str, nn.Module]) -> tuple[list[Layer], list[str]]:
    """Find every measurable layer of every model, in module order.

    Returns the layers and the names of modules that own parameters of a type we do not
    measure yet (reported in META so a user sees what is not covered, rather than silence).
    With several models, layer names are prefixed by the model's name.
    """
    layers: list[Layer] = []
    skipped: list[str] = []
    for model_name, model in models.items():
        model_layers: list[Layer] = []
        for name, module in model.named_modules():
            full = f"{model_name}.{name}" if model_name and name else (name or model_name or "model")
            weight = getattr(module, "weight", None)
            if isinstance(module, MEASURED_TYPES) and isinstance(weight, torch.Tensor):
                bias = getattr(module, "bias", None)
                model_layers.append(Layer(full, module, weight,
                                          bias if isinstance(bias, torch.Tensor) else None))
            elif any(True for _ in module.parameters(recurse=False)):
                skipped.append(f"{full} ({type(module).__name__})")
        for layer, following in zip(model_layers, model_layers[1:]):
            if _input_width(following.module) == layer.matrix_shape[0]:
                layer.next_weight = following.weight
        layers.extend(model_layers)
    return layers, skipped
