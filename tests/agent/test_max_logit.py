"""The attention max-logit per head (measure/logits.py, docs/metrics.md "Attention heads"):
max |q·k|/√d over a sampled forward's query/key pairs, from hooks armed on sampled steps only.

Each module kind against a direct float64 computation from the same inputs: a real
nn.MultiheadAttention (its own in_proj weights and biases, its attn_mask and key padding), a
GPT-style block with separate projections that declares itself causal, and transformers' GPT-2
attention (fused `c_attn`); at the QK symmetric state (W_Q = 0: uniform attention, logit 0),
slightly off it, at PyTorch's default init, far from it (W_Q × 10: the logit × 10), at tiny
init, at small (32, 4 heads) and LLM width (768, 12 heads). Then a watched training run:
published on sampled steps only, nothing hooked between them, recorded, exported, folded and
shown, and an event naming it in the table's words."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from symwatch_agent.hooks.activations import ActivationCapture, Probe
from symwatch_agent.measure import logits
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from torch import nn

import symwatch
from symwatch.consumers import export
from symwatch.core import protocol
from symwatch.core.detection import describe_jump, family
from symwatch.core.jumps import Jump
from symwatch.core.recording import RecordingReader
from symwatch.state.run_state import RunState
from symwatch.tui.columns import label, legend, view_indicators
from symwatch.tui.screens.layer_detail import layer_detail_text

WIDTHS = [(32, 4), (768, 12)]  # small, and GPT-2 / LLM head width (d = 64)


class CausalSelfAttention(nn.Module):
    """A GPT-style block with separate projections (named like Llama's), causal by its
    class name as nanoGPT's is (`causal`: False names it plainly, so it is not declared)."""

    def __init__(self, e: int, heads: int, kv_heads: int | None = None) -> None:
        super().__init__()
        kv = kv_heads or heads
        d = e // heads
        self.num_heads, self.head_dim, self.kv = heads, d, kv
        if kv_heads:
            self.num_key_value_heads = kv_heads
        self.q_proj = nn.Linear(e, heads * d)
        self.k_proj = nn.Linear(e, kv * d)
        self.v_proj = nn.Linear(e, kv * d)
        self.o_proj = nn.Linear(heads * d, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.head_dim).transpose(1, 2)
        if self.kv != self.num_heads:
            k = k.repeat_interleave(self.num_heads // self.kv, 1)
            v = v.repeat_interleave(self.num_heads // self.kv, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class PlainAttention(CausalSelfAttention):
    """The same block under a name that declares nothing: every pair counts."""


class Wrapped(nn.Module):
    """nn.MultiheadAttention called as a causal self-attention with key padding."""

    def __init__(self, e: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(e, heads, batch_first=True)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)  # True: masked (a future key)
        return self.attn(x, x, x, attn_mask=mask, key_padding_mask=pad, need_weights=False)[0]


def direct(q: torch.Tensor, k: torch.Tensor, heads: int, kv_heads: int,
           allowed: torch.Tensor | None) -> torch.Tensor:
    """max |q·k|/√d per head the slow obvious way: float64, loops over sequences and heads,
    the allowed (i, j) pairs only. q: (B, T, H·d), k: (B, T_k, H_kv·d)."""
    d = q.shape[-1] // heads
    q, k = q.double(), k.double()
    out = torch.zeros(heads, dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(heads):
            g = h // (heads // kv_heads)
            s = q[b, :, h * d:(h + 1) * d] @ k[b, :, g * d:(g + 1) * d].T / math.sqrt(d)
            if allowed is not None:
                s = torch.where(allowed[b] if allowed.dim() == 3 else allowed, s.abs(),
                                torch.zeros_like(s))
            out[h] = max(out[h], s.abs().max())
    return out


def captured(model: nn.Module, *inputs: torch.Tensor, **kw) -> dict:
    """One armed forward of `model`, through the agent's capture, decoded."""
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    engine.attach({"": model}, observe=False)
    cap = ActivationCapture()
    cap.arm([], 1, tuple(Probe(*p) for p in logits.plan(engine.heads)))
    with torch.no_grad():
        model(*inputs, **kw)
    capture = cap.take()
    assert capture is not None and capture.errors == []
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    return logits.decode(capture.read_probes())


def per_head(row: dict, heads: int) -> torch.Tensor:
    values = torch.tensor([row[f"max_logit.h{h}"] for h in range(heads)], dtype=torch.float64)
    assert row["max_logit"] == pytest.approx(float(values.max()), rel=1e-6)
    return values


STATES = {  # what W_Q is multiplied by: the QK symmetric state, slightly off, default, far
    "zero": 0.0, "slightly off": 1e-3, "default": 1.0, "far": 10.0}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("e,heads", WIDTHS)
def test_multihead_attention_matches_a_direct_computation(e, heads, state):
    torch.manual_seed(0)
    model = Wrapped(e, heads)
    with torch.no_grad():
        model.attn.in_proj_weight[:e] *= STATES[state]
        model.attn.in_proj_bias.normal_(0, 0.02)  # biases are part of q and k
        if state == "zero":
            model.attn.in_proj_bias[:e] = 0  # q = 0: every logit 0
    t = 16 if e > 100 else 24
    x = torch.randn(2, t, e)
    pad = torch.zeros(2, t, dtype=torch.bool)
    pad[1, -3:] = True  # the second sequence's last three keys are padding
    row = captured(model, x, pad)
    name = next(iter(row))
    got = per_head(row[name], heads)
    a = model.attn
    w, b = a.in_proj_weight.detach(), a.in_proj_bias.detach()
    q = F.linear(x, w[:e], b[:e])
    k = F.linear(x, w[e:2 * e], b[e:2 * e])
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None].repeat(2, 1, 1)
    allowed[1, :, -3:] = False
    want = direct(q, k, heads, heads, allowed)
    if state == "zero":
        assert got.abs().max() == 0  # uniform attention: no logit at all
    else:
        assert torch.allclose(got, want, rtol=2e-5, atol=1e-6), (got, want)
        assert (got > 0).all()
    if state == "far":  # ×10 W_Q from the default init: the logit ×10 (the bias barely counts)
        with torch.no_grad():
            a.in_proj_weight[:e] /= 10
        base = per_head(captured(model, x, pad)[name], heads)
        ratio = got / base
        assert ((ratio > 9) & (ratio < 11)).all(), ratio


def test_the_masks_count_an_unmasked_call_counts_every_pair():
    """The same module called without a mask reads at least as much as with one (a future key
    can be the largest), and exactly the all-pairs maximum."""
    torch.manual_seed(1)
    model = Wrapped(32, 4)
    x = torch.randn(2, 20, 32)
    masked = per_head(captured(model, x)["attn"], 4)
    row = captured(model.attn, x, x, x, need_weights=False)
    full = per_head(row[next(iter(row))], 4)
    a = model.attn
    w, b = a.in_proj_weight.detach(), a.in_proj_bias.detach()
    want = direct(F.linear(x, w[:32], b[:32]), F.linear(x, w[32:64], b[32:64]), 4, 4, None)
    assert torch.allclose(full, want, rtol=2e-5)
    assert (full >= masked - 1e-6).all() and (full > masked + 1e-6).any()


@pytest.mark.parametrize("scale", [0.02, 1.0], ids=["tiny", "default"])
@pytest.mark.parametrize("e,heads", WIDTHS)
def test_a_gpt_style_block_matches_a_direct_computation(e, heads, scale):
    torch.manual_seed(2)
    model = CausalSelfAttention(e, heads)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    t = 16
    x = torch.randn(3, t, e)
    row = captured(model, x)
    got = per_head(row["model"], heads)
    q, k = model.q_proj(x).detach(), model.k_proj(x).detach()
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    sub = [0, 2]  # MAX_SEQS = 2 evenly spaced sequences of 3: the first and the last
    assert logits.MAX_SEQS == 2
    want = direct(q[sub], k[sub], heads, heads, causal)
    assert torch.allclose(got, want, rtol=2e-5, atol=1e-9), (got, want)
    # the whole batch's max is at least the sub-batch's (the approximation is a lower bound)
    assert (direct(q, k, heads, heads, causal) >= got - 1e-6).all()
    with torch.no_grad():
        model.q_proj.weight.mul_(10)
        model.q_proj.bias.mul_(10)
    far = per_head(captured(model, x)["model"], heads)
    assert torch.allclose(far, 10 * got, rtol=1e-4), far / got
    # a module that does not say it is causal: every pair counts
    plain = PlainAttention(e, heads)
    plain.load_state_dict(model.state_dict())
    everything = per_head(captured(plain, x)["model"], heads)
    q, k = plain.q_proj(x).detach(), plain.k_proj(x).detach()
    assert torch.allclose(everything, direct(q[sub], k[sub], heads, heads, None), rtol=2e-5)


def test_sequence_first_multihead_attention_reads_its_sequences_along_dim_1():
    """batch_first=False: inputs (T, N, E); three sequences, the first and last read."""
    torch.manual_seed(7)
    mha = nn.MultiheadAttention(32, 4)
    x = torch.randn(10, 3, 32)
    row = captured(mha, x, x, x, need_weights=False)
    got = per_head(row[next(iter(row))], 4)
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    seqs = x.transpose(0, 1)[[0, 2]]
    want = direct(F.linear(seqs, w[:32], b[:32]), F.linear(seqs, w[32:64], b[32:64]), 4, 4,
                  None)
    assert torch.allclose(got, want, rtol=2e-5)


def test_grouped_query_attention_pairs_each_query_head_with_its_key_head():
    torch.manual_seed(3)
    model = CausalSelfAttention(64, 8, kv_heads=2)
    x = torch.randn(2, 12, 64)
    got = per_head(captured(model, x)["model"], 8)
    want = direct(model.q_proj(x).detach(), model.k_proj(x).detach(), 8, 2,
                  torch.ones(12, 12, dtype=torch.bool).tril())
    assert torch.allclose(got, want, rtol=2e-5)


def test_long_sequences_are_read_at_capped_positions_first_and_last_included():
    """MAX_POS evenly spaced positions (the first and the last): the max over their pairs,
    which a direct computation on the same positions matches."""
    torch.manual_seed(4)
    model = CausalSelfAttention(32, 4)
    t = 300
    x = torch.randn(1, t, 32)
    got = per_head(captured(model, x)["model"], 4)
    pos = torch.arange(logits.MAX_POS) * (t - 1) // (logits.MAX_POS - 1)
    assert pos[0] == 0 and pos[-1] == t - 1 and len(set(pos.tolist())) == logits.MAX_POS
    q, k = model.q_proj(x).detach()[:, pos], model.k_proj(x).detach()[:, pos]
    want = direct(q, k, 4, 4, pos[None, :] <= pos[:, None])
    assert torch.allclose(got, want, rtol=2e-5)


@pytest.mark.parametrize("e,heads", WIDTHS)
def test_gpt2_fused_c_attn_matches_its_own_queries_and_keys(e, heads):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    config = transformers.GPT2Config(n_embd=e, n_head=heads, n_layer=1, n_positions=32,
                                     vocab_size=50, attn_pdrop=0.0, resid_pdrop=0.0,
                                     embd_pdrop=0.0)
    model = transformers.GPT2Model(config).eval()
    ids = torch.randint(0, 50, (2, 16))
    row = captured(model, ids)
    name = "h.0.attn"
    got = per_head(row[name], heads)
    seen = {}
    handle = model.h[0].attn.c_attn.register_forward_hook(
        lambda m, a, out: seen.setdefault("qkv", out.detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    q, k = seen["qkv"][..., :e], seen["qkv"][..., e:2 * e]
    # GPT-2 is causal (GPT2Attention.is_causal)
    want = direct(q, k, heads, heads, torch.ones(16, 16, dtype=torch.bool).tril())
    assert torch.allclose(got, want, rtol=2e-5), (got, want)


def test_a_probe_never_raises_into_the_forward():
    """A forward the probe cannot read (a 1-D query) still runs; the error is reported."""
    model = CausalSelfAttention(32, 4)
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers)
    engine.attach({"": model}, observe=False)
    (key, module, _fn, pre), *_ = logits.plan(engine.heads)

    def broken(args, kwargs, output):
        raise RuntimeError("boom")

    cap = ActivationCapture()
    cap.arm([], 1, (Probe(key, module, broken, pre),))
    model(torch.randn(1, 8, 32))
    capture = cap.take()
    assert capture.probes == {} and "boom" in capture.errors[0]


def test_a_watched_run_publishes_it_on_sampled_steps_only(collector, tmp_path):
    """A 2-block attention model trained with AdamW, `every=10`: max_logit per head on every
    sample (armed the step before it), nothing hooked on the steps between, recorded and
    exported, folded into the heads view with its labels, charted in the layer detail."""
    torch.manual_seed(6)
    e, heads, t = 32, 4, 12
    model = nn.Sequential(nn.Embedding(20, e), CausalSelfAttention(e, heads),
                          CausalSelfAttention(e, heads), nn.Linear(e, 20))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    record = tmp_path / "run.sqlite"
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=10, budget=1.0,
                           heartbeat_interval=0.05, record=str(record))
    sub = collector(agent.endpoint)
    sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
    ids = torch.randint(0, 20, (8, t))
    hooked = []  # steps whose forward had the probes' hooks on the projections

    def spy(module, args):
        hooked.append(bool(model[1].q_proj._forward_hooks))

    handle = model[1].register_forward_pre_hook(spy)
    for _ in range(40):
        out = model(ids)
        loss = F.cross_entropy(out[:, :-1].reshape(-1, 20), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    handle.remove()
    sub.wait_for(lambda m: m.kind == protocol.METRICS and m.step == 40
                 and "max_logit" in m.payload["values"].get("1", {}))
    agent.close()
    # hooked exactly on the sampled steps' forwards: 1 (armed by watch()), 10, 20, 30, 40
    assert [s + 1 for s, on in enumerate(hooked) if on] == [1, 10, 20, 30, 40]
    published = [m for m in sub.of_kind(protocol.METRICS)
                 if "max_logit" in m.payload["values"].get("1", {})]
    assert [m.step for m in published] == [1, 10, 20, 30, 40]
    for m in published:
        row = m.payload["values"]["2"]
        assert row["max_logit"] == max(row[f"max_logit.h{h}"] for h in range(heads)) > 0
    # recorded and exported like every indicator
    recorded = list(RecordingReader(record).messages())
    rows = [r for r in export.records(recorded, "metrics")
            if r["layer"] == "1" and r["metric"] == "max_logit.h2"]
    assert [r["step"] for r in rows] == [1, 10, 20, 30, 40] and all(r["value"] > 0 for r in rows)
    # folded by the observer: the heads view's columns, the rotation view, the layer detail
    state = RunState()
    state.fold_all(recorded)
    names = state.indicator_names()
    shown = view_indicators("heads", names)
    assert "max_logit.h0" in shown and "max_logit.h3" in shown
    within = [n for n in shown if n.endswith(".h0")]
    assert within[-1] == "max_logit.h0"  # after the head's weight series
    assert "max_logit" in view_indicators("rotation", names)
    detail = layer_detail_text(state, state.layers["1"], 100).plain
    assert "max logit h1" in detail


def test_it_is_named_in_the_tables_words_everywhere():
    assert label("max_logit.h0") == "max logit h0" and label("max_logit.h3", True) == "mlog3"
    assert label("max_logit") == "max logit"
    assert legend("max_logit.h2").startswith("mlog2  max logit h2: symmetric at none, breaking ↑")
    # the detector's event reads as the table does, on the relative floor of a scale series
    jump = Jump(("tf.attn.1", "max_logit.h0"), 50, "up", 12.0, 45.0, 9.0, (5, 5), 48, 2)
    assert describe_jump(jump) == "tf.attn.1 max logit h0 12 → 45"
    assert family("max_logit.h0") == family("max_logit") == "relative"
