"""Weight-decay restoration: the small-init linear staircase (24 → 24 → 24, N(0, 1e-3²),
whitened inputs, teacher singular values 6, 3, 1.2, 0.6, gradient descent) learns every mode;
then weight decay γ = 1.5 is switched on. A mode with s < γ is pushed back to the symmetric
state (its strength → 0: the mode is lost), the others shrink to s − γ."""

from __future__ import annotations

import time

import torch

from .common import (
    RunResult,
    Truth,
    crossing_truth,
    linear_teacher,
    recorded,
    single_thread,
    teacher_modes,
)

NAME = "wd_restoration"
STEPS = 700
SWITCH = 400
EVERY = 2
TOL = 10
GAMMA = 1.5
LAYERS = ("net.0", "net.1")
TRUTH = (f"modes learned as in saxe_staircase (before step {SWITCH}); weight decay switched on "
         f"at step {SWITCH} (any layer or the loss, within the tolerance after it); one per mode "
         f"with s < γ = {GAMMA}: a_k falls half way from its value at the switch to 0 (extent "
         "10 %→90 %), either layer")


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    switch = min(SWITCH, steps * SWITCH // STEPS)
    d, s = 24, torch.tensor([6.0, 3.0, 1.2, 0.6])
    net, target, u, v, _ = linear_teacher(d, s, seed, init_std=1e-3)
    opt = torch.optim.SGD(net.parameters(), lr=0.03, weight_decay=0.0)
    modes: list[list[float]] = []
    t0 = time.perf_counter()
    with recorded({"net": net}, opt, every=EVERY, name=NAME) as (agent, rec):
        for step in range(steps):
            opt.param_groups[0]["weight_decay"] = GAMMA if step >= switch else 0.0
            w = net(torch.eye(d)).T
            loss = 0.5 * (w - target).square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            agent.log(loss=loss)
            modes.append(teacher_modes(w.detach(), u, v))
            opt.step()
    seconds = time.perf_counter() - t0
    truths = []
    for k, sk in enumerate(s.tolist()):
        series = [(step, a[k]) for step, a in enumerate(modes)]
        t = crossing_truth(series[:switch], 0.0, sk, f"mode {k + 1} (s={sk:g}) learned",
                           layers=LAYERS)
        if t is not None:
            truths.append(t)
        if sk < GAMMA:
            t = crossing_truth(series[switch:], series[switch][1], 0.0,
                               f"mode {k + 1} (s={sk:g}) lost", layers=LAYERS)
            if t is not None:
                truths.append(t)
    truths.append(Truth(step=switch, label=f"weight decay 0 → {GAMMA:g}"))
    return RunResult(NAME, steps, EVERY, TOL, sorted(truths, key=lambda t: t.step), rec.events,
                     rec.notices, seconds,
                     facts={"modes_at_switch": [round(x, 3) for x in modes[switch]],
                            "final_modes": [round(x, 3) for x in modes[-1]]})
