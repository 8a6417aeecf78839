"""Spectra of layers too wide for a full eigendecomposition (min(m, n) > max_svd_dim).

An exact spectrum of a k × N layer costs a Gram product (2·k²·N flops) plus eigvalsh (~k³,
sequential): at 4096 × 11008, 370 GFLOP plus a 4096-wide float64 eigvalsh. Every rank indicator only needs
(a) the top singular values, exactly, and (b) a few spectral sums and the lower quantiles of the
rest. Both come from products of W with thin blocks of vectors (A: the layer as k × N with
k = min(m, n) rows, G = AAᵀ its smaller Gram, never formed):

1. **Top σ, block Krylov** (`top_subspace`): Rayleigh–Ritz of G on the Krylov space
   [Q₀, GQ₀, …, G^{d−1}Q₀] of a block of TOP vectors, reorthogonalised twice. Q₀ is the last
   sample's top Ritz vectors (kept per layer by the engine: the weights moved a little, so the
   space is nearly converged and WARM_DEPTH blocks suffice), the first time a fixed random
   block (COLD_DEPTH blocks). Ritz values are lower bounds of the eigenvalues they approximate.
2. **The rest, stochastic Lanczos quadrature** (`slq`) on the deflated matrix P⊥A, P⊥ the
   projector off the top Ritz vectors: PROBES random unit vectors in range(P⊥), STEPS of
   Golub–Kahan bidiagonalisation each (full reorthogonalisation, all probes in one GEMM per
   step). The bidiagonal's singular values are Gauss nodes in σ (not σ²: float32 products
   then resolve σ down to ~eps·√N·σ₁, so a rank-deficient layer's zeros stay ~0 and a heavy tail
   is not floored at √eps·σ₁), its left singular vectors' first components² the weights.
   Deflation is what makes few probes enough (Hutch++'s idea): the top σ, which dominate a
   spread spectrum's sums and the probes' variance, are counted exactly, never sampled.
   Treating G as blockdiag(QᵀGQ, P⊥GP⊥) errs only at second order in the off-diagonal block
   (tr f′·E = 0 for E off the block diagonal); its Frobenius norm, needed for Σσ⁴, is exact
   (‖GQ‖²_F − ‖QᵀGQ‖²_F, from products already made).
3. **Control variate**: tr(P⊥GP⊥) = ‖W‖²_F − Σθ_top is known exactly, so each sum's probe
   estimate is corrected by its regression on the probes' estimate of Σσ² (`_corrected`).

From these: stable rank ‖W‖²_F/θ₁; participation ratio ‖W‖⁴_F / (Σθ² + 2‖P⊥GQ‖² + tr R²);
effective rank from Σσ and Σσ·ln σ (top exact + quadrature); and a whole descending spectrum
for bulk.py and `numerical_rank` (`WideSpectrum.sv`): the exact top σ, then the remaining
k − TOP ranks read off the quadrature's cumulative mass (nodes from all probes pooled, each
node's mass centred on it, linear between). bulk.py fits the bulk's lower half of that
spectrum to Marchenko–Pastur quantiles as it does for an exact one; its least-squares noise
level is self-consistent along the bulk, so a shift of the half's cut moves it at second
order only. Error against float64 spectra: docs/metrics.md, *Wide layers*
(`benchmarks/wide_spectra.py`; tests/agent/test_wide_spectra.py).

Cost, A being k × N: 2·d products A·(N × TOP) and Aᵀ·(k × TOP) for the top block (d = depth)
plus 2·STEPS products with PROBES columns, i.e. 4·k·N·(d·TOP + STEPS·PROBES) flops, all GEMMs,
plus O(k·(d·TOP)²) for the reorthogonalisation. Nothing is read back to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TOP = 64  # top singular values computed exactly, and the block size of the Krylov space
COLD_DEPTH = 6  # Krylov blocks the first time (random start)
WARM_DEPTH = 3  # Krylov blocks from the last sample's top vectors
PROBES = 32  # SLQ start vectors
STEPS = 30  # Golub–Kahan steps per probe
RITZ_FLOOR = 16.0  # top Ritz values θ below RITZ_FLOOR·eps₃₂·θ₁ are rounding: read as 0
NOISE = 8.0  # SLQ nodes below NOISE·eps₃₂·√N·σ₁ are float32 rounding: read as 0


@dataclass
class WideSpectrum:
    """One batch of wide matrices' spectral estimates (B = batch)."""

    sv: torch.Tensor  # (B, k) float32, descending: exact top, then SLQ quantiles
    vectors: torch.Tensor  # (B, k, TOP) the top Ritz vectors (next sample's warm start)
    ranks: dict[str, torch.Tensor]  # stable_rank, effective_rank, participation_ratio (B,)


def _orth(x: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Orthonormal columns spanning x (k, b) off `basis` (k, c), twice (one pass leaves
    components along the basis of ~eps·‖x‖/‖residual‖ when the residual is small), in float64
    (cheap: k·b·c). Through the b × b Gram's eigendecomposition, not a QR: a Householder QR of
    a tall thin block ran ~10× slower than the GEMMs here on the CPU. Directions whose singular
    value is under 1e-5 of x's largest column (before projection) are float32 rounding, not
    Krylov information (a rank-deficient layer): they come out as zero columns, never
    normalised up (kept, they broke the basis's orthogonality within a few blocks)."""
    out = x.double()
    ref = out.norm(dim=0).amax().clamp_min(1e-300)
    other = None if basis is None else basis.double()
    for _ in range(2):
        if other is not None:
            out = out - other @ (other.T @ out)
        lam, vec = torch.linalg.eigh(out.T @ out)
        keep = lam > (1e-5 * ref) ** 2
        out = out @ (vec * torch.where(keep, lam.clamp_min(1e-300).rsqrt(), 0.0))
        ref = torch.ones((), dtype=out.dtype, device=out.device)
    return out.to(x.dtype)


def top_subspace(a: torch.Tensor, start: torch.Tensor, depth: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block Krylov Rayleigh–Ritz for the largest eigenvalues of G = AAᵀ, A (k, N), from the
    block `start` (k, b). Returns (θ descending (b,) float64, their Ritz vectors (k, b), and
    ‖P⊥GQ‖²_F, the off-diagonal block's mass, float64 scalar)."""
    b = start.shape[1]
    blocks = [_orth(start, None)]
    products = []
    for j in range(depth):
        y = a @ (a.T @ blocks[-1])
        products.append(y)
        if j + 1 < depth:
            blocks.append(_orth(y, torch.cat(blocks, 1)))
    v, gv = torch.cat(blocks, 1), torch.cat(products, 1)
    h = (v.T @ gv).double()
    theta, coef = torch.linalg.eigh((h + h.T) / 2)
    theta, coef = theta.flip(0)[:b], coef.flip(1)[:, :b]
    q = v @ coef.to(v.dtype)
    gq = gv.double() @ coef  # G·Q, from the products already made
    cross = (gq.square().sum() - theta.square().sum()).clamp_min(0)
    # G's float32 products are accurate to ~eps·θ₁: a Ritz value under RITZ_FLOOR·eps·θ₁
    # (σ ≲ 1e-3·σ₁) is rounding (a rank-deficient layer's zero), read as 0
    floor = RITZ_FLOOR * torch.finfo(torch.float32).eps * theta[:1].clamp_min(0)
    return torch.where(theta > floor, theta, 0.0), q, cross


def slq(a: torch.Tensor, q: torch.Tensor, probes: int, steps: int, seed: int
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature of the deflated P⊥A (P⊥ = I − QQᵀ) from `probes` random unit start
    vectors in range(P⊥): (nodes σ (probes, steps), weights (probes, steps), each probe's
    summing to 1), float64. Golub–Kahan bidiagonalisation, all probes as one block, the
    vectors as rows ((probes, k) @ (k, N): one GEMM per product; the per-probe
    reorthogonalisation a batched matrix–vector product)."""
    k, big = a.shape
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(probes, k, generator=gen).to(a.device, a.dtype)
    for _ in range(2):
        u = u - (u @ q) @ q.T
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
    us = torch.zeros(probes, steps, k, dtype=a.dtype, device=a.device)
    vs = torch.zeros(probes, steps, big, dtype=a.dtype, device=a.device)
    alpha = torch.zeros(probes, steps, dtype=torch.float64, device=a.device)
    beta = torch.zeros(probes, steps, dtype=torch.float64, device=a.device)
    v_prev = torch.zeros(probes, big, dtype=a.dtype, device=a.device)
    scale = torch.linalg.matrix_norm(q.T @ a, ord=2) if q.shape[1] else a.norm()

    def reorth(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        for _ in range(2):  # twice is enough (Kahan)
            coef = torch.bmm(basis, x.unsqueeze(2))  # (P, j, 1)
            x = x - torch.bmm(coef.transpose(1, 2), basis).squeeze(1)
        return x

    for j in range(steps):
        us[:, j] = u
        v = u @ a - beta[:, j:j + 1].to(a.dtype) * v_prev
        if j:
            v = reorth(v, vs[:, :j])
        norm = v.norm(dim=1)
        # An exhausted Krylov space leaves rounding noise (~eps·σ₁): there the probe stops,
        # and the zero rows it leaves in the bidiagonal carry zero weight.
        live = norm > 1e-6 * scale
        alpha[:, j] = torch.where(live, norm, 0.0).double()
        v = torch.where(live[:, None], v / norm.clamp_min(1e-30)[:, None], 0.0)
        vs[:, j] = v
        v_prev = v
        if j + 1 == steps:
            break
        u = v @ a.T - alpha[:, j:j + 1].to(a.dtype) * u
        u = u - (u @ q) @ q.T  # stay off the top block: its σ are counted exactly
        u = reorth(u, us[:, :j + 1])
        u = u - (u @ q) @ q.T
        norm = u.norm(dim=1)
        live = norm > 1e-6 * scale
        beta[:, j + 1] = torch.where(live, norm, 0.0).double()
        u = torch.where(live[:, None], u / norm.clamp_min(1e-30)[:, None], 0.0)
    # lower bidiagonal B (steps × steps): α on the diagonal, β below; G's Lanczos T = BBᵀ
    bd = torch.diag_embed(alpha) + torch.diag_embed(beta[:, 1:], -1)
    left, sigma, _ = torch.linalg.svd(torch.nan_to_num(bd))
    return sigma, left[:, 0, :].square()


def _corrected(values: torch.Tensor, control: torch.Tensor, known: torch.Tensor
               ) -> torch.Tensor:
    """Mean of per-probe estimates `values` (P,), corrected by their least-squares regression
    on `control` (P,), whose true mean `known` is exact (a control variate)."""
    vc, cc = values - values.mean(), control - control.mean()
    slope = (vc * cc).sum() / cc.square().sum().clamp_min(1e-300)
    return values.mean() - slope * (control.mean() - known)


def _quantiles(nodes: torch.Tensor, mass: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` values, descending, of a discrete measure (nodes, mass summing to count):
    value at rank t (1-based) where the cumulative mass from the top reaches t − ½, each node's
    mass centred on it, linear in between (the ends clamp to the extreme nodes)."""
    # No filtering of zero-mass nodes (a boolean index would read back to the host on CUDA):
    # they lie between their neighbours in value, so interpolating through them stays
    # monotone; the zero nodes of a probe whose Krylov space ran out sit at the bottom, where
    # such a (rank-deficient) remainder's values are 0 anyway.
    order = nodes.argsort(descending=True)
    x, w = nodes[order], mass[order]
    mid = w.cumsum(0) - w / 2
    t = torch.arange(count, dtype=mid.dtype, device=mid.device) + 0.5
    if mid.numel() == 1:
        return x.expand(count).clone()
    hi = torch.searchsorted(mid.contiguous(), t).clamp(1, mid.numel() - 1)
    lo = hi - 1
    span = (mid[hi] - mid[lo]).clamp_min(1e-300)
    frac = ((t - mid[lo]) / span).clamp(0, 1)
    return x[lo] + (x[hi] - x[lo]) * frac


def spectrum(w: torch.Tensor, start: torch.Tensor | None, *, top: int = TOP,
             probes: int = PROBES, steps: int = STEPS, depth: int | None = None,
             seed: int = 0) -> WideSpectrum:
    """The wide path for a batch of matrices w (B, m, n): see the module docstring. `start`:
    last sample's top vectors (B, k, top), or None (cold). `seed`: of the SLQ probes (fixed,
    so a layer's estimates do not jitter between samples by the draw alone)."""
    b, m, n = w.shape
    k, big = min(m, n), max(m, n)
    top = min(top, k)
    if depth is None:
        depth = COLD_DEPTH if start is None else WARM_DEPTH
    svs, vecs = [], []
    names = ("stable_rank", "effective_rank", "participation_ratio")
    ranks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for i in range(b):
        a = w[i] if m <= n else w[i].T  # k × N, a view: BLAS takes the transpose as a flag
        if start is None:
            gen = torch.Generator().manual_seed(k)
            q0 = torch.randn(k, top, generator=gen).to(a.device, a.dtype)
        else:  # a direction dropped last time (zero column: rank-deficient) starts afresh
            gen = torch.Generator().manual_seed(k)
            fresh = torch.randn(k, top, generator=gen).to(a.device, a.dtype)
            q0 = torch.where(start[i].norm(dim=0) > 0, start[i], fresh)
        theta, q, cross = top_subspace(a, q0, depth)
        fro2 = torch.linalg.vector_norm(a, dtype=torch.float64).square()
        rest = k - top
        sv_top = theta.sqrt()
        if rest > 0:
            nodes, weights = slq(a, q, probes, steps, seed=k + 1 + seed)
            # float32 products resolve σ down to ~eps·√N·σ₁: below NOISE times that a node is
            # rounding (a rank-deficient layer's zeros), read as 0 as the exact path's floor
            floor = NOISE * torch.finfo(torch.float32).eps * math.sqrt(big) * sv_top[0]
            nodes = torch.where(nodes > floor, nodes, 0.0)
            # per probe, the quadrature estimate of the mean over the rest's k − top values
            mean = {
                "s": (weights * nodes).sum(1),
                "slogs": (weights * _xlogx(nodes)).sum(1),
                "s2": (weights * nodes.square()).sum(1),
                "s4": (weights * nodes.pow(4)).sum(1),
            }
            known = (fro2 - theta.sum()).clamp_min(0) / rest  # the rest's mean σ², exact
            est = {key: rest * _corrected(val, mean["s2"], known) for key, val in mean.items()}
            est["s2"] = rest * known
            # the pooled measure, each probe's weights scaled to the rest's count; then
            # rescaled so its Σσ² matches the exact one
            pooled = _quantiles(nodes.flatten(), (weights * rest / probes).flatten(), rest)
            have = pooled.square().sum()
            pooled = torch.where(have > 0, pooled * (est["s2"] / have.clamp_min(1e-300)).sqrt(),
                                 pooled)
            sv = torch.cat([sv_top, pooled.clamp_max(sv_top[-1])])
        else:
            zero = torch.zeros((), dtype=torch.float64, device=w.device)
            est = {"s": zero, "slogs": zero, "s4": zero}
            sv = sv_top
        total = sv_top.sum() + est["s"].clamp_min(0)
        xlogx = _xlogx(sv_top).sum() + est["slogs"]
        # H = −Σ (σ/S) ln(σ/S) = ln S − Σ σ ln σ / S
        entropy = total.log() - xlogx / total
        ranks["effective_rank"].append(entropy.exp())
        ranks["stable_rank"].append(fro2 / theta[0])
        s4 = theta.square().sum() + 2 * cross + est["s4"].clamp_min(0)
        ranks["participation_ratio"].append(fro2.square() / s4)
        svs.append(sv.float())
        vecs.append(q)
    return WideSpectrum(torch.stack(svs), torch.stack(vecs),
                        {name: torch.stack(ranks[name]) for name in names})


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    """x·ln x with 0·ln 0 = 0."""
    return torch.where(x > 0, x * x.clamp_min(1e-300).log(), torch.zeros_like(x))


def cost_flops(m: int, n: int, depth: int, top: int = TOP, probes: int = PROBES,
               steps: int = STEPS) -> float:
    """Flops (2 per multiply-add) of one matrix's wide spectrum (the GEMMs with W; see the module
    docstring)."""
    return 4.0 * m * n * (depth * top + steps * probes)


