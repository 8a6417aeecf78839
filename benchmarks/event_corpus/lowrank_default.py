"""Default-init low-rank teacher: a two-layer linear net 64 → 64 → 64 at PyTorch's default
(Kaiming-uniform) init, Gaussian inputs in mini-batches of 128, a rank-4 teacher with singular
values 4, 2, 1, 0.5 plus label noise 0.1, SGD. No plateau to speak of: the modes are learned
fastest-first from where the random init put them."""

from __future__ import annotations

import time

import torch

from .common import (
    RunResult,
    linear_teacher,
    mode_truths,
    recorded,
    single_thread,
    teacher_modes,
)

NAME = "lowrank_default"
STEPS = 1500
EVERY = 2
TOL = 20
LAYERS = ("net.0", "net.1")
TRUTH = ("one per teacher mode k: a_k = u_kᵀW₂W₁v_k crosses half way from its initial value to "
         "s_k; extent 10 %→90 %; either layer, or the loss")


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    d, s = 64, torch.tensor([4.0, 2.0, 1.0, 0.5])
    net, target, u, v, gen = linear_teacher(d, s, seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.004)
    modes: list[list[float]] = []
    t0 = time.perf_counter()
    with recorded({"net": net}, opt, every=EVERY, name=NAME) as (agent, rec):
        for _ in range(steps):
            with torch.no_grad():
                modes.append(teacher_modes(net[1].weight @ net[0].weight, u, v))
            x = torch.randn(128, d, generator=gen)
            y = x @ target.T + 0.1 * torch.randn(128, d, generator=gen)
            loss = 0.5 * (net(x) - y).square().sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            agent.log(loss=loss)
            opt.step()
    seconds = time.perf_counter() - t0
    truths = mode_truths(modes, s, LAYERS, from_start=True)
    return RunResult(NAME, steps, EVERY, TOL, truths, rec.events, rec.notices, seconds,
                     facts={"initial_modes": [round(x, 3) for x in modes[0]],
                            "final_modes": [round(x, 3) for x in modes[-1]]})
