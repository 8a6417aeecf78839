"""Every weight-based indicator of a saved model, computed once, offline.

    python -m symwatch_agent.entry.inspect PATH [--json] [--trust]
    symwatch inspect PATH [--json] [--trust]      (the observer CLI runs this module)

PATH is a `torch.save`d state_dict or module, or a `.safetensors` file (needs the safetensors
package). A state_dict is loaded with `weights_only=True`; a pickled module needs `--trust`
(unpickling runs code from the file: only for files you trust).

A module is measured exactly as the live agent measures it, with the static pairing (nn.Sequential
order, LoRA factors): no forward pass is run. A state_dict has no modules, so each `*.weight`
tensor becomes a layer by its shape (2-D: Linear, or Embedding when the name says so — its
units are then the embedding dims; >2-D: Conv; 1-D: a norm gain), and a layer is paired with
the next `*.weight` whose input width equals its output width (for dead units only: what lies
in between is unknown, so balance and mirror_rank are not computed, and duplicate units, which
need a nonlinearity in between, read N/A).
Not computed offline: relu_dead (needs activations), angular_update and effective_lr (need two
samples and an optimizer).

Attention heads (heads.py): each attention module gets a row with qk_rank, vo_rank, their
minima, dead_heads and every head's ranks (`qk_rank.h0`, …; the table lists them under it).
A module says how many heads it has; a state_dict does not, so the count comes from
`--heads N` (or `--heads N:KV` for grouped-query attention), else from a Hugging Face
`config.json` next to the file (`num_attention_heads`/`n_head`, `num_key_value_heads`).
In a state_dict, GPT-2's `c_attn`/`c_proj`/`c_fc`/`q_attn` weights are read as the transposed
(in, out) `Conv1D` weights they are.

Prints plain text (or JSON with --json); never imports rich or textual.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from symwatch_agent.measure.heads import HEAD_ATTRS, KV_HEAD_ATTRS
from symwatch_agent.measure.indicators import INDICATORS, IndicatorEngine
from symwatch_agent.measure.layers import CONV, EMBEDDING, LINEAR, NORM, Layer, discover

# GPT-2's transformers Conv1D layers: stored (in, out), so their units are the columns
CONV1D_NAMES = ("c_attn", "c_proj", "c_fc", "q_attn")
from symwatch_agent.measure.schedule import FULL


# Every error this inspector prints starts as the CLI's own do (symwatch.cli.main).
PREFIX = "symwatch inspect: "


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no detail"


class StateDict(nn.Module):
    """Stands in for the module of a state_dict entry (only its type name is shown)."""


SQLITE_MAGIC = b"SQLite format 3\x00"
# where checkpoints keep their weights (Lightning's `state_dict`, a training loop's `model`)
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network", "weights")


def load(path: str, trust: bool = False) -> nn.Module | dict[str, torch.Tensor]:
    if os.path.isdir(path):
        raise SystemExit(f"{PREFIX}{path}: is a directory; name the model file inside it")
    if not os.path.exists(path):
        raise SystemExit(f"{PREFIX}{path}: no such file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise SystemExit(f"{PREFIX}{path}: cannot read: {exc}") from None
    if head == SQLITE_MAGIC:
        raise SystemExit(f"{PREFIX}{path}: an SQLite database, not a model file (a symwatch "
                         "recording is read by `symwatch replay`, `report` or `export`)")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file  # noqa: PLC0415 (lazy: optional package)
        except ImportError:
            raise SystemExit(f"{PREFIX}{path}: reading .safetensors needs the safetensors package "
                             "(pip install safetensors)") from None
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors' own error type: a truncated or foreign file
            raise SystemExit(f"{PREFIX}{path}: not a readable .safetensors file "
                             f"({type(exc).__name__}: {_first_line(exc)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except FileNotFoundError:
        raise SystemExit(f"{PREFIX}{path}: no such file") from None
    except Exception as exc:
        # torch.load's safe mode refuses a pickled object it does not know with this message;
        # anything else means the file is not one torch.save wrote
        if not trust and "weights only load failed" in str(exc).lower():
            raise SystemExit(f"{PREFIX}{path}: holds more than a state_dict (a pickled module "
                             "or object); if you trust the file, pass --trust (unpickling "
                             "runs its code)") from None
        raise SystemExit(f"{PREFIX}{path}: not a file torch.save wrote, nor .safetensors "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        return _tensors_of(path, obj)
    raise SystemExit(f"{PREFIX}{path}: expected a state_dict or an nn.Module, got {type(obj).__name__}")


def _tensors_of(path: str, obj: dict[Any, Any]) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded dict: the dict itself, or a checkpoint's weights under one
    of its keys (`{"model": state_dict, "epoch": 3}`: said on stderr, which key); a dict with
    no tensors anywhere is an error that lists its keys (it read as "no measurable layers",
    exit 0)."""
    def count(d: dict[Any, Any]) -> int:
        return sum(isinstance(t, torch.Tensor) for t in d.values())

    nested = [(k, v) for k, v in obj.items() if isinstance(v, dict) and count(v)]
    # a checkpoint's weights under a known key come first (`{"state_dict": …, "rng_state":
    # tensor}`: the one top-level tensor is not the model), then whichever holds the most
    nested.sort(key=lambda kv: (kv[0] not in NESTED_KEYS, -count(kv[1])))
    if nested and (nested[0][0] in NESTED_KEYS or count(nested[0][1]) > count(obj)):
        key, inner = nested[0]
        print(f"{PREFIX}{path}: reading the state_dict under {key!r}", file=sys.stderr)
        return {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", …" if len(obj) > 8 else "")
    raise SystemExit(f"{PREFIX}{path}: a dict with no tensors in it or one level down "
                     f"(keys: {keys or 'none'}); save the model's state_dict()")


def layers_of_state_dict(state: dict[str, torch.Tensor]) -> tuple[list[Layer], list[str]]:
    layers: list[Layer] = []
    skipped: list[str] = []
    holder = StateDict()
    for key, tensor in state.items():
        if not key.endswith("weight") or not tensor.is_floating_point():
            continue
        name = key[:-len(".weight")] if key.endswith(".weight") else key
        bias = state.get(name + ".bias") if key.endswith(".weight") else None
        bias = bias if isinstance(bias, torch.Tensor) and bias.dim() == 1 else None
        if tensor.dim() == 1:
            layers.append(Layer(name, holder, tensor, bias, NORM, norm_scope="layer"))
        elif tensor.dim() == 2 and any(s in name.lower() for s in ("embed", "wte", "wpe")):
            layers.append(Layer(name, holder, tensor, None, EMBEDDING, transpose=True))
        elif tensor.dim() == 2 and name.rsplit(".", 1)[-1] in CONV1D_NAMES:
            layers.append(Layer(name, holder, tensor, bias, LINEAR, transpose=True,
                                input_weight=tensor.t()))
        elif tensor.dim() == 2:
            layers.append(Layer(name, holder, tensor, bias, LINEAR, input_weight=tensor))
        elif tensor.dim() > 2:
            layers.append(Layer(name, holder, tensor, bias, CONV, input_weight=tensor, reads_dim=1))
        else:
            skipped.append(key)
    matrices = [layer for layer in layers if layer.kind in (LINEAR, CONV)]
    for layer, following in zip(matrices, matrices[1:]):
        if following.input_weight is not None and following.input_weight.shape[1] == layer.units:
            layer.consumers = [following]  # dead units' outgoing weights only
    return layers, skipped


def heads_from_config(path: str) -> int | tuple[int, int] | None:
    """The head count in a Hugging Face `config.json` next to `path`, if there is one."""
    config = Path(path).with_name("config.json")
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data = {**data.get("text_config", {}), **data} if isinstance(data.get("text_config"),
                                                                  dict) else data
    heads = next((data[k] for k in HEAD_ATTRS if isinstance(data.get(k), int)), None)
    kv = next((data[k] for k in KV_HEAD_ATTRS if isinstance(data.get(k), int)), None)
    if not heads:
        return None
    return (heads, kv) if kv else heads


def parse_heads(text: str | None) -> int | tuple[int, int] | None:
    """`--heads N` or `N:KV`."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise SystemExit(f"{PREFIX}--heads {text}: expected a number of heads, e.g. --heads 12, or "
                         "heads:kv_heads for grouped-query attention, e.g. --heads 32:8")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def inspect(obj: nn.Module | dict[str, torch.Tensor],
            heads: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """One full-tier sample of every layer: {"layers": [...], "skipped": [...]}. `heads`: the
    head count of attention modules that do not say (every one, for a state_dict)."""
    if isinstance(obj, nn.Module):
        layers, skipped = discover({"": obj})
        engine = IndicatorEngine(layers)
        skipped += engine.attach({"": obj}, observe=False, heads_default=heads)
    else:
        layers, skipped = layers_of_state_dict(obj)
        engine = IndicatorEngine(layers)
        last = [layer for layer in layers if layer.kind == LINEAR]
        if last:
            last[-1].classifier = True
        skipped += engine.find_heads(None, None, heads)
    values, nonfinite = engine.decode(engine.compute(FULL).tolist()) if layers else ({}, [])
    rows = [{"name": row["name"], "type": row["type"], "shape": row["shape"],
             "values": values.get(str(row["name"]), {})} for row in engine.describe()]
    return {"layers": rows, "skipped": skipped, "nonfinite": nonfinite}


def _fmt(value: Any) -> str:
    if value is None:
        return "N/A"
    if isinstance(value, int):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}" if math.isfinite(value) else "N/A"


def render(result: dict[str, Any]) -> str:
    rows = result["layers"]
    if not rows:
        return "no measurable layers found"
    names = [n for n in INDICATORS if any(n in r["values"] for r in rows)]
    header = ["layer", "type", "shape"] + names
    table = [[r["name"], r["type"], "×".join(map(str, r["shape"]))] +
             [_fmt(r["values"][n]) if n in r["values"] else "-" for n in names] for r in rows]
    widths = [max(len(h), *(len(t[k]) for t in table)) for k, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if k >= 3 else c.ljust(w) for k, (c, w) in
                        enumerate(zip(t, widths))) for t in table]
    for r in rows:  # attention modules: each head's ranks
        per_head = [(n, v) for n, v in r["values"].items() if ".h" in n]
        if per_head:
            lines.append(f"{r['name']} per head:")
            for pair in ("qk_rank", "vo_rank"):
                ranks = [_fmt(v) for n, v in per_head if n.startswith(pair + ".h")]
                if ranks:
                    lines.append(f"  {pair:<8} " + " ".join(ranks))
    if result["skipped"]:
        lines.append(f"skipped (not measured): {', '.join(result['skipped'])}")
    if result["nonfinite"]:
        lines.append(f"NaN/inf weights: {', '.join(result['nonfinite'])}")
    lines.append("- = not applicable to this layer (see docs/metrics.md)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="symwatch inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a torch.save'd state_dict or module, or .safetensors")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--trust", action="store_true",
                        help="allow unpickling a whole module (runs code from the file)")
    parser.add_argument("--heads", metavar="N[:KV]", default=None,
                        help="attention heads per module, where the file does not say (a "
                             "state_dict never does); default: config.json next to PATH")
    args = parser.parse_args(argv)
    heads = parse_heads(args.heads)
    if heads is None:
        heads = heads_from_config(args.path)
    with torch.no_grad():
        result = inspect(load(args.path, args.trust), heads)
    text = json.dumps({"path": args.path, **result}, indent=1) if args.json else render(result)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `symwatch inspect PATH --json | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
