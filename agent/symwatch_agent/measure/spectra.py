"""Spectral indicators of batches of matrices: the rank family and the mirror spectrum.

All functions take a batch `(B, m, n)` of float32 matrices (one shape group of layers) and
return per-matrix tensors on the same device; nothing reads a value back to the host, except
`lanczos_sigma1`'s stopping test, on the CPU only.

With singular values σ₁ ≥ σ₂ ≥ … ≥ σ_k (k = min(m, n)):

- stable rank          ‖W‖_F² / σ₁² = Σσ² / σ₁²                         1 ≤ · ≤ k
- effective rank       exp(−Σ p_i ln p_i), p_i = σ_i / Σσ  (Roy & Vetterli 2007)    1 ≤ · ≤ k
- participation ratio  (Σσ²)² / Σσ⁴                                        1 ≤ · ≤ k
- numerical rank       #{σ_i > τ}, τ chosen by the caller

A rank-r matrix with r equal singular values reads exactly r on all four. The scale-free ones
(stable, effective, participation) differ in how they weigh a spread spectrum: stable rank
only sees the top value, participation ratio weighs by σ⁴, effective rank by σ.

Mirror spectrum of a factor pair W₂W₁ (W₁: h × n, W₂: o × h, nothing in between): the
eigenvalues of M = W₁W₁ᵀ + W₂ᵀW₂ (h × h). Under a rotation of the hidden space,
W₁ → RW₁, W₂ → W₂Rᵀ with R orthogonal, M → RMRᵀ, so its eigenvalues are invariant exactly;
under a general W₁ → AW₁, W₂ → W₂A⁻¹ (which leaves the product unchanged) they are not.
For a balanced pair (W₁W₁ᵀ = W₂ᵀW₂, what gradient flow from small init keeps) M's eigenvalues
are 2·s_i, twice the product's singular values; a direction with λ ≈ 0 is a hidden direction
that neither factor uses: the rotation symmetry is restored there.

Cost: `gram_eigvals` is one batched Gram product O(B·m·n·k) plus eigvalsh O(B·k³), both in
float64 (accuracy: see gram_eigvals), about a third of an SVD of the matrix;
`warm_eigvals` the same Gram product plus one GEMM GV instead of the eigensolver;
`count_eigvals_above` one LDLᵀ, O(B·k³/3); `power_sigma1` is 2·iters matrix-vector products,
O(iters·B·m·n); `lanczos_sigma1` (the cheap tier's σ₁: on the CPU the steps its residual test
asks for, 3–30, most often 3–5 from a recent vector; on a GPU 30 the first time, 12 warm) the
same plus O(B·steps²·n) for reorthogonalisation.
"""

from __future__ import annotations

import torch


# Below this fraction of λ₁ (the largest diagonal of T so far) a new Lanczos vector is rounding
# noise: the Krylov space is exhausted (lanczos_sigma1).
EXHAUSTED = 1e-4

GRAM_BLOCK = 192  # columns of G per product when G is built a block of rows at a time


def gram(w: torch.Tensor) -> torch.Tensor:
    """The smaller (k × k) Gram matrix of each matrix: WWᵀ if m ≤ n, else WᵀW (float32 GEMM).

    G is symmetric, so only its lower triangle is computed, a block of rows at a time
    (block i against blocks 0..i: 5/8 of the products at 4 blocks), then mirrored. At GPT-2
    sizes (k = 768, the long side 768–3072) that measured 1.5–2× faster than the one full
    product on a 2-core CPU, more than the flops alone: the full batched product took a slower
    GEMM path there. Each entry is the same dot product either way."""
    m, n = w.shape[-2:]
    k = min(m, n)
    blocks = max(1, min(4, k // GRAM_BLOCK))
    if blocks == 1:
        return w @ w.transpose(-1, -2) if m <= n else w.transpose(-1, -2) @ w
    g = torch.empty(*w.shape[:-2], k, k, dtype=w.dtype, device=w.device)
    edges = [round(i * k / blocks) for i in range(blocks + 1)]
    for lo, hi in zip(edges, edges[1:]):
        if m <= n:  # G = WWᵀ: rows lo:hi of W against rows 0:hi
            g[..., lo:hi, :hi] = w[..., lo:hi, :] @ w[..., :hi, :].transpose(-1, -2)
        else:  # G = WᵀW: columns lo:hi against columns 0:hi
            g[..., lo:hi, :hi] = w[..., :, lo:hi].transpose(-1, -2) @ w[..., :, :hi]
    lower = g.tril()
    return lower + lower.tril(-1).transpose(-1, -2)


def _floored(eig: torch.Tensor) -> torch.Tensor:
    """Descending eigenvalues with those below eigvalsh's noise floor set to exactly 0.

    eigvalsh is accurate to about k·eps·σ₁² in absolute terms, so an eigenvalue below that is
    noise: such values are set to exactly 0, so a rank-r matrix reads effective rank r, not r
    plus noise. In float64 (gram_eigvals) the floor is σ ≲ √(k·1.1e-16)·σ₁ ≈ 4e-7·σ₁ at
    k = 768, below the float32 rounding of the weights themselves; in float32 (the warm path's
    eigh) it is σ ≲ √(k·1.2e-7)·σ₁, ≈ 1e-2·σ₁ at k = 768, which drops a heavy tail."""
    floor = eig.shape[-1] * torch.finfo(eig.dtype).eps * eig[..., :1].clamp_min(0)
    return torch.where(eig > floor, eig, torch.zeros_like(eig))


# The float64 copy gram_eigvals makes of a batch is taken this many bytes at a time.
FLOAT64_CHUNK_BYTES = 1 << 26
# A float32 Gram's eigenvalues are off by up to ~eps₃₂·σ₁² each (measured 2–8e-8·σ₁² on
# rank-8 matrices, k = 64–768): this many times eps₃₂·σ₁² is the error gram_eigvals assumes.
GRAM32_NOISE = 4.0
# The float32 Gram is kept where that error moves the rank family by less than this bound.
GRAM32_TOLERANCE = 1e-3
# Matrices with k up to this go to float64 at once (they cost little either way, and a
# rank-deficient one then reads its rank exactly).
GRAM32_MIN_DIM = 128


def rank_error_bound(eig: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """How far (relative) the effective rank of descending eigenvalues σ² (B, k) may be off
    when each may be off by δ (B, 1) or (B, k) in σ² units. σ_i moves by up to
    q_i·Σσ, q_i = min(σ_i, δ/(2σ_i))/Σσ, and the entropy by q_i·|1 + ln p_i| (its derivative
    in p_i), plus (Σq)·(1 + H) from renormalising the rest (H the entropy; Σq summed as
    below). Where σ_i² ≤ δ the
    value may be all noise, of one sign (the zeros of a rank-deficient matrix read as positive
    noise): those add up linearly. Where σ_i² > δ the errors are rounding errors of the Gram's
    entries projected on different eigenvectors, of either sign: those add in quadrature. A
    first-order estimate; it bounds the stable rank and participation ratio's error as well."""
    sv = eig.double().clamp_min(0).sqrt()
    delta = delta.double().expand_as(sv)
    total = sv.sum(-1, keepdim=True).clamp_min(1e-300)
    noise = sv.square() <= delta
    q = torch.where(noise, sv, delta / (2 * sv).clamp_min(1e-300)) / total
    q = q.clamp_min(1e-300)
    p = (sv / total).clamp_min(1e-300)
    entropy = -(p * p.log()).sum(-1)
    # for a noise value p_i ≤ q_i: |1 + ln p_i| ≤ 1 + ln(1/q_i) where it is all noise
    weight = torch.where(noise, 1 - q.log(), (1 + p.log()).abs())
    term = q * weight
    one_sided = torch.where(noise, term, torch.zeros_like(term)).sum(-1)
    either = torch.where(noise, torch.zeros_like(term), term).square().sum(-1).sqrt()
    moved = (torch.where(noise, q, torch.zeros_like(q)).sum(-1)
             + torch.where(noise, torch.zeros_like(q), q).square().sum(-1).sqrt())
    return one_sided + either + moved * (1 + entropy)


def gram_eigvals(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues σ² of the smaller (k × k) Gram matrix of each matrix, descending, float64
    (the cold path, what the full tier uses): the rank family within 1e-3 relative of a
    float64 SVD (tests/agent/test_spectra_accuracy.py; docs/metrics.md, error budget).

    eigvalsh is always float64: in float32 its noise floor (k·eps·σ₁², σ ≈ 1e-2·σ₁ at k = 768)
    wiped out the tail of heavy-tailed spectra (effective rank 40.8 for σ_i = 1/i, k = 768,
    exact 152). The Gram product is float32 where that is accurate enough and float64 where
    not: a float32 Gram moves each eigenvalue by up to δ = GRAM32_NOISE·eps₃₂·σ₁², so each σ_i
    by up to min(σ_i, δ/(2σ_i)); where that could move the effective rank by more than
    GRAM32_TOLERANCE relative (a rank-deficient matrix, whose zeros read as ~3e-4·σ₁ noise
    each: +4 % effective rank at rank 8; or a tail under ~1e-3·σ₁), or where k ≤
    GRAM32_MIN_DIM, that matrix is done again with a float64 Gram. Bulk
    and GPT-2-like rectangular weights keep the float32 product (its cost is over half the
    spectra's); on CUDA every matrix takes the float64 Gram (deciding would read back to the
    host on the training thread). Costs: docs/metrics.md *Cost*. The float64 copy is made
    FLOAT64_CHUNK_BYTES at a time."""
    b, m, n = w.shape
    k = min(m, n)
    if w.device.type == "cpu" and k > GRAM32_MIN_DIM:
        eig = torch.linalg.eigvalsh(gram(w).double()).flip(-1)
        delta = GRAM32_NOISE * torch.finfo(torch.float32).eps * eig[..., :1].clamp_min(0)
        moved = rank_error_bound(eig, delta)
        redo = (~(moved <= GRAM32_TOLERANCE)).nonzero().flatten().tolist()
    else:
        eig = torch.empty(b, k, dtype=torch.float64, device=w.device)
        redo = list(range(b))
    per = max(1, FLOAT64_CHUNK_BYTES // max(1, m * n * 8))
    for i in range(0, len(redo), per):
        rows = redo[i:i + per]
        eig[rows] = torch.linalg.eigvalsh(gram(w[rows].double())).flip(-1)
    return _floored(eig)


def gram_eigh(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, floored) and eigenvectors (columns, same order) of Gram
    matrices g (B, k, k): the exact decomposition a warm start later reuses (about twice
    eigvalsh's cost)."""
    eig, vec = torch.linalg.eigh(g)
    return _floored(eig.flip(-1)), vec.flip(-1)


def warm_eigvals(g: torch.Tensor, vec: torch.Tensor, top: int = 16
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvalue estimates of g (B, k, k) from an earlier sample's eigenvectors `vec`.

    In the old eigenbasis the new Gram matrix is B = VᵀGV, nearly diagonal when the weights
    moved a little. Its diagonal estimates the eigenvalues to second order in the off-diagonal
    entries; the `top` largest are replaced by the Rayleigh–Ritz values of their block (the
    eigenvalues of that small block: σ₁ with no gap below it, as at a random matrix's edge).
    Only GV is formed (one k³ GEMM, no eigensolver on k × k), the block's rows from its columns.

    Returns (estimates descending, band, drift):
    - band: per estimate, the residual norm of its vector, ‖Gv − θv‖ (the diagonal's columns
      vᵢ, or the top block's Ritz vectors): an eigenvalue of G lies within it, so an estimate
      within `band` of a threshold makes a count there ambiguous;
    - drift: ‖B − blockdiag(B)‖_F / ‖G‖_F, how far the old eigenbasis is from diagonalising G
      (‖B‖_F = ‖G‖_F, so it costs no more than the diagonal).
    Sums of squares in float64: the residuals are differences of nearly equal numbers."""
    b, k, _ = g.shape
    gv = g @ vec
    gv64, vec64 = gv.double(), vec.double()
    diag = (vec64 * gv64).sum(-2)  # bᵢᵢ = vᵢᵀGvᵢ
    col2 = gv64.square().sum(-2)  # ‖Gvᵢ‖² = Σⱼ bⱼᵢ²
    p = min(top, k)
    order = diag.argsort(-1, descending=True)
    head, tail = order[..., :p], order[..., p:]
    cols = head.unsqueeze(-2).expand(b, k, p)
    block = vec64.gather(-1, cols).transpose(-1, -2) @ gv64.gather(-1, cols)  # (B, p, p)
    block = (block + block.transpose(-1, -2)) / 2
    ritz, coef = torch.linalg.eigh(block)
    # each Ritz vector y = V_p z has residual ‖Gy‖² − θ² (Gy = (GV_p) z, already at hand)
    ritz_band = ((gv64.gather(-1, cols) @ coef).square().sum(-2) - ritz.square()).clamp_min(0)
    rest = diag.gather(-1, tail)
    rest_band = (col2.gather(-1, tail) - rest.square()).clamp_min(0).sqrt()
    est = torch.cat([ritz, rest], -1)
    band = torch.cat([ritz_band.sqrt(), rest_band], -1)
    est, perm = est.sort(-1, descending=True)
    band = band.gather(-1, perm)
    total2 = g.double().square().sum((-1, -2))
    kept2 = block.square().sum((-1, -2)) + rest.square().sum(-1)
    drift = ((total2 - kept2).clamp_min(0) / total2.clamp_min(1e-300)).sqrt()
    return _floored(est.clamp_min(0)).float(), band.float(), drift.float()


def count_eigvals_above(g: torch.Tensor, tau2: torch.Tensor) -> torch.Tensor:
    """#{λ > τ²} per symmetric matrix g (B, k, k) without its eigenvalues: by Sylvester's law
    of inertia it is the number of negative eigenvalues of τ²I − G, read off the block
    diagonal of its Bunch–Kaufman LDLᵀ factorization (a third of eigvalsh's flops, none of
    its sequential tridiagonal reduction). Returned as float (B,). A 1×1 pivot counts when
    negative; a 2×2 pivot (pivots[i] = pivots[i+1] < 0 in LAPACK's lower storage) always has
    one eigenvalue of each sign."""
    k = g.shape[-1]
    eye = torch.eye(k, dtype=g.dtype, device=g.device)
    ld, pivots = torch.linalg.ldl_factor(tau2[:, None, None] * eye - g)
    d = ld.diagonal(dim1=-2, dim2=-1)
    negative = ((d < 0) & (pivots > 0)).sum(-1) + (pivots < 0).sum(-1) // 2
    return negative.to(g.dtype)


def singular_values(w: torch.Tensor) -> torch.Tensor:
    """σ of each matrix, descending: (B, min(m, n)), float64 (gram_eigvals)."""
    return gram_eigvals(w).sqrt()


def rank_family(sv: torch.Tensor) -> dict[str, torch.Tensor]:
    """stable_rank, effective_rank, participation_ratio from descending singular values (B, k).
    An all-zero matrix gives NaN (undefined), never a fake number."""
    s2 = sv.square()
    sum2 = s2.sum(-1)
    stable = sum2 / s2[..., 0]
    total = sv.sum(-1, keepdim=True)
    p = sv / total
    # 0·ln 0 = 0; where total is 0 the whole row is NaN (0/0), which we keep.
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-38)), torch.zeros_like(p))
    effective = torch.exp(-plogp.sum(-1))
    effective = torch.where(total.squeeze(-1) > 0, effective, torch.full_like(effective, float("nan")))
    participation = sum2.square() / s2.square().sum(-1)
    return {"stable_rank": stable, "effective_rank": effective,
            "participation_ratio": participation}


def count_above(values: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """#{values > τ} per row, as float (B,)."""
    return (values > tau.unsqueeze(-1)).sum(-1).to(values.dtype)


def power_sigma1(w: torch.Tensor, v: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """σ₁ of each matrix by power iteration on WᵀW from `v` (B, n); returns (σ₁, new v).
    Warm-started from the previous sample's vector a few iterations suffice once the top
    direction has settled; σ₁ = ‖Wv‖ is a lower bound that converges from below."""
    for _ in range(iters):
        u = _times(w, v)  # (B, 1, m)
        # uᵀW rather than Wᵀu: the same product without a transposed operand, which CPU
        # batched matmul handles many times slower
        v = torch.bmm(u, w).squeeze(1)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return _times(w, v).squeeze(1).norm(dim=1), v


def _times(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W v for each matrix, as a row (B, 1, m): vᵀWᵀ. CPU batched matmul of a matrix by a
    column (bmm(W, v)) takes a slow path, 8–15× slower than this row times the transposed
    view at widths 256–1024 on one thread (measured: 0.95 against 0.12 ms for 12 × 256²),
    and it was most of the cheap tier's cost; the two differ only by float rounding."""
    return torch.bmm(v.unsqueeze(1), w.transpose(1, 2))


def lanczos_sigma1(w: torch.Tensor, v: torch.Tensor, steps: int, tol: float | None = None,
                   least: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """σ₁ of each matrix by Lanczos on WᵀW from `v` (B, n), with full reorthogonalisation;
    returns (σ₁, its Ritz vector), the start of the next visit.

    `steps` is the most it takes. With `tol` (CPU only: the test reads the host) a matrix is
    done, after at least `least` steps, once its σ₁² is known within `tol`, relatively: from
    the top Ritz pair's residual r (some eigenvalue lies within r of it, and within r²/δ when
    the others are δ away; δ taken from the next Ritz value). At least 3 steps: a Ritz pair
    from fewer is too coarse for the test's gap estimate; 3 rather than 4 (until 2026-12-07)
    cut the GPT-style benchmark's whole-model cheap round 13.0 → 11.3 ms (median of 30
    each, interleaved in one run, visits 50 steps apart: benchmarks/cheap_round.py
    --compare-least 4), σ₁² still within 0.025 % at the 95th percentile (docs/metrics.md, the
    sigma1-visits table). From a recent vector that is 3–5 steps on most layers; a random
    matrix (no gap below σ₁, which power iteration crawls through) takes 10–30, and an exhausted Krylov space (rank below the steps) stops at its
    rank. Once half the batch is done the rest go on without it (a copy of their weights),
    else one slow layer kept a whole shape group at 20 steps.

    Each step: one product W q and one uᵀW (no transposed operand: see _times), two
    Gram–Schmidt passes against the whole basis (unfilled rows are zero), and the
    tridiagonal T = QᵀWᵀWQ kept from the first pass's coefficients (column j of QᵀAQ) and the
    new vector's norm (its subdiagonal)."""
    if tol is not None and w.device.type == "cpu":
        return _lanczos_tested(w, v, steps, tol, least)
    b, _, n = w.shape
    k = max(1, min(steps, n))
    basis = torch.zeros(b, k, n, dtype=w.dtype, device=w.device)
    t = torch.zeros(b, k, k, dtype=w.dtype, device=w.device)  # lower triangle used
    q = (v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)).unsqueeze(1)  # (B, 1, n)
    scale = torch.zeros(b, 1, dtype=w.dtype, device=w.device)
    for j in range(k):
        z, coef = _lanczos_step(w, q, basis, j)
        t[:, :, j] = coef[:, 0]
        norm = z.norm(dim=2)  # (B, 1)
        scale = torch.maximum(scale, coef[:, 0, j:j + 1].abs())
        # An exhausted Krylov space leaves only rounding noise (~eps·λ₁): normalising it would
        # bring back what reorthogonalisation removed, so below EXHAUSTED·λ₁ the space counts
        # as invariant (σ₁ has converged) and q = 0 (later steps add zero rows to T).
        norm = torch.where(norm > EXHAUSTED * scale, norm, 0.0)
        if j + 1 == k:
            break
        t[:, j + 1, j] = norm[:, 0]
        q = torch.where(norm[:, :, None] > 0, z / norm.clamp_min(1e-30)[:, :, None], 0.0)
    theta, y = torch.linalg.eigh(t)
    top = y[:, :, -1:].transpose(1, 2)  # (B, 1, k)
    return theta[:, -1].clamp_min(0).sqrt(), torch.bmm(top, basis).squeeze(1)


def _lanczos_step(w: torch.Tensor, q: torch.Tensor, basis: torch.Tensor, j: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One Lanczos step from q (B, 1, n), the basis' row j: (WᵀWq)ᵀ orthogonalised twice
    against the basis (twice is enough, Kahan: keeps it orthogonal in float32), and the first
    pass's coefficients (B, 1, k), column j of QᵀWᵀWQ."""
    basis[:, j:j + 1] = q
    z = torch.bmm(torch.bmm(q, w.transpose(1, 2)), w)  # (WᵀW q)ᵀ as a row
    coef = torch.bmm(z, basis.transpose(1, 2))
    z = torch.baddbmm(z, coef, basis, alpha=-1)
    z = torch.baddbmm(z, torch.bmm(z, basis.transpose(1, 2)), basis, alpha=-1)
    return z, coef


def _lanczos_tested(w: torch.Tensor, v: torch.Tensor, steps: int, tol: float, least: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """lanczos_sigma1 with its stopping test, on the CPU. The products stay batched tensor
    operations; T's bookkeeping and the test are host numbers (T in float64): on the
    few-matrix batches of the cheap tier a step was ~30 small tensor operations, ~3 µs each,
    as long as its products."""
    b, _, n = w.shape
    k = max(1, min(steps, n))
    s1 = [0.0] * b
    ritz = torch.zeros(b, n, dtype=w.dtype)
    rows = list(range(b))  # where each matrix still going is in the outputs
    basis = torch.zeros(b, k, n, dtype=w.dtype)
    t = torch.zeros(b, k, k, dtype=torch.float64)  # lower triangle used
    q = (v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)).unsqueeze(1)  # (B, 1, n)
    scale = [0.0] * b

    def finish(sel: list[int], theta: torch.Tensor, y: torch.Tensor, j: int) -> None:
        top = theta[sel, -1].tolist()
        vec = torch.bmm(y[sel, :, -1:].transpose(1, 2).to(w.dtype), basis[sel, :j]).squeeze(1)
        for r, value, row in zip(sel, top, vec):
            s1[rows[r]] = max(value, 0.0) ** 0.5
            ritz[rows[r]] = row

    for j in range(k):
        z, coef = _lanczos_step(w, q, basis, j)
        t[:, :, j] = coef[:, 0]
        scale = [max(s, abs(d)) for s, d in zip(scale, t[:, j, j].tolist())]
        # exhausted Krylov space: see lanczos_sigma1
        norms = z.norm(dim=2)[:, 0].tolist()
        norm = [x if x > EXHAUSTED * s else 0.0 for x, s in zip(norms, scale)]
        if j + 1 == k:
            break
        t[:, j + 1, j] = torch.tensor(norm, dtype=torch.float64)
        inv = torch.tensor([1 / x if x > 0 else 0.0 for x in norm], dtype=w.dtype)
        q = z * inv[:, None, None]
        if j + 1 < max(least, 2):
            continue
        theta, y = torch.linalg.eigh(t[:, :j + 1, :j + 1])
        done = _converged(theta[:, -2:].tolist(), y[:, -1, -1].tolist(), norm, tol)
        if all(done):
            finish(list(range(len(rows))), theta, y, j + 1)
            return torch.tensor(s1, dtype=w.dtype), ritz
        if 2 * sum(done) >= len(rows):
            finish([r for r, d in enumerate(done) if d], theta, y, j + 1)
            going = torch.tensor([not d for d in done])
            w, basis, t, q = w[going], basis[going], t[going], q[going]
            scale = [s for s, d in zip(scale, done) if not d]
            rows = [r for r, d in zip(rows, done) if not d]
    theta, y = torch.linalg.eigh(t)
    finish(list(range(len(rows))), theta, y, k)
    return torch.tensor(s1, dtype=w.dtype), ritz


def _converged(top2: list[list[float]], y_last: list[float], beta: list[float], tol: float
               ) -> list[bool]:
    """Which top Ritz values (each matrix's two largest Ritz values `top2`, the last
    component of the top Ritz vector `y_last`, the step's β) are within `tol` of an
    eigenvalue: the residual r = β·|y_last| bounds the distance, r²/δ with δ the gap to the
    next Ritz value (the usual estimate of the gap to the next eigenvalue) where that is
    smaller."""
    done = []
    for (second, first), last, b in zip(top2, y_last, beta):
        r = b * abs(last)
        gap = max(first - second, 1e-30)
        done.append(min(r, r * r / gap) <= tol * abs(first))
    return done


def mirror_eigvals(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of M = W₁W₁ᵀ + W₂ᵀW₂ for W₁ (B, h, n), W₂ (B, o, h): (B, h), descending."""
    m = w1 @ w1.transpose(1, 2) + w2.transpose(1, 2) @ w2
    return torch.linalg.eigvalsh(m).flip(-1).clamp_min(0)
