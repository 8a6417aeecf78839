"""Merged and dead units in a ReLU net: a 16 → 48 → 1 ReLU student at PyTorch's default init
fits a teacher made of 3 ReLU units (Gaussian inputs, mini-batches of 128, SGD). At mid-run
weight decay is switched on: the units the teacher does not need are pushed to zero (they die:
the sign-flip fixed point) and the survivors that point the same way merge (the permutation
fixed point)."""

from __future__ import annotations

import time

import torch
from torch import nn

from .common import RunResult, Truth, crossing_truth, recorded, single_thread

NAME = "relu_units"
STEPS = 1500
SWITCH = 500
EVERY = 5
TOL = 25
GAMMA = 0.1
LAYERS = ("net.0", "net.2")
TRUTH = (f"weight decay 0 → {GAMMA:g} at step {SWITCH}; the count of active units (unit i "
         "active when its contribution |w_out,i|·mean(relu(w_in,i·x+b_i)) on a fixed probe of "
         "2048 inputs is over 1 % of the largest unit's) falls half way from its value at the "
         "switch to its final value (extent 10 %→90 %), and likewise the count of distinct active "
         "units (greedy groups at cosine > 0.98 of [ŵ_in, b̂]); net.0 or net.2")


def _units(net: nn.Sequential, probe: torch.Tensor) -> tuple[int, int]:
    with torch.no_grad():
        w, b, w_out = net[0].weight, net[0].bias, net[2].weight[0]
        contribution = w_out.abs() * torch.relu(probe @ w.T + b).mean(dim=0)
        active = contribution > 0.01 * contribution.max()
        u = torch.cat([w, b[:, None]], dim=1)[active]
        u = u / u.norm(dim=1, keepdim=True)
        groups: list[torch.Tensor] = []
        for row in u:
            if not any(float(row @ g) > 0.98 for g in groups):
                groups.append(row)
        return int(active.sum()), len(groups)


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    switch = min(SWITCH, steps * SWITCH // STEPS)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    d, h = 16, 48
    teacher_w = torch.randn(3, d, generator=gen) / d ** 0.5 * 2
    teacher_out = torch.tensor([1.0, 1.0, 1.0])
    probe = torch.randn(2048, d, generator=gen)
    net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=0.0)
    counts: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    with recorded({"net": net}, opt, every=EVERY, name=NAME) as (agent, rec):
        for step in range(steps):
            opt.param_groups[0]["weight_decay"] = GAMMA if step >= switch else 0.0
            if step % EVERY == 0:
                counts.append((step, *_units(net, probe)))
            x = torch.randn(128, d, generator=gen)
            y = torch.relu(x @ teacher_w.T) @ teacher_out
            loss = 0.5 * (net(x)[:, 0] - y).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            agent.log(loss=loss)
            opt.step()
    seconds = time.perf_counter() - t0
    truths = [Truth(step=switch, label=f"weight decay 0 → {GAMMA:g}")]
    after = [c for c in counts if c[0] >= switch]
    for i, what in ((1, "units die"), (2, "units merge")):
        series = [(c[0], float(c[i])) for c in after]
        if series[0][1] - series[-1][1] >= 2:  # a change of at least two units
            t = crossing_truth(series, series[0][1], series[-1][1], what, layers=LAYERS,
                               in_loss=False)
            if t is not None:
                truths.append(t)
    return RunResult(NAME, steps, EVERY, TOL, truths, rec.events, rec.notices, seconds,
                     facts={"active_distinct_at_switch": after[0][1:],
                            "active_distinct_end": counts[-1][1:],
                            "series": [c for c in counts[::10]]})
