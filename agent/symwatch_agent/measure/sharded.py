"""Layers whose weights FSDP shards across ranks: found, and measured from the local shard only.

Under FSDP no rank holds a layer's whole matrix between steps, and gathering it would be a
collective on the agent's own schedule, which the agent never issues (docs/distributed.md).
So for a sharded layer each rank publishes what is *additive* over shards, computed from its
local piece:

- `shard_sumsq`: Σ w² over the local elements (the observer's weight_norm = √ Σ over shards),
- `shard_absmax`: max |w| (max over shards; null for an empty shard),
- `shard_numel`: number of local elements (sums to the layer's size),
- `shard_nonfinite`: NaN/inf count (any > 0: the layer is non-finite),

in a `metrics` message flagged `"sharded": {"shards": S, "index": i}`: this rank holds shard
`i` of `S`. The observer (symwatch/state/shards.py) combines one message per shard index of the same
step. Indicators that need the whole matrix (spectra, ranks, units, balance, …) are not
computed for sharded layers; the agent says so once.

Found here:

- FSDP2 (`fully_shard`): the parameter is a DTensor; `to_local()` is the shard (no
  communication). S and i come from the mesh dimensions whose placement is `Shard`: with HSDP
  (`Replicate, Shard`) every replica group holds a full copy, and the observer needs one
  message per shard index, from any replica.
- FSDP1 (`FullyShardedDataParallel`, with or without `use_orig_params`): the FlatParameter's
  local shard and its per-parameter offsets (`_shard_param_infos`); S and i are the handle's
  world size and rank. `NO_SHARD` holds replicas (S = 1).

The measurement itself is one small reduction per layer, sampled at every `every`-th step on
every rank alike (never skipped by one rank's time budget, so that all shards of a step
arrive); on CUDA it is queued on the agent's side stream and copied back without blocking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from symwatch_agent.measure.layers import Layer

SHARD_VALUES = ("shard_sumsq", "shard_absmax", "shard_numel", "shard_nonfinite")


@dataclass(eq=False)
class ShardedLayer:
    name: str
    layer: Layer
    read: Callable[[], torch.Tensor | None]  # this rank's elements of the weight (any shape)
    shards: int  # S: how many shards make one full copy
    index: int  # i: which of them this rank holds

    def describe(self) -> dict[str, object]:
        """The META row: the full weight's shape and size (FSDP2's DTensor reports the global
        shape; FSDP1's original shapes are kept in the FlatParameter)."""
        row = self.layer.describe()
        row["name"] = self.name
        shape = _global_shape(self.layer)
        if shape is not None:
            row["shape"] = shape
            row["params"] = int(math.prod(shape))
        row["sharded"] = True
        row.pop("rank", None)  # its spectra are never computed: N/A, not pending, in a viewer
        return row


def find_sharded(models: Mapping[str, nn.Module], layers: Sequence[Layer]) -> list[ShardedLayer]:
    """The measured layers whose weight FSDP (1 or 2) shards; [] for anything else."""
    flat = _fsdp1_segments(models)
    found = []
    for layer in layers:
        weight = layer.weight
        if _is_dtensor(weight):
            shards, index = _dtensor_shard(weight)
            found.append(ShardedLayer(clean_name(layer.name), layer, _dtensor_reader(layer),
                                      shards, index))
        elif id(layer.module) in flat and layer.kind != "attention":
            reader, shards, index, shape = flat[id(layer.module)]
            if shape is not None:
                layer._global_shape = shape  # type: ignore[attr-defined]
            found.append(ShardedLayer(clean_name(layer.name), layer, reader, shards, index))
    return found


def clean_name(name: str) -> str:
    """A layer name without FSDP1's wrapper components (`_fsdp_wrapped_module.`), so that it
    reads as in the unwrapped model."""
    return name.replace("_fsdp_wrapped_module.", "").replace("._fsdp_wrapped_module", "")


def measure(sharded: Sequence[ShardedLayer]) -> torch.Tensor:
    """(layers × 4) float32 on the shards' device: sumsq, absmax (NaN for an empty shard),
    numel, non-finite count (a row of NaN when a shard cannot be read now). No host sync and
    no host-to-device copy: every number is made on the device."""
    locals_ = [item.read() for item in sharded]
    device = next((t.device for t in locals_ if t is not None), torch.device("cpu"))
    nan = float("nan")
    rows = []
    for local in locals_:
        if local is None:
            rows.append(torch.full((4,), nan, device=device))
            continue
        x = local.detach().reshape(-1).float()
        count = x.new_full((), float(x.numel()))
        if x.numel() == 0:
            zero = x.new_zeros(())
            rows.append(torch.stack([zero, x.new_full((), nan), count, zero]))
            continue
        rows.append(torch.stack([x.square().sum(), x.abs().max(), count,
                                 (~torch.isfinite(x)).sum().float()]))
    if not rows:
        return torch.zeros((0, 4))
    return torch.stack(rows)


def decode(sharded: Sequence[ShardedLayer], rows: list[list[float]]) -> dict[tuple[int, int], dict]:
    """Host rows → METRICS payloads, one per (shards, index) (normally just one)."""
    out: dict[tuple[int, int], dict] = {}
    for item, (sumsq, absmax, numel, nonfinite) in zip(sharded, rows):
        payload = out.setdefault((item.shards, item.index), {
            "values": {}, "sharded": {"shards": item.shards, "index": item.index}})
        payload["values"][item.name] = {
            "shard_sumsq": _number(sumsq), "shard_absmax": _number(absmax),
            "shard_numel": int(numel) if math.isfinite(numel) else None,
            "shard_nonfinite": int(nonfinite) if math.isfinite(nonfinite) else None}
    return out


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _global_shape(layer: Layer) -> list[int] | None:
    shape = getattr(layer, "_global_shape", None)
    return list(shape) if shape is not None else (
        list(layer.weight.shape) if _is_dtensor(layer.weight) else None)


# -- FSDP2 -------------------------------------------------------------------------------------

def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor  # noqa: PLC0415 (lazy: torch.distributed)
    except ImportError:  # a torch without distributed support: no FSDP2 either
        return False
    return isinstance(t, DTensor)


def _dtensor_shard(t: Any) -> tuple[int, int]:
    """(S, i) from the mesh: the dimensions whose placement shards the tensor, read locally
    (get_coordinate asks no other rank)."""
    mesh = t.device_mesh
    coordinate = mesh.get_coordinate() or [0] * mesh.ndim
    shards, index = 1, 0
    for dim, placement in enumerate(t.placements):
        if placement.is_shard():
            size = mesh.size(dim)
            index = index * size + int(coordinate[dim])
            shards *= size
    return shards, index


def _dtensor_reader(layer: Layer) -> Callable[[], torch.Tensor | None]:
    module = layer.module

    def read() -> torch.Tensor | None:
        # FSDP2 swaps the module's parameter for the unsharded one during forward/backward and
        # back to the DTensor after; at an optimizer step it is the sharded DTensor.
        weight = getattr(module, "weight", None)
        if not _is_dtensor(weight):
            return None  # unsharded at this instant: N/A rather than count a full copy
        return weight.to_local()

    return read


# -- FSDP1 -------------------------------------------------------------------------------------

def _fsdp1_segments(models: Mapping[str, nn.Module]) -> dict[int, tuple[Any, ...]]:
    """id(module) → (reader of its weight's local elements, S, i, full shape) for modules whose
    weight lives in an FSDP1 FlatParameter."""
    out: dict[int, tuple[Any, ...]] = {}
    seen: set[int] = set()
    for model in models.values():
        for module in model.modules():
            handle = getattr(module, "_handle", None)
            flat = getattr(handle, "flat_param", None)
            if flat is None or id(flat) in seen:
                continue
            infos = getattr(flat, "_param_infos", None)
            shard_infos = getattr(flat, "_shard_param_infos", None)
            if infos is None or shard_infos is None:
                continue
            seen.add(id(flat))
            sharded = bool(getattr(handle, "uses_sharded_strategy", True))
            shards = int(getattr(handle, "world_size", 1)) if sharded else 1
            index = int(getattr(handle, "rank", 0)) if sharded else 0
            shapes = getattr(flat, "_shapes", None) or [None] * len(infos)
            for info, shard, shape in zip(infos, shard_infos, shapes):
                if info.param_name != "weight":
                    continue
                out[id(info.module)] = (_flat_reader(handle, shard), shards, index,
                                        list(shape) if shape is not None else None)
    return out


def _flat_reader(handle: Any, shard: Any) -> Callable[[], torch.Tensor | None]:
    def read() -> torch.Tensor | None:
        flat = handle.flat_param
        if not shard.in_shard:
            return flat.detach()[:0]  # none of this weight is on this rank: an empty shard
        local = flat.detach()
        # Between steps the FlatParameter holds the local shard (padded at the end).
        if local.numel() < shard.offset_in_shard + shard.numel_in_shard:
            return None
        return local[shard.offset_in_shard:shard.offset_in_shard + shard.numel_in_shard]

    return read
