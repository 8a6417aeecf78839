"""Per-head continuous series (heads.py, IndicatorEngine._heads): each head's QK and VO product
σ₁, stable rank, effective rank and `modes` (above the head's own random bulk, the free product
of two Marchenko–Pastur laws), and qk_rank/vo_rank thresholded per head.

Analytic checks per head against a float64 SVD of the product, at the symmetric state (a zero
product: a dead head, uniform attention), slightly off it and far from it, at a tiny and at
PyTorch's default init, at small and at LLM width (768, 12 heads); then a real 2-layer
attention-only transformer learning an induction-style copy task, whose published series show
one head's QK/OV σ₁ rising far more than its neighbours'."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from symwatch_agent.measure import bulk as bulk_edges
from symwatch_agent.measure import heads as attention
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import FULL
from test_heads import Block
from torch import nn

import symwatch
from symwatch.consumers import export
from symwatch.core import protocol
from symwatch.core.detection import family, head_count
from symwatch.state.run_state import RunState
from symwatch.tui.columns import label, view_indicators
from symwatch.tui.screens.layer_detail import layer_detail_text


def measure(model: nn.Module, engine: IndicatorEngine | None = None) -> tuple[dict, IndicatorEngine]:
    """One full sample of the model's attention row ("model")."""
    if engine is None:
        layers, _ = discover({"": model})
        engine = IndicatorEngine(layers)
        engine.attach({"": model}, observe=False)
    values, _ = engine.decode(engine.compute(FULL).tolist())
    return values["model"], engine


def head_products(block: Block, heads: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                   list[tuple[torch.Tensor, torch.Tensor]]]:
    """Each head's QK and VO product as its factor pair (X, Y), product X·Yᵀ, float64."""
    d = block.q_proj.weight.shape[0] // heads
    wq, wk, wv, wo = (p.weight.detach().double() for p in
                      (block.q_proj, block.k_proj, block.v_proj, block.o_proj))
    rows = [slice(h * d, (h + 1) * d) for h in range(heads)]
    return ([(wq[r].T, wk[r].T) for r in rows], [(wo[:, r], wv[r].T) for r in rows])


def svd_of(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """σ of X·Yᵀ (X: n × d, Y: n' × d) by another route than the engine's Grams and Cholesky:
    X = Q_x R_x, Y = Q_y R_y (QR), so σ(X Yᵀ) = σ(R_x R_yᵀ), a float64 SVD of a d × d matrix
    (the n × n' product's own SVD at 768 costs minutes on a shared CPU)."""
    rx = torch.linalg.qr(pair[0]).R
    ry = torch.linalg.qr(pair[1]).R
    return torch.linalg.svdvals(rx @ ry.T)


def reference(pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    sv = svd_of(pair)
    p = sv / sv.sum()
    p = p[p > 0]
    return {"sigma1": float(sv[0]), "stable_rank": float(sv.square().sum() / sv[0] ** 2),
            "erank": float(torch.exp(-(p * p.log()).sum()))}


def plant(factor: torch.Tensor, rows: int, strength: float, seed: int,
          transpose: bool = False) -> None:
    """Add `strength`·(unit random direction) to the first `rows` hidden directions of a head's
    factor (d × n rows, or n × d columns if `transpose`): matched hidden directions in both
    factors make one product mode of σ ≈ strength² each."""
    gen = torch.Generator().manual_seed(seed)
    n = factor.shape[0] if transpose else factor.shape[1]
    x = torch.nn.functional.normalize(torch.randn(rows, n, generator=gen), dim=1) * strength
    if transpose:
        factor[:, :rows] += x.T
    else:
        factor[:rows] += x


def head_set(d: int, n: int) -> attention.HeadSet:
    """A real HeadSet (a discovered block's), for product_modes' per-head state."""
    block = Block(e=n, heads=n // d)
    layers, _ = discover({"": block})
    found, _ = attention.discover(layers, dict(block.named_modules()))
    return found[0]


# -- the bulk of a random product ----------------------------------------------------------------

def test_random_products_read_no_modes_and_planted_ones_are_counted_at_any_scale():
    """The free-product edge: pure random products (100–200 draws per shape, three noise
    levels) count no mode (at most 1 % of heads at d ≤ 16); three planted modes count 3 at PyTorch's default scale and at a tiny one
    (the edge is fit to the spectrum itself: scale-free)."""
    gen = torch.Generator().manual_seed(0)
    for d, n, draws in ((8, 32, 200), (16, 64, 100), (64, 768, 100)):
        for s in (1e-4, 1 / n ** 0.5, 3.0):
            a = torch.randn(draws, d, n, generator=gen, dtype=torch.float64) * s
            b = torch.randn(draws, d, n, generator=gen, dtype=torch.float64) * s * 0.7
            sv = attention.product_singular_values(a, b)
            count = attention.product_modes(head_set(d, n), "qk", sv, n, n, 1.0,
                                            torch.tensor(True))
            # at d = 8, 16 the fit sees only 4, 8 bulk values: 0.3 %, 0.15 % of pure heads read
            # a mode (2000 draws each); none of 300 at 64 × 768
            allowed = 0.01 if d < 32 else 0.0
            assert (count > 0).double().mean() <= allowed, (d, n, s, count.nonzero())
            for k in range(draws):  # three product modes of σ ≈ (6s√n)²... well above the edge
                plant(a[k], 3, 6 * s * n ** 0.5, seed=k)
                plant(b[k], 3, 6 * s * n ** 0.5, seed=1000 + k)
            sv = attention.product_singular_values(a, b)
            count = attention.product_modes(head_set(d, n), "qk", sv, n, n, 1.0,
                                            torch.tensor(True))
            assert (count != 3).double().mean() <= allowed, (d, n, s, count)


def test_the_heads_edge_is_the_layers_rule_with_the_product_law():
    """A head's levels are bulk.bulk_edge's rule with the product law's table: the same rule
    with Marchenko–Pastur's own table is bulk_edge itself, and the product law's edge lies
    above Marchenko–Pastur's for the same shape (a product of two random factors spreads
    wider than one random matrix of that shape)."""
    gen = torch.Generator().manual_seed(4)
    for m, n in ((8, 32), (16, 64)):
        sv = torch.linalg.svdvals(torch.randn(6, m, n, generator=gen, dtype=torch.float64))
        sv[:2, :2] *= 4  # two modes in two of the matrices
        mp = bulk_edges.bulk_edge(sv, m, n, table=bulk_edges.edges_by_count(sv, m, n))
        for w, g in zip(bulk_edges.bulk_edge(sv, m, n), mp):
            assert torch.equal(w, g), (m, n)
        product = attention.product_edges_by_count(sv, m, n, n)[0]
        assert (product[:, 0] > bulk_edges.edges_by_count(sv, m, n)[0][:, 0]).all(), (m, n)


def test_modes_state_is_per_head_and_held_between_samples():
    """Hysteresis per head: a mode weakened to between its stay and entry levels is kept by the
    head that counted it and not entered by a head that did not, with the same spectrum."""
    d, n = 16, 64
    hs = head_set(d, n)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, d, n, generator=gen, dtype=torch.float64) / n ** 0.5
    b = torch.randn(2, d, n, generator=gen, dtype=torch.float64) / n ** 0.5
    plant(a[0], 1, 3.0, seed=1)
    plant(b[0], 1, 3.0, seed=2)
    first = attention.product_modes(hs, "vo", attention.product_singular_values(a, b), n, n,
                                    1.0, torch.tensor(True))
    assert first.tolist() == [1, 0] and hs.modes["vo"].shape == (2,)
    # both heads now hold head 0's mode, weakened step by step towards the bulk
    a[1], b[1] = a[0], b[0]
    held = []
    for shrink in torch.linspace(1.0, 0.05, 80).tolist():
        a2, b2 = a.clone(), b.clone()
        a2[:, 0] *= shrink ** 0.5
        b2[:, 0] *= shrink ** 0.5
        sv = attention.product_singular_values(a2, b2)
        state = (dict(hs.modes), dict(hs.bulk_ref))
        count = attention.product_modes(hs, "vo", sv, n, n, 1.0, torch.tensor(True))
        hs.modes, hs.bulk_ref = state  # each level from the first sample's state
        held.append(count.tolist())
    assert held[0] == [1, 1]  # strong: both count it
    assert held[-1] == [0, 0]  # back in the bulk: neither
    assert [1, 0] in held  # in between: only the head that counted it keeps it
    assert [0, 1] not in held


# -- analytic, per head, through the engine --------------------------------------------------------

@pytest.mark.parametrize(("e", "heads"), [(32, 4), (768, 12)])
def test_series_match_a_float64_svd_per_head_at_small_and_llm_width_default_and_tiny_init(
        e: int, heads: int):
    torch.manual_seed(e)
    block = Block(e=e, heads=heads)  # PyTorch's default init
    row, _ = measure(block)
    qk, vo = head_products(block, heads)
    for pair, products in (("qk", qk), ("vo", vo)):
        for h, product in enumerate(products):
            want = reference(product)
            for name, value in want.items():
                got = row[f"{pair}_{name}.h{h}"]
                assert abs(got - value) <= 1e-4 * value, (e, pair, h, name, got, value)
            assert row[f"{pair}_modes.h{h}"] == 0  # a random init has no learned mode
            root = svd_of(product).sqrt()
            assert row[f"{pair}_rank.h{h}"] == int(
                (root > max(0.3 * float(root[0]), 0.1)).sum())
    # the same directions at a tiny init: σ₁ by the scale², the shape-only series unchanged,
    # the ranks 0 (under abs_tol: nothing learned yet), modes still 0
    with torch.no_grad():
        for p in block.parameters():
            p.mul_(1e-3)
    tiny, _ = measure(block)
    for pair in ("qk", "vo"):
        for h in range(heads):
            key = f"{pair}_sigma1.h{h}"
            assert abs(tiny[key] - 1e-6 * row[key]) <= 1e-4 * 1e-6 * row[key]
            for name in ("stable_rank", "erank"):
                key = f"{pair}_{name}.h{h}"
                assert abs(tiny[key] - row[key]) <= 1e-3 * row[key], (e, key)
            assert tiny[f"{pair}_rank.h{h}"] == 0 and tiny[f"{pair}_modes.h{h}"] == 0
    assert tiny["dead_heads"] == 1.0  # every head below abs_tol writes nothing


def test_zero_product_slightly_off_and_far_per_head():
    """Head 1's VO product at the symmetric state (W_V,1 = 0: a dead head), head 2's QK
    (W_Q,2 = 0: uniform attention); then a rank-1 product 1e-3 off it; then two strong modes."""
    torch.manual_seed(1)
    e, heads = 128, 4
    d = e // heads
    block = Block(e=e, heads=heads)
    with torch.no_grad():
        block.v_proj.weight[d:2 * d] = 0
        block.q_proj.weight[2 * d:3 * d] = 0
    row, engine = measure(block)
    assert row["vo_sigma1.h1"] == 0 and row["qk_sigma1.h2"] == 0
    assert row["vo_rank.h1"] == 0 and row["qk_rank.h2"] == 0
    assert row["vo_modes.h1"] == 0 and row["qk_modes.h2"] == 0
    # undefined, not a fake number: N/A
    assert row["vo_stable_rank.h1"] is None and row["vo_erank.h1"] is None
    assert row["qk_stable_rank.h2"] is None and row["qk_erank.h2"] is None
    assert row["dead_heads"] == 0.25 and row["vo_rank.h0"] > 0 and row["qk_rank.h1"] > 0
    # slightly off: one direction 1e-3 strong in head 1's W_V
    with torch.no_grad():
        plant(block.v_proj.weight[d:2 * d], 1, 1e-3, seed=5)
    row, _ = measure(block)
    want = reference(head_products(block, heads)[1][1])
    assert abs(row["vo_sigma1.h1"] - want["sigma1"]) <= 1e-4 * want["sigma1"]
    assert 0 < row["vo_sigma1.h1"] < 1e-3
    assert row["vo_rank.h1"] == 0  # below abs_tol: still dead
    assert abs(row["vo_stable_rank.h1"] - 1) < 1e-6 and abs(row["vo_erank.h1"] - 1) < 1e-2
    # far: two strong modes in head 1 (matched directions in W_V,1 and W_O,1)
    with torch.no_grad():
        plant(block.v_proj.weight[d:2 * d], 2, 3.0, seed=6)
        plant(block.o_proj.weight[:, d:2 * d], 2, 3.0, seed=7, transpose=True)
    row, _ = measure(block, engine)
    want = reference(head_products(block, heads)[1][1])
    assert abs(row["vo_sigma1.h1"] - want["sigma1"]) <= 1e-4 * want["sigma1"]
    assert row["vo_sigma1.h1"] > 5
    assert row["vo_modes.h1"] == 2 and row["vo_rank.h1"] == 2
    assert row["vo_modes.h0"] == 0 and row["dead_heads"] == 0


def test_a_cooler_head_keeps_its_rank_and_modes():
    """Scaling head 2's Q, K and V by 0.25 (scores 16× cooler) keeps its ranks, stable and
    effective ranks and modes; only its σ₁ moves (by 1/16). Against the module's strongest
    head (the old τ) the same head read qk_rank 0."""
    torch.manual_seed(2)
    e, heads = 256, 4
    d = e // heads
    block = Block(e=e, heads=heads)
    with torch.no_grad():
        for h in range(heads):  # three strong QK and VO modes per head (√σ ≈ 4)
            rows = slice(h * d, (h + 1) * d)
            plant(block.q_proj.weight[rows], 3, 4.0, seed=10 + h)
            plant(block.k_proj.weight[rows], 3, 4.0, seed=20 + h)
            plant(block.v_proj.weight[rows], 3, 4.0, seed=30 + h)
            plant(block.o_proj.weight[:, rows], 3, 4.0, seed=40 + h, transpose=True)
    before, _ = measure(block)
    with torch.no_grad():
        for p in (block.q_proj, block.k_proj, block.v_proj):
            p.weight[2 * d:3 * d] *= 0.25
    after, _ = measure(block)
    for pair in ("qk", "vo"):
        assert before[f"{pair}_rank.h2"] == after[f"{pair}_rank.h2"] == 3
        assert before[f"{pair}_modes.h2"] == after[f"{pair}_modes.h2"] == 3
        for name in ("stable_rank", "erank"):
            key = f"{pair}_{name}.h2"
            assert abs(after[key] - before[key]) <= 1e-4 * before[key]
    qk_ratio = after["qk_sigma1.h2"] / before["qk_sigma1.h2"]
    assert abs(qk_ratio - 1 / 16) < 1e-5
    assert abs(after["vo_sigma1.h2"] / before["vo_sigma1.h2"] - 1 / 4) < 1e-5
    # the module-relative τ: 0.3 · strongest head's √σ₁ is above every √σ of the cooler head
    roots = [svd_of(p).sqrt() for p in head_products(block, heads)[0]]
    old_tau = 0.3 * max(float(r[0]) for r in roots)
    assert int((roots[2] > old_tau).sum()) == 0


def test_warm_up_builds_the_heads_tables_off_the_first_sample():
    """IndicatorEngine.warm_up (the agent's start-up thread) builds the product-law tables, so
    the first full sample finds them cached instead of building them on the training thread."""
    block = Block(e=48, heads=4)  # d = 12, n = 48: a shape no other test uses
    layers, _ = discover({"": block})
    engine = IndicatorEngine(layers)
    engine.attach({"": block}, observe=False)
    engine.warm_up()
    built = attention._product_tables.cache_info().misses
    measure(block, engine)
    assert attention._product_tables.cache_info().misses == built
    assert attention._product_tables.cache_info().currsize >= 1


def test_per_head_modes_are_counts_that_only_move_and_sigma1_is_a_continuous_series():
    """Transition detection (core/detection.py) counts a head's `modes` like the layer's but
    never lets it trigger an event (a head's count flickers as a random head's σ crosses its
    bulk edge: the induction run's early false events); a head forms when its σ₁ moves (its
    own floor, 50 %), and its other series are relative."""
    assert family("qk_modes.h3") == family("vo_modes.h0") == family("modes") == "count"
    assert head_count("qk_modes.h3") and head_count("vo_modes.h0") and not head_count("modes")
    assert family("qk_sigma1.h3") == family("vo_sigma1.h0") == "head_sigma"
    assert family("vo_erank.h1") == "relative"


# -- a real training run, through the agent ------------------------------------------------------

class Attention(nn.Module):
    """Causal multi-head attention with Llama-style projection names (found by heads.py)."""

    def __init__(self, e: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(e, e, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        h = self.num_heads
        q, k, v = (p(x).view(b, t, h, e // h).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, e))


class TwoLayer(nn.Module):
    """An attention-only 2-layer transformer: the smallest model that forms induction heads."""

    def __init__(self, vocab: int, e: int, heads: int, length: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, e), nn.Embedding(length, e)
        self.blocks = nn.ModuleList([Attention(e, heads) for _ in range(2)])
        self.unembed = nn.Linear(e, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = x + block(x)
        return self.unembed(x)


def test_an_induction_head_forming_shows_in_its_published_sigma1_series(collector):
    """Random tokens, then the same tokens again: the second half is predictable only by
    attending to the token after the previous occurrence (an induction circuit across the two
    layers). Small init (attention weights ×0.5) and SGD: in each layer one head's QK and OV
    σ₁ rise many-fold while the loss drops, its neighbours' far less; the published series
    (through the agent, a real ZeroMQ socket) show it, and the observer folds, views, charts
    and exports them."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    vocab, half, heads = 16, 8, 4
    net = TwoLayer(vocab, 32, heads, 2 * half)
    with torch.no_grad():
        for block in net.blocks:
            for p in block.parameters():
                p.mul_(0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    agent = symwatch.watch({"net": net}, opt, endpoint="tcp://127.0.0.1:0", every=5,
                           budget=1.0, full_every=1, heartbeat_interval=0.05,
                           meta_interval=0.05)
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    losses = []
    steps = 250
    for _ in range(steps):
        first = torch.randint(0, vocab, (32, half), generator=gen)
        x = torch.cat([first, first], 1)
        logits = net(x[:, :-1])
        loss = F.cross_entropy(logits[:, half:].reshape(-1, vocab), x[:, half + 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == steps, timeout=60)
    agent.close()
    assert sum(losses[:10]) / 10 > 2.5 and sum(losses[-10:]) / 10 < 0.1  # it learned

    def series(module: str, name: str) -> list[float]:
        return [m.payload["values"][module][name] for m in sub.messages
                if m.kind == protocol.METRICS and name in m.payload["values"].get(module, {})]

    for module in ("net.blocks.0", "net.blocks.1"):
        for pair in ("qk", "vo"):
            growth = []
            for h in range(heads):
                s1 = series(module, f"{pair}_sigma1.h{h}")
                assert len(s1) >= steps // 5 - 2  # every sample is full: one value each
                growth.append(s1[-1] / s1[0])
            leader = max(range(heads), key=growth.__getitem__)
            others = [g for h, g in enumerate(growth) if h != leader]
            assert growth[leader] > 8, (module, pair, growth)
            if module == "net.blocks.1":
                # the induction head is one head; layer 0's previous-token work may be split
                # over two (its QK: ×22 and ×16 with this seed)
                assert growth[leader] > 2 * max(others), (module, pair, growth)
            # the rise is steady, not a jump: more than ×2 over 80 steps in its fastest stretch
            s1 = series(module, f"{pair}_sigma1.h{leader}")
            assert max(b / a for a, b in zip(s1, s1[16:])) > 2
            # and the head has learned a mode of its own above its random bulk
            assert series(module, f"{pair}_modes.h{leader}")[-1] >= 1

    # the observer carries them: folded, in the heads view with labels, charted, exported
    state = RunState()
    state.fold_all(sub.messages)
    names = state.indicator_names()
    shown = view_indicators("heads", names)
    for name in attention.PER_HEAD:
        assert f"{name}.h3" in shown
    assert shown[:4] == ("qk_rank.h0", "vo_rank.h0", "qk_sigma1.h0", "vo_sigma1.h0")
    assert label("qk_sigma1.h1") == "QK σ₁ h1" and label("vo_modes.h2", short=True) == "vom2"
    detail = layer_detail_text(state, state.layers["net.blocks.1"], 100).plain
    assert "QK σ₁ h1" in detail and "VO effective rank h0" in detail
    rows = [r for r in export.records(sub.messages, "metrics")
            if r["layer"] == "net.blocks.1" and r["metric"] == "qk_sigma1.h0"]
    assert len(rows) >= steps // 5 - 2 and all(r["value"] > 0 for r in rows)
