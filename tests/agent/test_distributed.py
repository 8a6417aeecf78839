"""Two ranks of a real DistributedDataParallel run (gloo on the CPU, torch.multiprocessing):
each rank's agent publishes tagged with its rank; the replicated weights are measured on rank 0
only, every rank reports its own loss. No collective is ever issued by the agent."""

from __future__ import annotations

import os
from pathlib import Path
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import symwatch
from symwatch.core import protocol
from symwatch.core.processes import free_port

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _rank_main(rank: int, world: int, master_port: int, ports: list[int], runtime: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world), SYMWATCH_RUNTIME_DIR=runtime)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.manual_seed(100 + rank)  # each rank its own data, so its own loss
    with symwatch.watch(model, opt, every=1, budget=1.0, heartbeat_interval=0.05,
                        endpoint=f"tcp://127.0.0.1:{ports[rank]}") as agent:
        assert agent.replica == (rank != 0)
        for _ in range(60):
            loss = model(torch.randn(16, 8)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            torch.distributed.barrier()  # the training's own collective, not the agent's
            time.sleep(0.02)
    dist.destroy_process_group()


def test_ddp_ranks_publish_tagged_and_replicas_are_measured_once(collector, runtime_dir):
    world, ports = 2, [free_port(), free_port()]
    subs = [collector(f"tcp://127.0.0.1:{port}") for port in ports]
    mp.spawn(_rank_main, args=(world, free_port(), ports, runtime_dir), nprocs=world,
             join=True)
    for sub in subs:
        sub.drain(0.5)
    rank0, rank1 = subs
    assert {m.rank for m in rank0.messages} == {0} and {m.rank for m in rank1.messages} == {1}
    assert set(rank0.of_kind(protocol.METRICS)[-1].payload["values"]) == {"0", "2"}
    assert rank1.of_kind(protocol.METRICS) == []  # replicas: nothing measured twice
    losses = [[m.payload["loss"] for m in s.of_kind(protocol.STATS) if m.payload.get("loss")]
              for s in subs]
    assert losses[0] and losses[1] and losses[0][-1] != losses[1][-1]  # each rank's own loss
    meta1 = [m for m in rank1.of_kind(protocol.META)]
    if meta1:  # re-sent every 5 s; the run may be shorter than that
        assert meta1[-1].payload["world_size"] == 2
        assert all("measured on rank 0" in s for s in meta1[-1].payload["skipped"])


def test_the_ranks_of_a_job_share_a_run_id_and_keep_their_own_files(monkeypatch, tmp_path,
                                                                     runtime_dir):
    from symwatch.core import runtime
    from symwatch_agent.hooks.distributed import job_id, node_leader

    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "8"}
    assert job_id(env) == job_id(dict(env)) and len(job_id(env)) == 12
    assert job_id({**env, "TORCHELASTIC_RUN_ID": "other"}) != job_id(env)
    assert job_id({**env, "SYMWATCH_JOB_ID": "mine"}) == job_id({"SYMWATCH_JOB_ID": "mine"})
    assert job_id({"WORLD_SIZE": "8"}) is None  # nothing the ranks share: one id per rank
    assert node_leader(8, 0) and not node_leader(9, 1) and node_leader(0, None)
    assert not node_leader(3, None)

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")  # torchrun restarted the workers
    agents = [symwatch.watch(nn.Linear(2, 2), rank=r, world_size=2, local_rank=r,
                             record=str(tmp_path / "run.db")) for r in (0, 1)]
    try:
        assert agents[0].run_id == agents[1].run_id == agents[0].job
        assert agents[0].restart == agents[1].restart == 2  # in every message's header
        entries = sorted(e.run_id for e in runtime.live_runs())
        assert entries == [f"{agents[0].run_id}-r0", f"{agents[0].run_id}-r1"]
        assert agents[0].endpoint != agents[1].endpoint  # a socket per process
        assert [Path(a.recording).name for a in agents] == ["run.rank0.db", "run.rank1.db"]
        meta = agents[1].meta()
        assert (meta["job"], meta["world_size"], meta["local_rank"], meta["gpu_poller"]) == (
            agents[0].run_id, 2, 1, False)
        assert agents[0].meta()["gpu_poller"] is True
    finally:
        for agent in agents:
            agent.close()
    assert runtime.live_runs() == []
