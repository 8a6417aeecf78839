"""A classifier reaching neural collapse: a 32 → 128 → 128 → 10 ReLU MLP (default init) trained
full-batch on 10 Gaussian clusters (20 points each) with the MSE loss on one-hot targets (the
setting of Han, Papyan & Donoho 2022, where collapse comes quickly), SGD lr 0.05, momentum 0.9,
weight decay 5e-3, long past 100 % training accuracy: the penultimate features of each class
collapse to their class mean (NC1 falls from ~1 to ~10⁻²·⁵)."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ._mlp import mixture, mlp
from .common import RunResult, Truth, recorded, single_thread

NAME = "neural_collapse"
STEPS = 1500
EVERY = 2
TOL = 20
LAYERS = ("net.2", "net.4")
TRUTH = ("two truths, on net.2 or net.4 (the penultimate layer and the classifier) or the loss: "
         "interpolation, the first step with 100 % training accuracy (the terminal phase begins); "
         "collapse, the step NC1 = Tr(Σ_W Σ_B⁺)/C of the training set's penultimate features falls "
         "under 10⁻², extent from 10⁻¹·⁵ to 10⁻²·⁵ (the run's end where it does not get there)")


def nc1(features: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    mu = features.mean(dim=0)
    means = torch.stack([features[labels == c].mean(dim=0) for c in range(classes)])
    within = features - means[labels]
    sigma_w = within.T @ within / len(features)
    between = means - mu
    sigma_b = between.T @ between / classes
    return float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / classes)


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    x, y, _ = mixture(20, 10, 32, 1.0, gen)
    targets = nn.functional.one_hot(y, 10).float()
    net = mlp((32, 128, 128, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    series: list[tuple[int, float]] = []
    accuracy: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    with recorded({"net": net}, opt, every=EVERY, name=NAME) as (agent, rec):
        for step in range(steps):
            if step % 10 == 0:  # NC1 needs a pseudo-inverse: every 10 steps is enough
                with torch.no_grad():
                    feats = net[:4](x)
                    series.append((step, math.log10(nc1(feats, y, 10))))
                    accuracy.append((step, float((net[4](feats).argmax(1) == y).float().mean())))
            loss = (net(x) - targets).square().sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            agent.log(loss=loss)
            opt.step()
    seconds = time.perf_counter() - t0
    truths = []
    full = next((s for s, a in accuracy if a >= 1.0), None)
    if full is not None:
        truths.append(Truth(step=full, label="interpolation (100 % train accuracy)",
                            layers=LAYERS))
    at = next((s for s, v in series if v <= -2.0), None)
    if at is not None:
        lo = next(s for s, v in series if v <= -1.5)
        hi = next((s for s, v in series if v <= -2.5), series[-1][0])
        truths.append(Truth(step=at, label="collapse (NC1 < 10⁻²)", lo=lo, hi=hi,
                            layers=LAYERS))
    return RunResult(NAME, steps, EVERY, TOL, truths, rec.events, rec.notices, seconds,
                     facts={"log10_nc1": [(s, round(v, 2)) for s, v in series[::30]]})
