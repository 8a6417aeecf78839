"""Discover the layers the agent measures and describe each as a matrix (rows = units).

Every measured layer is read as a matrix `W` of shape (m units × n inputs):

- `nn.Linear`: the weight `(out, in)`.
- `nn.Conv1d/2d/3d`: the weight `(out, in/groups, *k)` flattened to `(out, in/groups·∏k)`:
  one row per output channel.
- Hugging Face's `Conv1D` (GPT-2's `c_attn`, `c_proj`, `c_fc`; despite the name a Linear whose
  weight is stored `(in, out)`, applied as `x @ W + b`): the weight *transposed* to `(out, in)`,
  so it reads exactly like the `nn.Linear` it is. Recognised by duck typing (class name,
  `nf`, 2-D weight), so transformers is never imported here.
- `nn.Embedding`: the weight `(vocab, dim)` *transposed* to `(dim, vocab)`. The units are the
  embedding dimensions, because they are what the next layer reads (its input columns) and what
  a permutation or rescaling of the next layer's inputs acts on; the tokens are the "inputs".
- `nn.MultiheadAttention`: `in_proj_weight (3E, E)` split into three layers `NAME.q`, `NAME.k`,
  `NAME.v` of shape `(E, E)` (or the separate `q/k/v_proj_weight` when kdim/vdim differ);
  `out_proj` is an `nn.Linear` and is found as one.
- Norms with an affine gain (`LayerNorm`, `BatchNorm*`, `GroupNorm`, `RMSNorm`, `InstanceNorm*`):
  the gain `γ` as a `(C, 1)` matrix, the shift `β` as the bias: one unit per channel.

Wrappers are looked through: `torch.compile`'s `OptimizedModule` (`_orig_mod`), DDP and
`DataParallel` (`.module`), so names match the unwrapped model. PEFT-style LoRA adapters
(`lora_A`/`lora_B`) are plain Linears here; pairing.py pairs them as factors. Modules of any
other type that own parameters are reported as skipped, never an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

LINEAR, CONV, EMBEDDING, NORM, ATTENTION = "linear", "conv", "embedding", "norm", "attention"

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Norms that normalise each channel over the batch (scale invariance per channel) and those that
# normalise across the channels of one sample (scale invariance of the whole layer only).
PER_CHANNEL_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
PER_LAYER_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
NORM_TYPES = PER_CHANNEL_NORMS + PER_LAYER_NORMS
# Kept for callers of the foundation API.
MEASURED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,) + CONV_TYPES


@dataclass(eq=False)
class Layer:
    """One measured layer: where its weights live, how to read them as a matrix, and (filled
    in by pairing.py) which layers read its units and what lies in between."""

    name: str
    module: nn.Module
    weight: torch.Tensor  # the Parameter itself (or a view of one, for attention q/k/v)
    bias: torch.Tensor | None
    kind: str = LINEAR
    transpose: bool = False  # Embedding, HF Conv1D: units are the columns of the stored weight
    # The tensor whose dim 1 indexes this layer's *inputs* when it consumes another layer's
    # units (Linear/Conv weight, MHA in_proj_weight); None when it cannot (grouped conv, norms).
    input_weight: torch.Tensor | None = None
    # Which dim of this layer's input holds the producer's units: -1 (Linear-like), 1 (Conv, BN).
    reads_dim: int = -1
    norm_scope: str | None = None  # "channel" or "layer" for norms
    # -- set by pairing.apply() --------------------------------------------------------------
    consumers: list[Layer] = field(default_factory=list)  # read this layer's units directly
    ops: tuple[str, ...] = ()  # what lies between this layer and its consumers
    rescale: bool = False  # only positively homogeneous ops in between: balance is defined
    mirror: bool = False  # one Linear consumer with nothing in between: a factor pair
    relu: bool = False  # output goes through a ReLU-family activation
    normed_by: str | None = None  # output feeds a norm directly: "channel" or "layer" scope
    classifier: bool = False  # last Linear before the loss (softmax translation)
    user_paired: bool = False

    @property
    def type_name(self) -> str:
        return type(self.module).__name__

    @property
    def matrix_shape(self) -> tuple[int, int]:
        w = self.weight
        if self.kind == NORM:
            return w.shape[0], 1
        if self.transpose:
            return w.shape[1], w.shape[0]
        return w.shape[0], math.prod(w.shape[1:])

    @property
    def units(self) -> int:
        return self.matrix_shape[0]

    @property
    def has_rank(self) -> bool:
        """Rank-family indicators mean something: a real matrix, not a gain vector."""
        return self.kind != NORM and min(self.matrix_shape) >= 2

    def matrix(self) -> torch.Tensor:
        """The weight as an (m, n) tensor, no copy, same dtype."""
        w = self.weight.detach()
        if self.kind == NORM:
            return w.reshape(-1, 1)
        if self.transpose:
            return w.t()
        return w.reshape(w.shape[0], -1)

    def outgoing(self) -> torch.Tensor | None:
        """Each unit's outgoing weights, (m, k): the consumers' input columns side by side."""
        if not self.consumers:
            return None
        m = self.units
        parts = []
        for consumer in self.consumers:
            w = consumer.input_weight.detach()  # type: ignore[union-attr]  # (o, m, *k)
            parts.append(w.transpose(0, 1).reshape(m, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def describe(self) -> dict[str, object]:
        """This layer's row in the META layer table."""
        params = self.weight.numel() + (self.bias.numel() if self.bias is not None else 0)
        row: dict[str, object] = {"name": self.name, "type": self.type_name,
                                  "shape": list(self.weight.shape), "params": int(params)}
        if self.consumers:  # known once paired (after the first forward pass): META is resent
            row["feeds"] = [consumer.name for consumer in self.consumers]
        if self.has_rank:  # gets the full tier's spectra (modes, effective rank, …) in turn:
            row["rank"] = True  # until then the viewer shows them as pending, not as N/A
        return row


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile / DDP / DataParallel wrappers (nested ones too)."""
    for _ in range(8):
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        inner = getattr(model, "module", None)  # DistributedDataParallel, DataParallel
        if isinstance(inner, nn.Module) and type(model).__name__ in (
                "DistributedDataParallel", "DataParallel"):
            model = inner
            continue
        break
    return model


def _layers_of(full: str, module: nn.Module) -> list[Layer] | None:
    """The measured layers one module contributes (None: not a type we measure)."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    bias = bias if isinstance(bias, torch.Tensor) else None
    if isinstance(module, nn.Linear) and isinstance(weight, torch.Tensor):
        return [Layer(full, module, weight, bias, LINEAR, input_weight=weight)]
    if _is_hf_conv1d(module, weight):
        # Stored (in, out): the transposed view is the (out, in) matrix a Linear would hold,
        # and what pairing/outgoing() expect of a consumer's input weight (o, m).
        return [Layer(full, module, weight, bias, LINEAR, transpose=True,
                      input_weight=weight.t())]
    if isinstance(module, CONV_TYPES) and isinstance(weight, torch.Tensor):
        reads = weight if module.groups == 1 else None
        return [Layer(full, module, weight, bias, CONV, input_weight=reads, reads_dim=1)]
    if isinstance(module, nn.Embedding) and isinstance(weight, torch.Tensor):
        return [Layer(full, module, weight, None, EMBEDDING, transpose=True)]
    if isinstance(module, NORM_TYPES):
        if not isinstance(weight, torch.Tensor):
            return None  # affine=False: no parameters, nothing to measure or skip
        scope = "channel" if isinstance(module, PER_CHANNEL_NORMS) else "layer"
        return [Layer(full, module, weight, bias, NORM, norm_scope=scope,
                      reads_dim=1 if scope == "channel" else -1)]
    if isinstance(module, nn.MultiheadAttention):
        return _attention_layers(full, module)
    return None


def _is_hf_conv1d(module: nn.Module, weight: object) -> bool:
    """transformers' `Conv1D` (`pytorch_utils.Conv1D`, formerly `modeling_utils.Conv1D`):
    a Linear with its weight stored (in, out) = (nx, nf)."""
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor)
            and weight.dim() == 2 and getattr(module, "nf", None) == weight.shape[1])


def _attention_layers(full: str, mha: nn.MultiheadAttention) -> list[Layer]:
    e = mha.embed_dim
    bias = mha.in_proj_bias
    if mha.in_proj_weight is not None:
        w = mha.in_proj_weight
        weights = [w[:e], w[e:2 * e], w[2 * e:]]
        # q reads the input with the whole in_proj_weight (q, k and v read the same units)
        reads: list[torch.Tensor | None] = [w, None, None]
    else:
        weights = [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]
        reads = [mha.q_proj_weight, None, None]
    out = []
    for j, (part, wj) in enumerate(zip("qkv", weights)):
        bj = bias[j * e:(j + 1) * e] if bias is not None else None
        out.append(Layer(f"{full}.{part}", mha, wj, bj, ATTENTION, input_weight=reads[j]))
    return out


def discover(models: Mapping[str, nn.Module]) -> tuple[list[Layer], list[str]]:
    """Find every measurable layer of every model, in module order.

    Returns the layers and the names of modules that own parameters of a type we do not
    measure (reported in META so a user sees what is not covered, rather than silence).
    With several models, layer names are prefixed by the model's name. Pairing (who reads
    whose units) is not done here: see pairing.py.
    """
    layers: list[Layer] = []
    skipped: list[str] = []
    for model_name, model in models.items():
        inside_measured: set[int] = set()
        for name, module in unwrap(model).named_modules():
            full = f"{model_name}.{name}" if model_name and name else (name or model_name or "model")
            found = _layers_of(full, module)
            if found is not None:
                layers.extend(found)
                if isinstance(module, nn.MultiheadAttention):
                    inside_measured.add(id(module))
            elif any(True for _ in module.parameters(recurse=False)):
                skipped.append(f"{full} ({type(module).__name__})")
    return layers, skipped


def model_order(models: Mapping[str, nn.Module]) -> list[tuple[str, str, nn.Module]]:
    """(model name, full module name, module) for every module, unwrapped, in module order."""
    out = []
    for model_name, model in models.items():
        for name, module in unwrap(model).named_modules():
            full = f"{model_name}.{name}" if model_name and name else (name or model_name or "model")
            out.append((model_name, full, module))
    return out
