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


def duplicates(u: torch.Tensor, eps: float, live: torch.Tensor, *, proj_dim: int = 128,
               max_units: int = 4096, generator_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """u: (B, m, d) unit vectors, live: (B, m) bool → (duplicate_fraction, distinct_units).

    Cost O(B·m²·d'). Wide vectors are first normalised, then projected to `proj_dim` dims by a
    fixed Gaussian matrix (Johnson–Lindenstrauss): distances between unit directions, and so
    1 − cos = ‖û_i − û_j‖²/2 for near-duplicates, are kept to about ±2/√proj_dim relative
    (±18 % at 128), which moves the ε threshold by that factor, not the cosines of clearly
    distinct units. Layers with more than `max_units` units use the first `max_units` units
    (duplicates among them; the fractions are then estimates over that subset).
    """
    b, m, d = u.shape
    if m > max_units:
        u, live, m = u[:, :max_units], live[:, :max_units], max_units
    unit = u / u.norm(dim=2, keepdim=True).clamp_min(1e-30)
    if d > 2 * proj_dim:
        gen = torch.Generator(device="cpu").manual_seed(generator_seed + d)
        proj = torch.randn(d, proj_dim, generator=gen).to(u.device) / proj_dim ** 0.5
        unit = unit @ proj
        unit = unit / unit.norm(dim=2, keepdim=True).clamp_min(1e-30)
    cos = unit @ unit.transpose(1, 2)  # (B, m, m)
    both_live = live[:, :, None] & live[:, None, :]
    eye = torch.eye(m, dtype=torch.bool, device=u.device)
    close = (cos > 1 - eps) & both_live & ~eye
    dup = close.any(2) & live
    live_count = live.sum(1)
    fraction = dup.sum(1).float() / live_count.clamp_min(1)
    fraction = torch.where(live_count > 0, fraction, torch.full_like(fraction, float("nan")))
    earlier = torch.tril(torch.ones(m, m, dtype=torch.bool, device=u.device), diagonal=-1)
    has_earlier = (close & earlier).any(2)
    distinct = (live & ~has_earlier).sum(1).float()
    return fraction, distinct


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
