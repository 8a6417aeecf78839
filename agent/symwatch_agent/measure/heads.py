"""Attention heads: the rank of each head's QK and VO factor pairs, and where the heads are.

An attention head h reads its input x through two factor pairs with nothing in between:

- **QK**: the scores are `x W_Q,hᵀ · (x' W_K,hᵀ)ᵀ = x (W_Q,hᵀ W_K,h) x'ᵀ`, so only the product
  `W_Q,hᵀ W_K,h` (n_in × n_k, rank ≤ d) matters: `W_Q,h → A W_Q,h, W_K,h → A⁻ᵀ W_K,h` leaves
  the model unchanged for any invertible d × d `A` (the rotation symmetry of the pair, GL(d)).
- **VO**: the head writes `softmax(·) x W_V,hᵀ W_O,hᵀ`, so only `W_O,h W_V,h` (n_out × n_in)
  matters: `W_V,h → A W_V,h, W_O,h → W_O,h A⁻¹`.

Here `W_Q,h` is rows h·d…(h+1)·d of the query projection's (out, in) matrix, likewise K and V
(with grouped-query attention, query head h uses key/value head h // (H / H_kv)), and `W_O,h` is
columns h·d…(h+1)·d of the output projection. The indicators are functions of the *products*
only, so they are invariant under the whole symmetry group, not only its rotations (the factor
pair's mirror spectrum, `mirror_rank`, is invariant under rotations only):

    qk_rank(h) = #{k : √σ_k(W_Q,hᵀ W_K,h) > τ_h},  vo_rank(h) likewise for W_O,h W_V,h,
    τ_h = max(rel_tol · largest √σ₁ seen so far of head h itself, abs_tol)

(per head: relative to the module's strongest head, a head whose scores are merely cooler,
Q, K, V scaled by 0.25, read rank 0). Continuous series per head, from the same σ:
σ₁ (`qk_sigma1`), stable rank Σσ²/σ₁², effective rank exp(−Σ p ln p) (p = σ/Σσ; both N/A
for a zero product), and `modes`: #{σ above the head's own random bulk}, bulk.py's rule with
the bulk of a random product, the free product of two Marchenko–Pastur laws
(`product_quantiles`), state per head (`product_modes`). The max-logit per head needs the
forward's activations: measure/logits.py, on sampled steps (docs/metrics.md, Attention heads).

√σ of the product is in the units of one factor: for a balanced pair (W_Q,h W_Q,hᵀ =
W_K,h W_K,hᵀ) it equals each factor's singular values, so the same rel_tol/abs_tol as
numerical_rank apply. A head with vo_rank 0 writes nothing (a dead head, the symmetric state
of the pair); qk_rank 0 means scores that no longer depend on the content (uniform attention).

Computation, per head, without forming the n_in × n_k product: with the d × d Grams
`G_a = AᵀA` and `G_b = BᵀB` of the factors (A = W_Q,hᵀ, B = W_K,hᵀ), `σ(A Bᵀ)² = eig(G_a G_b)
= eig(Lᵀ G_b L)` for `G_a = L Lᵀ` (Cholesky, with a 1e-10 relative jitter so a rank-deficient
head factors too; it moves σ by at most ~1e-5·σ₁). Grams in float64 (d × d, cheap), so the
small singular values of a rank-deficient head are not float32 noise. Cost per module:
O(H·d²·(n_in + n_k + n_out)) for the Grams plus O(H·d³), a few percent of one SVD of the
module's weights.

Where the heads are (`discover`): an attention module is one whose measured child layers
are named like query/key/value projections:

- `nn.MultiheadAttention` (the agent's `NAME.q`, `NAME.k`, `NAME.v` layers, `out_proj`);
- fused projections, rows [q; k; v]: GPT-2's `c_attn` (transformers `Conv1D`, weight stored
  (in, out); `c_proj` is the output; cross-attention's `q_attn` holds q and `c_attn` [k; v]),
  `qkv` (timm), `qkv_proj`, `Wqkv`, `in_proj`;
- separate projections: `q_proj/k_proj/v_proj/o_proj` (Llama, OPT, …), `query/key/value`
  (BERT; its output projection is the sibling `output.dense`), `wq/wk/wv/wo`, `to_q/to_k/to_v`
  with `to_out.0`, `q_lin/k_lin/v_lin/out_lin`, `q/k/v/o`.

The number of heads comes from the user (`watch(..., heads={"blocks.0.attn": 12})`, or
`(12, 4)` for 12 query and 4 key/value heads), else from the module or its closest ancestor:
an attribute `num_heads`, `n_heads`, `n_head` or `num_attention_heads`, directly or on its
`config`; key/value heads likewise from `num_key_value_heads`, `n_kv_heads`, `num_kv_heads`,
`n_kv_head`, `num_key_value_groups`, else from the key projection's size. A module whose head
count is unknown or inconsistent with its shapes is listed as skipped, with what to pass.

Caveat: with rotary position embeddings (Llama and most recent LLMs) the scores are
`x W_Qᵀ R_pos W_K x'ᵀ`, not the plain product: qk_rank then describes the projections, not
the position-dependent bilinear form. VO is unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from symwatch_agent.measure import bulk
from symwatch_agent.measure.layers import Layer

# Child names, tried in this order. A fused projection holds [q; k; v] rows (or [k; v] with a
# separate query projection, GPT-2 cross-attention).
FUSED = ("in_proj", "in_proj_weight", "c_attn", "qkv", "qkv_proj", "Wqkv", "wqkv")
QUERY = ("q", "q_proj", "query", "wq", "q_attn", "to_q", "q_lin")
KEY = ("k", "k_proj", "key", "wk", "to_k", "k_lin")
VALUE = ("v", "v_proj", "value", "wv", "to_v", "v_lin")
OUTPUT = ("out_proj", "o_proj", "c_proj", "wo", "o", "proj", "out", "to_out.0", "out_lin",
          "dense")
HEAD_ATTRS = ("num_heads", "n_heads", "n_head", "num_attention_heads")
KV_HEAD_ATTRS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "n_kv_head")
# published per head as `qk_rank.h3`, `vo_sigma1.h3`, …: the ranks, then the continuous series
PER_HEAD = ("qk_rank", "vo_rank", "qk_sigma1", "vo_sigma1", "qk_stable_rank", "vo_stable_rank",
            "qk_erank", "vo_erank", "qk_modes", "vo_modes")
INTEGER_PER_HEAD = frozenset({"qk_rank", "vo_rank", "qk_modes", "vo_modes"})


@dataclass(eq=False)
class HeadSet:
    """One attention module's heads, as row ranges of its measured layers' (out, in) matrices.

    `q`, `k`, `v`: (layer, first row); head h's W_Q,h is rows q_row + h·d … of the q layer's
    matrix; key/value head g's likewise. `o`: the output projection (its input columns are the
    heads' outputs, h·d … (h+1)·d), or None (then only QK is measured)."""

    name: str
    type_name: str
    heads: int
    kv_heads: int
    head_dim: int
    q: tuple[Layer, int]
    k: tuple[Layer, int]
    v: tuple[Layer, int]
    o: Layer | None
    # PEFT LoRA on a projection: id(base layer) -> [(A, B, adapter, wrapper)]; the active
    # ones' scaling·B·A is added to its weight (adapter_scaling)
    adapters: dict[int, list[tuple[Layer, Layer, str, Any]]] = field(default_factory=dict)
    # per-head state, for "qk" and "vo" (device tensors (H,)): the largest √σ₁ seen so far
    # (qk_rank's τ), the last `modes` count (hysteresis) and the carried bulk reference (NaN:
    # none yet), and the step that reference was taken at (for the weight decay since)
    seen: dict[str, torch.Tensor] = field(default_factory=dict)
    modes: dict[str, torch.Tensor] = field(default_factory=dict)
    bulk_ref: dict[str, torch.Tensor] = field(default_factory=dict)
    bulk_step: int | None = None
    # the attention module itself (None for a state_dict): measure/logits.py reads whether it
    # is causal from it
    module: nn.Module | None = None

    def layers(self) -> list[Layer]:
        """The projections (base layers), then any LoRA factors on them."""
        own = [self.q[0], self.k[0], self.v[0]] + ([self.o] if self.o is not None else [])
        extra = [f for adapters in self.adapters.values() for a, b, _, _ in adapters
                 for f in (a, b)]
        return list(dict.fromkeys(own + extra))

    def describe(self) -> dict[str, object]:
        """This module's row in the META layer table (extra fields: heads, kv_heads, head_dim)."""
        params = sum(layer.matrix_shape[0] * layer.matrix_shape[1]
                     for layer in dict.fromkeys(self.layers()))
        return {"name": self.name, "type": f"{self.type_name} heads",
                "shape": [self.heads, self.head_dim], "params": int(params),
                "heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim}


# -- discovery -------------------------------------------------------------------------------

def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _join(prefix: str, child: str) -> str:
    return f"{prefix}.{child}" if prefix else child


def _int_attr(obj: Any, names: Iterable[str]) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _from_module(chain: list[Any], names: Iterable[str]) -> int | None:
    """The first positive int attribute of `names` on the modules in `chain` (closest first),
    on each module itself, then on its `config`."""
    names = tuple(names)
    for module in chain:
        for holder in (module, getattr(module, "config", None)):
            if holder is None:
                continue
            value = _int_attr(holder, names)
            if value is not None:
                return value
    return None


def _first(by_name: Mapping[str, Layer], prefix: str, names: Iterable[str]) -> Layer | None:
    """The first child layer by these names; a PEFT-wrapped one (`q_proj.base_layer`) too."""
    for child in names:
        for name in (_join(prefix, child), _join(prefix, child) + ".base_layer"):
            layer = by_name.get(name)
            if layer is not None:
                return layer
    return None


def _adapters(layer: Layer, by_name: Mapping[str, Layer],
              modules: Mapping[str, nn.Module] | None) -> list[tuple[Layer, Layer, str, Any]]:
    """A PEFT LoRA wrapper's adapters on `layer` (its `base_layer`): (A, B, adapter name, the
    wrapper) each. Needs the live wrapper (a state_dict gets none); which adapters count, and
    their scaling, are read from it at every sample (`adapter_scaling`)."""
    if not layer.name.endswith(".base_layer") or not modules:
        return []
    wrapper_name = layer.name[:-len(".base_layer")]
    wrapper = modules.get(wrapper_name)
    lora_a = getattr(wrapper, "lora_A", None)
    if not isinstance(getattr(wrapper, "scaling", None), dict) or \
            not isinstance(lora_a, nn.ModuleDict):
        return []
    out = []
    for key in lora_a.keys():
        a = by_name.get(f"{wrapper_name}.lora_A.{key}")
        b = by_name.get(f"{wrapper_name}.lora_B.{key}")
        if a is not None and b is not None:
            out.append((a, b, key, wrapper))
    return out


def adapter_scaling(wrapper: Any, key: str) -> float | None:
    """The scaling of adapter `key` if it is active and not merged into the base weight (then
    the effective weight is W₀ + scaling·B·A), else None."""
    if getattr(wrapper, "merged", False) or getattr(wrapper, "disable_adapters", False):
        return None
    active = getattr(wrapper, "active_adapters", None)
    if active is None:
        active = getattr(wrapper, "active_adapter", None)
    if active is not None and key not in ([active] if isinstance(active, str) else active):
        return None
    scale = getattr(wrapper, "scaling", {}).get(key)
    return float(scale) if isinstance(scale, (int, float)) else None


def discover(layers: list[Layer], modules: Mapping[str, nn.Module] | None = None,
             overrides: Mapping[str, Any] | bool | None = None,
             default: int | tuple[int, int] | None = None) -> tuple[list[HeadSet], list[str]]:
    """Find attention modules among `layers` (by their names) and build their HeadSets.

    `modules`: full name → module, to read head counts from (None for a state_dict).
    `overrides`: the user's `heads` option: {module name: H, (H, H_kv), or None to skip};
    False to measure no heads at all. `default`: the head count for modules that do not say
    (inspect's `--heads`). Returns the head sets and "name (why)" notes for modules found but
    not measured. Raises ValueError for an override naming no attention module."""
    if overrides is False:
        return [], []
    overrides = dict(overrides or {}) if overrides is not True else {}
    by_name = {layer.name: layer for layer in layers}
    # the modules holding projections: each layer's parent, and a PEFT wrapper's parent
    prefixes = list(dict.fromkeys(
        _parent(_parent(layer.name)) if layer.name.endswith(".base_layer") else
        _parent(layer.name) for layer in layers))
    found: list[HeadSet] = []
    notes: list[str] = []
    seen: set[str] = set()  # module names ("model" for the root of an unnamed model)
    if "" in overrides:
        overrides.setdefault("model", overrides.pop(""))
    for prefix in prefixes:
        parts = _projections(by_name, prefix)
        key = prefix or "model"
        if parts is None or key in seen:
            continue
        seen.add(key)
        if key in overrides and overrides[key] is None:
            continue  # the user switched this module off
        try:
            hs = _head_set(prefix, parts, modules, overrides.get(key, default))
            hs.name = _row_name(hs.name, by_name)
            for layer in hs.layers():
                hs.adapters.setdefault(id(layer), _adapters(layer, by_name, modules))
            found.append(hs)
        except ValueError as exc:
            if key in overrides:
                raise ValueError(f"heads: {key!r}: {exc}") from None
            notes.append(f"{key} (attention heads: {exc})")
    unknown = [name for name in overrides if name not in seen]
    if unknown:
        raise ValueError(f"heads: no attention module named {unknown[0]!r} (one whose layers are "
                         f"named like q/k/v projections); attention modules found: "
                         f"{sorted(seen) or 'none'}")
    return found, notes


def _projections(by_name: Mapping[str, Layer], prefix: str) -> dict[str, Any] | None:
    """The q/k/v/o layers of the module at `prefix`, or None if it does not look like one."""
    fused = _first(by_name, prefix, FUSED)
    q = _first(by_name, prefix, QUERY)
    k = _first(by_name, prefix, KEY)
    v = _first(by_name, prefix, VALUE)
    o = _first(by_name, prefix, OUTPUT)
    if o is None and prefix:  # BERT: attention.self.{query,key,value}, attention.output.dense
        o = by_name.get(_join(_parent(prefix), "output.dense"))
    if q is not None and k is not None and v is not None:
        return {"q": q, "k": k, "v": v, "o": o, "fused": None}
    if fused is not None:
        return {"q": q, "k": None, "v": None, "o": o, "fused": fused}
    return None


def _chain(modules: Mapping[str, nn.Module] | None, prefix: str) -> list[Any]:
    """The module at `prefix` and its ancestors, closest first."""
    if not modules:
        return []
    out, name = [], prefix
    while True:
        if name in modules:
            out.append(modules[name])
        if not name:
            return out
        name = _parent(name)


def _head_set(prefix: str, parts: dict[str, Any], modules: Mapping[str, nn.Module] | None,
              given: int | tuple[int, int] | None) -> HeadSet:
    chain = _chain(modules, prefix)
    if isinstance(given, (tuple, list)):
        heads, kv_heads = int(given[0]), int(given[1])
    elif given is not None:
        heads, kv_heads = int(given), None
    else:
        heads = _from_module(chain, HEAD_ATTRS)
        kv_heads = _from_module(chain, KV_HEAD_ATTRS)
        groups = _from_module(chain, ("num_key_value_groups",))
        if kv_heads is None and heads and groups and heads % groups == 0:
            kv_heads = heads // groups
    key = prefix or "model"
    if not heads:
        raise ValueError(f"number of heads unknown; pass heads={{{key!r}: N}} to watch() "
                         "(symwatch inspect: --heads N)")
    o: Layer | None = parts["o"]
    fused: Layer | None = parts["fused"]
    if fused is None:
        q, k, v = parts["q"], parts["k"], parts["v"]
        q_rows, k_rows = q.matrix_shape[0], k.matrix_shape[0]
        if q_rows % heads:
            raise ValueError(f"{q.name} has {q_rows} outputs, not a multiple of {heads} heads")
        d = q_rows // heads
        q_at, k_at, v_at = (q, 0), (k, 0), (v, 0)
        if kv_heads is None:
            kv_heads = k_rows // d if k_rows % d == 0 else 0
        kv_rows = k_rows
        if v.matrix_shape[0] != k_rows:
            raise ValueError(f"{k.name} and {v.name} have different sizes")
    else:
        rows = fused.matrix_shape[0]
        q = parts["q"]
        if q is not None:  # GPT-2 cross-attention: q_attn holds q, c_attn [k; v]
            if q.matrix_shape[0] % heads or rows % 2:
                raise ValueError(f"{q.name} has {q.matrix_shape[0]} outputs, not a multiple of "
                                 f"{heads} heads")
            d = q.matrix_shape[0] // heads
            kv_rows = rows // 2
            q_at, k_at, v_at = (q, 0), (fused, 0), (fused, kv_rows)
        else:
            if kv_heads is None and o is not None and o.matrix_shape[1] % heads == 0:
                d = o.matrix_shape[1] // heads  # the output projection reads H·d columns
                kv_heads = (rows // d - heads) // 2 if rows % d == 0 else 0
            else:
                kv = kv_heads or heads
                if rows % (heads + 2 * kv):
                    raise ValueError(f"{fused.name} has {rows} outputs, not (heads + 2·kv_heads)"
                                     f"·head_dim for {heads} heads")
                d = rows // (heads + 2 * kv)
                kv_heads = kv
            kv_rows = (kv_heads or 0) * d
            q_at, k_at, v_at = (fused, 0), (fused, heads * d), (fused, heads * d + kv_rows)
        if kv_heads is None:
            kv_heads = kv_rows // d if d and kv_rows % d == 0 else 0
    if not d or not kv_heads or kv_heads * d != kv_rows or heads % kv_heads:
        raise ValueError(f"{heads} heads do not fit the projections' shapes (key/value outputs "
                         f"{kv_rows}); pass heads={{{key!r}: (heads, kv_heads)}}")
    if o is not None and o.matrix_shape[1] != heads * d:
        o = None  # the output projection does not read H·d head outputs: QK only
    type_name = (type(modules[prefix]).__name__ if modules and prefix in modules
                 else q_at[0].type_name)
    return HeadSet(prefix or "model", type_name, heads, kv_heads, d, q_at, k_at, v_at, o,
                   module=modules.get(prefix) if modules else None)


def _row_name(name: str, taken: Mapping[str, Layer]) -> str:
    """The module's row name; `.heads` appended if a measured layer already has that name."""
    return f"{name}.heads" if name in taken else name


# -- computation -----------------------------------------------------------------------------

def _wide(t: torch.Tensor) -> torch.Tensor:
    """float64 for the d × d work (MPS has no float64: float32 there)."""
    return t.float() if t.device.type == "mps" else t.double()


def _per_head(rows: torch.Tensor, count: int, d: int) -> torch.Tensor:
    """(count·d, n) rows → (count, d, n) in float64."""
    return _wide(rows.reshape(count, d, rows.shape[-1]))


def product_singular_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """σ(Aᵀ B) for batches of factors A (H, d, n_a), B (H, d, n_b) (rows = the d hidden
    directions), descending (H, d), from their d × d Grams: σ² = eig(Lᵀ G_b L), G_a = L Lᵀ."""
    ga = a @ a.transpose(1, 2)
    gb = b @ b.transpose(1, 2)
    d = ga.shape[-1]
    eye = torch.eye(d, dtype=ga.dtype, device=ga.device)
    scale = ga.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)[:, None, None]
    chol, info = torch.linalg.cholesky_ex(ga + 1e-10 * scale * eye)
    # Where that jitter was not enough, a larger one; both always computed (d × d, cheap), so
    # there is no host sync on a GPU here.
    chol2, _ = torch.linalg.cholesky_ex(ga + 1e-6 * scale * eye)
    chol = torch.where((info != 0)[:, None, None], chol2, chol)
    m = chol.transpose(1, 2) @ gb @ chol
    eig = torch.linalg.eigvalsh(m).flip(-1).clamp_min(0)
    # A = 0 exactly (a zeroed head): the jitter alone factored, σ must read 0, not ~1e-150·‖B‖
    return eig.sqrt() * (ga.diagonal(dim1=1, dim2=2).sum(1) > 0)[:, None]


def head_spectra(hs: HeadSet, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 o: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-head singular values of the QK and VO products, (H, d) each (VO None without an
    output projection). q: (H·d, n) rows of W_Q; k, v: (H_kv·d, n); o: (n_out, H·d)."""
    h, g, d = hs.heads, hs.kv_heads, hs.head_dim
    group = torch.arange(h, device=q.device) // (h // g)  # query head → its key/value head
    wq = _per_head(q, h, d)
    wk = _per_head(k, g, d)[group]
    qk = product_singular_values(wq, wk)
    if o is None:
        return qk, None
    wv = _per_head(v, g, d)[group]
    wo = _wide(o.reshape(o.shape[0], h, d).permute(1, 2, 0))  # (H, d, n_out): W_O,hᵀ
    return qk, product_singular_values(wo, wv)


# -- the per-head series ---------------------------------------------------------------------

def _product_edge(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Top of the support of the free product of two Marchenko–Pastur laws (ratios b1, b2 ∈
    (0, 1], mean 1 each): min over w > 0 of (1 + w)(1 + b1·w)(1 + b2·w)/w, at the positive
    root of 2·b1·b2·w³ + (b1 + b2 + b1·b2)·w² − 1 (increasing in w: bisection)."""
    c3, c2 = 2 * b1 * b2, b1 + b2 + b1 * b2
    lo, hi = torch.zeros_like(b1), 1 / c2.sqrt()
    for _ in range(80):
        mid = (lo + hi) / 2
        up = c3 * mid ** 3 + c2 * mid ** 2 - 1 > 0
        hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
    w = (lo + hi) / 2
    return (1 + w) * (1 + b1 * w) * (1 + b2 * w) / w


def product_quantiles(b1: torch.Tensor, b2: torch.Tensor, probs: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantiles (R, P) and the top edge (R,) of the eigenvalues of W₁W₂, W_i = X_i X_iᵀ/N_i
    independent Wisharts of ratios b1, b2 (R,) (k × N_i unit-variance X_i, b = k/N_i): the
    free product of the two Marchenko–Pastur laws. Its moment function w = xG(x) − 1 solves
    x·w = (1 + w)(1 + b1·w)(1 + b2·w) (S-transforms multiply: 1/((1 + b1 z)(1 + b2 z))); the
    density is |Im w|/(πx) on the support, integrated on a grid dense near the ends."""
    b1, b2 = b1.double()[:, None], b2.double()[:, None]
    top = _product_edge(b1, b2)
    steps = 2000
    theta = torch.linspace(0, math.pi, steps + 1, dtype=torch.float64)[None, :]
    x = (top * (1 - torch.cos(theta)) / 2).clamp_min(1e-12)
    c3, c2, c1 = b1 * b2, b1 + b2 + b1 * b2, 1 + b1 + b2
    # roots of c3·w³ + c2·w² + (c1 − x)·w + 1: eigenvalues of the monic cubic's companion
    comp = torch.zeros(*x.shape, 3, 3, dtype=torch.float64)
    comp[..., 0, 0] = -(c2 / c3).expand_as(x)
    comp[..., 0, 1] = -(c1 - x) / c3
    comp[..., 0, 2] = -(1 / c3).expand_as(x)
    comp[..., 1, 0] = 1
    comp[..., 2, 1] = 1
    roots = torch.linalg.eigvals(comp)
    dens = roots.imag.abs().amax(-1) / (math.pi * x)
    cdf = torch.cumsum(dens * top * torch.sin(theta) / 2 * (math.pi / steps), 1)
    cdf = cdf / cdf[:, -1:].clamp_min(1e-300)
    j = torch.searchsorted(cdf.contiguous(), probs.double().contiguous()).clamp(max=steps)
    return x.expand_as(cdf).gather(1, j), top[:, 0]


@lru_cache(maxsize=64)
def _product_tables(d: int, na: int, nb: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bulk.py's `_tables` for a head's product Aᵀ B (A: d × na, B: d × nb, i.i.d. entries of
    variances s_a², s_b²): per r = 0..d−1 modes removed, the weights that fit the noise level
    s = s_a·s_b to the lower FIT share of σ_{r+1..d} (least squares against the expected σ of
    the product of (d − r) × (na − r) and (d − r) × (nb − r) factors: √((na − r)(nb − r)·x_q),
    x_q the free product's quantiles), its edge √((na − r)(nb − r)·x₊), and the relative
    entry margin: TW_WIDTHS widths, a width the sum of the two factors' top-σ widths (each
    bulk.py's ½(1/√m + 1/√n)^{1/3}/(√m + √n)): the spread of σ₁/edge measured over 300 random
    products (1.5 % at d = 64, n = 768; 0.6 % at 128 × 4096) matches the sum, not the
    quadrature sum, so a pure product's σ₁ stays under the entry level
    (tests/agent/test_heads_series.py)."""
    k = d
    r = torch.arange(k, dtype=torch.float64)
    kr, ar, br = k - r, na - r, nb - r
    first = r + torch.minimum(kr - 1, (kr * (1 - bulk.FIT)).floor())
    j = torch.arange(k, dtype=torch.float64)[None, :]
    used = j >= first[:, None]
    probs = (1 - (j - r[:, None] + 0.5) / kr[:, None]).clamp(0, 1)
    quant, top = product_quantiles(kr / ar, kr / br, probs)
    scale = (ar * br).sqrt()
    q = (scale[:, None] * quant.sqrt()) * used
    weights = q / q.square().sum(1, keepdim=True).clamp_min(1e-300)
    edge = scale * top.sqrt()

    def width(m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1 / m.sqrt() + 1 / n.sqrt()) ** (1 / 3) / (m.sqrt() + n.sqrt())

    margin = bulk.TW_WIDTHS * (width(kr, ar) + width(kr, br))
    return weights.float(), edge.float(), margin.float()


def product_edges_by_count(sv: torch.Tensor, d: int, na: int, nb: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """bulk.edges_by_count for heads' products: (edge (B, d), margin (d,)) for r = 0..d−1."""
    weights, edge, margin = (t.to(sv.device, sv.dtype) for t in _product_tables(d, na, nb))
    return (sv @ weights.T) * edge, margin


def product_modes(hs: HeadSet, pair: str, sv: torch.Tensor, na: int, nb: int,
                  decay: float, finite: torch.Tensor) -> torch.Tensor:
    """`modes` per head (H,): #{σ_k of the head's product above its own random bulk}, the
    layer `modes` rule (bulk.py: self-consistent edge fit to the spectrum, carried reference,
    hysteresis) with the free product's law in place of
    Marchenko–Pastur. State per head in `hs` (`pair`: "qk" or "vo"); `decay`: what weight
    decay shrank the product by since the last sample (both factors': the product of their
    factors); a non-finite module keeps its state. NaN (not computed) where a factor is
    wider than it is long (d > na or nb: no random bulk to fit) or d < 2."""
    h, d = sv.shape
    if d < 2 or d > min(na, nb):
        return torch.full((h,), float("nan"), dtype=sv.dtype, device=sv.device)
    nan = torch.full((h,), float("nan"), dtype=sv.dtype, device=sv.device)
    previous = hs.modes.get(pair, nan).to(sv.dtype)
    carried = hs.bulk_ref.get(pair, nan).to(sv.dtype) * decay
    table = product_edges_by_count(sv, d, na, nb)
    enter, stay, ref = bulk.bulk_edge(sv, d, max(na, nb), previous, carried, table=table)
    decaying = torch.full((h,), decay < 1.0, device=sv.device)  # as a layer's (bulk.under_decay)
    enter, stay = bulk.under_decay(sv, enter, stay, decaying)
    count = bulk.hysteresis(sv, enter, stay, previous)
    hs.modes[pair] = torch.where(finite, count, previous)
    hs.bulk_ref[pair] = torch.where(finite, ref, carried)
    return count


def warm_tables(hs: HeadSet) -> None:
    """Build the product-law tables this module's heads will use (cached per shape: 0.5–0.7 s
    each at d = 64, n = 768 on a loaded CPU), so the first full sample does not pay for them
    on the training thread (IndicatorEngine.warm_up)."""
    n_in = hs.q[0].matrix_shape[1]
    shapes = [(n_in, n_in)] + ([(hs.o.matrix_shape[0], n_in)] if hs.o is not None else [])
    for na, nb in shapes:
        if 2 <= hs.head_dim <= min(na, nb):
            _product_tables(hs.head_dim, na, nb)
