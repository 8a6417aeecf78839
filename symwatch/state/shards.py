"""Combine the per-shard figures of FSDP-sharded layers into whole-layer values (stdlib only).

Under FSDP each rank's agent publishes, for the layers it holds a shard of, only what is
additive over shards (agent/symwatch_agent/measure/sharded.py): Σw², max|w|, element and non-finite
counts, in a `metrics` message flagged `"sharded": {"shards": S, "index": i}`. This module
waits for one message per shard index 0…S−1 of the same step (from any replica, under HSDP)
and then yields one ordinary `metrics` message for the whole layers:

- `weight_norm` = √(Σ over shards of Σw²) (null when any shard is non-finite),
- `abs_max` = the largest shard maximum,
- `nonfinite`: the layers any shard found NaN/inf in.

Nothing else can be combined from shards; the layer table shows those columns as N/A. A step
whose shards do not all arrive (a rank died, messages dropped) is given up once `window` newer
steps are pending, and counted in `incomplete`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from symwatch.core import protocol
from symwatch.core.protocol import Message

DEFAULT_WINDOW = 32  # pending steps kept while shards are awaited


class ShardCombiner:
    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        # (run, step, shards) -> {index: message}
        self._pending: dict[tuple[str, int, int], dict[int, Message]] = {}
        self.combined = 0
        self.incomplete = 0

    def add(self, msg: Message) -> Message | None:
        """Take one sharded `metrics` message; the combined message once its step is whole."""
        info = msg.get("sharded") or {}
        shards, index = info.get("shards"), info.get("index")
        if not isinstance(shards, int) or not isinstance(index, int) or shards < 1:
            return None
        key = (msg.run, msg.step, shards)
        parts = self._pending.setdefault(key, {})
        parts.setdefault(index, msg)  # under HSDP the first replica's shard wins
        if len(parts) < shards:
            self._give_up_old()
            return None
        del self._pending[key]
        self.combined += 1
        return combine(list(parts.values()))

    def _give_up_old(self) -> None:
        while len(self._pending) > self.window:
            oldest = min(self._pending, key=lambda k: k[1])
            del self._pending[oldest]
            self.incomplete += 1


def combine(parts: list[Message]) -> Message:
    """One whole-layer `metrics` message from one message per shard of the same step."""
    sums: dict[str, list[Any]] = {}
    for part in parts:
        for layer, values in part.payload.get("values", {}).items():
            if isinstance(values, dict):
                sums.setdefault(layer, []).append(values)
    combined: dict[str, dict[str, float | None]] = {}
    nonfinite: list[str] = []
    for layer, shard_values in sums.items():
        sumsq = [v.get("shard_sumsq") for v in shard_values]
        bad = sum(int(v.get("shard_nonfinite") or 0) for v in shard_values)
        maxima = [v.get("shard_absmax") for v in shard_values
                  if isinstance(v.get("shard_absmax"), (int, float))]
        if bad or any(s is None for s in sumsq) or len(shard_values) < len(parts):
            norm = None  # a shard missing this layer or non-finite: no whole-layer norm
        else:
            norm = math.sqrt(sum(float(s) for s in sumsq))
        if bad:
            nonfinite.append(layer)
        combined[layer] = {"weight_norm": norm,
                           "abs_max": max(maxima) if maxima and not bad else None}
    first = min(parts, key=lambda m: m.rank)
    payload: dict[str, Any] = {"values": combined, "combined_shards": len(parts)}
    if nonfinite:
        payload["nonfinite"] = nonfinite
    return replace(first, payload=payload)


def is_sharded(msg: Message) -> bool:
    return msg.kind == protocol.METRICS and isinstance(msg.payload.get("sharded"), dict)
