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
- duplicate_fraction  fraction of live units whose nearest other unit has cosine > 1−ε over
                    u_i = [w_in,i; b_i; w_out,i] (permutation symmetry: duplicates are its fixed
                    point). distinct_units: live units with no duplicate among lower indices
                    (the number of duplicate groups when "duplicate of" is transitive).
- softmax_translation ‖1ᵀW‖ / (√C ‖W‖_F) for a classifier W (C × n), in [0, 1]: logits are
                    invariant to W → W + 1vᵀ under softmax; 0 means rows sum to zero.
- angular_update    angle between this sample's and the previous sample's weight (per channel,
                    mean, for per-channel norms; the whole matrix with its bias otherwise)
- effective_lr      η/‖w‖² (per channel, mean; or η/‖W‖_F²): the step a scale-invariant weight's
                    direction takes under SGD, since its gradient scales as 1/‖w‖.
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


def duplicates(u: torch.Tensor | list[torch.Tensor], eps: float, live: torch.Tensor, *,
               proj_dim: int = 128, max_units: int = 4096, generator_seed: int = 0,
               chunk_elements: int = 1 << 24, links: bool = False
               ) -> tuple[torch.Tensor, ...]:
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
    """
    parts = [u] if isinstance(u, torch.Tensor) else list(u)
    b, m = parts[0].shape[:2]
    if m > max_units:
        parts, live, m = [p[:, :max_units] for p in parts], live[:, :max_units], max_units
    d = sum(p.shape[2] for p in parts)
    if d > 2 * proj_dim:
        proj = _projection(d, proj_dim, generator_seed, parts[0].device, parts[0].dtype)
        rows, at = [], 0
        for p in parts:
            rows.append(p @ proj[at:at + p.shape[2]])
            at += p.shape[2]
        vec = torch.stack(rows).sum(0) if len(rows) > 1 else rows[0]
    else:
        vec = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    # Dead units become zero vectors: cosine 0 with everything, so never a duplicate.
    norm = vec.norm(dim=2, keepdim=True)
    unit = torch.where(live[:, :, None] & (norm > 0), vec / norm.clamp_min(1e-30), 0.0)
    threshold = 1 - eps
    # Only the lower triangle (j < i) is formed, in blocks of rows: half the products of the
    # full m × m matrix. Row maxima there say "has a lower-indexed duplicate"; column maxima
    # say "has a higher-indexed one" (cosines are symmetric); a duplicate is either.
    earlier = torch.zeros(b, m, dtype=torch.bool, device=unit.device)
    later = torch.full((b, m), -2.0, dtype=unit.dtype, device=unit.device)
    first = torch.full((b, m), -1, dtype=torch.long, device=unit.device) if links else None
    # eight blocks or more (the triangle then costs ~56 % of the square), at least 256 rows
    # each so the products stay efficient, and at most `chunk_elements` values at a time
    rows = max(1, min(max(256, -(-m // 8)), chunk_elements // max(1, b * m)))
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        cos = unit[:, r0:r1] @ unit[:, :r1].transpose(1, 2)  # (b, r1 − r0, r1)
        cos[:, :, r0:r1] = torch.tril(cos[:, :, r0:r1], diagonal=-1)  # keep j < i
        if first is None:
            earlier[:, r0:r1] = cos.amax(2) > threshold
        else:
            best, arg = cos.max(2)
            earlier[:, r0:r1] = best > threshold
            first[:, r0:r1] = torch.where(best > threshold, arg, -1)
        later[:, :r1] = torch.maximum(later[:, :r1], cos.amax(1))
    dup = earlier | (later > threshold)
    live_count = live.sum(1)
    fraction = dup.sum(1).float() / live_count.clamp_min(1)
    fraction = torch.where(live_count > 0, fraction, torch.full_like(fraction, float("nan")))
    distinct = (live & ~earlier).sum(1).float()
    if first is not None:
        return fraction, distinct, first
    return fraction, distinct


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
