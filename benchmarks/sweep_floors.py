"""What any full sweep must at least spend on this machine, and the cheapest estimate we know.

sweep.py's 20× target is a time budget (weightwatcher's `analyze()` / 20). This module measures
the floors under that budget on the same GPT-2-small-shaped stack, so the verdict says from
figures, not from argument, whether some other method could meet it here:

- one read pass over every weight (the least any indicator of every layer costs);
- the Gram products alone, float32 (what the exact spectra start from) and bfloat16 (4× faster
  on a CPU with bf16 dot products, but each entry of G rounded to 8 bits);
- `eigvalsh` alone on the 48 Gram matrices;
- one block-Krylov step over every weight (8 vectors, W·Q then Wᵀ·(WQ)): the unit of any
  method that works from products with W instead of forming G;
- the cheapest effective-rank estimate we found that stays within 1 %: stochastic Lanczos
  quadrature (SLQ) on G with polynomial control variates, timed on the 48 Gram matrices and
  checked against float64 SVD on the three kinds of spectra sweep.py checks.

SLQ with control variates (`slq_effective_rank`): effective rank is exp(ln S − T/S) with
S = Σσ = tr G^½ and T = Σσ ln σ = tr(G^½ ln G^½). Each probe vector's Lanczos run gives a Gauss
quadrature of vᵀf(G)v (nodes: Ritz values, weights: squared first components); averaged over
probes that estimates tr f(G) (Hutchinson). Plain averaging is too noisy when the spectrum is
spread (4.7 % worst error on the heavy-tailed spectrum at 8 probes × 30 steps, and more steps
do not help: the error is the probes', not the quadrature's). A control variate removes most of
it: fit q(x) = c₀ + c₁x + c₂x² to f on the quadrature nodes, take tr q(G) exactly (tr I = k,
tr G = ‖W‖²_F, tr G² = ‖G‖²_F) and only the residual f − q from the probes.

Not used by the agent: its full tier keeps exact spectra (the layer view shows the spectrum
itself, and numerical rank is a count that must not move by noise).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from symwatch_agent.measure import spectra
from timing import timed

KRYLOV_VECTORS = 8
SLQ_PROBES = 8
SLQ_STEPS = 30


def _linears(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]


def _groups(model: nn.Module) -> list[torch.Tensor]:
    """The weights stacked by shape (B, m, n), as the engine batches them."""
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for w in _linears(model):
        by_shape.setdefault(tuple(w.shape), []).append(w)
    return [torch.stack(ws) for ws in by_shape.values()]


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    return timed(fn, device, repeats)[0]


def _gram_bf16(w: torch.Tensor) -> torch.Tensor:
    w = w.bfloat16()
    m, n = w.shape[-2:]
    return w @ w.transpose(-1, -2) if m <= n else w.transpose(-1, -2) @ w


def _krylov_step(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """One step of a block Krylov method on the smaller Gram side: G·Q from two products with W
    (Qᵀ·W and back, no transposed operand: see spectra.power_sigma1)."""
    m, n = w.shape[-2:]
    if m <= n:  # G = WWᵀ (m × m): GQ = W(WᵀQ) = (QᵀW · Wᵀ)ᵀ
        return (q.transpose(1, 2) @ w @ w.transpose(1, 2)).transpose(1, 2)
    return ((w @ q).transpose(1, 2) @ w).transpose(1, 2)  # G = WᵀW (n × n)


def slq_effective_rank(g: torch.Tensor, probes: int = SLQ_PROBES, steps: int = SLQ_STEPS,
                       seed: int = 0) -> torch.Tensor:
    """Effective rank of each Gram matrix g (B, k, k) by SLQ with control variates (see the
    module's docstring). float32 products, full reorthogonalisation; returns (B,)."""
    b, k, _ = g.shape
    scale = g.diagonal(dim1=-2, dim2=-1).sum(-1) / k  # effective rank is scale-free: λ ~ 1
    g = g / scale[:, None, None]
    s = min(steps, k)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, k, probes, generator=gen).to(g)
    q = q / q.norm(dim=1, keepdim=True)
    basis = torch.zeros(b, probes, s, k, dtype=g.dtype, device=g.device)
    alpha = torch.zeros(b, probes, s, dtype=g.dtype, device=g.device)
    beta = torch.zeros(b, probes, s, dtype=g.dtype, device=g.device)
    for j in range(s):
        basis[:, :, j] = q.transpose(1, 2)
        z = (g @ q).transpose(1, 2)  # (B, probes, k)
        alpha[:, :, j] = (z * basis[:, :, j]).sum(-1)
        for _ in range(2):  # twice is enough (Kahan)
            coef = torch.einsum("bpik,bpk->bpi", basis[:, :, :j + 1], z)
            z = z - torch.einsum("bpi,bpik->bpk", coef, basis[:, :, :j + 1])
        norm = z.norm(dim=-1)
        live = norm > 1e-4 * alpha[:, :, :j + 1].abs().amax(-1)  # exhausted: see lanczos_sigma1
        norm = torch.where(live, norm, 0.0)
        if j + 1 < s:
            beta[:, :, j] = norm
            q = torch.where(live[..., None], z / norm.clamp_min(1e-30)[..., None], 0.0)
            q = q.transpose(1, 2)
    t = torch.diag_embed(alpha) + torch.diag_embed(beta[..., :s - 1], 1) + \
        torch.diag_embed(beta[..., :s - 1], -1)
    theta, y = torch.linalg.eigh(t.double())  # (B, probes, s): nodes and their vectors
    theta = theta.clamp_min(0)
    weight = y[..., 0, :].square()  # quadrature weights, Σ = 1 per probe
    root = theta.sqrt()
    functions = (root, torch.where(root > 0, root * root.clamp_min(1e-300).log(), 0.0))
    g64 = g.double()
    traces = torch.stack([torch.full((b,), float(k), dtype=torch.float64, device=g.device),
                          g64.diagonal(dim1=-2, dim2=-1).sum(-1), g64.square().sum((-1, -2))], -1)
    powers = torch.stack([theta ** 0, theta, theta.square()], -1)  # (B, probes, s, 3)
    x = (powers * weight.sqrt()[..., None]).flatten(1, 2)  # weighted least squares over nodes
    estimates = []
    for f in functions:
        rhs = (f * weight.sqrt()).flatten(1, 2)
        coef = torch.linalg.lstsq(x, rhs[..., None]).solution.squeeze(-1)  # (B, 3)
        fitted = (powers * coef[:, None, None, :]).sum(-1)
        residual = k * (weight * (f - fitted)).sum(-1).mean(-1)  # Hutchinson on f − q
        estimates.append((traces * coef).sum(-1) + residual)
    total, plogp = estimates
    return torch.exp(total.log() - plogp / total).float()


def floors(model: nn.Module, repeats: int) -> dict[str, float]:
    """Median seconds of each floor on this machine (see the module's docstring)."""
    groups = _groups(model)
    device = groups[0].device
    grams = [spectra.gram(w) for w in groups]
    vectors = [torch.randn(w.shape[0], min(w.shape[1:]), KRYLOV_VECTORS).to(w.device)
               for w in groups]
    return {
        "read_s": _median_time(lambda: [torch.linalg.vector_norm(w, dim=2) for w in groups],
                               repeats, device),
        "gram32_s": _median_time(lambda: [spectra.gram(w) for w in groups], repeats, device),
        "gram16_s": _median_time(lambda: [_gram_bf16(w) for w in groups], repeats, device),
        "eigvalsh_s": _median_time(lambda: [torch.linalg.eigvalsh(g) for g in grams], repeats,
                                   device),
        "krylov_step_s": _median_time(
            lambda: [_krylov_step(w, q) for w, q in zip(groups, vectors)], repeats, device),
        "slq_s": _median_time(lambda: [slq_effective_rank(g) for g in grams], repeats, device),
    }


def slq_accuracy(model: nn.Module) -> float:
    """Worst relative error of `slq_effective_rank` against float64 SVD over the model's
    layers."""
    worst = 0.0
    for w in _groups(model):
        estimate = slq_effective_rank(spectra.gram(w))
        for j in range(w.shape[0]):
            s = torch.linalg.svdvals(w[j].double())
            p = s / s.sum()
            p = p[p > 0]
            exact = math.exp(-(p * p.log()).sum().item())
            worst = max(worst, abs(estimate[j].item() - exact) / exact)
    return worst
