"""The update-to-weight ratio per layer (docs/metrics.md, `update_ratio`):

    update_ratio = ‖W_t − W_s‖ / ‖W_t‖ / (t − s)

between this sample (step t) and the layer's previous one (step s), per step. A rising ratio is
an early warning of instability (updates large against the weights they move: a learning rate
too high for the layer, or weights shrinking under weight decay); a ratio falling to ~0 is a
layer that stopped learning. No symmetry: a stability signal.

Cheap: not a copy of every weight (that doubles the model's memory), but a fixed random set of
at most ENTRIES entries per layer, the same entries every sample (one index per matrix shape,
from a private generator: the user's random stream is untouched), so
‖ΔW_idx‖/‖W_idx‖ estimates ‖ΔW‖/‖W‖ (the N/k scale of each norm cancels in the ratio). Exact
for a layer of at most ENTRIES entries. The error of the estimate, each norm a sum of k
squared entries: relative ≈ √(κ/(2k)) with κ the entries' squared-value kurtosis factor
(E x⁴/(E x²)² − 1: 2 for Gaussian entries, less for Adam's near-sign updates), so ~1.6 % at
k = 4096 for Gaussian-like updates; an update concentrated on few entries (an embedding whose
rows are touched by a few tokens) is seen only where the chosen entries fall, and reads noisier.

Per step: the net displacement between samples over the steps between them. Steps that cancel
(noise-dominated updates) add less than their sum: the figure is a drift rate, comparable from
sample to sample at a fixed sampling interval (and a per-step update ratio at `every=1`).
Memory: k floats per layer on the weights' device, plus one index per matrix shape.
"""

from __future__ import annotations

import torch

ENTRIES = 4096  # entries read per layer and sample


class UpdateTracker:
    """Per layer: the chosen entries' values at its last sample, and that sample's step."""

    def __init__(self, entries: int = ENTRIES, seed: int = 0) -> None:
        self.entries = entries
        self._gen = torch.Generator().manual_seed(seed)
        self._index: dict[tuple[int, torch.device], torch.Tensor | None] = {}
        self._prev: dict[int, tuple[torch.Tensor, int | None]] = {}

    def _chosen(self, size: int, device: torch.device) -> torch.Tensor | None:
        """The entries read of a matrix of `size` entries (None: all of them)."""
        key = (size, device)
        if key not in self._index:
            self._index[key] = (None if size <= self.entries else
                                torch.randperm(size, generator=self._gen)[:self.entries]
                                .sort().values.to(device))
        return self._index[key]

    @torch.no_grad()
    def measure(self, idxs: list[int], weights: torch.Tensor, step: int | None
                ) -> tuple[list[int], torch.Tensor] | None:
        """Same-shaped layers `idxs` (their weights (B, m, n), float32): the layers with a
        previous sample and their ratio (float32, NaN where ‖W‖ = 0 or no step passed); each
        layer's entries are kept for the next sample. No host sync."""
        flat = weights.reshape(weights.shape[0], -1)
        chosen = self._chosen(flat.shape[1], flat.device)
        now = (flat if chosen is None else flat.index_select(1, chosen)).float()
        rows, before, gaps = [], [], []
        for j, i in enumerate(idxs):
            prev = self._prev.get(i)
            if prev is not None and prev[0].shape == now[j].shape:
                steps = 1 if step is None or prev[1] is None else step - prev[1]
                if steps > 0:
                    rows.append(j)
                    before.append(prev[0])
                    gaps.append(float(steps))
            self._prev[i] = (now[j].clone(), step)
        if not rows:
            return None
        current = now[rows]
        moved = torch.linalg.vector_norm(current - torch.stack(before), dim=1)
        norm = torch.linalg.vector_norm(current, dim=1)
        gap = torch.tensor(gaps, dtype=norm.dtype)
        if norm.device.type == "cuda":  # pinned: the copy does not wait for the device
            gap = gap.pin_memory().to(norm.device, non_blocking=True)
        ratio = torch.where(norm > 0, moved / norm.clamp_min(1e-38), float("nan")) / gap
        return [idxs[j] for j in rows], ratio
