"""The small ReLU classifiers and regressors the MLP runs share (data from fixed generators)."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mixture(n_per_class: int, classes: int, dim: int, spread: float,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian class clusters around random means: (inputs, labels, means)."""
    means = torch.randn(classes, dim, generator=gen) * spread / dim ** 0.5 * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    x = means[labels] + torch.randn(len(labels), dim, generator=gen)
    return x, labels, means


def teacher_batch(teacher: nn.Module, n: int, dim: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, dim, generator=gen)
    with torch.no_grad():
        return x, teacher(x)
