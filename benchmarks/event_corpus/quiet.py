"""Nothing happening: a 32 → 64 → 64 → 1 ReLU MLP regressing a random ReLU teacher is trained to
convergence with Adam before the agent is attached, then trained on at the same constant
learning rate with the agent watching. No transition: every event is a false alarm."""

from __future__ import annotations

import time

import torch
from torch import nn

from ._mlp import mlp, teacher_batch
from .common import RunResult, recorded, single_thread

NAME = "quiet"
STEPS = 1000
PRETRAIN = 3000
EVERY = 5
TOL = 25
TRUTH = (f"none: the model was trained for {PRETRAIN} steps (Adam, lr 1e-3) before watch(), and "
         "continues at the same lr; the held-out probe loss is reported to show it stays put")


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    teacher = mlp((32, 16, 1))
    net = mlp((32, 64, 64, 1))
    px, py = teacher_batch(teacher, 1024, 32, gen)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def train_step(agent: object = None) -> None:
        x, y = teacher_batch(teacher, 128, 32, gen)
        loss = nn.functional.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if agent is not None:
            agent.log(loss=loss)  # type: ignore[attr-defined]
        opt.step()

    for _ in range(PRETRAIN):
        train_step()
    with torch.no_grad():
        start = float(nn.functional.mse_loss(net(px), py))
    t0 = time.perf_counter()
    with recorded({"net": net}, opt, every=EVERY, name=NAME) as (agent, rec):
        for _ in range(steps):
            train_step(agent)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        end = float(nn.functional.mse_loss(net(px), py))
    return RunResult(NAME, steps, EVERY, TOL, [], rec.events, rec.notices, seconds,
                     facts={"probe_loss_start": round(start, 5), "probe_loss_end": round(end, 5)})
