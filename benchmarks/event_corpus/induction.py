"""A small attention-only transformer forming an induction head: 2 layers of
nn.MultiheadAttention (2 heads each, d = 32, learned positions, no MLP, no norm), trained with
Adam on sequences of 12 random tokens (of 16) repeated once: the second half is predictable
only by copying (a previous-token head in layer 1 feeding an induction head in layer 2). The
copy loss sits at ln 16 for a while, then drops abruptly when the circuit forms."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from .common import RunResult, crossing_truth, recorded, single_thread

NAME = "induction"
STEPS = 1000
EVERY = 5
TOL = 25
V, HALF, D = 16, 12, 32
TRUTH = ("the copy loss (cross-entropy on the repeated half of a fixed held-out probe of 256 "
         "sequences) crosses half way from ln 16 (chance) to its final value; extent 10 %→90 %; "
         "any layer or the loss")


class AttnOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.randn(2 * HALF, D) * 0.1)
        self.attn = nn.ModuleList([nn.MultiheadAttention(D, 2, batch_first=True, bias=False)
                                   for _ in range(2)])
        self.unembed = nn.Linear(D, V, bias=False)
        n = 2 * HALF
        self.register_buffer("mask", torch.triu(torch.ones(n, n, dtype=torch.bool), 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos
        for attn in self.attn:
            x = x + attn(x, x, x, attn_mask=self.mask, need_weights=False)[0]
        return self.unembed(x)


def _batch(n: int, gen: torch.Generator) -> torch.Tensor:
    half = torch.randint(0, V, (n, HALF), generator=gen)
    return torch.cat([half, half], dim=1)


def _copy_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    # predict token t+1 from the prefix up to t, on the repeated half only
    pred, nxt = logits[:, HALF - 1:-1], tokens[:, HALF:]
    return nn.functional.cross_entropy(pred.reshape(-1, V), nxt.reshape(-1))


def run(steps: int | None = None, seed: int = 0) -> RunResult:
    single_thread()
    steps = steps or STEPS
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    model = AttnOnly()
    probe = _batch(256, gen)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    copy: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    with recorded({"tf": model}, opt, every=EVERY, name=NAME, classifier=None) as (agent, rec):
        for step in range(steps):
            if step % EVERY == 0:
                with torch.no_grad():
                    copy.append((step, float(_copy_loss(model(probe), probe))))
            tokens = _batch(64, gen)
            logits = model(tokens)
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V),
                                               tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            agent.log(loss=loss)
            opt.step()
    seconds = time.perf_counter() - t0
    truths = []
    t = crossing_truth(copy, math.log(V), copy[-1][1], "induction head forms (copy loss drops)")
    if t is not None and copy[-1][1] < 0.5 * math.log(V):
        truths.append(t)
    return RunResult(NAME, steps, EVERY, TOL, truths, rec.events, rec.notices, seconds,
                     facts={"copy_loss": [(s, round(v, 3)) for s, v in copy[::40]]})
