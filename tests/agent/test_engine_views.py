"""The CPU engine reads large float32 weights in place (no snapshot copy): same values as the
copied path, never a write to the live weights, and state kept between samples is a copy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP, FULL


def engine_for(model: nn.Module, view_elements: int) -> IndicatorEngine:
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    engine.view_elements = view_elements
    engine.attach({"": model}, observe=False)
    return engine


def sample(engine: IndicatorEngine, tier: str = FULL) -> dict:
    return engine.decode(engine.compute(tier).tolist())[0]


def big_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(384, 768), nn.ReLU(), nn.Linear(768, 384), nn.Linear(384, 8))
    with torch.no_grad():  # a few duplicated and dead units, so those indicators are non-trivial
        model[0].weight[1] = model[0].weight[0]
        model[0].bias[1] = model[0].bias[0]
        model[2].weight[:, 1] = model[2].weight[:, 0]
        model[0].weight[5:9] = 0
        model[0].bias[5:9] = 0
        model[2].weight[:, 5:9] = 0
    return model


def test_views_and_copies_give_the_same_values():
    model = big_model()
    viewed = engine_for(model, view_elements=1 << 18)
    copied = engine_for(model, view_elements=1 << 62)
    snap = viewed.snapshot(FULL)
    assert not snap.groups[snap.where[0][0]].owned  # 768×384: measured in place
    viewed.measure(snap)
    snap = copied.snapshot(FULL)
    assert snap.groups[snap.where[0][0]].owned
    copied.measure(snap)
    a, b = sample(viewed), sample(copied)
    assert a.keys() == b.keys()
    for layer in a:
        assert a[layer].keys() == b[layer].keys()
        for name, value in a[layer].items():
            if value is None or b[layer][name] is None:  # N/A (e.g. no duplicates to count)
                assert value is b[layer][name], (layer, name)
                continue
            assert value == pytest.approx(b[layer][name], rel=1e-5, abs=1e-6), (layer, name)
    assert a["0"]["duplicate_fraction"] == pytest.approx(2 / 764)  # units 0 and 1, of 764 live
    assert a["0"]["dead_fraction"] == pytest.approx(4 / 768)


def test_nonfinite_live_weights_are_read_never_written():
    model = big_model()
    with torch.no_grad():
        model[0].weight[3, 3] = float("nan")
    before = model[0].weight.detach().clone()
    engine = engine_for(model, view_elements=1 << 18)
    got = sample(engine)
    assert set(got["0"].values()) == {None}
    after = model[0].weight.detach()
    assert math.isnan(float(after[3, 3]))
    assert torch.equal(torch.nan_to_num(after), torch.nan_to_num(before))
    assert got["3"]["weight_norm"] is not None  # the other layers are measured as usual
    assert engine.failed == {}


def test_state_kept_between_samples_is_a_copy_of_a_viewed_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.LayerNorm(512), nn.Linear(512, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 512)
    engine = engine_for(model, view_elements=1 << 18)
    with torch.no_grad():
        model(x)
    assert engine.layers[0].normed_by == "layer"  # the traced pass is off; static pairing
    sample(engine, CHEAP)
    old = torch.cat([model[0].weight.detach().flatten(), model[0].bias.detach()]).clone()
    model(x).square().mean().backward()
    opt.step()
    new = torch.cat([model[0].weight.detach().flatten(), model[0].bias.detach()])
    want = float(torch.arccos(torch.nn.functional.cosine_similarity(old.double(), new.double(),
                                                                    dim=0)))
    got = sample(engine, CHEAP)["0"]["angular_update"]
    assert want > 1e-4 and got == pytest.approx(want, rel=1e-3)


def test_the_first_samples_sigma1_is_accurate_without_a_spectral_gap():
    from symwatch_agent.measure import spectra

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, 300, 500, generator=gen)  # random: σ₁ and σ₂ nearly equal
    true = torch.linalg.svdvals(w.double())[:, 0]
    start = torch.randn(2, 500, generator=gen)
    lanczos, vec = spectra.lanczos_sigma1(w, start, 30)
    power, _ = spectra.power_sigma1(w, start, 30)
    assert torch.allclose(lanczos.double(), true, rtol=1e-3)
    assert float(((true - power.double()) / true).min()) > 1e-3  # power iteration lags here
    # the Ritz vector is a good warm start: two power iterations keep σ₁
    again, _ = spectra.power_sigma1(w, vec, 2)
    assert torch.allclose(again.double(), true, rtol=1e-3)
    # an exhausted Krylov space (rank 2 < 30 steps) and a zero matrix: exact, no NaN
    low = torch.zeros(2, 40, 50)
    low[0, 0, 0], low[0, 1, 1] = 3.0, 1.0
    s1, vec = spectra.lanczos_sigma1(low, torch.ones(2, 50), 30)
    assert s1.tolist() == pytest.approx([3.0, 0.0], abs=1e-5)
    assert torch.isfinite(vec).all()


def test_the_blocked_duplicate_search_matches_the_definition():
    """Lower-triangle blocks (any block size) give what the full cosine matrix says."""
    from symwatch_agent.measure import units

    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        m = int(torch.randint(1, 40, (), generator=gen))
        u = torch.randn(3, m, 12, generator=gen)
        for _ in range(int(torch.randint(0, 8, (), generator=gen))):  # planted duplicates
            i, j = torch.randint(0, m, (2,), generator=gen)
            u[:, i] = u[:, j] * 1.05
        live = torch.rand(3, m, generator=gen) > 0.2
        chunk = int(torch.randint(1, 500, (), generator=gen))
        fraction, distinct = units.duplicates(u, 1e-3, live, chunk_elements=chunk)
        unit = u / u.norm(dim=2, keepdim=True)
        close = (unit @ unit.transpose(1, 2) > 1 - 1e-3) & live[:, :, None] & \
            live[:, None, :] & ~torch.eye(m, dtype=torch.bool)
        count = live.sum(1)
        want = torch.where(count > 0, (close.any(2) & live).sum(1) / count.clamp_min(1),
                           torch.tensor(float("nan")))
        earlier = (close & torch.tril(torch.ones(m, m, dtype=torch.bool), -1)).any(2)
        assert torch.allclose(fraction, want.float(), equal_nan=True), trial
        assert torch.equal(distinct, (live & ~earlier).sum(1).float()), trial


def test_small_weights_are_stacked_in_bounded_batches_and_read_the_same() -> None:
    """Weights under `view_elements` are copied and stacked by shape, at most
    `stack_elements` to a batch (one group's Lanczos for all of them: its cost is mostly the
    number of tensor operations, not their size). Any batching gives the same values."""
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(5) for m in (nn.Linear(128, 128), nn.ReLU())],
                          nn.Linear(128, 4))
    chunked = engine_for(model, view_elements=1 << 21)
    chunked.stack_elements = 2 * 128 * 128
    whole = engine_for(model, view_elements=1 << 21)
    single = engine_for(model, view_elements=1)  # every weight a view of its own
    snap = chunked.snapshot(CHEAP)
    sizes = sorted(len(g.idxs) for g in snap.groups if g.weights.shape[1:] == (128, 128))
    assert sizes == [1, 2, 2] and all(g.owned for g in snap.groups)
    chunked.measure(snap)
    snap = whole.snapshot(CHEAP)
    assert [len(g.idxs) for g in snap.groups if g.weights.shape[1:] == (128, 128)] == [5]
    whole.measure(snap)
    single.compute(CHEAP)  # the same history: update_ratio needs a sample before
    for tier in (CHEAP, FULL):
        a, b, c = sample(chunked, tier), sample(whole, tier), sample(single, tier)
        assert a.keys() == b.keys() == c.keys()
        for layer in a:
            assert a[layer].keys() == b[layer].keys() == c[layer].keys()
            for name, value in a[layer].items():
                for other in (b, c):
                    if value is None:
                        assert other[layer][name] is None, (layer, name)
                    else:
                        assert value == pytest.approx(other[layer][name], rel=1e-4, abs=1e-6), (
                            tier, layer, name)
