"""effective_lr per optimizer family, against what real torch optimizers do to a scale-invariant
layer (a Linear feeding a LayerNorm): its angular update per step is proportional to η/‖w‖²
under SGD and to η/‖w‖ under the Adam family, and effective_lr must follow the same law.

The check: two copies of one model, the second with the layer's [W, b] scaled by c and the
learning rate scaled so that the family's effective_lr is the same in both. The LayerNorm makes
the function identical, so the two directions then follow the same trajectory: the angular
updates agree step by step, and so must effective_lr. With the other family's law the two
effective_lrs would differ by a factor c.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from symwatch_agent.measure import units
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP

C = 4.0  # scale of the second copy's layer


def _run(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[dict[str, float]]:
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers, optimizers=[opt])
    engine.attach({"": model})  # the first forward pass pairs the Linear with the norm
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model(torch.randn(2, 8))
    out = []
    engine.compute(CHEAP)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randn(32, 1, generator=gen)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
        values, _ = engine.decode(engine.compute(CHEAP).tolist())
        out.append(values["0"])
    return out


def _pair(make_opt, power: int, steps: int = 6):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16),
                         nn.Linear(16, 1))
    scaled = copy.deepcopy(base)
    with torch.no_grad():
        scaled[0].weight.mul_(C)
        scaled[0].bias.mul_(C)
    lr = 1e-2
    rest = [*base[1].parameters(), *base[2].parameters()]
    one = _run(base, make_opt([{"params": base[0].parameters(), "lr": lr},
                               {"params": rest, "lr": lr}]), steps)
    rest = [*scaled[1].parameters(), *scaled[2].parameters()]
    two = _run(scaled, make_opt([{"params": scaled[0].parameters(), "lr": lr * C ** power},
                                 {"params": rest, "lr": lr}]), steps)
    return one, two


FAMILIES = [
    (lambda g: torch.optim.SGD(g), 2),
    (lambda g: torch.optim.SGD(g, momentum=0.9), 2),
    (lambda g: torch.optim.Adam(g), 1),
    (lambda g: torch.optim.AdamW(g, weight_decay=0.0), 1),
    (lambda g: torch.optim.NAdam(g), 1),
    (lambda g: torch.optim.Adamax(g), 1),
    (lambda g: torch.optim.RMSprop(g), 1),
    (lambda g: torch.optim.Adagrad(g), 1),
]


@pytest.mark.parametrize("make_opt,power", FAMILIES,
                         ids=["sgd", "sgd-momentum", "adam", "adamw", "nadam", "adamax",
                              "rmsprop", "adagrad"])
def test_equal_effective_lr_means_equal_angular_update(make_opt, power):
    one, two = _pair(make_opt, power)
    for a, b in zip(one[1:], two[1:]):  # from the second step on: angles between samples
        assert b["angular_update"] == pytest.approx(a["angular_update"], rel=2e-2)
        assert b["effective_lr"] == pytest.approx(a["effective_lr"], rel=2e-2)
    assert one[-1]["angular_update"] > 0


@pytest.mark.parametrize("make_opt,power", [(lambda g: torch.optim.SGD(g), 2),
                                            (lambda g: torch.optim.Adam(g), 1)],
                         ids=["sgd", "adam"])
def test_angular_update_is_proportional_to_effective_lr_at_one_lr(make_opt, power):
    """The same η on both copies: the angle per step shrinks by C^power, as effective_lr."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16),
                         nn.Linear(16, 1))
    scaled = copy.deepcopy(base)
    with torch.no_grad():
        scaled[0].weight.mul_(C)
        scaled[0].bias.mul_(C)
    one = _run(base, make_opt(base.parameters()), 1)[0]
    two = _run(scaled, make_opt(scaled.parameters()), 1)[0]
    angle_ratio = one["angular_update"] / two["angular_update"]
    lr_ratio = one["effective_lr"] / two["effective_lr"]
    assert lr_ratio == pytest.approx(C ** power, rel=1e-3)
    assert angle_ratio == pytest.approx(lr_ratio, rel=5e-2)


def test_lr_power_by_family():
    p = [nn.Parameter(torch.zeros(1))]
    assert units.lr_power(torch.optim.SGD(p, lr=0.1)) == 2
    for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam,
                torch.optim.Adamax):
        assert units.lr_power(cls(p)) == 1

    class FusedAdamLike(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 1e-3})

    assert units.lr_power(FusedAdamLike(p)) == 1
    assert units.lr_power(torch.optim.LBFGS(p)) is None
