"""`python -m symwatch_agent.entry.demo`: a real training run to watch (what `symwatch demo` starts).

Two small models train side by side on the CPU, in one process, with the agent inside:

- `linear`: the two-layer linear network of Saxe et al. (SCIENCE.md, "stepwise rank growth"):
  whitened inputs, a rank-5 target with singular values 8, 4, 2.5, 1.5, 1, initial weights
  N(0, 1e-3²), plain gradient descent. Each target mode is learned after its own plateau; it
  leaves the tiny random bulk early in its exponential rise, so `modes` of `linear.0` (σ above
  the bulk) climbs 0 → 1 → 2 → 3 → 4 → 5 near steps 7, 9, 19, 48 and 61 (seed 0), ahead of the
  loss drops. Then weight decay is switched on and the smallest mode (s = 1 < γ = 1.5) shrinks
  towards the symmetric state (weight_norm, stable_rank and delta_rank fall; `modes` 5 → 4
  near step 550, once the mode is under 5 % of σ₁: without gradient noise weight decay shrinks
  the bulk faster than the mode, so the count is against σ₁ under weight decay,
  docs/metrics.md, *Counting modes*), then off again and it is relearned (5 at once: the
  mode grows again).
- `mlp`: a small ReLU MLP classifying inputs by the arg-max of a random ReLU teacher
  (cross-entropy, SGD), for a network whose indicators drift rather than step; its last
  layer is the classifier whose softmax-translation order parameter is watched.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from symwatch_agent.agent import watch


@dataclass
class DemoConfig:
    width: int = 16  # input = hidden = output width of the linear network
    target_singular_values: tuple[float, ...] = (8.0, 4.0, 2.5, 1.5, 1.0)
    init_std: float = 1e-3  # small: the plateaus (and so the staircase) need it
    linear_lr: float = 0.02
    grow_steps: int = 400  # weight decay off: modes are learned one by one
    decay_steps: int = 200  # weight decay on: the smallest modes are restored
    weight_decay: float = 1.5
    mlp_widths: tuple[int, ...] = (16, 64, 64, 4)
    mlp_lr: float = 0.05
    mlp_batch: int = 64


class DemoModels(nn.Module):
    def __init__(self, cfg: DemoConfig) -> None:
        super().__init__()
        d = cfg.width
        self.linear = nn.Sequential(nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False))
        for layer in self.linear:
            nn.init.normal_(layer.weight, std=cfg.init_std)
        widths = cfg.mlp_widths
        mlp: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            mlp.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                mlp.append(nn.ReLU())
        self.mlp = nn.Sequential(*mlp)


def _random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return q * torch.sign(torch.diagonal(r))


def run(*, steps: int, delay: float, every: int, endpoint: str | None, name: str,
        seed: int = 0, budget: float = 1.0, cfg: DemoConfig | None = None,
        stop: threading.Event | None = None) -> int:
    """Train until `steps` are done (0: forever) or `stop` is set; returns an exit code."""
    cfg = cfg or DemoConfig()
    stop = stop or threading.Event()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    d, k = cfg.width, len(cfg.target_singular_values)
    u, v = _random_orthogonal(d, gen), _random_orthogonal(d, gen)
    target = u[:, :k] @ torch.diag(torch.tensor(cfg.target_singular_values)) @ v[:, :k].T
    inputs = torch.eye(d)  # whitened: the full batch is the standard basis

    models = DemoModels(cfg)
    teacher = nn.Sequential(nn.Linear(cfg.mlp_widths[0], 32), nn.ReLU(),
                            nn.Linear(32, cfg.mlp_widths[-1]))
    for p in teacher.parameters():
        p.requires_grad_(False)

    optimizer = torch.optim.SGD([
        {"params": models.linear.parameters(), "lr": cfg.linear_lr, "weight_decay": 0.0},
        {"params": models.mlp.parameters(), "lr": cfg.mlp_lr, "weight_decay": 1e-4},
    ])
    period = cfg.grow_steps + cfg.decay_steps
    with watch({"linear": models.linear, "mlp": models.mlp}, optimizer, every=every,
               budget=budget, endpoint=endpoint, name=name,
               classifier="mlp.4") as agent:  # the linear network has no softmax
        print(f"symwatch demo: publishing on {agent.endpoint} (run {agent.run_id})", flush=True)
        step = 0
        while not stop.is_set() and (steps == 0 or step < steps):
            phase_step = step % period
            decaying = phase_step >= cfg.grow_steps
            optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay if decaying else 0.0

            # linear: ½‖W₂W₁X − T‖²_F with X = I
            out = models.linear(inputs).T  # (d_out, d_in) = W₂W₁
            linear_loss = 0.5 * (out - target).square().sum()
            x = torch.randn(cfg.mlp_batch, cfg.mlp_widths[0])
            labels = teacher(x).argmax(dim=1)
            mlp_loss = nn.functional.cross_entropy(models.mlp(x), labels)
            loss = linear_loss + mlp_loss

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            agent.log(loss=loss, linear_loss=linear_loss, mlp_loss=mlp_loss,
                      weight_decay=optimizer.param_groups[0]["weight_decay"])
            optimizer.step()
            step += 1
            if delay > 0:
                time.sleep(delay)
        if not math.isfinite(loss.item()):
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m symwatch_agent.entry.demo",
        description="Train the symwatch demo models with the agent publishing.")
    parser.add_argument("--endpoint", default=None,
                        help="where to publish (default: a Unix socket in the runtime dir)")
    parser.add_argument("--name", default="symwatch-demo")
    parser.add_argument("--steps", type=int, default=0, help="steps to train; 0 = until stopped")
    parser.add_argument("--delay", type=float, default=0.05,
                        help="seconds to sleep per step, so the staircase can be watched")
    parser.add_argument("--every", type=int, default=1, help="sample every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=1.0,
                        help="largest fraction of wall time sampling may take (default 1.0: "
                             "no limit, so the tiny demo models are sampled every step)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish the step, then say goodbye
    try:
        return run(steps=args.steps, delay=args.delay, every=args.every,
                   endpoint=args.endpoint, name=args.name, seed=args.seed,
                   budget=args.budget, stop=stop)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
