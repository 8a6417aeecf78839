"""FSDP on two real gloo ranks (CPU, torch.multiprocessing): FSDP2 `fully_shard` and FSDP1
(with and without use_orig_params). Each rank's agent publishes to a real `symwatch relay`
(connect=), tagged with its rank under the job's shared run id; sharded layers are measured
from the local shard only (no collective from the agent) and the observer combines the
shards' sums of squares into the whole layer's weight_norm, checked against the full weight
gathered by the *test* (the training's own collective) after training. The same stream is
viewed by the real Textual app (headless Pilot): the ranks view shows both ranks."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import symwatch
from symwatch.core import protocol
from symwatch.core.processes import free_port
from symwatch.transport.subscriber import BackgroundFeed
from symwatch.transport.relay import Relay
from symwatch.state.run_state import RunState

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

STEPS = 40


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _rank_main(rank: int, world: int, master_port: int, relay: str, runtime: str, out: str,
               flavour: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), SYMWATCH_RUNTIME_DIR=runtime)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model()
    if flavour == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        model = FSDP(model, use_orig_params=flavour == "fsdp1-orig",
                     device_id=torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.manual_seed(100 + rank)
    with symwatch.watch(model, opt, every=5, budget=1.0, connect=relay,
                        heartbeat_interval=0.05, meta_interval=0.2, gpu_interval=0.2) as agent:
        assert agent.error is None, agent.error
        assert len(agent.sharded) == 2 and agent.layers == []
        for _ in range(STEPS):
            scale = 10.0 if rank == 1 else 1.0  # rank 1's data: a much larger loss
            loss = (model(torch.randn(16, 8)) * scale).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            time.sleep(0.01)
        # The expected whole-layer norms, from the full weights gathered by the test itself
        # (the training's own collectives), at the last sampled step (STEPS is a multiple of 5).
        if flavour == "fsdp2":
            norms = {name: model[i].weight.full_tensor().norm().item()
                     for name, i in (("0", 0), ("2", 2))}
        else:
            with FSDP.summon_full_params(model):
                inner = model.module
                norms = {"0": inner[0].weight.norm().item(), "2": inner[2].weight.norm().item()}
        if rank == 0:
            Path(out).write_text(json.dumps(norms))
        # Stay until the viewers have seen the end of training (the test writes "stop").
        deadline = time.monotonic() + 60
        while not Path(out + ".stop").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    dist.destroy_process_group()


def _run_job(flavour: str, runtime_dir: str, tmp_path: Path, view) -> None:
    """Start the relay and two ranks; `view(relay, out)` watches while they train."""
    with Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:0") as relay:
        out = str(tmp_path / f"{flavour}.json")
        ctx = mp.spawn(_rank_main, args=(2, free_port(), relay.bind_endpoint, runtime_dir, out,
                                         flavour), nprocs=2, join=False)
        try:
            view(relay, out)
        finally:
            Path(out + ".stop").write_text("stop")
            while not ctx.join(timeout=60):
                pass


def _collect(relay: Relay, out: str) -> tuple[RunState, list[protocol.Message]]:
    """Everything the relay passes on until both ranks have trained (the norms file exists)
    and a sample of the last step has arrived."""
    state, seen = RunState(), []
    with BackgroundFeed(relay.publish_endpoint, history=False) as feed:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            batch = feed.poll(100)
            state.fold_all(batch)
            seen.extend(batch)
            last = [m for m in seen if m.kind == protocol.METRICS and m.step == STEPS]
            if Path(out).exists() and len({m.rank for m in last}) == 2 and \
                    {m.rank for m in seen if m.kind == protocol.META} == {0, 1}:
                break
        else:
            raise AssertionError(f"not every rank's last sample arrived "
                                 f"({len(seen)} messages, ranks {sorted({m.rank for m in seen})})")
    return state, seen


@pytest.mark.parametrize("flavour", ["fsdp2", "fsdp1", "fsdp1-orig"])
def test_fsdp_shards_are_measured_locally_and_combined_by_the_viewer(flavour, runtime_dir,
                                                                   tmp_path):
    results: dict = {}
    _run_job(flavour, runtime_dir, tmp_path,
             lambda relay, out: results.update(zip(("state", "seen"), _collect(relay, out))))
    state, seen = results["state"], results["seen"]
    expected = json.loads(Path(tmp_path / f"{flavour}.json").read_text())

    # One run (the job's shared id), two ranks, tagged as the launcher described them.
    assert len({m.run for m in seen}) == 1
    metas = {m.rank: m.payload for m in seen if m.kind == protocol.META}
    assert metas[0]["world_size"] == metas[1]["world_size"] == 2
    assert (metas[0]["local_rank"], metas[1]["local_rank"]) == (0, 1)
    assert metas[0]["job"] == metas[1]["job"] == seen[0].run
    assert metas[0]["gpu_poller"] is True and metas[1]["gpu_poller"] is False
    assert all(m.restart == 0 for m in seen)  # TORCHELASTIC_RESTART_COUNT unset: 0
    # The layer table lists the sharded layers with their full shapes.
    assert [(row["name"], row["shape"], row.get("sharded")) for row in metas[0]["layers"]] == [
        ("0", [16, 8], True), ("2", [4, 16], True)]
    # no `rank`: their spectra are never computed, so a viewer shows N/A, not pending (…)
    assert not any("rank" in row for row in metas[0]["layers"])
    # One node, one poller: only rank 0 sends GPU reports; every rank sends its stats.
    assert {m.rank for m in seen if m.kind == protocol.GPU} == {0}
    assert {m.rank for m in seen if m.kind == protocol.STATS} == {0, 1}
    # CPU run: the allocator figures are N/A (null), never 0.
    assert all(m.payload["memory"] is None for m in seen
               if m.kind == protocol.STATS and "memory" in m.payload)
    # Each rank measured its own shard: additive figures only, flagged with its shard index.
    shards = [m for m in seen if m.kind == protocol.METRICS and m.step == STEPS]
    assert sorted(m.payload["sharded"]["index"] for m in shards) == [0, 1]
    assert all(m.payload["sharded"]["shards"] == 2 for m in shards)
    for m in shards:
        assert set(m.payload["values"]) == {"0", "2"}
        assert set(m.payload["values"]["0"]) == {"shard_sumsq", "shard_absmax", "shard_numel",
                                                 "shard_nonfinite"}
    numel = {layer: sum(m.payload["values"][layer]["shard_numel"] for m in shards)
             for layer in ("0", "2")}
    assert numel == {"0": 128, "2": 64}  # the shards add up to each whole weight
    # The viewer combined the shards: the whole weight's norm, as the full tensor gives it.
    for layer in ("0", "2"):
        series = state.layers[layer].indicators["weight_norm"]
        assert series.step == STEPS
        assert math.isclose(series.current, expected[layer], rel_tol=1e-5), (
            layer, series.current, expected[layer])
    assert state.shards.combined >= 2
    # Whole-matrix indicators are not made up for sharded layers: said once, not computed.
    notices = [m.payload["message"] for m in seen if m.kind == protocol.EVENT
               and "sharded by FSDP" in m.payload["message"]]
    assert len([n for n in notices if n]) == 2  # once per rank
    assert "stable_rank" not in state.layers["0"].indicators
    # Every rank in the ranks view; rank 1's much larger loss shows as diverging.
    assert [v.rank for v in state.ranks.views()] == [0, 1]
    assert 1 in state.ranks.diverging() and 0 not in state.ranks.diverging()


async def test_the_tui_shows_both_ranks_of_a_real_two_rank_run(runtime_dir, tmp_path):
    """The real app (headless Pilot) on the relay of a real 2-rank gloo FSDP2 run: the main
    view's ranks line, then `g`: both ranks' rows and the GPU panel's report."""
    from symwatch.tui.app import SymwatchApp
    from symwatch.tui.widgets.ranks_panel import RanksLine, RanksScreen

    with Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:0") as relay:
        out = str(tmp_path / "tui.json")
        ctx = mp.spawn(_rank_main, args=(2, free_port(), relay.bind_endpoint, runtime_dir, out,
                                         "fsdp2"), nprocs=2, join=False)
        try:
            app = SymwatchApp(BackgroundFeed(relay.publish_endpoint), owns_source=True,
                              tick_s=0.05)
            async with app.run_test(size=(160, 45)) as pilot:
                deadline = time.monotonic() + 90
                while not (len(app.state.ranks) == 2 and Path(out).exists()
                           and all(v.host and v.loss is not None
                                   for v in app.state.ranks.views())
                           and app.state.ranks.gpu_reports()):
                    assert time.monotonic() < deadline, "the app never saw both ranks"
                    await pilot.pause(0.05)
                await pilot.pause(0.3)
                line = app.query_one(RanksLine)
                assert line.display and "ranks 2" in str(line.content)
                assert "rank 1 diverging" in str(line.content)
                await pilot.press("g")
                await pilot.pause(0.4)
                assert isinstance(app.screen, RanksScreen)
                table = app.screen.query_one("#ranks-table")
                rendered = _render(app, table)
                rows = [line for line in rendered.splitlines() if line.strip()[:1].isdigit()]
                assert [r.split()[0] for r in rows] == ["0", "1"], rendered
                assert socket.gethostname() in rows[0] and "diverging" in rows[1]
                assert "N/A" in rows[0]  # CPU: no allocator figures, never a fake 0
                gpu = _render(app, app.screen.query_one("#gpu-panel"))
                # this machine has no NVIDIA GPU: what the stream says, from rank 0 only
                assert "(rank 0 polls)" in gpu and "no NVIDIA GPU visible" in gpu
                assert "rank 1 polls" not in gpu
                await pilot.press("escape")
        finally:
            Path(out + ".stop").write_text("stop")
            while not ctx.join(timeout=60):
                pass


def _render(app, widget) -> str:
    from rich.console import Console

    console = Console(width=160, record=True, file=open(os.devnull, "w"))
    console.print(widget.content if hasattr(widget, "content") else widget.renderable)
    return console.export_text()


def test_hsdp_shard_index_comes_from_the_shard_dimensions_of_the_mesh():
    """HSDP (`Replicate, Shard` placements on a 2-D mesh): each replica group holds a full copy,
    so S and i come from the Shard dimensions only. The mesh and placements here are stand-ins
    with DTensor's attributes (a 2-D mesh needs 4 processes); FSDP2 proper runs above."""
    from types import SimpleNamespace

    from symwatch_agent.measure.sharded import _dtensor_shard

    def placement(shard: bool):
        return SimpleNamespace(is_shard=lambda: shard)

    def tensor(coordinate, sizes, shards):
        mesh = SimpleNamespace(ndim=len(sizes), get_coordinate=lambda: coordinate,
                               size=lambda dim: sizes[dim])
        return SimpleNamespace(device_mesh=mesh, placements=[placement(s) for s in shards])

    # 2 replicas × 4 shards: rank at (replica 1, shard 3) holds shard 3 of 4
    assert _dtensor_shard(tensor([1, 3], [2, 4], [False, True])) == (4, 3)
    # plain FSDP2 on 8 ranks
    assert _dtensor_shard(tensor([5], [8], [True])) == (8, 5)
    # a rank outside the mesh (get_coordinate None): shard 0 of S, never an error
    assert _dtensor_shard(tensor(None, [2, 4], [False, True])) == (4, 0)
