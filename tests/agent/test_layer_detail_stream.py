"""METRICS `detail` (agent/symwatch_agent/measure/detail.py): a real agent on loopback publishes each
layer's singular values and exactly the dead and duplicated units it has; large layers are
capped; the observer keeps the latest detail per layer; the protocol validates the field."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symwatch
from symwatch.core import protocol
from symwatch.state.run_state import RunState
from symwatch_agent.measure import detail as layer_detail
from symwatch_agent.measure.indicators import IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP, FULL
from waiting import pilot_until as _until

DEAD = [3, 7, 20]
DUPLICATE = {5: [11, 12], 9: [30]}  # source row → copies


def _model_with_dead_and_duplicate_units() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    with torch.no_grad():
        for i in DEAD:  # in, bias and out weights: the unit is gone
            model[0].weight[i] = 0
            model[0].bias[i] = 0
            model[2].weight[:, i] = 0
        for source, copies in DUPLICATE.items():  # the whole unit vector [w_in; b; w_out]
            for c in copies:
                model[0].weight[c] = model[0].weight[source]
                model[0].bias[c] = model[0].bias[source]
                model[2].weight[:, c] = model[2].weight[:, source]
    return model


def test_agent_publishes_the_spectrum_and_exactly_the_dead_and_duplicated_units(collector):
    model = _model_with_dead_and_duplicate_units()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the units stay as made
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           every=1, budget=1.0)
    try:
        sub = collector(agent.endpoint)
        sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
        for _ in range(3):
            loss = model(torch.randn(4, 8)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        msg = sub.wait_for(lambda m: m.kind == protocol.METRICS and "detail" in m.payload
                           and m.step >= 1)
    finally:
        agent.close()
    first = msg.payload["detail"]["0"]
    assert first["units"] == 32
    assert first["dead"] == DEAD and first["dead_count"] == len(DEAD)
    assert first["duplicates"] == [[5, 11, 12], [9, 30]]
    assert first["duplicate_count"] == 5
    sv = torch.linalg.svdvals(model[0].weight.detach().double())
    assert first["count"] == 8
    assert first["spectrum"] == pytest.approx(sv.tolist(), rel=1e-4, abs=1e-5)
    # numerical_rank's tolerance: σ₁·max(m, n)·eps₃₂ (matrix_rank's)
    assert first["rank_threshold"] == pytest.approx(
        sv[0].item() * max(model[0].weight.shape) * torch.finfo(torch.float32).eps, rel=1e-4)
    assert msg.payload["values"]["0"]["numerical_rank"] == sum(
        s > first["rank_threshold"] for s in first["spectrum"])
    # the other layers: no dead unit, no duplicate (random init)
    assert msg.payload["detail"]["2"]["dead"] == [] and msg.payload["detail"]["2"]["duplicates"] == []
    # the observer keeps the latest detail per layer, with its step
    state = RunState()
    state.fold(msg)
    assert state.layers["0"].detail == first and state.layers["0"].detail_step == msg.step


def test_a_layer_of_4096_units_sends_a_capped_detail():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 4))
    with torch.no_grad():
        model[0].weight[:600] = 0  # 600 dead units
        model[0].bias[:600] = 0
        model[2].weight[:, :600] = 0
        model[0].weight[1000:1400] = model[0].weight[999]  # one group of 401 units
        model[0].bias[1000:1400] = model[0].bias[999]
        model[2].weight[:, 1000:1400] = model[2].weight[:, 999:1000]
    layers, _ = discover({"": model})
    engine = IndicatorEngine(layers, budget=1.0)
    engine.attach({"": model}, observe=False)
    engine.compute(FULL)
    wire = engine.decode_detail(engine.last_detail)
    entry = wire["0"]
    assert entry["units"] == 4096
    assert entry["dead_count"] == 600 and entry["dead"] == list(range(256))
    assert entry["duplicate_count"] == 401
    assert entry["duplicates"] == [list(range(999, 999 + 256))]  # cut to the index cap
    assert entry["count"] == 256 and len(entry["spectrum"]) == layer_detail.SPECTRUM_CAP
    sv = torch.linalg.svdvals(model[0].weight.detach().double())
    assert entry["spectrum"][:64] == pytest.approx(sv[:64].tolist(), rel=1e-3, abs=1e-4)
    assert entry["spectrum"][-1] == pytest.approx(sv[-1].item(), rel=1e-2, abs=1e-3)
    assert entry["spectrum"] == sorted(entry["spectrum"], reverse=True)
    # the whole message stays valid and small
    frames = protocol.encode(protocol.METRICS, run="r", rank=0, restart=0, seq=1, time=0.0,
                             step=1, payload={"values": {}, "detail": wire})
    assert protocol.decode(list(frames)).payload["detail"] == wire
    assert sum(len(f) for f in frames) < 20_000
    # a cheap sample keeps no detail
    engine.compute(CHEAP)
    assert engine.last_detail is None


def test_duplicate_groups_join_links_transitively_and_cap_whole_groups():
    groups, total = layer_detail.duplicate_groups([-1, 0, -1, 1, -1, 2, 4])
    assert groups == [[0, 1, 3], [2, 5], [4, 6]] and total == 7
    assert layer_detail._cap_groups(groups, 5) == [[0, 1, 3], [2, 5]]
    assert layer_detail._cap_groups([[0, 1, 2, 3]], 2) == [[0, 1]]


def test_to_wire_groups_equal_the_union_find_over_every_unit():
    """to_wire reads only the linked units off the tensor; the clusters must be the ones the
    union–find over every unit's link finds (random forests of lower-indexed links)."""
    gen = torch.Generator().manual_seed(3)
    rows = []
    for _ in range(6):
        m = 300
        links = torch.full((m,), -1, dtype=torch.long)
        picked = torch.randperm(m - 1, generator=gen)[:40] + 1
        for i in picked.tolist():
            links[i] = int(torch.randint(0, i, (1,), generator=gen))
        rows.append(links)
    rows.append(torch.full((300,), -1, dtype=torch.long))  # a layer with no duplicate
    links = torch.stack(rows)
    wire = layer_detail.to_wire([layer_detail.GroupDetail(list(range(7)), links=links)],
                                [f"l{i}" for i in range(7)])
    for j in range(7):
        groups, total = layer_detail.duplicate_groups(links[j].tolist())
        assert wire[f"l{j}"]["duplicate_count"] == total
        assert wire[f"l{j}"]["duplicates"] == layer_detail._cap_groups(groups, 256)
    assert wire["l6"] == {"duplicates": [], "duplicate_count": 0}
    assert sum(wire[f"l{j}"]["duplicate_count"] for j in range(6)) > 0


@pytest.mark.parametrize("detail, error", [
    ({"fc1": []}, "expected object"),
    ({"fc1": {"spectrum": [1.0, "x"]}}, "spectrum[1]"),
    ({"fc1": {"dead": [1.5]}}, "dead[0]"),
    ({"fc1": {"duplicates": [3]}}, "duplicates[0]"),
    ({"fc1": {"duplicates": [[1, None]]}}, "duplicates[0][1]"),
    ({"fc1": {"rank_threshold": "high"}}, "rank_threshold"),
])
def test_protocol_rejects_malformed_detail(detail, error):
    with pytest.raises(protocol.ProtocolError, match=error.replace("[", r"\[")):
        protocol.encode(protocol.METRICS, run="r", rank=0, restart=0, seq=1, time=0.0, step=1,
                        payload={"values": {}, "detail": detail})


@pytest.mark.parametrize("size", [(80, 24), (250, 50)])
async def test_layer_detail_shows_the_spectrum_and_the_unit_strip_of_a_real_agent(size):
    from textual.widgets import Static

    from symwatch.transport.subscriber import Subscriber
    from symwatch.tui.app import SymwatchApp
    from symwatch.tui.screens.layer_detail import LayerDetailScreen
    from symwatch.tui.widgets.layer_table import LayerTable

    model = _model_with_dead_and_duplicate_units()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def train_step() -> None:
        loss = model(torch.randn(4, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           meta_interval=0.2, every=1, budget=1.0)
    app = SymwatchApp(Subscriber(agent.endpoint), owns_source=True, tick_s=0.05)
    try:
        async with app.run_test(size=size) as pilot:
            # train until a full-tier sample (every one here) has reached the app, and META
            # after the pairing pass (it names the layers that read each layer's units)
            await _until(pilot, lambda: app.state.layers.get("0") is not None
                         and app.state.layers["0"].detail is not None
                         and app.state.layers["0"].meta.get("feeds"), "a detail", tick=train_step)
            table = app.query_one(LayerTable)
            await _until(pilot, lambda: "0" in table.rows, "the row")
            table.move_cursor(row=table.get_row_index("0"))
            await pilot.press("enter")
            await _until(pilot, lambda: isinstance(app.screen, LayerDetailScreen), "detail")
            body = app.screen.query_one("#detail-body", Static)
            text = str(body.content)
            assert "Singular values" in text and "rank " in text and "τ" in text
            assert "╌" in text  # the threshold drawn across the chart
            assert "Units  32   dead 3   duplicated 5 in 2 groups" in text
            assert "dead: 3, 7, 20" in text
            assert "A: 5, 11–12" in text and "B: 9, 30" in text  # runs read a–b
            strip = next(line for line in text.splitlines() if "×" in line and " " not in line.strip())
            cells = strip.strip()
            assert cells[3] == cells[7] == cells[20] == "×"
            assert cells[5] == cells[11] == cells[12] == "A" and cells[9] == cells[30] == "B"
            assert "paired with 2" in text and "Linear" in text and "parameters 288" in text
            await pilot.press("l")  # the log scale
            await _until(pilot, lambda: "log scale" in str(body.content), "log scale")
            await pilot.press("escape")
    finally:
        agent.close()


def test_a_recording_keeps_the_detail_and_export_ignores_it(tmp_path):
    import subprocess
    import sys

    from symwatch.core.recording import Recorder, RecordingReader

    wire = {"fc1": {"spectrum": [2.0, 1.0, 0.05], "count": 3, "rank_threshold": 0.6,
                    "units": 4, "dead": [2], "dead_count": 1, "duplicates": [[0, 3]],
                    "duplicate_count": 2}}
    path = tmp_path / "run.db"
    with Recorder(path) as rec:
        for seq, step in enumerate((1, 2)):
            payload = {"values": {"fc1": {"numerical_rank": 2}}}
            if step == 1:
                payload["detail"] = wire
            frames = protocol.encode(protocol.METRICS, run="r", rank=0, restart=0, seq=seq,
                                     time=1.0 + step, step=step, payload=payload)
            rec.submit_message(protocol.decode(list(frames)))
    assert rec.failed is None
    with RecordingReader(path) as reader:
        replayed = list(reader)
    assert replayed[0].payload["detail"] == wire and "detail" not in replayed[1].payload
    state = RunState()
    state.fold_all(replayed)
    # the latest detail stays (a sample without one does not clear it), with its step
    assert state.layers["fc1"].detail == wire["fc1"] and state.layers["fc1"].detail_step == 1
    result = subprocess.run([sys.executable, "-m", "symwatch", "export", str(path), "--format",
                             "jsonl"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"numerical_rank"') == 2 and "spectrum" not in result.stdout
