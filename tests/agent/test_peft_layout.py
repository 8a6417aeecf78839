"""Wrappers users really have: PEFT LoRA adapters, torch.compile, DistributedDataParallel.

peft is not a dependency, so `LoraLinear` below mirrors the module layout of
`peft.tuners.lora.layer.Linear` (peft 0.x): the original layer kept as `base_layer`,
`lora_A`/`lora_B` as `nn.ModuleDict`s of bias-free Linears keyed by adapter name,
`lora_dropout` a ModuleDict, `scaling` a dict (lora_alpha / r), `active_adapters` a list, and
the forward `base_layer(x) + lora_B[k](lora_A[k](lora_dropout[k](x))) * scaling[k]`; the
model is wrapped like `PeftModel` → `LoraModel` (`base_model.model.…`). The agent recognises
it by that layout (duck typing), so this is what it sees from the real package.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import FULL


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0,
                 adapters: tuple[str, ...] = ("default",)) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({k: nn.Linear(base.in_features, r, bias=False)
                                     for k in adapters})
        self.lora_B = nn.ModuleDict({k: nn.Linear(r, base.out_features, bias=False)
                                     for k in adapters})
        self.lora_dropout = nn.ModuleDict({k: nn.Dropout(0.0) for k in adapters})
        self.scaling = {k: alpha / r for k in adapters}
        self.r = {k: r for k in adapters}
        self.active_adapters = [adapters[0]]
        self.merged = False
        for k in adapters:  # PEFT's init: A random, B zero, so B·A = 0 at the start
            nn.init.zeros_(self.lora_B[k].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        for k in self.active_adapters:
            result = result + self.lora_B[k](self.lora_A[k](self.lora_dropout[k](x))) \
                * self.scaling[k]
        return result


class Attention(nn.Module):
    def __init__(self, e: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.q_proj, self.k_proj = nn.Linear(e, e), nn.Linear(e, e)
        self.v_proj, self.o_proj = nn.Linear(e, e), nn.Linear(e, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        h = self.num_heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, e // h).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.o_proj(out.transpose(1, 2).reshape(b, t, e))


def peft_model(adapters: tuple[str, ...] = ("default",)) -> nn.Module:
    """An attention block with LoRA on q_proj and v_proj, wrapped like PeftModel/LoraModel."""
    torch.manual_seed(0)
    inner = nn.Module()
    inner.attn = Attention()
    inner.attn.q_proj = LoraLinear(inner.attn.q_proj, adapters=adapters)
    inner.attn.v_proj = LoraLinear(inner.attn.v_proj, adapters=adapters)
    lora_model = nn.Module()
    lora_model.model = inner
    peft = nn.Module()
    peft.base_model = lora_model
    return peft


def measure(models: dict, **options) -> tuple[dict, IndicatorEngine]:
    layers, _ = discover(models)
    engine = IndicatorEngine(layers)
    engine.attach(models, observe=False, **options)
    return engine.decode(engine.compute(FULL).tolist())[0], engine


def test_each_adapter_is_a_factor_pair_and_its_mirror_rank_is_the_adapters_rank():
    model = peft_model(adapters=("default", "other"))
    q = model.base_model.model.attn.q_proj
    with torch.no_grad():  # a balanced rank-2 adapter: B = Aᵀ on 2 of its r = 4 directions
        basis, _ = torch.linalg.qr(torch.randn(16, 2))
        q.lora_A["default"].weight.zero_()
        q.lora_A["default"].weight[:2] = basis.T
        q.lora_B["default"].weight.zero_()
        q.lora_B["default"].weight[:, :2] = basis
    layers, skipped = discover({"": model})
    names = [layer.name for layer in layers]
    prefix = "base_model.model.attn.q_proj"
    assert [n for n in names if n.startswith(prefix)] == [
        f"{prefix}.base_layer", f"{prefix}.lora_A.default", f"{prefix}.lora_A.other",
        f"{prefix}.lora_B.default", f"{prefix}.lora_B.other"] and skipped == []
    values, engine = measure({"": model})
    pairs = {layer.name: [c.name for c in layer.consumers] for layer in engine.layers
             if layer.mirror}
    assert pairs[f"{prefix}.lora_A.default"] == [f"{prefix}.lora_B.default"]
    assert pairs[f"{prefix}.lora_A.other"] == [f"{prefix}.lora_B.other"]
    assert values[f"{prefix}.lora_A.default"]["mirror_rank"] == 2


def test_attention_heads_are_found_through_lora_wrappers_and_include_the_active_adapter():
    model = peft_model()
    attn = model.base_model.model.attn
    values, engine = measure({"": model})
    hs = engine.heads[0]
    assert hs.name == "base_model.model.attn" and hs.q[0].name.endswith("q_proj.base_layer")
    base_rank = values["base_model.model.attn"]["qk_rank.h0"]
    # B = 0 (PEFT's init): the heads read the base weights. A trained adapter that cancels
    # head 0's query directions (W₀ + s·B·A with B·A = −W₀/s on those rows) removes its QK rank.
    with torch.no_grad():
        w0 = attn.q_proj.base_layer.weight[:8].clone()
        s = attn.q_proj.scaling["default"]
        a, b = attn.q_proj.lora_A["default"].weight, attn.q_proj.lora_B["default"].weight
        u, sv, vh = torch.linalg.svd(w0, full_matrices=False)
        a.copy_(vh[:4])  # rank 4 of head 0's 8 rows
        b.zero_()
        b[:8] = -(u[:, :4] * sv[:4]) / s
    got = engine.decode(engine.compute(FULL).tolist())[0]["base_model.model.attn"]
    assert base_rank == 8 and got["qk_rank.h0"] == 4
    attn.q_proj.active_adapters = []  # adapter switched off: back to the base weights
    got = engine.decode(engine.compute(FULL).tolist())[0]["base_model.model.attn"]
    assert got["qk_rank.h0"] == 8


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile import noise
def test_compiled_and_ddp_wrapped_models_read_like_the_plain_model():
    model = peft_model()
    plain, _ = measure({"": model})
    compiled, engine = measure({"": torch.compile(model)})
    assert compiled.keys() == plain.keys() and engine.heads
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        wrapped, engine = measure({"": ddp})
    finally:
        dist.destroy_process_group()
    assert wrapped.keys() == plain.keys() and engine.heads
    for name in plain:
        assert wrapped[name].keys() == plain[name].keys()
        for key, value in plain[name].items():
            want = value if value is None else pytest.approx(value, rel=1e-6)
            assert wrapped[name][key] == want, (name, key)
