"""What the attention max-logit probes (measure/logits.py) and the update-to-weight ratio
(measure/updates.py) cost, side by side with what they ride on: medians of interleaved runs.

- max-logit: one forward of an attention block (GPT-style separate projections, and
  nn.MultiheadAttention, whose probe also projects its capped rows) without and with the
  probes armed; the ratio is the sampled step's forward overhead (non-sampled steps: none,
  nothing is registered).
- update_ratio: the cheap tier of the indicator engine on an MLP of 768-wide layers, without
  and with the tracker (measured by switching it off in the engine).

    .venv/bin/python benchmarks/max_logit_cost.py [--device cuda] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from symwatch_agent.hooks.activations import ActivationCapture, Probe
from symwatch_agent.measure import logits
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, e: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.d = heads, e // heads
        self.q_proj, self.k_proj = nn.Linear(e, e), nn.Linear(e, e)
        self.v_proj, self.o_proj = nn.Linear(e, e), nn.Linear(e, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, self.d).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class Mha(nn.Module):
    def __init__(self, e: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(e, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False, is_causal=True,
                         attn_mask=nn.Transformer.generate_square_subsequent_mask(
                             x.shape[1], device=x.device))[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired(plain, probed, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds of `plain` and `probed`, run alternately (the machine's load shifts)."""
    a, b = [], []
    plain(), probed()
    for _ in range(repeats):
        for fn, out in ((plain, a), (probed, b)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def forward_cost(model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    engine.attach({"": model}, observe=False)
    cap = ActivationCapture()

    @torch.no_grad()
    def plain() -> None:
        model(x)

    @torch.no_grad()
    def probed() -> None:
        cap.arm([], 1, tuple(Probe(*p) for p in logits.plan(engine.heads)))
        model(x)
        found = cap.take()
        assert found is not None and found.probes and not found.errors

    return paired(plain, probed, x.device, repeats)


def update_cost(device: torch.device, repeats: int) -> tuple[float, float]:
    model = nn.Sequential(*[nn.Linear(768, 768) for _ in range(8)]).to(device)
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    engine.step = 0

    def without() -> None:
        engine.switched_off["update_ratio"] = "benchmark"
        engine.compute(CHEAP)

    def with_it() -> None:
        engine.switched_off.pop("update_ratio", None)
        engine.step += 1
        engine.compute(CHEAP)

    return paired(without, with_it, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    # On a loaded machine every multi-threaded op waits for its slowest thread: the probes'
    # dozen small ops then cost tens of ms each in waiting alone (measured: +200 ms at load 6
    # on 2 cores, the same ops 2 ms standalone). --threads 1 measures the work itself.
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch} × "
          f"{args.seq} tokens, medians of {args.repeats}")
    for name, model in (("GPT-style 768/12", CausalSelfAttention(768, 12)),
                        ("nn.MultiheadAttention 768/12", Mha(768, 12))):
        x = torch.randn(args.batch, args.seq, 768, device=device)
        plain, probed = forward_cost(model.to(device), x, args.repeats)
        print(f"{name}: forward {plain * 1e3:.2f} ms, with the probes {probed * 1e3:.2f} ms "
              f"(×{probed / plain:.3f}, +{(probed - plain) * 1e3:.2f} ms)")
    without, with_it = update_cost(device, args.repeats)
    print(f"cheap tier, 8 layers 768 × 768: {without * 1e3:.2f} ms, with update_ratio "
          f"{with_it * 1e3:.2f} ms (×{with_it / without:.3f})")


if __name__ == "__main__":
    main()
