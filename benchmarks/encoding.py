"""Cost and size of the wire encoding: protocol.encode/decode (JSON + validation) vs alternatives.

Reproduce the table in docs/protocol.md ("Encoding") with:

    .venv/bin/python benchmarks/encoding.py

Builds realistic messages (a `metrics` sample for 12, 100 and 1000 layers x 4 indicators and a
`meta` layer table for 1000 layers) and times one encode plus one decode per message, as the
median over repeated runs. Compares:

- `protocol`: symwatch.core.protocol.encode + decode (JSON with full validation; what the wire uses),
- `json`: plain json.dumps + json.loads of the same body (no validation),
- `msgpack`: msgpack.packb + unpackb, only when msgpack is importable (symwatch never needs it),
- `pickle`: for reference only; never used on a socket, because unpickling untrusted bytes can
  execute arbitrary code.

Prints a Markdown table on stdout. Standard library only, apart from the optional msgpack.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import statistics
import sys
import timeit
from pathlib import Path
from typing import Any, Callable

try:
    from symwatch.core import protocol
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from symwatch.core import protocol

try:
    import msgpack  # type: ignore[import-not-found]
except ImportError:
    msgpack = None

HEADER = {"run": "3f9c2a7b1e04", "rank": 0, "restart": 0, "seq": 123456,
          "time": 1735732800.123456, "step": 42000}


def layer_names(n: int) -> list[str]:
    """Names like a transformer's `named_modules()`: 6 linear layers per block."""
    parts = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.up", "mlp.down")
    names = [f"model.layers.{i // len(parts)}.{parts[i % len(parts)]}" for i in range(n)]
    names[0] = "model.embed_tokens"
    return names


def metrics_payload(n_layers: int, rng: random.Random) -> dict[str, Any]:
    values: dict[str, dict[str, float | int | None]] = {}
    for name in layer_names(n_layers):
        values[name] = {
            "weight_norm": rng.uniform(5.0, 120.0),  # full-precision floats, as torch gives them
            "stable_rank": rng.uniform(1.0, 60.0),
            "numerical_rank": rng.randint(1, 4096),
            "dead_fraction": rng.random() * 0.05,
        }
    # A few "N/A" values, as happens when an indicator is skipped for a layer.
    for name in list(values)[::50]:
        values[name]["stable_rank"] = None
    return {"values": values, "cost_s": 0.00123}


def meta_payload(n_layers: int, rng: random.Random) -> dict[str, Any]:
    layers = []
    for name in layer_names(n_layers):
        d_in, d_out = rng.choice([(4096, 4096), (4096, 11008), (11008, 4096), (1024, 4096)])
        layers.append({"name": name, "type": "Linear", "shape": [d_out, d_in],
                       "params": d_in * d_out})
    return {"name": "llama-pretrain", "pid": 31337, "host": "gpu-node-07",
            "command": ["torchrun", "--nproc-per-node=8", "train.py", "--config", "7b.yaml"],
            "started": 1735730000.5, "layers": layers, "indicators": list(protocol.INDICATORS),
            "every": 50, "world_size": 8, "torch": "2.5.1", "device": "cuda:0",
            "agent": "0.1.0", "python": "3.11.7"}


Codec = tuple[Callable[[], Any], Callable[[], Any], int]  # encode(), decode(), size in bytes


def codecs(kind: str, payload: dict[str, Any]) -> dict[str, Codec]:
    """name -> (encode(), decode(), size in bytes) for one message."""
    body = {"v": protocol.PROTOCOL_VERSION, "kind": kind, **HEADER, **payload}
    topic, data = protocol.encode(kind, payload=payload, **HEADER)
    frames = [topic, data]
    out: dict[str, Codec] = {
        "protocol (JSON + validation)": (lambda: protocol.encode(kind, payload=payload, **HEADER),
                                         lambda: protocol.decode(frames), len(data)),
    }
    plain = json.dumps(body, separators=(",", ":")).encode("utf-8")
    out["json (no validation)"] = (lambda: json.dumps(body, separators=(",", ":")).encode("utf-8"),
                                   lambda: json.loads(plain), len(plain))
    if msgpack is not None:
        packed = msgpack.packb(body)
        out["msgpack (no validation)"] = (lambda: msgpack.packb(body),
                                          lambda: msgpack.unpackb(packed), len(packed))
    pickled = pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)
    out["pickle (reference only)"] = (lambda: pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL),
                                      lambda: pickle.loads(pickled), len(pickled))
    return out


def median_us(fn: Callable[[], Any], repeat: int, min_time: float) -> float:
    """Median over `repeat` runs of the per-call time, each run long enough to time reliably."""
    timer = timeit.Timer(fn)
    number = 1
    while True:  # like Timer.autorange, but against our own floor
        if timer.timeit(number) >= min_time:
            break
        number *= 2
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e6


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mp = (f", msgpack {'.'.join(map(str, msgpack.version))}" if msgpack is not None
          else ", msgpack not installed (skipped)")
    return (f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}{mp}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per figure (median)")
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds each timed run lasts at least")
    args = parser.parse_args(argv)

    rng = random.Random(0)
    cases = [("metrics", n, metrics_payload(n, rng)) for n in (12, 100, 1000)]
    cases.append(("meta", 1000, meta_payload(1000, rng)))

    print(f"Machine: {machine()}; median of {args.repeat} runs.\n")
    print("| message | format | bytes | encode µs | decode µs | encode+decode µs |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, n, payload in cases:
        for name, (enc, dec, size) in codecs(kind, payload).items():
            e = median_us(enc, args.repeat, args.min_time)
            d = median_us(dec, args.repeat, args.min_time)
            label = f"{kind}, {n} layers" + (" × 4 indicators" if kind == "metrics" else "")
            print(f"| {label} | {name} | {size:,} | {e:,.1f} | {d:,.1f} | {e + d:,.1f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
