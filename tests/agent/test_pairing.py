"""Pairing of consecutive layers (static, one traced forward pass, user overrides) and the
layer types and wrappers discovery understands."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover


def paired(model: nn.Module, *inputs, **attach) -> dict[str, object]:
    models = {"": model}
    layers, _ = discover(models)
    engine = IndicatorEngine(layers)
    engine.attach(models, **attach)
    if inputs:
        model(*inputs)
    return {layer.name: layer for layer in layers}


class Functional(nn.Module):
    """ReLU as a function, a residual add, a LayerNorm, dropout, a shape change."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 8)
        self.res, self.norm = nn.Linear(8, 8), nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        h = nn.functional.dropout(h, 0.1, self.training)
        h = self.fc2(h.reshape(2, -1, 8)).flatten(0, 1)  # keeps the unit (last) dim whole
        h = h + self.res(h)  # fc2 and res escape into a residual add
        return self.head(self.norm(h) * 2.0)


def test_a_traced_forward_follows_functional_activations_and_stops_at_residuals():
    layers = paired(Functional(), torch.randn(4, 6))
    assert [c.name for c in layers["fc1"].consumers] == ["fc2"]
    assert layers["fc1"].ops == ("relu", "dropout") and layers["fc1"].rescale
    assert layers["fc1"].relu and not layers["fc1"].mirror
    assert layers["fc2"].consumers == [] and layers["res"].consumers == []  # residual add
    assert [c.name for c in layers["norm"].consumers] == ["head"]  # γ·x̂ then ×2 (homogeneous)
    assert layers["norm"].rescale and layers["head"].classifier


def test_the_pairing_hooks_remove_themselves_after_one_forward():
    model = Functional()
    paired(model)
    assert model._forward_pre_hooks and model._forward_hooks
    model(torch.randn(4, 6))
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_the_user_overrides_pairs_and_bad_names_fail_clearly():
    layers = paired(Functional(), torch.randn(4, 6), pairs={"fc2": "head", "fc1": None})
    assert [c.name for c in layers["fc2"].consumers] == ["head"] and layers["fc2"].rescale
    assert layers["fc2"].user_paired
    with pytest.raises(ValueError, match="no measured layer named 'nope'"):
        paired(Functional(), pairs={"nope": "fc2"})
    with pytest.raises(ValueError, match="reads 8 input units"):
        paired(Functional(), pairs={"fc2": "fc1"})  # fc1 reads 6 inputs, not fc2's 8 units
    # a user pairing survives the traced pass (the tracer found fc1 -> fc2; the user said none)
    assert layers["fc1"].consumers == []


def test_norms_embeddings_and_attention_are_measured_and_paired():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 8)
            self.ln = nn.LayerNorm(8)
            self.up = nn.Linear(8, 16)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            h = self.emb(t)
            a, _ = self.attn(h, h, h)
            return self.up(self.ln(self.fc(a)))

    model = Block()
    layers = paired(model, torch.randint(0, 20, (2, 5)))
    assert layers["emb"].matrix_shape == (8, 20)  # units = embedding dims
    assert [c.name for c in layers["emb"].consumers] == ["attn.q"]  # reads with in_proj
    assert layers["attn.q"].matrix_shape == (8, 8) and "attn.k" in layers and "attn.v" in layers
    assert [c.name for c in layers["attn.out_proj"].consumers] == ["fc"]
    assert layers["attn.out_proj"].mirror  # nothing between the attention output and fc
    assert layers["fc"].normed_by == "layer" and layers["fc"].consumers == []
    assert [c.name for c in layers["ln"].consumers] == ["up"] and layers["ln"].rescale
    values, _ = IndicatorEngine(list(layers.values())).decode(
        IndicatorEngine(list(layers.values())).compute().tolist())
    assert values["ln"]["weight_norm"] == pytest.approx(8 ** 0.5)


def test_conv_batchnorm_stacks_are_paired_per_channel():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    static = paired(model)
    assert static["0"].normed_by == "channel"
    assert [c.name for c in static["1"].consumers] == ["4"] and static["1"].relu
    assert static["4"].consumers == []  # statically, Flatten stops the chain
    traced = paired(model, torch.randn(2, 3, 8, 8))
    assert [c.name for c in traced["4"].consumers] == ["8"]  # (N, 5, 1, 1) -> (N, 5): aligned
    assert traced["4"].rescale and traced["4"].relu


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile import noise
def test_wrappers_are_looked_through_and_lora_factors_pair():
    class LoraLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base_layer = nn.Linear(8, 8)
            self.lora_A = nn.ModuleDict({"default": nn.Linear(8, 2, bias=False)})
            self.lora_B = nn.ModuleDict({"default": nn.Linear(2, 8, bias=False)})

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x)) * 0.5

    model = nn.Sequential(LoraLinear())
    for wrapped in (torch.compile(model), nn.DataParallel(model)):
        layers, skipped = discover({"": wrapped})
        assert [layer.name for layer in layers] == [
            "0.base_layer", "0.lora_A.default", "0.lora_B.default"]
        assert skipped == []
    layers = paired(model)
    assert layers["0.lora_A.default"].mirror  # B·A: a factor pair with nothing in between
    layers = paired(model, torch.randn(3, 8))
    assert layers["0.lora_A.default"].mirror  # and the traced pass agrees


def test_unknown_modules_are_skipped_and_grouped_convs_are_not_consumers():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.ones(3))

    model = nn.Sequential(nn.Conv1d(4, 4, 1), nn.ReLU(), nn.Conv1d(4, 4, 1, groups=2), Odd())
    layers, skipped = discover({"": model})
    assert skipped == ["3 (Odd)"]
    by_name = paired(model)
    assert by_name["0"].consumers == []  # a grouped conv does not read one column per unit
