"""Small-init linear staircase (Saxe et al.): a two-layer linear net 24 → 24 → 24, weights
N(0, 1e-3²), whitened inputs (the full batch is the identity), a rank-4 teacher with singular
values 8, 4, 2, 1, plain gradient descent. Each teacher mode is learned after its own plateau."""

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

NAME = "saxe_staircase"
STEPS = 450
EVERY = 2
TOL = 10
LAYERS = ("net.0", "net.1")
TRUTH = ("one per teacher mode k: a_k = u_kᵀW₂W₁v_k (the end-to-end map on the teacher's "
         "singular directions) crosses s_k/2; extent 10 %→90 % of s_k; either layer, or the loss")


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    d, s = 24, torch.tensor([8.0, 4.0, 2.0, 1.0])
    net, target, u, v, _ = linear_teacher(d, s, seed, init_std=1e-3)
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    modes: list[list[float]] = []
    t0 = time.perf_counter()
    with recorded({"net": net}, opt, every=EVERY, name=NAME) as (agent, rec):
        for _ in range(steps):
            w = net(torch.eye(d)).T  # W₂W₁
            loss = 0.5 * (w - target).square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            agent.log(loss=loss)
            modes.append(teacher_modes(w.detach(), u, v))
            opt.step()
    seconds = time.perf_counter() - t0
    truths = mode_truths(modes, s, LAYERS)
    return RunResult(NAME, steps, EVERY, TOL, truths, rec.events, rec.notices, seconds,
                     facts={"final_modes": [round(x, 3) for x in modes[-1]]})
