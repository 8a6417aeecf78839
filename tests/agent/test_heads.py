"""Attention heads: per-head QK and VO product ranks (heads.py), and finding the heads in the
module layouts people use: nn.MultiheadAttention, GPT-2's fused Conv1D `c_attn` (transformers'
real modules from a tiny config), separate q/k/v Linears under several namings (and BERT,
Llama from transformers), grouped-query attention, and the user's `heads=` override.

Real torch and transformers modules; expected values are computed the slow obvious way (a
float64 SVD of each head's product)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from symwatch_agent.measure import heads as attention
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import FULL

logging.getLogger("transformers").setLevel(logging.ERROR)


class Block(nn.Module):
    """A hand-written attention block with separate projections, named like Llama's."""

    def __init__(self, e: int = 16, heads: int = 2, kv_heads: int | None = None,
                 names: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                 attr: str | None = "num_heads") -> None:
        super().__init__()
        kv = kv_heads or heads
        d = e // heads
        q, k, v, o = names
        setattr(self, q, nn.Linear(e, heads * d, bias=False))
        setattr(self, k, nn.Linear(e, kv * d, bias=False))
        setattr(self, v, nn.Linear(e, kv * d, bias=False))
        setattr(self, o, nn.Linear(heads * d, e, bias=False))
        if attr:
            setattr(self, attr, heads)
        if kv_heads:
            self.num_key_value_heads = kv_heads


def run(models: dict[str, nn.Module], **options) -> tuple[dict, IndicatorEngine, list[str]]:
    layers, _ = discover(models)
    engine = IndicatorEngine(layers)
    notes = engine.attach(models, observe=False, **options)
    values, _ = engine.decode(engine.compute(FULL).tolist())
    return values, engine, notes


def product_ranks(wq: torch.Tensor, wk: torch.Tensor, heads: int, kv_heads: int,
                  rel_tol: float = 0.3, abs_tol: float = 0.1) -> list[int]:
    """#{√σ > τ_h} of W_Q,hᵀ W_K,g per head from a float64 SVD (wq, wk: (out, in) matrices)."""
    d = wq.shape[0] // heads
    wq, wk = wq.detach(), wk.detach()
    roots = []
    for h in range(heads):
        g = h // (heads // kv_heads)
        prod = wq[h * d:(h + 1) * d].double().T @ wk[g * d:(g + 1) * d].double()
        roots.append(torch.linalg.svdvals(prod).sqrt())
    # τ per head, relative to that head's own √σ₁ (one sample: the largest seen is this one)
    return [int((r > max(rel_tol * float(r[0]), abs_tol)).sum()) for r in roots]


def orthonormal_rows(r: int, n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=torch.Generator().manual_seed(seed)))
    return q.T


# -- the computation ---------------------------------------------------------------------------

def test_product_singular_values_match_a_float64_svd_of_the_product():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 8, 20, generator=gen), torch.randn(3, 8, 12, generator=gen)
    a[1, 5:] = 0  # a rank-deficient head: its zero directions must read ~0, not noise
    got = attention.product_singular_values(a.double(), b.double())
    for h in range(3):
        want = torch.linalg.svdvals(a[h].double().T @ b[h].double())[:8]
        # the Cholesky jitter (1e-10 of the Gram's scale) moves σ by at most ~1e-5·σ₁
        assert torch.allclose(got[h], want, rtol=1e-6, atol=1e-5 * float(want[0]))
    assert float(got[1, 5:].max()) < 1e-4 * float(got[1, 0])


def test_a_head_with_a_rank_r_product_reads_r_and_a_zero_output_head_is_dead():
    block = Block(e=16, heads=2)
    with torch.no_grad():
        # head 0: QK product of rank 3, head 1: rank 5 (both factors' directions of norm 1)
        block.q_proj.weight.zero_()
        block.q_proj.weight[0:3] = orthonormal_rows(3, 16, 0)
        block.q_proj.weight[8:13] = orthonormal_rows(5, 16, 1)
        block.k_proj.weight.copy_(torch.cat([orthonormal_rows(8, 16, 2),
                                             orthonormal_rows(8, 16, 3)]))
        block.v_proj.weight.copy_(torch.cat([orthonormal_rows(8, 16, 4),
                                             orthonormal_rows(8, 16, 5)]))
        block.o_proj.weight.copy_(torch.cat([orthonormal_rows(8, 16, 6).T,
                                             torch.zeros(16, 8)], dim=1))  # head 1 writes 0
    got = run({"blk": block})[0]["blk"]
    assert (got["qk_rank.h0"], got["qk_rank.h1"]) == (3, 5)
    assert got["qk_rank"] == pytest.approx(4) and got["qk_rank_min"] == 3
    assert (got["vo_rank.h0"], got["vo_rank.h1"]) == (8, 0)
    assert got["dead_heads"] == pytest.approx(0.5) and got["vo_rank_min"] == 0
    assert got["delta_rotation"] == pytest.approx((4 + 4) / 2 / 8)  # mean rank / head_dim
    assert got["broken"] == pytest.approx(got["delta_rotation"])


def test_the_pair_symmetry_leaves_the_product_and_its_ranks_unchanged_but_not_the_factors():
    torch.manual_seed(0)
    block = Block(e=16, heads=2)
    with torch.no_grad():  # a spread spectrum, so thresholds have something to cut
        for lin in (block.q_proj, block.k_proj, block.v_proj, block.o_proj):
            lin.weight.mul_(torch.logspace(0, -1.5, lin.weight.shape[1]))
    before, _, _ = run({"blk": block})
    wq0, wk0 = block.q_proj.weight[:8].clone(), block.k_proj.weight[:8].clone()
    # W_Q,0 → A W_Q,0 and W_K,0 → A⁻ᵀ W_K,0 for a general invertible (non-orthogonal) A
    a = torch.eye(8) + 0.5 * torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        block.q_proj.weight[:8] = a @ wq0
        block.k_proj.weight[:8] = torch.linalg.inv(a).T @ wk0
    after, _, _ = run({"blk": block})
    prod_before = wq0.double().T @ wk0.double()
    prod_after = block.q_proj.weight[:8].double().T @ block.k_proj.weight[:8].double()
    assert torch.allclose(prod_before, prod_after, atol=1e-5)
    for name in ("qk_rank.h0", "qk_rank.h1", "qk_rank", "vo_rank", "dead_heads"):
        assert after["blk"][name] == before["blk"][name], name
    # the factors themselves moved: their own indicators see it
    assert after["blk.q_proj"]["stable_rank"] != pytest.approx(before["blk.q_proj"]["stable_rank"],
                                                               rel=1e-3)
    assert after["blk.k_proj"]["weight_norm"] != pytest.approx(before["blk.k_proj"]["weight_norm"],
                                                               rel=1e-3)
    # and the per-head spectra agree with the float64 SVD of the product
    got = [after["blk"][f"qk_rank.h{h}"] for h in range(2)]
    assert got == product_ranks(block.q_proj.weight, block.k_proj.weight, 2, 2)


def test_nonfinite_factors_make_the_module_row_null():
    block = Block()
    with torch.no_grad():
        block.k_proj.weight[0, 0] = float("nan")
    layers, _ = discover({"blk": block})
    engine = IndicatorEngine(layers)
    engine.attach({"blk": block}, observe=False)
    values, nonfinite = engine.decode(engine.compute(FULL).tolist())
    assert "blk" in nonfinite and values["blk"] and set(values["blk"].values()) == {None}


# -- finding the heads -------------------------------------------------------------------------

def test_multihead_attention_fused_and_separate_projections():
    torch.manual_seed(0)
    fused = nn.MultiheadAttention(12, 3)
    separate = nn.MultiheadAttention(12, 4, kdim=6, vdim=5)
    values, engine, notes = run({"fused": fused, "sep": separate})
    assert notes == []
    by_name = {hs.name: hs for hs in engine.heads}
    assert (by_name["fused"].heads, by_name["fused"].head_dim) == (3, 4)
    assert by_name["fused"].o is not None and by_name["fused"].o.name == "fused.out_proj"
    w = fused.in_proj_weight.detach()
    assert [values["fused"][f"qk_rank.h{h}"] for h in range(3)] == \
        product_ranks(w[:12], w[12:24], 3, 3)
    assert [values["sep"][f"qk_rank.h{h}"] for h in range(4)] == \
        product_ranks(separate.q_proj_weight.detach(), separate.k_proj_weight.detach(), 4, 4)
    assert "vo_rank" in values["sep"]
    rows = [row["name"] for row in engine.describe()]
    assert rows.index("fused") == rows.index("fused.q") - 1  # the module's row leads its layers


def test_gpt2_fused_conv1d_attention_from_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16,
                                     vocab_size=40, add_cross_attention=True)
    model = transformers.GPT2Model(config)
    values, engine, notes = run({"": model})
    names = {hs.name for hs in engine.heads}
    assert {"h.0.attn", "h.1.attn", "h.0.crossattention"} <= names and notes == []
    attn = model.h[0].attn
    # Conv1D stores (in, out): the (out, in) matrix is its transpose
    w = attn.c_attn.weight.detach().T
    assert [values["h.0.attn"][f"qk_rank.h{h}"] for h in range(4)] == \
        product_ranks(w[:32], w[32:64], 4, 4)
    cross = next(hs for hs in engine.heads if hs.name == "h.0.crossattention")
    assert cross.q[0].name == "h.0.crossattention.q_attn" and cross.k[0].name.endswith("c_attn")
    assert cross.o is not None and cross.o.name.endswith("c_proj")


def test_separate_projections_under_each_naming_with_heads_from_the_module_or_a_config():
    class Config:
        num_attention_heads = 4

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = Config()  # heads on an ancestor's config (Hugging Face style)
            self.a = Block(e=16, heads=2, names=("query", "key", "value", "out"), attr="n_heads")
            self.b = Block(e=16, heads=4, names=("wq", "wk", "wv", "wo"), attr=None)

    model = Model()
    values, engine, notes = run({"": model})
    got = {hs.name: (hs.heads, hs.head_dim, hs.o.name if hs.o else None) for hs in engine.heads}
    assert got == {"a": (2, 8, "a.out"), "b": (4, 4, "b.wo")} and notes == []


def test_bert_and_llama_attention_from_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        vocab_size=50))
    llama = transformers.LlamaModel(transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=50))
    _, engine, _ = run({"bert": bert, "llama": llama})
    got = {hs.name: hs for hs in engine.heads}
    bert_heads = got["bert.encoder.layer.0.attention.self"]
    assert bert_heads.heads == 4 and bert_heads.o is not None
    assert bert_heads.o.name == "bert.encoder.layer.0.attention.output.dense"
    llama_heads = got["llama.layers.0.self_attn"]
    assert (llama_heads.heads, llama_heads.kv_heads, llama_heads.head_dim) == (4, 2, 8)


def test_grouped_query_attention_pairs_each_query_head_with_its_key_value_head():
    torch.manual_seed(0)
    block = Block(e=16, heads=4, kv_heads=2)
    values, engine, _ = run({"blk": block})
    hs = engine.heads[0]
    assert (hs.heads, hs.kv_heads, hs.head_dim) == (4, 2, 4)
    assert [values["blk"][f"qk_rank.h{h}"] for h in range(4)] == \
        product_ranks(block.q_proj.weight, block.k_proj.weight, 4, 2)
    # without the attribute the key/value head count comes from the key projection's size
    del block.num_key_value_heads
    _, engine, _ = run({"blk": block})
    assert engine.heads[0].kv_heads == 2
    # multi-query attention: one key/value head shared by all four query heads
    mqa = Block(e=16, heads=4, kv_heads=1)
    values, engine, _ = run({"mqa": mqa})
    assert engine.heads[0].kv_heads == 1
    assert [values["mqa"][f"vo_rank.h{h}"] for h in range(4)] == [
        min(4, int(torch.linalg.matrix_rank(
            mqa.o_proj.weight.detach()[:, h * 4:(h + 1) * 4].double()
            @ mqa.v_proj.weight.detach().double())))
        for h in range(4)]
    # a fused [q; k; v] projection needs it said: (heads, kv_heads)
    fused = nn.Module()
    fused.qkv = nn.Linear(16, (4 + 2 + 2) * 4)
    fused.proj = nn.Linear(16, 16)
    _, engine, notes = run({"f": fused}, heads={"f": (4, 2)})
    assert (engine.heads[0].kv_heads, engine.heads[0].head_dim) == (2, 4)


def test_unknown_head_counts_are_skipped_with_what_to_pass_and_overrides_are_checked():
    block = Block(attr=None)
    values, engine, notes = run({"blk": block})
    assert engine.heads == [] and "blk" not in values
    assert len(notes) == 1 and "heads={'blk': N}" in notes[0]
    values, engine, notes = run({"blk": block}, heads={"blk": 4})
    assert engine.heads[0].heads == 4 and "qk_rank.h3" in values["blk"] and notes == []
    with pytest.raises(ValueError, match="no attention module named 'nope'"):
        run({"blk": block}, heads={"nope": 2})
    with pytest.raises(ValueError, match="not a multiple of 3 heads"):
        run({"blk": block}, heads={"blk": 3})
    _, engine, _ = run({"blk": Block()}, heads={"blk": None})
    assert engine.heads == []
    _, engine, _ = run({"blk": Block()}, heads=False)
    assert engine.heads == []


def test_heads_are_off_the_cheap_tier_and_the_module_row_keeps_its_place():
    block = Block()
    layers, _ = discover({"blk": block})
    engine = IndicatorEngine(layers)
    engine.attach({"blk": block}, observe=False)
    values, _ = engine.decode(engine.compute("cheap").tolist())
    assert "blk" not in values  # full tier only: absent, never a fake value
    assert [row["name"] for row in engine.describe()][:2] == ["blk", "blk.q_proj"]


def test_an_unnamed_model_that_is_itself_the_attention_block():
    block = Block(e=16, heads=2)  # q_proj, … at the root: the module's row is "model"
    values, engine, notes = run({"": block})
    assert [hs.name for hs in engine.heads] == ["model"] and notes == []
    assert "qk_rank.h1" in values["model"]
    _, engine, notes = run({"": Block(attr=None)}, heads={"model": 4})
    assert engine.heads[0].heads == 4 and notes == []
