"""A two-layer linear network and a low-rank teacher (Saxe et al.): the set-up of the tests
that need a run whose modes are learned one at a time, each after a plateau, in this process
or in a child (`python -c "from linear_teacher import budgeted_staircase; ..."`)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn


def linear_teacher(singular: list[float], init_std: float, d: int = 16, seed: int = 0
                   ) -> tuple[nn.Sequential, torch.Tensor]:
    """A d → d → d linear net without biases, weights N(0, init_std²), and a teacher
    U diag(singular) Vᵀ with random orthogonal U, V (seed `seed`)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    k = len(singular)
    target = u[:, :k] @ torch.diag(torch.tensor(singular)) @ v[:, :k].T
    model = nn.Sequential(nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False))
    for layer in model:
        nn.init.normal_(layer.weight, std=init_std)
    return model, target


def budgeted_staircase(record: str, steps: int = 700) -> Any:
    """Under a time budget (0.9) at ~200 steps a second at most, so that the run-level
    detector's cadence stays `every` = 2 on any machine (its updates may cost 1.35 ms each,
    ~10 times what they do in this run, before the agent stretches it; a cadence stretched
    during the run can split a fall into two events, which the tests would read as a
    defect), learn a rank-2 teacher (σ 4, 1.5) from N(0, 10⁻⁶) weights by full-batch
    gradient descent: the loss falls off a plateau at each mode (strength at half its
    target's at steps 87 and 213, seed 0); weight decay 2 from step 500 pushes the weaker
    mode back and the loss rises. Returns the (closed) agent."""
    import symwatch

    model, target = linear_teacher([4.0, 1.5], 1e-3)
    d = target.shape[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    with symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=2, budget=0.9,
                        record=record, register=False, stats_interval=0.05) as agent:
        for step in range(steps):
            opt.param_groups[0]["weight_decay"] = 2.0 if step >= 500 else 0.0
            loss = 0.5 * (model(torch.eye(d)).T - target).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            # ~200 steps a second at most: the run-level detector's cost share (0.25 of the
            # 60 % plan of 0.9) then allows 1.35 ms an update at every 2 (agent.py
            # RUN_LEVEL_SHARE; symwatch.core.run_level.RunLevelFeed); at 1,000 steps a second
            # 135 µs, barely above the 110-145 µs an update measured in this run, beside the
            # training thread (~30 µs alone, whatever the batch): a loaded 2-core CI machine
            # went over once
            time.sleep(0.005)
    return agent
