"""Representations: the rank of a layer's activations and neural collapse of the classifier's
features (docs/metrics.md, "Representations").

Weights say what a layer *could* represent; its activations on real data say what it does.
Both figures are computed on the host in float64 from rows the forward hooks copied
(symwatch_agent/hooks/activations.py), on the publisher thread: nothing here runs on the
training thread.

- `activation_rank(x)`: `act_erank`, the effective rank (Roy & Vetterli 2007, the weights'
  `effective_rank` formula, spectra.rank_family) of the centred activations X − 1μᵀ
  (rows × units); and `act_modes`, how many of its singular values stand above a
  Marchenko–Pastur bulk fitted to the lower half of the spectrum itself (bulk.bulk_edge, the
  edge the weights' `modes` uses, without the carried reference: activations of one batch are
  not the same matrix from sample to sample). Centring takes one dimension, so the fit is
  against (rows − 1) × units when rows ≤ units. Symmetric (collapsed) state: rank 1 (or 0:
  constant activations read erank NaN → null).
- `collapse(h, y, w)`: NC1–NC3 of Papyan, Han & Donoho 2020 ("Prevalence of neural collapse
  during the terminal phase of deep learning training", PNAS 117(40)), on the features h
  (n × d, the classifier's input), labels y (n,), classifier weight w (K × d), over the C
  classes present in the rows (at least two). Every product is taken to C × C size:

  - M (C × d): class means minus their average (for balanced classes, Papyan's global mean;
    on a sampled batch with unequal counts the average of the class means keeps a collapsed
    ETF at exactly 0); G = MMᵀ (C × C).
  - `nc1` = tr(Σ_W Σ_B⁺)/C, Σ_W = (1/n)Σ(h − μ_y)(h − μ_y)ᵀ, Σ_B = MᵀM/C. With
    (MᵀM)⁺ = Mᵀ(G⁺)²M this is ‖(H − μ_Y)Mᵀ G⁺‖²_F / n: an n × C product and a C × C
    pseudo-inverse (eigenvalues under 1e-10·λ_max dropped: balanced means have rank C − 1).
    0 = every sample at its class mean (collapse); random labels read ≫ 1.
  - `nc2` = mean over c ≠ c′ of |cos(M_c, M_c′) + 1/(C − 1)| (equiangularity) and
    `nc2_norm` = std/mean of ‖M_c‖ (equinorm): both 0 for a simplex ETF.
  - `nc3` = ‖W/‖W‖_F − M/‖M‖_F‖²_F with W the classifier rows of the present classes
    (self-duality): 0 when the classifier is the class means up to scale, ≈ 2 when unrelated,
    4 at most.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from symwatch_agent.measure import bulk as bulk_edges
from symwatch_agent.measure import spectra
from symwatch_agent.measure.layers import (
    CONV,
    EMBEDDING,
    LINEAR,
    NORM,
    PER_CHANNEL_NORMS,
    Layer,
)

# What a layer's output looks like: (name, module, the output dim holding the units, units,
# the classifier's weight as a (classes × features) matrix or None); hooks/activations.py's
# Target takes these fields.
Plan = tuple[str, nn.Module, int, int, Callable[[], torch.Tensor] | None]

# The classes present must be at least this many for NC1–NC3 (one class has no between-class
# scatter), and every row beyond the hooks' cap is left out (hooks/activations.py, ROW_CAP).
MIN_CLASSES = 2
# Eigenvalues of G under this share of the largest are its null space (float64, G built from
# float32 features: their rounding is ~1e-7 relative in M, 1e-14 in G).
PINV_RTOL = 1e-10
# Standard deviation of float32 rounding, relative to the value rounded (uniform on ±eps/2).
RMS_EPS = torch.finfo(torch.float32).eps / math.sqrt(12)


def activation_rank(x: torch.Tensor) -> tuple[float, int | None]:
    """(act_erank, act_modes) of activations x (rows × units). NaN / None where undefined:
    fewer than 3 rows or units, or constant activations (all zero once centred)."""
    x = x.detach().to("cpu", torch.float64)
    rows, units = x.shape
    if rows < 3 or units < 2 or not bool(torch.isfinite(x).all()):  # NaN/inf: null, never 0
        return float("nan"), None
    # The activations' own float32 rounding (eps/2 of each entry, a mean included) is an
    # isotropic bulk of edge ~eps·rms(x)·(√rows + √units)/√3: σ under twice that are
    # rounding, not directions (kept, a rank-1 batch with a large mean read erank 1.004).
    floor = (2 * RMS_EPS * x.square().mean().sqrt() * (math.sqrt(rows) + math.sqrt(units)))
    x = x - x.mean(0, keepdim=True)
    # σ from the smaller Gram matrix, float64 throughout (the rows are few: no float32 pass)
    g = x @ x.T if rows <= units else x.T @ x
    sv = torch.linalg.eigvalsh(g).flip(-1).clamp_min(0).sqrt()[None]  # (1, k), descending
    m = rows
    if rows <= units:  # centring removed one direction: that σ is 0 by construction
        sv, m = sv[:, :rows - 1], rows - 1
    sv = torch.where(sv > floor, sv, torch.zeros_like(sv))
    if not bool(sv[0, 0] > 0):
        return float("nan"), None
    erank = float(spectra.rank_family(sv)["effective_rank"][0])
    if min(m, units) < 2:
        return erank, 1
    enter = bulk_edges.bulk_edge(sv, m, units)[0]
    modes = int((sv[0] > enter[0]).sum())
    return erank, modes


def collapse(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
             ) -> dict[str, float]:
    """NC1, NC2 (`nc2`, `nc2_norm`) and NC3 (with `w`) of features h (n × d) with labels
    y (n,); rows whose label is negative (ignore_index) or not a row of `w` are left out.
    Empty when fewer than MIN_CLASSES classes are present."""
    h = h.detach().to("cpu", torch.float64)
    y = y.detach().to("cpu").reshape(-1).long()
    keep = y >= 0
    if w is not None:
        keep &= y < w.shape[0]
    if not bool(keep.all()):
        h, y = h[keep], y[keep]
    n = h.shape[0]
    if n < MIN_CLASSES or not bool(torch.isfinite(h).all()):
        return {}
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    c = classes.numel()
    if c < MIN_CLASSES:
        return {}
    means = torch.zeros(c, h.shape[1], dtype=h.dtype).index_add_(0, inverse, h)
    means /= counts[:, None].to(h.dtype)
    m = means - means.mean(0, keepdim=True)  # C × d, centred class means
    g = m @ m.T  # C × C
    eig, vec = torch.linalg.eigh(g)
    if not bool(eig[-1] > 0):  # every class mean equal: no between-class scatter
        return {}
    inv = torch.where(eig > PINV_RTOL * eig[-1], 1.0 / eig.clamp_min(1e-300),
                      torch.zeros_like(eig))
    g_pinv = (vec * inv) @ vec.T
    within = (h - means[inverse]) @ m.T  # n × C: each sample's deviation, seen by the means
    nc1 = float((within @ g_pinv).square().sum() / n)
    norms = g.diagonal().clamp_min(0).sqrt()
    out = {"nc1": nc1, "nc2_norm": float(norms.std(unbiased=False) / norms.mean())}
    cos = g / (norms[:, None] * norms[None, :]).clamp_min(1e-300)
    off = ~torch.eye(c, dtype=torch.bool)
    out["nc2"] = float((cos[off] + 1.0 / (c - 1)).abs().mean())
    if w is not None:
        wc = w.detach().to("cpu", torch.float64)[classes]
        wn, mn = wc.norm(), m.norm()
        if bool(wn > 0):
            # ‖a/‖a‖ − b/‖b‖‖² = 2 − 2⟨a, b⟩/(‖a‖‖b‖): ⟨W, M⟩ is the trace of the C × C WMᵀ
            out["nc3"] = float(2.0 - 2.0 * (wc * m).sum() / (wn * mn))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def plan(layers: list[Layer]) -> list[Plan]:
    """The layers whose outputs are captured, one per module: Linear, Conv, Embedding, norms
    (attention's q/k/v are views of one module whose output is not theirs: left out).
    Channels-first outputs (Conv, BatchNorm-like and GroupNorm) hold their units in dim 1."""
    out: list[Plan] = []
    seen: set[int] = set()
    for layer in layers:
        if layer.kind not in (LINEAR, CONV, EMBEDDING, NORM) or id(layer.module) in seen:
            continue
        seen.add(id(layer.module))
        channels_first = layer.kind == CONV or isinstance(
            layer.module, PER_CHANNEL_NORMS + (nn.GroupNorm,))
        weight = layer.matrix if layer.classifier and layer.kind == LINEAR else None
        out.append((layer.name, layer.module, 1 if channels_first else -1, layer.units, weight))
    return out


def measure(activations: dict[str, torch.Tensor],
            features: tuple[str, torch.Tensor, torch.Tensor, torch.Tensor] | None
            ) -> dict[str, dict[str, Any]]:
    """METRICS values: `act_erank`, `act_modes` per captured layer, `nc1`, `nc2`, `nc2_norm`,
    `nc3` on the classifier (null where undefined)."""
    values: dict[str, dict[str, Any]] = {}
    for name, x in activations.items():
        erank, modes = activation_rank(x)
        values[name] = {"act_erank": erank if math.isfinite(erank) else None,
                        "act_modes": modes}
    if features is not None:
        name, h, y, w = features
        found = collapse(h, y, w)
        if found:
            values.setdefault(name, {}).update(found)
    return values
