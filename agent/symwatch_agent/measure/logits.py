"""The attention max-logit per head, from the forward pass of a sampled step (docs/metrics.md,
"Attention heads").

    max_logit.h<N> = max over the captured query/key pairs (i, j) of |q_i,N · k_j,N| / √d

with q_i,N, k_j,N head N's query and key (grouped-query attention: key/value head N // (H/H_kv))
as the projections computed them in that forward, and `max_logit` = the largest over the
module's heads. It is the size of the pre-softmax score the largest pair reaches: attention
logit growth precedes the loss divergence of large-scale training (Dehghani et al. 2023,
"Scaling Vision Transformers to 22B Parameters"; Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities"), which is why it is watched. It has no
symmetric state: it is a stability signal, not an order parameter.

Where the queries and keys come from (the modules heads.py pairs, `HeadSet`):
- `nn.MultiheadAttention`: a forward pre-hook reads the `query` and `key` inputs (and
  `attn_mask`, `key_padding_mask`) and projects the chosen rows with the module's q and k rows
  of `in_proj_weight` (or `q_proj_weight`/`k_proj_weight`) and biases, as the module's own
  forward does;
- separate or fused projections (`q_proj`/`k_proj`, GPT-2's `c_attn`, `qkv`, …): forward hooks
  on the projections read their outputs (a PEFT-wrapped projection: the wrapper's, adapters
  included), the q and k columns of a fused output.

Cost cap: at most MAX_SEQS sequences of the batch and MAX_POS positions of each (evenly spaced,
the first and last included), all of their query/key pairs: per module at most
MAX_SEQS·MAX_POS² dot products of H·d, plus, for nn.MultiheadAttention only, the projection of
MAX_SEQS·MAX_POS rows (2·MAX_SEQS·MAX_POS·E² multiply-adds), computed on the device in the
hook, no host sync; what is copied is H floats.

What is approximated (documented in docs/metrics.md):
- a sub-batch: the max over the chosen pairs is a lower bound on the max over the whole batch
  (exact when the batch has at most MAX_SEQS sequences of at most MAX_POS positions);
- the causal mask is respected where it is known: nn.MultiheadAttention's `attn_mask` (boolean
  or −inf entries) and `key_padding_mask`; for projections, a module that says it is causal
  (`is_causal` true, as transformers' GPT-2 and Llama attention do, or a class named
  `*Causal*`, nanoGPT's `CausalSelfAttention`) masks keys after the query; otherwise every pair
  counts (for an undeclared causal model: an upper bound over the future keys too). Padding
  masks passed as arguments to a projection-style module are not seen;
- rotary position embeddings and QK-norm act after the projections: for such models (Llama,
  OLMo 2) the figure is of the un-rotated, un-normed q·k, a proxy of the logit, not the logit;
- the scale is the standard 1/√d; a model with another one (μP's 1/d, GPT-2's
  `scale_attn_weights=False`) differs from it by that factor (a constant: its growth reads the
  same).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from symwatch_agent.measure.heads import HeadSet

# One probe of the next forward: (key, module, fn(args, kwargs, output) → device tensor or None
# while waiting for the other projection, pre-hook?); hooks/activations.py's Probe takes these
# fields (measure/ may not import hooks/).
Plan = tuple[str, nn.Module, Callable[[tuple[Any, ...], dict[str, Any], Any],
                                      torch.Tensor | None], bool]

MAX_SEQS = 2  # sequences of the batch read per module and sample
MAX_POS = 128  # positions of each sequence read (their pairs: MAX_POS² per head)


def _spaced(n: int, cap: int, device: torch.device) -> torch.Tensor:
    """min(n, cap) evenly spaced indices of 0..n−1, the first and the last included, made on
    the device (no host-to-device copy)."""
    if n <= cap:
        return torch.arange(n, device=device)
    return torch.arange(cap, device=device) * (n - 1) // (cap - 1)


def _sequences(x: torch.Tensor, batch_first: bool = True) -> tuple[torch.Tensor,
                                                                   torch.Tensor, torch.Tensor]:
    """x (…, T, F) (or (T, N, F) when not batch_first) → the chosen rows (S, P, F), the
    sequences chosen (S,) and the positions chosen (P,)."""
    if x.dim() == 2:  # unbatched (T, F): one sequence
        x = x.unsqueeze(0)
    elif not batch_first:
        x = x.transpose(0, 1)
    x = x.reshape(-1, x.shape[-2], x.shape[-1])
    seqs = _spaced(x.shape[0], MAX_SEQS, x.device)
    pos = _spaced(x.shape[1], MAX_POS, x.device)
    return x.index_select(0, seqs).index_select(1, pos), seqs, pos


def max_logits(q: torch.Tensor, k: torch.Tensor, heads: int, kv_heads: int,
               allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Per head (H,): max |q·k|/√d over the pairs of q (S, P, H·d) and k (S, P_k, H_kv·d),
    where `allowed` (broadcastable to (S, H, P, P_k), True: the pair counts) says so; 0 for a
    head with no allowed pair. float32 (a bf16 model's q and k are widened first)."""
    s, p, width = q.shape
    d = width // heads
    qh = q.float().reshape(s, p, heads, d).transpose(1, 2)  # (S, H, P, d)
    kh = k.float().reshape(s, k.shape[1], kv_heads, d).transpose(1, 2)  # (S, H_kv, P_k, d)
    if kv_heads != heads:
        kh = kh.repeat_interleave(heads // kv_heads, dim=1)  # query head h reads h // group
    scores = (qh @ kh.transpose(-1, -2)).abs() / math.sqrt(d)  # (S, H, P, P_k)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, 0.0)
    return scores.amax(dim=(0, 2, 3))


def _causal(pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """(P, P_k): key position ≤ query position."""
    return pos_k[None, :] <= pos_q[:, None]


def declared_causal(module: nn.Module | None) -> bool:
    """Whether the attention module says it is causal (attribute reads only: no device sync)."""
    if module is None:
        return False
    if getattr(module, "is_causal", None) is True:
        return True
    return "causal" in type(module).__name__.lower()


def _mha_allowed(mha: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any],
                 seqs: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor, heads: int
                 ) -> torch.Tensor | None:
    """The pairs nn.MultiheadAttention's masks allow, (S or 1, H or 1, P, P_k), or None.
    `attn_mask` (L, S) or (N·H, L, S): True or −inf forbids; `key_padding_mask` (N, S) likewise;
    `is_causal` only hints that attn_mask is causal (the mask is what it applies)."""
    def get(name: str, at: int) -> Any:
        return kwargs[name] if name in kwargs else (args[at] if len(args) > at else None)

    def forbidden(mask: torch.Tensor) -> torch.Tensor:
        return mask if mask.dtype == torch.bool else torch.isneginf(mask)

    allowed = None
    attn_mask = get("attn_mask", 5)
    if isinstance(attn_mask, torch.Tensor):
        block = forbidden(attn_mask)
        if block.dim() == 2:  # (L, S)
            block = block.index_select(0, pos_q).index_select(1, pos_k)[None, None]
        else:  # (N·H, L, S)
            block = block.reshape(-1, heads, *block.shape[-2:]).index_select(0, seqs)
            block = block.index_select(2, pos_q).index_select(3, pos_k)
        allowed = ~block
    padding = get("key_padding_mask", 3)
    if isinstance(padding, torch.Tensor):
        pad = forbidden(padding)
        if pad.dim() == 1:
            pad = pad[None]
        keep = ~pad.index_select(0, seqs).index_select(1, pos_k)[:, None, None, :]
        allowed = keep if allowed is None else allowed & keep
    return allowed


def _mha_probe(hs: HeadSet) -> Plan:
    mha = hs.q[0].module
    q_layer, k_layer = hs.q[0], hs.k[0]

    def fn(args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> torch.Tensor | None:
        query = kwargs.get("query", args[0] if args else None)
        key = kwargs.get("key", args[1] if len(args) > 1 else None)
        if not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
            return None
        first = bool(getattr(mha, "batch_first", False))
        xq, seqs, pos_q = _sequences(query.detach(), first)
        xk, _, pos_k = _sequences(key.detach(), first)
        with torch.no_grad():
            q = F.linear(xq, q_layer.weight.detach(), _detach(q_layer.bias))
            k = F.linear(xk, k_layer.weight.detach(), _detach(k_layer.bias))
            allowed = _mha_allowed(mha, args, kwargs, seqs, pos_q, pos_k, hs.heads)
            return max_logits(q, k, hs.heads, hs.kv_heads, allowed)

    return (hs.name, mha, fn, True)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _projection_module(hs: HeadSet, layer: Any) -> nn.Module:
    """The module whose output is the projection: a PEFT wrapper (adapters included) rather
    than its base layer."""
    adapters = hs.adapters.get(id(layer))
    return adapters[0][3] if adapters else layer.module


def _projection_probes(hs: HeadSet) -> list[Plan]:
    """Hooks on the q and k projections' outputs: each keeps its chosen rows; the one that
    completes the pair computes (q and k may come from one fused module)."""
    (q_layer, q_row), (k_layer, k_row) = hs.q, hs.k
    width_q, width_k = hs.heads * hs.head_dim, hs.kv_heads * hs.head_dim
    causal = declared_causal(hs.module)
    held: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # "q"/"k" -> (rows, positions)

    def take(part: str, output: Any, row: int, width: int) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() >= 2:
            rows, _, pos = _sequences(out.detach()[..., row:row + width])
            held.setdefault(part, (rows, pos))

    def done() -> torch.Tensor | None:
        if "q" not in held or "k" not in held:
            return None
        (q, pos_q), (k, pos_k) = held["q"], held["k"]
        if q.shape[0] != k.shape[0]:
            return None
        allowed = _causal(pos_q, pos_k) if causal and q.shape[1] == k.shape[1] else None
        with torch.no_grad():
            return max_logits(q, k, hs.heads, hs.kv_heads, allowed)

    q_module, k_module = _projection_module(hs, q_layer), _projection_module(hs, k_layer)
    if q_module is k_module:  # fused: q and k columns of one output
        def fused(args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
                  ) -> torch.Tensor | None:
            take("q", output, q_row, width_q)
            take("k", output, k_row, width_k)
            return done()
        return [(hs.name, q_module, fused, False)]

    def for_q(args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
              ) -> torch.Tensor | None:
        take("q", output, q_row, width_q)
        return done()

    def for_k(args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
              ) -> torch.Tensor | None:
        take("k", output, k_row, width_k)
        return done()

    return [(hs.name, q_module, for_q, False), (hs.name, k_module, for_k, False)]


def plan(head_sets: list[HeadSet]) -> list[Plan]:
    """The probes that measure each attention module's max-logit in the next forward (fresh
    state each call: the agent plans once per armed step)."""
    probes: list[Plan] = []
    for hs in head_sets:
        if isinstance(hs.q[0].module, nn.MultiheadAttention):
            probes.append(_mha_probe(hs))
        else:
            probes += _projection_probes(hs)
    return probes


def decode(found: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """METRICS values: per attention module `max_logit.h<N>` and `max_logit` (their max);
    a non-finite value reads null."""
    values: dict[str, dict[str, Any]] = {}
    for name, per_head in found.items():
        heads = [float(v) for v in per_head.reshape(-1).tolist()]
        row: dict[str, Any] = {f"max_logit.h{h}": v if math.isfinite(v) else None
                               for h, v in enumerate(heads)}
        row["max_logit"] = max(heads) if heads and all(map(math.isfinite, heads)) else None
        values[name] = row
    return values
