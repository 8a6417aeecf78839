"""An induced loss spike: a 32 → 64 → 64 → 1 ReLU MLP (default init) regressing a random ReLU
teacher with Adam (lr 3e-4) until it has settled, then the learning rate ×50 for 3 steps, then
back."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ._mlp import mlp, teacher_batch
from .common import RunResult, Truth, crossing_truth, recorded, single_thread

NAME = "loss_spike"
STEPS = 1000
SPIKE = 600
KICK = 3
EVERY = 5
TOL = 25
TRUTH = (f"lr ×50 for steps {SPIKE}–{SPIKE + KICK - 1}: the spike, from the first of them to "
         "the peak of the loss on a fixed held-out probe (1024 points); where the probe loss "
         "rose over 10× and comes back down by 10× from its peak, the recovery, where its log "
         "crosses half way from the peak to its final value (extent 10 %→90 %); any layer or "
         "the loss")


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    spike = min(SPIKE, steps * SPIKE // STEPS)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    teacher = mlp((32, 16, 1))
    net = mlp((32, 64, 64, 1))
    px, py = teacher_batch(teacher, 1024, 32, gen)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    probe: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    with recorded({"net": net}, opt, every=EVERY, name=NAME) as (agent, rec):
        for step in range(steps):
            opt.param_groups[0]["lr"] = 1.5e-2 if spike <= step < spike + KICK else 3e-4
            with torch.no_grad():
                probe.append((step, float(nn.functional.mse_loss(net(px), py))))
            x, y = teacher_batch(teacher, 128, 32, gen)
            loss = nn.functional.mse_loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            agent.log(loss=loss)
            opt.step()
    seconds = time.perf_counter() - t0
    before = probe[spike][1]
    peak_step, peak = max(((s, v) for s, v in probe if spike <= s <= spike + 50),
                          key=lambda sv: sv[1])
    truths = [Truth(step=spike, label="loss spike (lr ×50)", lo=spike, hi=peak_step)]
    logs = [(s, math.log(v)) for s, v in probe if s >= peak_step]
    if peak > 10 * before and logs[-1][1] < math.log(peak) - math.log(10):
        t = crossing_truth(logs, logs[0][1], logs[-1][1], "recovery from the spike")
        if t is not None:
            truths.append(t)
    return RunResult(NAME, steps, EVERY, TOL, truths, rec.events, rec.notices, seconds,
                     facts={"probe_before": round(before, 5), "probe_peak": round(peak, 5),
                            "peak_at": peak_step, "probe_end": round(probe[-1][1], 5)})
