"""A fixed stream of protocol messages for the TUI tests: a small transformer-like run of 150
steps with a rank staircase, a dead layer, an unmeasured layer and two transitions. Every
message goes through `protocol.encode`/`decode` (validated as the wire would), and its times
are fixed, so a view fed with it at a fixed size renders the same screen every time.

`frozen_source()` hands the whole stream over at once and stops the view's clock just after
the last message: the run shows LIVE (or FINISHED, with a goodbye), never "stale", however
slow the machine.
"""

from __future__ import annotations

import math

from symwatch.core import protocol
from symwatch.sources.memory import ListSource
from symwatch.core.protocol import Message

T0 = 1_790_000_000.0  # a fixed epoch time for the first message
STEP_S = 0.08  # recorded time between steps
RUN_ID = "5e1f0c0ffee0"
ENDPOINT = "tcp://127.0.0.1:5555"

LAYERS = (
    ("embed", "Embedding", [512, 64]),
    ("blocks.0.attn.qkv", "Linear", [192, 64]),
    ("blocks.0.attn.proj", "Linear", [64, 64]),
    ("blocks.0.mlp.fc1", "Linear", [256, 64]),
    ("blocks.0.mlp.fc2", "Linear", [64, 256]),
    ("blocks.1.attn.qkv", "Linear", [192, 64]),
    ("blocks.1.attn.proj", "Linear", [64, 64]),
    ("blocks.1.mlp.fc1", "Linear", [256, 64]),
    ("blocks.1.mlp.fc2", "Linear", [64, 256]),
    ("norm_f", "LayerNorm", [64]),
    ("head", "Linear", [10, 64]),
)
INDICATORS = ("weight_norm", "stable_rank", "effective_rank", "participation_ratio",
              "numerical_rank", "modes", "dead_fraction", "duplicate_fraction", "distinct_units",
              "balance", "angular_update", "delta_perm", "delta_rank", "broken")
STAIRCASE_LAYER = "blocks.0.mlp.fc1"  # its numerical rank climbs 4 → 8 → 12
DEAD_LAYER = "blocks.1.mlp.fc1"  # a quarter of its units die at step 90
UNMEASURED_LAYER = "norm_f"  # published with every value null: N/A, never 0


class FrozenSource(ListSource):
    """Every message at the first poll, and a clock stopped at `at` (recording time)."""

    def __init__(self, messages: list[Message], at: float) -> None:
        super().__init__(messages, endpoint=ENDPOINT)
        self.at = at

    def now(self) -> float:
        return self.at


def _message(kind: str, seq: int, step: int, payload: dict) -> Message:
    frames = protocol.encode(kind, run=RUN_ID, rank=0, restart=0, seq=seq,
                             time=T0 + step * STEP_S, step=step, payload=payload)
    return protocol.decode(list(frames))


def _values(i: int, name: str, step: int) -> dict[str, float | int | None]:
    if name == UNMEASURED_LAYER:
        return {ind: None for ind in INDICATORS}
    rows, cols = next(shape for n, _, shape in LAYERS if n == name)[:2]
    width = min(rows, cols)
    t = step / 150
    wave = math.sin(step / 9 + i)  # a deterministic wiggle, different per layer
    rank = min(width, 4 + 4 * (step // 50)) if name == STAIRCASE_LAYER else \
        max(1, min(width, width // 2 + i % 3))
    dead = (0.25 if step >= 90 else 0.0) if name == DEAD_LAYER else 0.0
    duplicate = round(0.02 * (i % 4) * (1 + t), 4)
    return {
        "weight_norm": round(4 + i * 0.7 + 2.5 * t + 0.05 * wave, 4),
        "stable_rank": round(1.5 + (i % 5) * 0.6 + 0.8 * t + 0.03 * wave, 4),
        "effective_rank": round(rank * 0.9 + 0.2 * wave, 4),
        "participation_ratio": round(rank * 0.6 + 0.1 * wave, 4),
        "numerical_rank": rank,
        "modes": rank,
        "dead_fraction": dead,
        "duplicate_fraction": duplicate,
        "distinct_units": int(width * (1 - dead - duplicate)),
        "balance": round(0.01 * (i + 1) * (1 - t) + 0.001 * wave, 6),
        "angular_update": round(0.02 / (1 + 5 * t) * (1 + 0.1 * wave), 6),
        "delta_perm": round(1 - duplicate, 4),
        "delta_rank": round(1 - rank / width, 4),
        "broken": round(0.5 + 0.3 * t * (i % 3) / 2 + 0.02 * wave, 4),
    }


def _detail(name: str, step: int) -> dict:
    """METRICS `detail` of a 256×64 layer: a spectrum whose head climbs with the staircase
    (numerical rank as in _values), the dead layer's quarter of dead units after step 90, and
    two duplicate groups."""
    rank = min(64, 4 + 4 * (step // 50)) if name == STAIRCASE_LAYER else 32
    spectrum = [round(3.0 - 0.05 * k, 4) if k < rank else round(0.4 * 0.93 ** (k - rank), 5)
                for k in range(64)]
    dead = list(range(0, 256, 4)) if name == DEAD_LAYER and step >= 90 else []
    groups = [[17, 18, 101], [42, 230]]
    return {"spectrum": spectrum, "count": 64, "rank_threshold": 0.9, "units": 256,
            "dead": dead, "dead_count": len(dead), "duplicates": groups,
            "duplicate_count": 5}


def messages(steps: int = 150, *, goodbye: bool = False) -> list[Message]:
    out: list[Message] = []
    seq = 0

    def add(kind: str, step: int, payload: dict) -> None:
        nonlocal seq
        out.append(_message(kind, seq, step, payload))
        seq += 1

    add(protocol.META, 0, {
        "name": "tiny-gpt", "pid": 31337, "host": "gpu-node-7",
        "command": ["train.py", "--config", "tiny.yaml"], "started": T0, "every": 1,
        "indicators": list(INDICATORS), "world_size": 1, "device": "cpu",
        "layers": [{"name": n, "type": t, "shape": s, "params": math.prod(s)}
                   for n, t, s in LAYERS]})
    add(protocol.GPU, 0, {"available": False, "devices": [],
                          "reason": "no NVIDIA GPU visible (a CPU run)"})
    for step in range(1, steps + 1):
        payload: dict = {
            "values": {name: _values(i, name, step) for i, (name, _, _) in enumerate(LAYERS)}}
        if step % 25 == 0:  # a full-tier sample: the layer detail's spectrum and units
            payload["detail"] = {name: _detail(name, step) for name in (STAIRCASE_LAYER,
                                                                        DEAD_LAYER)}
        add(protocol.METRICS, step, payload)
        add(protocol.STATS, step, {
            "loss": round(2.3 * math.exp(-step / 45) + 0.35 + 0.02 * math.sin(step), 5),
            "steps_per_s": 12.5, "step_time": 0.08, "overhead": 0.0125, "dropped": 0})
        if step in (50, 100):
            before, after = 4 + 4 * (step // 50 - 1), 4 + 4 * (step // 50)
            add(protocol.EVENT, step, {
                "message": f"{STAIRCASE_LAYER}: numerical_rank {before} → {after} at step "
                           f"{step}; loss −3.1 % over the same window",
                "severity": "transition", "layer": STAIRCASE_LAYER,
                "metric": "numerical_rank", "direction": "up", "before": before,
                "after": after})
        if step == 90:
            add(protocol.EVENT, step, {
                "message": f"{DEAD_LAYER}: dead_fraction 0 % → 25 % at step 90",
                "severity": "transition", "layer": DEAD_LAYER, "metric": "dead_fraction",
                "direction": "up", "before": 0.0, "after": 0.25})
        if step % 12 == 0:
            add(protocol.HEARTBEAT, step, {"dropped": 0, "samples": step})
    if goodbye:
        add(protocol.GOODBYE, steps, {"reason": "finished", "exit_code": 0})
    return out


def frozen_source(steps: int = 150, *, goodbye: bool = False) -> FrozenSource:
    stream = messages(steps, goodbye=goodbye)
    return FrozenSource(stream, at=stream[-1].time + 0.5)
