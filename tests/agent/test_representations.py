"""Representations (docs/metrics.md, "Representations"): the activations' effective rank and
modes, neural collapse NC1–NC3 of the classifier's features; analytic cases first, then the
capture hooks on real modules, then a watched training run read back through the stream."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from symwatch_agent.hooks import loss_capture
from symwatch_agent.hooks.activations import ActivationCapture, Target
from symwatch_agent.measure import representations as reps
from symwatch_agent.measure.layers import discover
from torch import nn

import symwatch
from symwatch.consumers import export
from symwatch.core import protocol
from symwatch.core.recording import RecordingReader
from symwatch.state.run_state import RunState
from symwatch.tui.columns import view_indicators
from symwatch.tui.screens.layer_detail import layer_detail_text


def rank_r(rows: int, units: int, r: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """Centred activations of rank r with r equal singular values `scale` (Roy–Vetterli
    effective rank exactly r), shifted by a constant of the same scale (centring removes
    it)."""
    a = torch.randn(rows, r, generator=gen, dtype=torch.float64)
    q1, _ = torch.linalg.qr(a - a.mean(0))  # columns orthonormal and still centred
    q2, _ = torch.linalg.qr(torch.randn(units, r, generator=gen, dtype=torch.float64))
    return (scale * (q1 @ q2.T + 0.5)).float()


# small, GPT-2 width at the row cap, LLM width (fewer rows: the cost is the k × k eigensolver)
SHAPES = [(256, 64), (1024, 768), (256, 4096)]


@pytest.mark.parametrize("scale", [1e-6, 1.0], ids=["tiny", "unit"])
@pytest.mark.parametrize("rows,units", SHAPES)
def test_activations_of_rank_r_read_r_on_and_near_the_symmetric_state(rows, units, scale):
    gen = torch.Generator().manual_seed(rows + units)
    # the wide shapes (a k × k eigensolver each, seconds on a loaded 2-core box) at r = 12 only
    for r in (1, 5, 12) if rows * units < 100_000 else (12,):
        x = rank_r(rows, units, r, scale, gen)
        erank, modes = reps.activation_rank(x)
        assert erank == pytest.approx(r, rel=2e-3) and modes == r, (r, erank, modes)
        # slightly off: an isotropic bulk whose singular values add up to ~5 % of the signal's
        k = min(rows, units)
        eps = 0.05 * r / (k * (math.sqrt(rows) + math.sqrt(units)))
        noisy = x + scale * eps * torch.randn(rows, units, generator=gen)
        erank_off, modes_off = reps.activation_rank(noisy)
        assert r < erank_off < 1.6 * r and modes_off == r, (r, erank_off, modes_off)
    # far from it: full-rank Gaussian activations, no mode above their own bulk
    far = scale * torch.randn(rows, units, generator=gen)
    erank, modes = reps.activation_rank(far)
    assert erank > 0.5 * min(rows, units) and modes == 0


def test_a_default_init_linear_on_rank_r_inputs_reads_r_modes_at_any_scale():
    """A real nn.Linear at PyTorch's default init, and the same layer scaled to a tiny init:
    outputs of rank r (the inputs') read r modes, the same effective rank at both scales
    (scale-free), below r (unequal singular values)."""
    torch.manual_seed(0)
    for units, width in ((64, 32), (768, 768)):
        layer = nn.Linear(width, units)
        inputs = torch.randn(512, 6) @ torch.randn(6, width)
        with torch.no_grad():
            default = reps.activation_rank(layer(inputs))
            layer.weight.mul_(1e-4)
            layer.bias.mul_(1e-4)
            tiny = reps.activation_rank(layer(inputs))
        assert default[1] == tiny[1] == 6
        assert 1.5 < default[0] < 6 and tiny[0] == pytest.approx(default[0], rel=1e-3)


def test_collapsed_and_constant_activations():
    x = torch.randn(300, 1) @ torch.randn(1, 40) + 2.0  # every row on one line: rank 1
    erank, modes = reps.activation_rank(x)
    assert erank == pytest.approx(1.0, abs=1e-3) and modes == 1
    assert math.isnan(reps.activation_rank(torch.full((300, 40), 3.0))[0])  # undefined: null
    assert reps.measure({"a": torch.full((300, 40), 3.0)}, None) == {
        "a": {"act_erank": None, "act_modes": None}}


def simplex(c: int, d: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """A simplex ETF: c unit-norm class means (× scale) in d dimensions, cosines −1/(c − 1)."""
    basis, _ = torch.linalg.qr(torch.randn(d, c, generator=gen, dtype=torch.float64))
    etf = (torch.eye(c, dtype=torch.float64) - 1.0 / c) @ basis.T
    return (scale * etf / etf.norm(dim=1, keepdim=True)).float()


@pytest.mark.parametrize("scale", [1e-4, 1.0], ids=["tiny", "unit"])
@pytest.mark.parametrize("c,d,n", [(10, 64, 500), (10, 768, 1000), (100, 4096, 1024)])
def test_neural_collapse_reads_zero_at_a_simplex_etf_and_grows_away_from_it(c, d, n, scale):
    gen = torch.Generator().manual_seed(c + d)
    etf = simplex(c, d, scale, gen)
    y = torch.arange(n) % c
    shift = scale * torch.randn(d, generator=gen)  # a global mean: centring removes it
    # at the symmetric state: every feature at its class mean, the classifier the means (×3)
    at = reps.collapse(etf[y] + shift, y, 3.0 * etf)
    assert set(at) == {"nc1", "nc2", "nc2_norm", "nc3"}
    assert max(at.values()) < 1e-6, at
    # slightly off: features 1 % of a mean's norm from it, the classifier 1 % off the means
    off = reps.collapse(etf[y] + shift + 0.01 * scale / math.sqrt(d) * torch.randn(n, d),
                        y, 3.0 * etf + 0.01 * scale / math.sqrt(d) * torch.randn(c, d))
    assert all(1e-7 < v < 0.05 for v in off.values()), off
    # far: random features and classifier, unrelated to the labels
    far = reps.collapse(scale * torch.randn(n, d, generator=gen), y,
                        scale * torch.randn(c, d, generator=gen))
    # random features: NC1 ≈ (C − 1)(n/C − 1)/d (d ≫ C; docs/metrics.md: few rows per class
    # in many dimensions look separated even at random), far above the collapsed values
    expected = (c - 1) * (n / c - 1) / d
    assert far["nc1"] == pytest.approx(expected, rel=0.3) and far["nc1"] > 100 * off["nc1"]
    assert far["nc3"] == pytest.approx(2.0, abs=0.3), far
    # the class means on one line: as far from equiangular as means can be
    line = torch.arange(c, dtype=torch.float32)[:, None] * etf[:1]
    assert reps.collapse(line[y], y)["nc2"] > 0.5


def test_random_means_in_high_dimension_are_near_an_etf_so_nc2_alone_is_no_collapse():
    """Documented caveat: c random centred means in d ≫ c dimensions have cosines near
    −1/(c − 1) and near-equal norms, so NC2 reads small with no collapse at all; NC1 says so."""
    gen = torch.Generator().manual_seed(3)
    y = torch.arange(2000) % 5
    found = reps.collapse(torch.randn(2000, 512, generator=gen), y)  # labels say nothing
    assert found["nc2"] < 0.1 and found["nc2_norm"] < 0.1
    assert found["nc1"] == pytest.approx(4 * 399 / 512, rel=0.3)  # (C − 1)(n/C − 1)/d


def test_collapse_uses_the_classes_present_and_skips_ignored_rows():
    gen = torch.Generator().manual_seed(1)
    etf = simplex(3, 16, 1.0, gen)
    y = torch.tensor([0, 1, 2] * 20 + [-100] * 5)  # ignore_index rows: left out
    h = torch.cat([etf[y[:60]], torch.randn(5, 16)])
    w = torch.cat([etf, torch.randn(7, 16)])  # a 10-way classifier, 3 classes in the batch
    found = reps.collapse(h, y, w)
    assert max(found.values()) < 1e-6
    assert reps.collapse(h[:20], torch.zeros(20, dtype=torch.long)) == {}  # one class: none


# -- the capture hooks on real modules -------------------------------------------------------

def test_hooks_copy_capped_rows_once_and_leave_nothing_behind():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(8 * 14 * 14, 16), nn.ReLU(inplace=True), nn.Linear(16, 5))
    layers, _ = discover({"": model})
    layers[-1].classifier = True
    capture = ActivationCapture(row_cap=256)
    plan = [Target(*p) for p in reps.plan(layers)]
    assert [(t.name, t.unit_dim, t.weight is not None) for t in plan] == [
        ("0", 1, False), ("3", -1, False), ("5", -1, True)]
    original = F.cross_entropy
    capture.arm(plan, step=7)
    assert F.cross_entropy is not original  # the label listener, only while armed
    x, y = torch.randn(40, 3, 16, 16), torch.arange(40) % 5
    rng = torch.get_rng_state()
    loss = F.cross_entropy(model(x), y)
    assert torch.equal(torch.get_rng_state(), rng)  # rows drawn from a private generator
    loss.backward()
    model(torch.randn(40, 3, 16, 16))  # a second forward: each hook fired once already
    assert capture.fired
    taken = capture.take()
    assert taken is not None and taken.step == 7 and not taken.errors
    assert F.cross_entropy is original and not capture.armed
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    acts, features = taken.read()
    # the conv's output (40, 8, 14, 14): 7840 positions → 256 rows of its 8 channels, copied
    # before the in-place ReLU changed the output
    assert acts["0"].shape == (256, 8) and (acts["0"] < 0).any()
    assert acts["3"].shape == (40, 16) and acts["5"].shape == (40, 5)
    name, h, labels, w = features
    assert name == "5" and h.shape == (40, 16) and torch.equal(labels, y)
    # a batch of fewer than MIN_ROWS rows is not copied: its rank says nothing of the layer
    capture.arm(plan, step=8)
    model[0](torch.randn(2, 3, 4, 4))  # 2 × 2 × 2 = 8 positions
    model[3](torch.randn(4, 8 * 14 * 14))  # 4 rows
    assert not capture.fired and capture.take().activations == {}
    assert torch.equal(w, model[5].weight.detach())
    values = reps.measure(acts, features)
    assert {"act_erank", "act_modes", "nc1", "nc2", "nc3"} <= set(values["5"])
    assert values["0"]["act_erank"] <= 8


def test_labels_follow_the_sampled_rows_and_log_labels_take_precedence():
    torch.manual_seed(0)
    head = nn.Linear(8, 4)
    capture = ActivationCapture(row_cap=50)
    capture.arm([Target("head", head, -1, 4, lambda: head.weight)], step=1)
    feats = torch.randn(3, 40, 8)  # (batch, tokens, features): 120 rows, 50 taken
    tokens = torch.randint(0, 4, (3, 40))
    logits = head(feats)
    F.cross_entropy(logits.reshape(-1, 4), torch.zeros(120, dtype=torch.long))
    capture.log_labels(tokens)  # explicit labels win over cross_entropy's
    _, (_, h, labels, _) = capture.take().read()
    assert h.shape == (50, 8) and labels.shape == (50,)
    rows = {tuple(row.tolist()): i for i, row in enumerate(feats.reshape(-1, 8))}
    assert all(tokens.reshape(-1)[rows[tuple(r.tolist())]] == lab for r, lab in zip(h, labels))


def test_labels_of_another_row_count_are_not_used():
    head = nn.Linear(8, 4)
    capture = ActivationCapture()
    capture.arm([Target("head", head, -1, 4, lambda: head.weight)], step=1)
    logits = head(torch.randn(4, 10, 8))
    # a language model's shifted targets: 36 labels for 40 feature rows
    F.cross_entropy(logits[:, :-1].reshape(-1, 4), torch.zeros(36, dtype=torch.long))
    acts, features = capture.take().read()
    assert features is None and acts["head"].shape == (40, 4)
    assert loss_capture._label_listeners == []


# -- a watched training run ------------------------------------------------------------------

def separable_task(c: int = 4, d: int = 32, n: int = 128):
    gen = torch.Generator().manual_seed(0)
    centers = 0.6 * torch.randn(c, d, generator=gen)
    y = torch.arange(n) % c
    return centers[y] + torch.randn(n, d, generator=gen), y


def test_a_classifier_trained_towards_collapse_publishes_falling_nc1(collector, tmp_path):
    """A small MLP on a separable 4-class task, trained with cross-entropy: the agent's
    published NC1 and NC3 fall as the penultimate features collapse onto their class means,
    recorded and exported like every indicator, and shown in the TUI's repr view and the
    layer detail."""
    torch.manual_seed(0)
    x, y = separable_task()
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    record = tmp_path / "run.sqlite"
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=40, budget=1.0,
                           heartbeat_interval=0.05, record=str(record))
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    for step in range(1, 121):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 2:  # step 1's forward was copied (armed by watch()); nothing is armed now
            assert not any(model[i]._forward_hooks or model[i]._forward_pre_hooks
                           for i in (0, 2, 4))
            assert not loss_capture._label_listeners
    # each sample's own forward pass (armed by the step before it): one METRICS per sample
    last = sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 120
                        and "nc1" in m.payload["values"].get("4", {}))
    agent.close()
    repr_msgs = [m for m in sub.messages if m.kind == protocol.METRICS
                 and "nc1" in m.payload["values"].get("4", {})]
    steps = [m.step for m in repr_msgs]
    assert steps == [m.step for m in sub.of_kind(protocol.METRICS)] == [1, 40, 80, 120]
    first = repr_msgs[0].payload["values"]["4"]
    final = last.payload["values"]["4"]
    assert final["nc1"] < first["nc1"] / 3, (first, final)
    assert first["nc3"] > 1.0 and final["nc3"] < 0.3, (first, final)
    for layer in ("0", "2", "4"):
        assert isinstance(last.payload["values"][layer]["act_modes"], int)
        assert 1.0 <= last.payload["values"][layer]["act_erank"] <= 64
    # logits of 4 classes collapsing onto a simplex: about C − 1 = 3 directions (a fourth
    # only from the shift softmax ignores)
    assert 2.5 < final["act_erank"] < 3.5 and final["act_modes"] <= 4
    # recorded and exported like every indicator
    recorded = list(RecordingReader(record).messages())
    rows = [r for r in export.records(recorded, "metrics")
            if r["layer"] == "4" and r["metric"] == "nc1"]
    assert [r["step"] for r in rows] == steps
    # folded by the observer: the repr view's columns and the layer detail's charts
    state = RunState()
    state.fold_all(recorded)
    names = state.indicator_names()
    assert view_indicators("repr", names) == ("act_erank", "act_modes", "nc1", "nc2",
                                              "nc2_norm", "nc3")
    detail = layer_detail_text(state, state.layers["4"], 100).plain
    assert "NC1 within/between" in detail and "activation erank" in detail


def test_log_labels_give_collapse_for_a_loss_without_cross_entropy(collector):
    torch.manual_seed(0)
    x, y = separable_task(n=64)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=5, budget=1.0,
                           heartbeat_interval=0.05)
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    for _ in range(6):
        loss = F.nll_loss(F.log_softmax(model(x), -1), y)  # no cross_entropy call
        opt.zero_grad()
        loss.backward()
        agent.log(labels=y)
        opt.step()
    found = sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 5
                         and "nc1" in m.payload["values"].get("2", {}))
    assert found.payload["values"]["2"]["nc1"] > 0
    agent.close()


def test_wide_layers_are_captured_in_turn_within_the_byte_budget():
    """ACT_BYTES per sample: with room for two 64-unit layers' rows, the layers take turns;
    the classifier's features come with its own rows, not otherwise."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 4))
    layers, _ = discover({"": model})
    layers[-1].classifier = True
    plan = [Target(*p) for p in reps.plan(layers)]
    capture = ActivationCapture(row_cap=64, act_bytes=2 * 64 * 64 * 4)
    seen = []
    for step in range(3):
        capture.arm(plan, step)
        F.cross_entropy(model(torch.randn(64, 16)), torch.arange(64) % 4)
        taken = capture.take()
        acts, features = taken.read()
        seen.append(sorted(acts))
        assert (features is not None) == ("2" in acts)
        if features is not None:
            assert features[0] == "2" and features[2].shape == (64,)  # labels, per row
    # "2" has 4 units (1 KiB of rows): the window wraps round to "0" after it
    assert seen == [["0", "1"], ["0", "2"], ["1", "2"]]


def test_a_capture_takes_at_most_the_layers_asked_for_in_turn():
    """`most`: the agent asks for as many layers as the full sample measures of the weights;
    the layers still come in turn (every one within len/most samples), and the classifier's
    features with its own rows only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))
    layers, _ = discover({"": model})
    layers[-1].classifier = True
    plan = [Target(*p) for p in reps.plan(layers)]
    capture = ActivationCapture()
    seen, with_features = [], []
    for step in range(4):
        capture.arm(plan, step, most=1 if step < 2 else 3)
        F.cross_entropy(model(torch.randn(64, 16)), torch.arange(64) % 4)
        acts, features = capture.take().read()
        seen.append(sorted(acts))
        with_features.append(features is not None)
    assert seen == [["0"], ["2"], ["0", "4", "6"], ["2", "4", "6"]]
    assert with_features == [False, False, True, True]
