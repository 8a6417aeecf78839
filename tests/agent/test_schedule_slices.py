"""Slices (measure/schedule.py, LayerSlices): a sample under a budget measures a round-robin
slice of the layers, an attention module's projections always together, so that every layer
is refreshed within a bounded number of samples; the layers left out keep their last values.
Real torch models (a GPT-style decoder with q/k/v/o projections and `n_head`), a real agent on
loopback ZeroMQ, the observer's RunState. No timed asserts: the slices are checked in the
ledger's terms (expected cost against the target), with costs measured or set."""

from __future__ import annotations

import math

import pytest
import torch
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP, FULL, LayerSlices
from torch import nn

import symwatch
from symwatch.core import protocol
from symwatch.state.run_state import RunState


class Attention(nn.Module):
    def __init__(self, width: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, width: int, n_head: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, n_head)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, width: int = 32, depth: int = 2, n_head: int = 2, vocab: int = 64,
                 context: int = 16, init_scale: float | None = None) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, n_head) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if init_scale is not None:  # tiny init: every weight scaled down
            with torch.no_grad():
                for p in self.parameters():
                    if p.dim() > 1:
                        p.mul_(init_scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def train(model: GPT, opt: torch.optim.Optimizer, steps: int, vocab: int = 64) -> None:
    for _ in range(steps):
        idx = torch.randint(0, vocab, (4, 16))
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def watched_gpt(collector):
    """A 2-block GPT watched with no budget limit, every step sampled, and a subscriber that
    has seen the agent's heartbeat: (model, optimizer, agent, subscriber)."""
    torch.manual_seed(0)
    model = GPT(depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           every=1, budget=1.0, stats_interval=0.01)
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    return model, opt, agent, sub


def engine_for(model: nn.Module) -> IndicatorEngine:
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers, budget=0.01)
    engine.attach({"": model}, observe=False)
    return engine


def test_an_attention_modules_projections_form_one_chunk_and_the_rest_one_layer_each():
    torch.manual_seed(0)
    engine = engine_for(GPT(depth=2))
    slices = engine._slices()
    names = [[engine.layers[i].name for i in chunk] for chunk in slices.chunks]
    for block in (0, 1):
        attn = [f"blocks.{block}.attn.{p}_proj" for p in "qkvo"]
        assert sorted(attn) in [sorted(c) for c in names]
    assert sorted(i for c in slices.chunks for i in c) == list(range(len(engine.layers)))
    assert len(slices.chunks) == len(engine.layers) - 2 * 3  # 4 projections → 1 chunk, twice
    # same-shaped chunks are neighbours (a slice's layers then stack into few groups), each
    # shape's chunks in layer order
    shapes = [tuple(sorted({engine.layers[i].matrix_shape for i in c})) for c in slices.chunks]
    runs = [shape for k, shape in enumerate(shapes) if k == 0 or shape != shapes[k - 1]]
    assert len(runs) == len(set(shapes)) < len(shapes)
    for shape in set(shapes):
        firsts = [c[0] for c, s in zip(slices.chunks, shapes) if s == shape]
        assert firsts == sorted(firsts)


@pytest.mark.parametrize("width", [32, 768])
@pytest.mark.parametrize("init_scale", [None, 1e-3])  # PyTorch's default init, tiny init
def test_round_robin_slices_refresh_every_layer_within_the_number_of_slices(width, init_scale):
    torch.manual_seed(0)
    depth = 2 if width < 256 else 1
    model = GPT(width=width, depth=depth, n_head=4, init_scale=init_scale)
    engine = engine_for(model)
    engine.compute(CHEAP)  # an explicit tier: every layer, and a measured rate per weight
    engine.compute(CHEAP)  # warm power-iteration vectors: the steady cost
    slices = engine._slices()
    assert slices.per_unit[CHEAP] is not None and slices.per_unit[CHEAP] > 0
    # a target of about a third of the model's expected cost: slices of about a third
    whole = slices.per_unit[CHEAP] * sum(slices.weights[CHEAP])
    engine.slice_target_s = whole / 3
    engine.scheduler.first = CHEAP
    engine.scheduler.samples[FULL] = 1  # as after the warm-up sample: the ledger decides
    engine.scheduler.budget = 1e-12  # the full tier never fits: cheap slices only
    engine.scheduler.full_cost = 1.0
    seen: dict[str, int] = {}
    rounds = 0
    rate = slices.per_unit[CHEAP]  # held fixed: the slices then do not depend on the timing
    for step in range(1, 3 * len(slices.chunks) + 1):
        engine.step = step
        slices.per_unit[CHEAP] = rate
        rows = engine.compute()
        chosen = engine.last_slice
        assert chosen is not None, "a third of the model's cost must not fit all of it"
        # the ledger: the slice's expected cost fits the target, or it is the single chunk a
        # sample always takes
        taken = [c for c, chunk in enumerate(slices.chunks) if set(chunk) <= set(chosen)]
        assert sorted(i for c in taken for i in slices.chunks[c]) == chosen
        expected = rate * sum(slices.weights[CHEAP][c] for c in taken)
        assert len(taken) == 1 or expected <= engine.slice_target_s * (1 + 1e-9)
        values, _ = engine.decode(rows.tolist())
        measured = {engine.layers[i].name for i in chosen}
        # only the slice is published: the others are left out (they keep their last values
        # in the observer), never published as null
        assert measured <= set(values)
        assert not {layer.name for layer in engine.layers} - measured & set(values)
        for name in measured:
            assert values[name]["weight_norm"] is not None and values[name]["weight_norm"] > 0
            seen[name] = step
        if len(seen) == len(engine.layers) and not rounds:
            rounds = step
    assert rounds, "every layer is refreshed"
    # round-robin: all layers within one pass over the chunks, and a layer's gap between two
    # refreshes is at most the number of samples a pass takes (slices of ≥ 1 chunk)
    assert rounds <= len(slices.chunks)
    median, largest = slices.interval()
    assert median is not None and largest <= len(slices.chunks)
    assert median >= 2  # a third of the model per sample: not every layer every sample


def test_the_attention_row_is_published_with_its_chunk_and_only_then():
    torch.manual_seed(0)
    engine = engine_for(GPT(depth=2))
    engine.compute(CHEAP)
    engine.scheduler.samples[CHEAP] = 1
    slices = engine._slices()
    attn_chunks = [c for c, chunk in enumerate(slices.chunks) if len(chunk) == 4]
    assert len(attn_chunks) == 2 and len(engine.heads) == 2
    engine.slice_target_s = 0.0  # one chunk per sample
    engine.scheduler.budget = 1.0  # unlimited: every sample full (the head row is full-tier)
    heads_seen = []
    for step in range(1, len(slices.chunks) + 1):
        engine.step = step
        values, _ = engine.decode(engine.compute().tolist())
        chosen = set(engine.last_slice or ())
        for hs in engine.heads:
            ids = {id(layer) for layer in hs.layers()}
            whole = {i for i, layer in enumerate(engine.layers) if id(layer) in ids}
            if whole <= chosen:
                assert values[hs.name]["qk_rank"] >= 1
                heads_seen.append(hs.name)
            else:
                assert hs.name not in values
    assert sorted(heads_seen) == sorted(hs.name for hs in engine.heads)


def test_the_full_tier_has_its_own_cursor_so_it_visits_every_layer_in_turn():
    chunks = [[0], [1], [2], [3]]
    slices = LayerSlices(chunks, {CHEAP: [1.0] * 4, FULL: [10.0] * 4})
    slices.per_unit = {CHEAP: 1.0, FULL: 1.0}
    order = []
    for step in range(1, 17):  # cheap, cheap, cheap, full, …: the full one of 1 chunk
        tier = FULL if step % 4 == 0 else CHEAP
        taken = slices.take(tier, 1.0)
        slices.record(tier, taken, 0.0, step, charge=False)
        if tier == FULL:
            order += taken
    assert order == [0, 1, 2, 3]  # with one cursor the full tier would always land on chunk 3
    full_median, _ = slices.interval(full=True)
    assert full_median is None  # each layer had one full refresh so far: no gap yet
    assert slices.take(CHEAP, None) is None  # no target: the whole model


def test_peek_says_how_many_layers_take_would_measure_and_moves_nothing():
    slices = LayerSlices([[0, 1, 2, 3], [4], [5]], {CHEAP: [4.0, 1.0, 1.0],
                                                     FULL: [40.0, 10.0, 10.0]})
    assert slices.peek(FULL, 1.0) == 4  # no rate yet: one chunk (of four layers)
    slices.per_unit = {CHEAP: 1.0, FULL: 1.0}
    for target, layers in ((1.0, [[0, 1, 2, 3], [4], [5]]),
                           (50.0, [[0, 1, 2, 3, 4], [0, 1, 2, 3, 5]])):
        for want in layers:
            assert slices.peek(FULL, target) == len(want)
            assert slices.peek(FULL, target) == len(want)  # twice: the cursor stayed
            assert slices.take(FULL, target) == want
        slices._cursor[FULL] = 0
    assert slices.peek(FULL, 1e9) is None and slices.take(FULL, 1e9) is None  # the whole
    assert slices.peek(FULL, None) is None


def test_a_full_samples_activations_are_as_many_layers_as_its_slice_in_turn(collector):
    """The activation rows' eigendecompositions are full-tier cost (on the publisher): a full
    sample captures as many layers as its slice of the weights measures, the layers in turn,
    so that over the slices every layer's rows come; the classifier's features (NC) with its
    own rows."""
    model, opt, agent, sub = watched_gpt(collector)
    train(model, opt, 1)  # unlimited: the whole model, every layer's rows
    first = sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 1)
    captured = {n for n, v in first.payload["values"].items() if "act_erank" in v}
    assert len(captured) >= len(agent.layers) - 3  # q/k/v/o, the MLP, embeddings, norms
    # every sample full (the scheduler's budget stays unlimited), one chunk each: the
    # agent's slice target is what `every` steps earn of the plan, set through the plan
    agent._unlimited, agent._planned = False, 0.0
    agent._budgeted_cost_s = -1e9  # the agent's own ledger always allows the sample
    steps = 2 * len(agent.engine.slices.chunks) + 2
    train(model, opt, steps)
    seen: set[str] = set()
    with_nc = 0
    for step in range(3, steps + 2):  # step 2 was armed before the plan changed
        m = sub.wait_for(lambda m, step=step: m.kind == protocol.METRICS and m.step == step)
        values = m.payload["values"]
        rows = {n for n, v in values.items() if "act_erank" in v}
        # (a turn may copy nothing: `wpe`'s output has 16 rows, under MIN_ROWS)
        assert len(rows) <= m.payload["slice"]["layers"] < len(agent.layers)
        seen |= rows
        with_nc += "nc1" in values.get("lm_head", {})
        if "nc1" in values.get("lm_head", {}):
            assert "lm_head" in rows
    assert seen == captured  # in turn: every layer's rows within the round
    assert with_nc >= 1
    agent.close()


def test_start_up_under_a_budget_measures_one_cheap_chunk(collector):
    torch.manual_seed(0)
    model = GPT(depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           every=10)  # the default budget
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    train(model, opt, 1)
    assert agent.engine.scheduler.samples == {CHEAP: 1, FULL: 0}  # no spectra at step 1
    chunk = agent.engine.last_slice
    assert chunk == agent.engine.slices.chunks[0]
    first = sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 1)
    assert first.payload["slice"] == {"layers": len(chunk), "of": len(agent.layers)}
    names = {agent.layers[i].name for i in chunk}
    assert names <= set(first.payload["values"])
    values = first.payload["values"]
    # the other layers carry no weight indicators this sample (other families, e.g. the
    # activations', may publish theirs in the same message)
    assert not [name for name in {layer.name for layer in agent.layers} - names
                if "weight_norm" in values.get(name, {})]
    agent.close()


def test_layers_left_out_of_a_slice_keep_their_values_in_the_observer(collector):
    model, opt, agent, sub = watched_gpt(collector)
    train(model, opt, 1)  # unlimited budget: the whole model
    sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 1)
    # then one chunk per sample, as a tight budget would make it: the agent's slice target
    # is what `every` steps earn of the plan, here set through the plan itself
    agent._unlimited, agent._planned = False, 0.0
    agent._budgeted_cost_s = -1e9  # the agent's own ledger always allows the sample
    train(model, opt, 3)
    last = sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 4)
    assert last.payload["slice"]["layers"] < len(agent.layers)
    state = RunState()
    state.fold_all(sub.messages)
    left_out = [layer.name for layer in agent.layers
                if "weight_norm" not in last.payload["values"].get(layer.name, {})]
    assert left_out
    for name in left_out:  # values from an earlier sample, not null, not dropped
        layer = state.layers[name]
        series = layer.indicators["weight_norm"]
        assert series.current is not None and series.step < 4
    stats = sub.wait_for(lambda m: m.kind == protocol.STATS and m.step >= 4
                         and "layer_interval" in (m.payload.get("sampling") or {}))
    sampling = stats.payload["sampling"]
    assert sampling["layer_interval"] >= 1 and sampling["layer_interval_max"] >= 1
    agent.close()


def test_the_per_layer_interval_is_the_ledger_of_refreshes():
    slices = LayerSlices([[0], [1], [2]], {CHEAP: [1.0] * 3, FULL: [1.0] * 3})
    slices.per_unit[CHEAP] = 1.0
    for step in range(10, 200, 10):  # one chunk a sample, every 10 steps
        slices.record(CHEAP, slices.take(CHEAP, 0.5), 1.0, step)
    median, largest = slices.interval()
    assert median == 30 and largest == 30
    assert math.isclose(slices.per_unit[CHEAP], 1.0)


def test_the_sampling_line_states_the_per_layer_refresh_interval():
    from symwatch.tui.run_text import sampling_text

    sliced = {"interval": 10.0, "every": 10, "budget": 0.01, "limit": "every",
              "layer_interval": 40.0, "layer_interval_max": 50}
    assert sampling_text(sliced) == "every 10 steps, each layer every ~40 (--every)"
    assert sampling_text(sliced | {"limit": "budget", "interval": 20.0}, hint=False) == \
        "every ~20 steps, each layer every ~40: 1 % budget"
    # whole samples: the layer interval is the sample interval, not repeated
    assert sampling_text(sliced | {"layer_interval": 10.0}) == "every 10 steps (--every)"
