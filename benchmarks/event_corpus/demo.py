"""The demo (`symwatch demo`: symwatch_agent/entry/demo.py) run as it is, recording its own
stream ($SYMWATCH_RECORD), scored against its linear network's teacher modes, which are
recomputed here by replaying that network's deterministic full-batch gradient descent from the
same seed (the MLP beside it draws its batches from the global generator but never touches the
linear network's arithmetic)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from symwatch_agent.entry import demo
from symwatch_agent.options import DEFAULT_EVERY, ENV_RECORD, AgentOptions

from .common import (
    LOSS_EVERY,
    SAMPLES,
    RunResult,
    Truth,
    at_defaults,
    count_samples,
    crossing_truth,
    loss_every,
    random_orthogonal,
    read_events,
    single_thread,
    teacher_modes,
)

NAME = "demo"
STEPS = 800
EVERY = 1  # as `symwatch demo` runs it
TOL = 10
LAYERS = ("linear.0", "linear.1")
TRUTH = ("the linear network's teacher modes a_k = u_kᵀW₂W₁v_k: each crosses s_k/2 (extent "
         "10 %→90 %) before step 400; weight decay 0 → 1.5 at step 400 and 1.5 → 0 at step 600 "
         "(any layer or the loss); the mode with s = 1 < γ falls half way to 0 after 400 and "
         "climbs half way back after 600 (either linear layer). The MLP has no truth: its events "
         "are false alarms")


def _teacher_modes(steps: int, seed: int, cfg: demo.DemoConfig) -> list[list[float]]:
    """The demo's linear network, step by step, as demo.run computes it."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    d, k = cfg.width, len(cfg.target_singular_values)
    u, v = random_orthogonal(d, gen), random_orthogonal(d, gen)  # demo's own construction
    u, v = u[:, :k], v[:, :k]
    target = u @ torch.diag(torch.tensor(cfg.target_singular_values)) @ v.T
    linear = demo.DemoModels(cfg).linear
    opt = torch.optim.SGD(linear.parameters(), lr=cfg.linear_lr, weight_decay=0.0)
    period = cfg.grow_steps + cfg.decay_steps
    modes = []
    for step in range(steps):
        decaying = step % period >= cfg.grow_steps
        opt.param_groups[0]["weight_decay"] = cfg.weight_decay if decaying else 0.0
        out = linear(torch.eye(d)).T
        modes.append(teacher_modes(out.detach(), u, v))
        loss = 0.5 * (out - target).square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return modes


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    cfg = demo.DemoConfig()
    with tempfile.TemporaryDirectory(prefix="symwatch-corpus-") as tmp:
        path = Path(tmp) / "demo.db"
        previous = os.environ.get(ENV_RECORD)
        os.environ[ENV_RECORD] = str(path)
        t0 = time.perf_counter()
        try:
            code = demo.run(steps=steps, delay=0.0, endpoint=None, name=NAME, seed=seed,
                            **({"every": DEFAULT_EVERY, "budget": AgentOptions.budget}
                               if at_defaults()
                               else {"every": EVERY, "budget": 1.0}))
        finally:
            if previous is None:
                os.environ.pop(ENV_RECORD, None)
            else:
                os.environ[ENV_RECORD] = previous
        seconds = time.perf_counter() - t0
        events, notices = read_events(path)
        SAMPLES.append(count_samples(path))
        stride = loss_every(path)
        if stride is not None:
            LOSS_EVERY.append(stride)
    modes = _teacher_modes(steps, seed, cfg)
    grow, off = cfg.grow_steps, cfg.grow_steps + cfg.decay_steps
    truths = []
    for k, sk in enumerate(cfg.target_singular_values):
        series = [(step, a[k]) for step, a in enumerate(modes)]
        t = crossing_truth(series[:grow], 0.0, sk, f"mode {k + 1} (s={sk:g}) learned",
                           layers=LAYERS)
        if t is not None:
            truths.append(t)
        if sk < cfg.weight_decay and steps > grow:
            t = crossing_truth(series[grow:off], series[grow][1], 0.0,
                               f"mode {k + 1} (s={sk:g}) restored", layers=LAYERS)
            if t is not None:
                truths.append(t)
            if steps > off:
                t = crossing_truth(series[off:], series[off][1], sk,
                                   f"mode {k + 1} (s={sk:g}) relearned", layers=LAYERS)
                if t is not None:
                    truths.append(t)
    if steps > grow:
        truths.append(Truth(step=grow, label=f"weight decay 0 → {cfg.weight_decay:g}"))
    if steps > off:
        truths.append(Truth(step=off, label=f"weight decay {cfg.weight_decay:g} → 0"))
    return RunResult(NAME, steps, EVERY, TOL, sorted(truths, key=lambda t: t.step), events,
                     notices, seconds, facts={"exit": code,
                                              "modes_400": [round(x, 3) for x in modes[min(
                                                  grow, steps - 1)]],
                                              "final_modes": [round(x, 3) for x in modes[-1]]})
