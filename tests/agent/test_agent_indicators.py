"""The indicator engine end to end: published by a running agent, read by a real subscriber."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import symwatch
from symwatch.core import protocol
from symwatch.state.run_state import RunState
from symwatch.tui.columns import view_indicators
from symwatch.tui.screens.layer_detail import layer_detail_text
from symwatch_agent.entry import demo
from symwatch_agent.measure.heads import PER_HEAD
from symwatch_agent.measure.indicators import INDICATORS


def test_a_watched_run_publishes_the_whole_engine_and_the_budgeted_run_mixes_tiers(collector):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 8), nn.Linear(8, 4))
    attn = nn.MultiheadAttention(8, 2)  # the attention-head family: a row of its own
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    agent = symwatch.watch({"mlp": model, "attn": attn}, opt, endpoint="tcp://127.0.0.1:0",
                           heartbeat_interval=0.05, every=1, budget=1.0, meta_interval=0.05)
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    assert model._forward_pre_hooks  # the pairing pass waits for the first forward
    for _ in range(3):
        loss = model(torch.randn(8, 6)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not model._forward_pre_hooks and not model._forward_hooks
    metrics = sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 3)
    seen = {name for layer in metrics.payload["values"].values() for name in layer}
    per_head = {f"{name}.h{h}" for name in PER_HEAD for h in range(2)}
    assert seen == set(INDICATORS) | per_head
    assert metrics.payload["values"]["mlp.2"]["relu_dead"] is not None
    assert set(metrics.payload["values"]["attn"]) >= per_head | {"qk_rank", "dead_heads"}
    meta = sub.wait_for(lambda m: m.kind == protocol.META)
    assert meta.payload["indicators"] == list(INDICATORS)
    rows = {row["name"]: row for row in meta.payload["layers"]}
    assert rows["attn"]["type"] == "MultiheadAttention heads" and rows["attn"]["heads"] == 2
    state = RunState()
    state.fold_all(sub.messages)
    assert set(INDICATORS) <= set(state.indicator_names())  # every one becomes a TUI column
    # the attention row: aggregates in the rotation view, each head in the heads view and
    # charted on the row's detail screen
    names = state.indicator_names()
    assert {"qk_rank", "dead_heads"} <= set(view_indicators("rotation", names))
    assert set(view_indicators("heads", names)) == per_head
    assert not per_head & set(view_indicators("all", names))
    detail = layer_detail_text(state, state.layers["attn"], 100).plain
    assert "QK rank h0" in detail and "VO rank h1" in detail
    agent.close()


def test_under_a_small_budget_spectra_are_left_out_rather_than_faked(collector):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           every=1, budget=1.0)
    agent.engine.scheduler.budget = 1e-9  # the full tier can never be afforded again
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    agent.budget = 1.0  # but the agent keeps sampling
    for _ in range(4):
        loss = model(torch.randn(8, 64)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 4)
    by_step = {m.step: m.payload["values"]["0"] for m in sub.of_kind(protocol.METRICS)}
    assert "effective_rank" in by_step[1]  # the first sample is always full
    for step in (2, 3, 4):
        assert "effective_rank" not in by_step[step] and "numerical_rank" not in by_step[step]
        assert by_step[step]["stable_rank"] > 0  # the cheap tier: power iteration
    assert agent.engine.scheduler.samples == {"cheap": 3, "full": 1}
    agent.close()


def test_the_demo_publishes_balance_mirror_and_softmax_columns(collector):
    from symwatch.launch.demo import free_endpoint

    endpoint = free_endpoint()
    probe = collector(endpoint)
    probe.sock.close(0)
    sub = collector(endpoint)
    stop = threading.Event()
    thread = threading.Thread(target=demo.run, kwargs=dict(
        steps=60, delay=0.01, every=1, budget=1.0, endpoint=endpoint, name="t", stop=stop),
        daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    sub.drain()
    last = [m for m in sub.of_kind(protocol.METRICS)][-1].payload["values"]
    assert {"mirror_rank", "balance", "balance_norm"} <= set(last["linear.0"])
    assert {"balance", "relu_dead", "duplicate_fraction"} <= set(last["mlp.0"])
    assert "softmax_translation" in last["mlp.4"]
    assert 0 <= last["mlp.0"]["broken"] <= 1
