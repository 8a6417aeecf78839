"""Per-layer symmetry indicators, computed for all layers at once without per-layer host syncs.

`IndicatorEngine.compute()` returns one (layers × columns) tensor on the weights' device; the
caller moves it to the host in a single transfer (on CUDA, asynchronously from a side stream)
and `IndicatorEngine.decode()` turns the host rows into wire values. Formulas, per layer with
weight matrix W (m units × n inputs, a Conv's kernel flattened), singular values σ₁ ≥ σ₂ ≥ …:

- weight_norm     ‖W‖_F
- stable_rank     ‖W‖_F² / σ₁²                          (scale-free; 1 ≤ · ≤ min(m, n))
- numerical_rank  #{σ_k > τ},  τ = max(rel_tol · max σ₁ seen so far in this layer, abs_tol)
                  Relative to the largest σ₁ *seen*, not the current one, so that a rank drop
                  under weight decay reads as a drop; the absolute floor keeps the directions of
                  a tiny initialisation from counting, so the staircase of a small-init network
                  climbs from 0 instead of reading backwards (see SCIENCE.md's caveat).
- dead_fraction   fraction of units i with ‖u_i‖ ≤ dead_eps · rms_j ‖u_j‖, where
                  ‖u_i‖² = ‖W_i,:‖² + b_i² + ‖W_next[:, i]‖² (incoming, bias, outgoing weights).
                  The RMS rather than the median is the reference so a layer that is mostly dead
                  still has a non-zero scale to compare against.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from symwatch_agent.layers import Layer

INDICATORS = ("weight_norm", "stable_rank", "numerical_rank", "dead_fraction")
# Column order of the tensor compute() returns; the last column flags finite weights.
_COLUMNS = len(INDICATORS) + 1
_FINITE = len(INDICATORS)


@dataclass
class Group:
    """A snapshot of same-shaped layers' weights, measured together in one batched call."""

    idxs: list[int]
    weights: torch.Tensor  # (B, m, n) float32 copy
    unit_extra: torch.Tensor  # (B, m): bias² + Σ outgoing weight² per unit


class IndicatorEngine:
    """Holds the per-layer state the indicators need between samples (largest σ₁ seen, warm
    power-iteration vectors) and computes one sample for every layer."""

    def __init__(self, layers: Sequence[Layer], *, rel_tol: float = 0.3, abs_tol: float = 0.1,
                 dead_eps: float = 1e-2, max_svd_dim: int = 1024, power_iters: int = 4) -> None:
        self.layers = list(layers)
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self.dead_eps = dead_eps
        # Above this min(m, n) a full spectrum costs too much for every sample: stable rank then
        # comes from warm-started power iteration and numerical_rank is not computed (N/A).
        self.max_svd_dim = max_svd_dim
        self.power_iters = power_iters
        self._max_seen: dict[int, torch.Tensor] = {}
        self._power_vec: dict[int, torch.Tensor] = {}
        self.failed: dict[int, str] = {}  # layer index -> first error; such layers publish N/A

    @torch.no_grad()
    def compute(self) -> torch.Tensor:
        """One sample: a (len(layers), 5) float32 tensor. Nothing here reads a value back to
        the host. Equivalent to `measure(snapshot())`."""
        return self.measure(self.snapshot())

    @torch.no_grad()
    def snapshot(self) -> list[Group]:
        """Copy every layer's weights (as float32, grouped by matrix shape and device) plus
        each unit's bias² and outgoing-weight² sums. Once the copy is queued, the optimizer
        may update the live parameters: on CUDA the training stream waits for this part only,
        not for the spectra computed from it."""
        by_key: dict[tuple, list[int]] = defaultdict(list)
        for i, layer in enumerate(self.layers):
            if i not in self.failed:
                by_key[(layer.matrix_shape, layer.weight.device)].append(i)
        groups = []
        for ((m, n), _device), idxs in by_key.items():
            try:
                w = torch.stack([self.layers[i].weight.detach().reshape(m, n)
                                 for i in idxs]).float()  # (B, m, n)
                extra = torch.stack([self._bias_and_outgoing2(i, m, w.device) for i in idxs])
            except Exception as exc:  # weights we cannot read (e.g. sharded): switch them off
                self._fail(idxs, exc)
                continue
            groups.append(Group(idxs, w, extra))
        return groups

    @torch.no_grad()
    def measure(self, groups: list[Group]) -> torch.Tensor:
        device = self.layers[0].weight.device if self.layers else torch.device("cpu")
        out = torch.full((len(self.layers), _COLUMNS), float("nan"), device=device)
        for group in groups:
            try:
                rows = self._measure_group(group)
            except Exception as exc:
                self._fail(group.idxs, exc)
                continue
            out[group.idxs] = rows.to(device)
        return out

    def _fail(self, idxs: list[int], exc: BaseException) -> None:
        for i in idxs:
            self.failed[i] = f"{type(exc).__name__}: {exc}"

    def _measure_group(self, group: Group) -> torch.Tensor:
        idxs, w = group.idxs, group.weights
        finite = torch.isfinite(w).flatten(1).all(1) & torch.isfinite(group.unit_extra).all(1)
        w = torch.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0)
        fro2 = w.square().sum((1, 2))
        m, n = w.shape[1:]

        if min(m, n) <= self.max_svd_dim:
            sv = _singular_values(w)  # (B, min(m, n)), descending
            s1 = sv[:, 0]
        else:
            sv = None
            s1 = self._power_sigma1(w, idxs)

        max_seen = torch.stack([self._max_seen.get(i, torch.zeros((), device=w.device))
                                for i in idxs])
        max_seen = torch.where(finite, torch.maximum(max_seen, s1), max_seen)
        for j, i in enumerate(idxs):
            self._max_seen[i] = max_seen[j]
        if sv is not None:
            tau = torch.clamp(self.rel_tol * max_seen, min=self.abs_tol)
            nrank = (sv > tau[:, None]).sum(1).float()
        else:
            nrank = torch.full_like(s1, float("nan"))

        # ‖u_i‖²: incoming weights + bias² + outgoing weights, per unit. (B, m)
        unit2 = w.square().sum(2) + torch.nan_to_num(group.unit_extra)
        unit = unit2.sqrt()
        rms = unit2.mean(1).sqrt()
        dead = (unit <= self.dead_eps * rms[:, None]).float().mean(1)

        cols = [fro2.sqrt(), fro2 / s1.square(), nrank, dead, finite.float()]
        return torch.stack(cols, dim=1)

    def _bias_and_outgoing2(self, i: int, m: int, device: torch.device) -> torch.Tensor:
        layer = self.layers[i]
        extra = torch.zeros(m, device=device)
        if layer.bias is not None:
            extra = extra + layer.bias.detach().float().square()
        if layer.next_weight is not None:
            nxt = layer.next_weight.detach().float()  # (out', m, *k)
            extra = extra + nxt.square().transpose(0, 1).reshape(m, -1).sum(1)
        return extra

    def _power_sigma1(self, w: torch.Tensor, idxs: list[int]) -> torch.Tensor:
        """σ₁ by power iteration on WᵀW, warm-started from the previous sample's vector, so a
        few iterations suffice once the top direction has settled."""
        b, _, n = w.shape
        v = torch.stack([self._power_vec.get(i, torch.ones(n, device=w.device)) for i in idxs])
        for _ in range(self.power_iters):
            v = torch.bmm(w.transpose(1, 2), torch.bmm(w, v.unsqueeze(2))).squeeze(2)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        for j, i in enumerate(idxs):
            self._power_vec[i] = v[j]
        return torch.bmm(w, v.unsqueeze(2)).squeeze(2).norm(dim=1)

    def decode(self, rows: list[list[float]]) -> tuple[dict[str, dict[str, float | None]], list[str]]:
        """Host rows from compute() → (`values` for a METRICS message, names of layers whose
        weights hold NaN/inf). Non-finite numbers and failed layers become None (N/A)."""
        values: dict[str, dict[str, float | None]] = {}
        nonfinite: list[str] = []
        for layer, row in zip(self.layers, rows):
            finite = row[_FINITE] == 1.0
            if row[_FINITE] == 0.0:
                nonfinite.append(layer.name)
            layer_values = {name: (_finite_or_none(row[k]) if finite else None)
                            for k, name in enumerate(INDICATORS)}
            if layer_values["numerical_rank"] is not None:  # a count: publish it as one
                layer_values["numerical_rank"] = int(layer_values["numerical_rank"])
            values[layer.name] = layer_values
        return values, nonfinite


def _singular_values(w: torch.Tensor) -> torch.Tensor:
    """Singular values of a batch of matrices, descending, from the eigenvalues of the smaller
    Gram matrix: about half the cost of an SVD. Values below ~√eps·σ₁ lose relative precision,
    far below any threshold used here."""
    m, n = w.shape[1:]
    gram = w @ w.transpose(1, 2) if m <= n else w.transpose(1, 2) @ w  # (B, k, k), k = min
    eig = torch.linalg.eigvalsh(gram)  # ascending
    return eig.flip(1).clamp_min(0).sqrt()


def _finite_or_none(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None
