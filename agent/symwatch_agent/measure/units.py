"""Unit-level indicators: dead, balanced, duplicated units, softmax translation, scale invariance.

A layer's unit i has incoming weights w_in,i (row i of W), a bias b_i and outgoing weights
w_out,i (column i of each consumer's weight; see pairing.py). All functions take batches of
same-shaped layers and return per-layer tensors; nothing reads a value back to the host.

- dead_fraction     fraction of units with ‖u_i‖ ≤ ε·rms_j‖u_j‖, ‖u_i‖² = ‖w_in,i‖²+b_i²+‖w_out,i‖²
                    (sign-flip symmetry: a dead unit is its fixed point). RMS, not median, so a
                    mostly dead layer still has a scale to compare with.
- balance           Σ_i C_i, C_i = ‖w_in,i‖² + b_i² − ‖w_out,i‖² = ‖W_l‖²+‖b_l‖²−‖W_{l+1}‖²
                    (rescaling symmetry w_in·a, b·a, w_out/a: gradient flow conserves each C_i;
                    coupled L2 weight decay γ with SGD step η multiplies it by (1−ηγ)² per step)
- balance_norm      mean over live units of C_i / (‖w_in,i‖² + b_i² + ‖w_out,i‖²), in [−1, 1]:
                    0 balanced, ±1 one side of the unit is zero
- duplicate_fraction  fraction of live units whose nearest other unit has similarity > 1−ε
                    (permutation symmetry: duplicates are its fixed point). Only for units with
                    that symmetry (an elementwise nonlinearity before the consumers: the caller
                    decides, pairing.permutes). Through a positively homogeneous activation the
                    similarity is the cosine of [ŵ_in,i; b̂_i; ŵ_out,i], each side scaled to unit
                    norm (units equal up to the rescaling w_in·a, b·a, w_out/a are duplicates);
                    otherwise 1 − ‖u_i − u_j‖²/(‖u_i‖² + ‖u_j‖²) (exact copies only).
                    distinct_units: live units with no duplicate among lower indices (the number
                    of duplicate groups when "duplicate of" is transitive).
- delta_*           the Δ_G order parameters (soft, delta_sign, delta_rescale, delta_perm,
                    delta_softmax, delta_modes): 0 at each symmetry's fixed set and at θ = 0,
                    units and modes weighed by x²/(x² + κ²) against an absolute scale κ.
- softmax_translation ‖1ᵀW‖ / (√C ‖W‖_F) for a classifier W (C × n), in [0, 1]: logits are
                    invariant to W → W + 1vᵀ under softmax; 0 means rows sum to zero.
- angular_update    angle between this sample's and the previous sample's weight (per channel,
                    mean, for per-channel norms; the whole matrix with its bias otherwise)
- effective_lr      η/‖w‖^p (per channel, mean; or over [W, b]): the angle a scale-invariant
                    weight's direction turns per step, up to a factor. Its gradient scales as
                    1/‖w‖: SGD's step η·g then turns it by ∝ η/‖w‖² (p = 2); the Adam family's
                    step (g over its own RMS) has a size set by η alone, so ∝ η/‖w‖ (p = 1).
                    p by the optimizer's family (lr_power); unknown families: not published.
"""

from __future__ import annotations

import functools

import torch


def dead_fraction(unit2: torch.Tensor, eps: float) -> torch.Tensor:
    """unit2: (B, m) squared unit norms → (B,) fraction dead."""
    rms = unit2.mean(1).sqrt()
    return (unit2.sqrt() <= eps * rms[:, None]).float().mean(1)


def balance(in2: torch.Tensor, out2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """in2 = ‖w_in,i‖²+b_i², out2 = ‖w_out,i‖², both (B, m) → (Σ C_i, mean normalised C_i).
    Units with all-zero weights (0/0) are left out of the mean; a layer with none left is NaN."""
    c = in2 - out2
    den = in2 + out2
    live = den > 0
    norm = torch.where(live, c / den.clamp_min(1e-38), torch.zeros_like(c))
    count = live.sum(1)
    mean = norm.sum(1) / count.clamp_min(1)
    mean = torch.where(count > 0, mean, torch.full_like(mean, float("nan")))
    return c.sum(1), mean


def soft(x2: torch.Tensor, kappa: float) -> torch.Tensor:
    """x²/(x² + κ²): how far a strength x (given squared) stands out of the scale κ: 0 at
    x = 0, ½ at x = κ, → 1 for x ≫ κ. The Δ_G below weigh units and modes with it, so that a
    tiny initialisation (all strengths ≪ κ, i.e. θ ≈ 0, the most symmetric point) reads ≈ 0."""
    return x2 / (x2 + kappa * kappa)


def delta_sign(unit2: torch.Tensor, kappa: float) -> torch.Tensor:
    """Sign-flip Δ: (1/m) Σ_i ‖u_i‖²/(‖u_i‖² + κ²), unit2 (B, m) → (B,). The fixed set of unit
    i's sign flip is u_i = 0 (a dead unit), at distance ‖u_i‖: each unit counts by how alive it
    is against the absolute scale κ. 0 at θ = 0 and when every unit is dead; → 1 when every
    unit is well above κ."""
    return soft(unit2, kappa).mean(1)


def delta_rescale(in2: torch.Tensor, out2: torch.Tensor, kappa: float) -> torch.Tensor:
    """Rescaling Δ: Σ_i |C_i| / Σ_i (‖u_i‖² + κ²), C_i = in2_i − out2_i, (B, m) → (B,) in
    [0, 1). 0 at the balanced state (C = 0, what weight decay drives to) and at θ = 0; near 1
    when one side of every unit is zero and the units are well above κ."""
    m = in2.shape[1]
    return (in2 - out2).abs().sum(1) / ((in2 + out2).sum(1) + m * kappa * kappa)


def delta_perm(rho2: torch.Tensor, nearest: torch.Tensor, kappa: float) -> torch.Tensor:
    """Permutation Δ: Σ_i ρ_i²(1 − c_i) / Σ_i (ρ_i² + κ²), (B, m) → (B,) in [0, 1]. c_i: unit
    i's similarity to its nearest other unit (cosine, or the exact-match similarity; see
    duplicates), ρ_i² its squared strength: ρ_i²(1 − c_i) is the distance² from u_i to the
    nearest other unit's direction at u_i's own norm (a unit merged with another is at 0).
    0 at θ = 0 and when every unit has a duplicate; near 1 for strong, mutually orthogonal
    units."""
    m = rho2.shape[1]
    return (rho2 * (1 - nearest)).sum(1) / (rho2.sum(1) + m * kappa * kappa)


def delta_softmax(w: torch.Tensor, kappa: float) -> torch.Tensor:
    """Softmax-translation Δ: ‖1ᵀW‖ / √(C (‖W‖²_F + C κ²)) = ‖mean row‖/√(mean ‖row‖² + κ²),
    w (B, C, n) → (B,) in [0, 1): softmax_translation damped by the rows' own scale against κ,
    so 0 at W = 0 (and at a tiny W) as at centred rows."""
    c = w.shape[1]
    return w.sum(1).norm(dim=1) / (c * (w.flatten(1).square().sum(1) + c * kappa * kappa)).sqrt()


def delta_modes(sv: torch.Tensor, count: torch.Tensor, kappa: float) -> torch.Tensor:
    """Rank (or mirror) Δ: (1/k) Σ_{j ≤ count} σ_j²/(σ_j² + κ²), sv (B, k) descending, count
    (B,) the modes above the bulk → (B,) in [0, 1). Each learned mode counts by its strength
    against κ; the random bulk (what no mode has broken) not at all. 0 at rank 0 and at a
    random (tiny or default) initialisation; rises one step per learned mode."""
    k = sv.shape[1]
    above = torch.arange(k, device=sv.device)[None, :] < count[:, None]
    return torch.where(above, soft(sv.square(), kappa), 0.0).sum(1) / k


def duplicates(u: torch.Tensor | list[torch.Tensor], eps: float, live: torch.Tensor, *,
               proj_dim: int = 128, max_units: int = 4096, generator_seed: int = 0,
               chunk_elements: int = 1 << 24, links: bool = False,
               scales: list[torch.Tensor | None] | None = None, exact: bool = False,
               nearest: bool = False) -> tuple[torch.Tensor, ...]:
    """u: (B, m, d) unit vectors — or a list of parts (B, m, d_i), read as their concatenation
    along the last dim without building it — and live: (B, m) bool → (duplicate_fraction,
    distinct_units).

    Cost O(B·m²·d'). Wide vectors are projected to `proj_dim` dims by a fixed Gaussian matrix
    (Johnson–Lindenstrauss), then normalised: distances between unit directions, and so
    1 − cos = ‖û_i − û_j‖²/2 for near-duplicates, are kept to about ±2/√proj_dim relative
    (±18 % at 128), which moves the ε threshold by that factor, not the cosines of clearly
    distinct units. The projection is linear, so each part is projected by its own block of
    rows of the matrix (a transposed view costs no copy). Layers with more than `max_units`
    units use the first `max_units` units (duplicates among them; the fractions are then
    estimates over that subset). Only the cosines below the diagonal are formed, a block of
    rows (about `chunk_elements` values) at a time.

    `links`: also return (B, m') long, for each unit the index of its most similar
    lower-indexed duplicate (−1: none), read from the same cosines (the full tier's unit view
    builds the duplicate groups from it; see detail.py).

    `scales`: per part, None or (B, m) factors each unit's part is multiplied by (after the
    projection, which is linear: no scaled copy of the weights). The caller passes 1/‖w_in,i‖
    for the incoming parts and 1/‖w_out,i‖ for the outgoing ones when a positively
    homogeneous activation lies in between, so units are compared up to a positive scale of
    each side (`w_in·a, b·a, w_out/a` is the same unit). `exact`: compare the vectors
    themselves, not their directions: similarity 2⟨u_i, u_j⟩/(‖u_i‖²+‖u_j‖²) =
    1 − ‖u_i − u_j‖²/(‖u_i‖²+‖u_j‖²) in place of the cosine (no rescaling symmetry: GELU,
    tanh, … between the layers). `nearest`: also return (B, m') each unit's largest
    similarity to any other unit, clamped to [0, 1] (for delta_perm; 0 for dead units).
    Returned in the order (fraction, distinct[, nearest][, links]).
    """
    parts = [u] if isinstance(u, torch.Tensor) else list(u)
    b, m = parts[0].shape[:2]
    if m > max_units:
        parts, live, m = [p[:, :max_units] for p in parts], live[:, :max_units], max_units
    factors = list(scales) if scales is not None else [None] * len(parts)
    factors = [f if f is None else f[:, :m, None] for f in factors]
    d = sum(p.shape[2] for p in parts)
    if d > 2 * proj_dim:
        proj = _projection(d, proj_dim, generator_seed, parts[0].device, parts[0].dtype)
        rows, at = [], 0
        for p, f in zip(parts, factors):
            row = p @ proj[at:at + p.shape[2]]
            rows.append(row if f is None else row * f)
            at += p.shape[2]
        vec = torch.stack(rows).sum(0) if len(rows) > 1 else rows[0]
    else:
        scaled = [p if f is None else p * f for p, f in zip(parts, factors)]
        vec = torch.cat(scaled, dim=2) if len(scaled) > 1 else scaled[0]
    # Dead units become zero vectors: cosine 0 with everything, so never a duplicate.
    norm = vec.norm(dim=2, keepdim=True)
    unit = torch.where(live[:, :, None] & (norm > 0), vec / norm.clamp_min(1e-30), 0.0)
    if exact:  # 2⟨u_i,u_j⟩/(‖u_i‖²+‖u_j‖²) = cos·2ab/(a²+b²), a, b the two norms
        size = torch.where(live & (norm[:, :, 0] > 0), norm[:, :, 0], 0.0)
    threshold = 1 - eps
    # Only the lower triangle (j < i) is formed, in blocks of rows: half the products of the
    # full m × m matrix. Row maxima there say "has a lower-indexed duplicate"; column maxima
    # say "has a higher-indexed one" (cosines are symmetric); a duplicate is either.
    earlier = torch.zeros(b, m, dtype=torch.bool, device=unit.device)
    later = torch.full((b, m), -2.0, dtype=unit.dtype, device=unit.device)
    first = torch.full((b, m), -1, dtype=torch.long, device=unit.device) if links else None
    before = torch.full((b, m), -2.0, dtype=unit.dtype, device=unit.device)
    # eight blocks or more (the triangle then costs ~56 % of the square), at least 256 rows
    # each so the products stay efficient, and at most `chunk_elements` values at a time
    rows = max(1, min(max(256, -(-m // 8)), chunk_elements // max(1, b * m)))
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        cos = unit[:, r0:r1] @ unit[:, :r1].transpose(1, 2)  # (b, r1 − r0, r1)
        if exact:
            a, c = size[:, r0:r1, None], size[:, None, :r1]
            cos = cos * (2 * a * c / (a.square() + c.square()).clamp_min(1e-30))
        cos[:, :, r0:r1] = torch.tril(cos[:, :, r0:r1], diagonal=-1)  # keep j < i
        if first is None:
            best = cos.amax(2)
        else:
            best, arg = cos.max(2)
            first[:, r0:r1] = torch.where(best > threshold, arg, -1)
        earlier[:, r0:r1] = best > threshold
        if nearest:  # the row maximum over j < i (and the zeroed diagonal: 0, harmless)
            before[:, r0:r1] = best
        later[:, :r1] = torch.maximum(later[:, :r1], cos.amax(1))
    dup = earlier | (later > threshold)
    live_count = live.sum(1)
    fraction = dup.sum(1).float() / live_count.clamp_min(1)
    fraction = torch.where(live_count > 0, fraction, torch.full_like(fraction, float("nan")))
    distinct = (live & ~earlier).sum(1).float()
    result: tuple[torch.Tensor, ...] = (fraction, distinct)
    if nearest:
        # `later` also saw the row's own diagonal (zeroed: 0), harmless after the clamp
        result += (torch.maximum(before, later).clamp(0, 1),)
    if first is not None:
        result += (first,)
    return result


@functools.lru_cache(maxsize=16)
def _projection(d: int, proj_dim: int, seed: int, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """The fixed Gaussian projection for `d`-dim unit vectors (the same every sample), kept on
    the device: no host-to-device copy per layer and sample. A model has few distinct widths."""
    gen = torch.Generator(device="cpu").manual_seed(seed + d)
    return (torch.randn(d, proj_dim, generator=gen) / proj_dim ** 0.5).to(device, dtype)


def softmax_translation(w: torch.Tensor) -> torch.Tensor:
    """w: (B, C, n) → ‖1ᵀW‖ / (√C ‖W‖_F), NaN for an all-zero W."""
    c = w.shape[1]
    return w.sum(1).norm(dim=1) / (c ** 0.5 * w.flatten(1).norm(dim=1))


def angle(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Angle between a and b along `dim`, 2·atan2(‖â−b̂‖, ‖â+b̂‖): accurate for tiny angles,
    where arccos of a float32 cosine cannot go below ~5e-4 rad."""
    an = a / a.norm(dim=dim, keepdim=True).clamp_min(1e-30)
    bn = b / b.norm(dim=dim, keepdim=True).clamp_min(1e-30)
    return 2 * torch.atan2((an - bn).norm(dim=dim), (an + bn).norm(dim=dim))


# Optimizers whose step has a size set by η alone, whatever the gradient's scale (the update is
# the gradient divided by a running estimate of its own magnitude, or its sign): a
# scale-invariant weight's gradient scales as 1/‖w‖, its step does not, so the direction turns
# by ~η/‖w‖ per step. Matched on the class and its bases, by name, so wrappers and fused or
# 8-bit variants (FusedAdam, AdamW8bit, …) count too.
ADAPTIVE = ("adam", "adamw", "nadam", "radam", "adamax", "sparseadam", "adagrad", "rmsprop",
            "adadelta", "lion")
# Plain gradient steps (with momentum or averaging): the step scales with the gradient, so the
# direction turns by ~η·‖g‖/‖w‖ ∝ η/‖w‖².
GRADIENT = ("sgd", "asgd")


def lr_power(optimizer: object) -> int | None:
    """The power p in effective_lr = η/‖w‖^p for this optimizer's family: 2 for SGD, 1 for the
    Adam family and other step-normalising optimizers; None when the family is not known
    (effective_lr is then not published rather than wrong)."""
    names = [cls.__name__.lower() for cls in type(optimizer).__mro__]
    for name in names:
        if name in GRADIENT:
            return 2
        if name in ADAPTIVE or "adam" in name or "lion" in name:
            return 1
    return None
