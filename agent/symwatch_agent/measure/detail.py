"""The full tier's per-layer detail: singular values and unit-level facts, for METRICS `detail`.

The engine's full tier already computes every layer's singular values (Gram eigvalsh), the
numerical-rank threshold τ, each unit's squared norm (dead units) and the unit cosines
(duplicates). This module keeps what the layer detail screen shows from those tensors — no
extra decomposition, and nothing read back to the host on the training thread:

- `cap_spectrum` (training thread, on the device): at most SPECTRUM_CAP values, the top
  SPECTRUM_TOP exactly plus evenly spaced quantiles of the rest (a long tail's shape, not its
  every value);
- `to_wire` (publisher thread, after the sample's ready event): the host copy of those tensors
  → `{"spectrum", "count", "rank_threshold", "units", "dead", "dead_count", "duplicates",
  "duplicate_count"}`; the dead list and the duplicate groups each capped at UNITS_CAP unit
  indices per layer (the counts are exact).

Wire format: docs/protocol.md, `metrics.detail`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SPECTRUM_CAP = 128  # values sent per layer at most
SPECTRUM_TOP = 64  # of which the largest, exactly
UNITS_CAP = 256  # unit indices sent per layer at most, dead ones and duplicates each


@dataclass
class GroupDetail:
    """One shape group's detail tensors (rows in the order of `idxs`), still on the device."""

    idxs: list[int]
    spectrum: torch.Tensor | None = None  # (B, ≤ SPECTRUM_CAP) σ, descending
    count: int = 0  # min(m, n): how many singular values the layer has
    tau: torch.Tensor | None = None  # (B,) the numerical-rank threshold
    dead: torch.Tensor | None = None  # (B, m) bool
    links: torch.Tensor | None = None  # (B, m') long: a lower-indexed duplicate, −1 none


def cap_spectrum(sv: torch.Tensor) -> torch.Tensor:
    """(B, k) descending σ → (B, min(k, SPECTRUM_CAP)): the top SPECTRUM_TOP values, then
    evenly spaced quantiles of the rest (its largest and smallest included)."""
    k = sv.shape[1]
    if k <= SPECTRUM_CAP:
        return sv
    rest = SPECTRUM_CAP - SPECTRUM_TOP
    tail = torch.linspace(SPECTRUM_TOP, k - 1, rest, device=sv.device).round().long()
    pick = torch.cat([torch.arange(SPECTRUM_TOP, device=sv.device), tail])
    return sv[:, pick]


def to_wire(groups: list[GroupDetail], names: list[str]) -> dict[str, dict[str, Any]]:
    """Publisher thread: the detail tensors → `metrics.detail`, keyed by layer name. A
    spectrum holding NaN/inf is left out (the agent also drops the whole entry of a layer its
    sample reports as non-finite)."""
    out: dict[str, dict[str, Any]] = {}
    for g in groups:
        spectrum = g.spectrum.cpu().tolist() if g.spectrum is not None else None
        tau = g.tau.cpu().tolist() if g.tau is not None else None
        dead = g.dead.cpu() if g.dead is not None else None
        # (layer row, unit, duplicate-of) for the linked units only
        linked: dict[int, list[tuple[int, int]]] = {}
        if g.links is not None:
            links = g.links.cpu()
            where = (links >= 0).nonzero()
            for (j, i), k in zip(where.tolist(), links[where[:, 0], where[:, 1]].tolist()):
                linked.setdefault(j, []).append((i, k))
        for j, i in enumerate(g.idxs):
            entry: dict[str, Any] = out.setdefault(names[i], {})
            if spectrum is not None and tau is not None:
                values = spectrum[j]
                if all(v == v and v != float("inf") for v in values) and tau[j] == tau[j]:
                    # 6 significant digits: a float32 σ's shape, at a third of the bytes
                    entry["spectrum"] = [float(f"{v:.6g}") for v in values]
                    entry["count"] = g.count
                    entry["rank_threshold"] = float(f"{tau[j]:.6g}")
            if dead is not None:
                row = dead[j]
                idx = row.nonzero().flatten().tolist()
                entry["units"] = int(row.numel())
                entry["dead"] = idx[:UNITS_CAP]
                entry["dead_count"] = len(idx)
            if g.links is not None:
                groups_, total = linked_groups(linked.get(j, []))
                entry["duplicates"] = _cap_groups(groups_, UNITS_CAP)
                entry["duplicate_count"] = total
    return {name: entry for name, entry in out.items() if entry}


def duplicate_groups(links: list[int]) -> tuple[list[list[int]], int]:
    """Each unit's link to a lower-indexed duplicate → the clusters (each sorted, ordered by
    their first unit) and the number of units in them. "Duplicate of" is joined
    transitively (union–find), as distinct_units counts them."""
    n = len(links)
    return linked_groups([(i, j) for i, j in enumerate(links) if 0 <= j < n])


def linked_groups(pairs: list[tuple[int, int]]) -> tuple[list[list[int]], int]:
    """duplicate_groups from the (unit, duplicate-of) pairs alone: the union–find touches only
    units in a pair. Most units of a layer have no duplicate, and a Python loop over every
    unit of every layer cost milliseconds per full sample on the publisher thread."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in sorted(parent):
        members.setdefault(root(i), []).append(i)
    groups = sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
    return groups, sum(len(m) for m in groups)


def _cap_groups(groups: list[list[int]], budget: int) -> list[list[int]]:
    """Whole groups while they fit in `budget` indices; a first group larger than the whole
    budget is cut to it (so a huge cluster still shows)."""
    kept: list[list[int]] = []
    left = max(budget, 2)
    for g in groups:
        if len(g) > left:
            if not kept and left >= 2:
                kept.append(g[:left])
            break
        kept.append(g)
        left -= len(g)
    return kept
