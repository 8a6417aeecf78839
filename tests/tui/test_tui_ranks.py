"""The per-rank view and the GPU panel, in the real app (headless Pilot) on a real PUB socket
that publishes two ranks of one run, with GPU payloads made by the real NVML sampler over a
fake NVML (this machine has no GPU: the fake stands in at the sampler's `nvml` seam). Also the
observer's folding: RankTable (stragglers, diverging ranks) and ShardCombiner."""

from __future__ import annotations

import math
import time

import pytest
import zmq

from fake_nvml import FakeNVML, NotSupported, fake_device  # noqa: E402

from symwatch.core import protocol
from symwatch.transport.subscriber import Subscriber
from symwatch.core.protocol import Message
from symwatch.state.ranks import RankTable
from symwatch.state.shards import ShardCombiner
from symwatch.state.run_state import RunState
from symwatch.tui.app import SymwatchApp
from symwatch.tui.widgets.panels import GpuLine
from symwatch.tui.widgets.ranks_panel import (RanksLine, RanksScreen, gpu_panel_text, ranks_line_text,
                                      ranks_table)
from symwatch_agent.measure.gpu import GpuSampler
from waiting import pilot_until

HOSTS = {0: "node-a", 1: "node-a", 2: "node-b"}


class Job:
    """A PUB socket sending as several ranks of one run, each with its own seq."""

    def __init__(self, ctx: zmq.Context, run: str = "job0") -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.linger = 0
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.run = run
        self.seq: dict[int, int] = {}

    def send(self, rank: int, kind: str, step: int = 0, **payload) -> None:
        seq = self.seq.get(rank, 0)
        self.seq[rank] = seq + 1
        self.sock.send_multipart(list(protocol.encode(
            kind, run=self.run, rank=rank, restart=0, seq=seq, time=time.time(), step=step,
            payload=payload)))

    def meta(self, rank: int, world: int = 2) -> None:
        self.send(rank, protocol.META, name="ddp", pid=100 + rank, host=HOSTS[rank],
                  command=["train.py"], started=time.time(), every=1,
                  indicators=list(protocol.INDICATORS),
                  layers=[{"name": "fc", "type": "Linear", "shape": [4, 4], "params": 20}]
                  if rank == 0 else [], world_size=world, local_rank=rank % 2,
                  gpu_poller=rank % 2 == 0)


def msg(kind: str, rank: int, step: int, seq: int = 0, run: str = "r", **payload) -> Message:
    frames = protocol.encode(kind, run=run, rank=rank, restart=0, seq=seq, time=0.0, step=step,
                             payload=payload)
    return protocol.decode(list(frames))


def _two_gpus() -> dict:
    """A GPU payload from the real sampler over a fake NVML: device 1 reports no power."""
    nvml = FakeNVML([fake_device(0), fake_device(1, power_mw=NotSupported, limit_mw=NotSupported,
                                         util=12)])
    return GpuSampler(nvml).sample()


# -- folding -----------------------------------------------------------------------------------

def test_rank_table_finds_a_straggler_and_a_diverging_rank():
    table = RankTable()
    for rank, step, loss, step_time in ((0, 100, 0.5, 0.1), (1, 100, 0.52, 0.1),
                                        (2, 60, 0.49, 0.1), (3, 100, 3.0, 0.4)):
        for _ in range(3):
            table.fold(msg(protocol.STATS, rank, step, loss=loss, step_time=step_time,
                           steps_per_s=1 / step_time), now=0.0)
    assert set(table.stragglers()) == {2, 3}
    assert "40 steps behind" in table.stragglers()[2]
    assert "4.0× the median" in table.stragglers()[3]
    assert set(table.diverging()) == {3}
    assert table.primary == 0


def test_run_level_figures_are_the_primary_ranks_and_every_rank_is_kept():
    state = RunState()
    state.fold(msg(protocol.STATS, 1, 5, loss=9.0, steps_per_s=2.0), now=0.0)
    state.fold(msg(protocol.STATS, 0, 5, loss=1.0, steps_per_s=3.0), now=0.0)
    state.fold(msg(protocol.STATS, 1, 6, loss=8.0, steps_per_s=2.0), now=0.0)
    assert state.loss.current == 1.0 and state.steps_per_s == 3.0  # rank 0's, not rank 1's
    assert [v.loss for v in state.ranks.views()] == [1.0, 8.0]
    state.fold(msg(protocol.GOODBYE, 0, 7, reason="finished"), now=0.0)
    state.fold(msg(protocol.GOODBYE, 1, 7, seq=3, reason="finished"), now=0.0)
    assert state.finished


def test_shards_combine_into_the_whole_layers_norm_once_every_shard_is_in():
    combiner, state = ShardCombiner(), RunState()

    def shard(index, sumsq, absmax, numel, bad=0, step=10, rank=None):
        return msg(protocol.METRICS, index if rank is None else rank, step, seq=step,
                   values={"fc": {"shard_sumsq": sumsq, "shard_absmax": absmax,
                                  "shard_numel": numel, "shard_nonfinite": bad}},
                   sharded={"shards": 2, "index": index})

    assert combiner.add(shard(0, 9.0, 2.0, 6)) is None
    whole = combiner.add(shard(1, 16.0, 3.0, 6))
    assert whole is not None and whole.payload["values"]["fc"] == {"weight_norm": 5.0,
                                                                    "abs_max": 3.0}
    # In the state: the layer's weight_norm appears only when both shards of a step are in.
    state.fold(shard(0, 1.0, 1.0, 6, step=20), now=0.0)
    assert "fc" not in state.layers
    state.fold(shard(1, 3.0, 1.0, 6, step=20), now=0.0)
    assert math.isclose(state.layers["fc"].value("weight_norm"), 2.0)
    # A non-finite shard makes the whole layer N/A, flagged non-finite; never a number.
    bad = ShardCombiner()
    bad.add(shard(0, None, None, 6, bad=1))
    whole = bad.add(shard(1, 4.0, 1.0, 6))
    assert whole.payload["values"]["fc"]["weight_norm"] is None
    assert whole.payload["nonfinite"] == ["fc"]
    # A step whose other shard never comes is given up, not waited for forever.
    lost = ShardCombiner(window=3)
    for step in range(10):
        lost.add(shard(0, 1.0, 1.0, 6, step=step))
    assert lost.incomplete == 7 and len(lost._pending) == 3


# -- the app -----------------------------------------------------------------------------------

@pytest.fixture
def job(zmq_ctx):
    made = Job(zmq_ctx)
    yield made
    made.sock.close(0)


async def test_the_ranks_view_and_gpu_panel_of_a_two_rank_run(job):
    app = SymwatchApp(Subscriber(job.endpoint), owns_source=True, tick_s=0.05)
    gpu = _two_gpus()
    gpu["devices"][0]["uuid"] = "GPU-0aaa"  # rank 0 trains on device 0, rank 1 on device 1
    async with app.run_test(size=(150, 40)) as pilot:
        def publish() -> None:
            for rank in (0, 1):
                job.meta(rank)
                job.send(rank, protocol.STATS, 120 if rank == 0 else 80,
                         loss=0.4 if rank == 0 else 7.5, step_time=0.1, steps_per_s=10.0,
                         memory={"allocated": 2 * 2**30, "reserved": 3 * 2**30,
                                 "peak": 5 * 2**30, "device": rank, "uuid": f"GPU-{rank}aaa"})
            job.send(0, protocol.GPU, 120, **gpu)

        await pilot_until(pilot, lambda: len(app.state.ranks) == 2 and app.state.ranks.gpu_reports()
                          and all(v.loss_smooth for v in app.state.ranks.views()),
                          "both ranks", 10, step=0.05, tick=publish)
        await pilot.pause(0.2)
        line = app.query_one(RanksLine)
        assert line.display
        text = str(line.content)
        assert "ranks 2" in text and "rank 1 straggler (40 steps behind)" in text
        assert "rank 1 diverging" in text

        await pilot.press("g")
        await pilot_until(pilot, lambda: isinstance(app.screen, RanksScreen), "the ranks screen")
        await pilot.pause(0.3)
        table = _plain(ranks_table(app.state))
        rows = [r for r in table.splitlines() if r.strip()[:1].isdigit()]
        assert rows[0].split()[:4] == ["0", "node-a", "0", "120"]
        assert rows[1].split()[:4] == ["1", "node-a", "1", "80"]
        assert "2.0/3.0 GiB (peak 5.0)" in rows[0]
        assert "straggler: 40 steps behind" in rows[1] and "diverging" in rows[1]
        panel = _plain(gpu_panel_text(app.state))
        assert "node-a (rank 0 polls)" in panel
        assert "0: NVIDIA H200  util 87%  mem 40.0/141.0 GiB  61°C  450/700 W" in panel
        assert "1: NVIDIA H200  util 12%  mem 40.0/141.0 GiB  61°C  N/A/N/A" in panel
        assert "rank 0: 2.0/3.0 GiB" in panel and "rank 1: 2.0/3.0 GiB" in panel
        screen_text = _plain(app.screen.query_one("#gpu-panel").content)
        assert screen_text == panel  # what the screen shows is this panel
        await pilot.press("escape")
        await pilot_until(pilot, lambda: not isinstance(app.screen, RanksScreen), "closing")


async def test_a_throttled_gpu_shows_its_clock_and_reasons_in_warning_colour(job):
    """Issue #17: device 0 is held down by its power cap and a software thermal slowdown,
    device 1 is idle (not a warning), device 2 cannot say (N/A, never "no reason")."""
    nvml = FakeNVML([fake_device(0, sm_clock=1410, sm_clock_max=1980, throttle_mask=0x4 | 0x20),
                     fake_device(1, sm_clock=210, throttle_mask=0x1),
                     fake_device(2, sm_clock=NotSupported, throttle_mask=NotSupported)])
    gpu = GpuSampler(nvml).sample()
    app = SymwatchApp(Subscriber(job.endpoint), owns_source=True, tick_s=0.05)
    async with app.run_test(size=(150, 40)) as pilot:
        def publish() -> None:
            for rank in (0, 1):
                job.meta(rank)
                job.send(rank, protocol.STATS, 50, loss=0.4, step_time=0.1, steps_per_s=10.0)
            job.send(0, protocol.GPU, 50, **gpu)

        await pilot_until(pilot, lambda: app.state.ranks.gpu_reports() and app.state.gpu,
                          "the GPU report", 10, step=0.05, tick=publish)
        await pilot.pause(0.2)
        line = app.query_one(GpuLine).content
        assert "throttled: power cap, sw thermal" in str(line)
        assert any("yellow" in str(span.style) and "throttled" in str(line)[span.start:span.end]
                   for span in line.spans)

        await pilot.press("g")
        await pilot_until(pilot, lambda: isinstance(app.screen, RanksScreen), "the ranks screen")
        await pilot.pause(0.3)
        panel = app.screen.query_one("#gpu-panel").content
        plain = str(panel)
        assert "450/700 W  1410/1980 MHz  throttled: power cap, sw thermal" in plain
        assert "210/1980 MHz  idle" in plain and "throttled: idle" not in plain
        assert "N/A/1980 MHz  throttle N/A" in plain
        warned = [plain[span.start:span.end] for span in panel.spans
                  if "yellow" in str(span.style)]
        assert any("throttled: power cap" in w for w in warned)
        assert not any("idle" in w for w in warned)  # idle is not a warning


def test_the_gpu_panel_says_no_gpu_when_that_is_what_the_stream_says():
    state = RunState()
    state.fold(msg(protocol.META, 0, 0, name="n", pid=1, host="cpu-box", command=[],
                   started=0.0, layers=[], indicators=[], every=1), now=0.0)
    assert "no GPU report yet" in _plain(gpu_panel_text(state))
    state.fold(msg(protocol.GPU, 0, 1, seq=1, available=False, devices=[],
                   reason="no NVIDIA GPU visible (NVML Shared Library Not Found)"), now=0.0)
    text = _plain(gpu_panel_text(state))
    assert "cpu-box (rank 0 polls)  no NVIDIA GPU visible (NVML Shared Library Not Found)" in text
    # one rank: the main view's ranks line stays hidden (nothing to compare)
    assert "ranks 1" in _plain(ranks_line_text(state))


def test_a_node_whose_gpus_are_not_reported_still_shows_its_ranks_memory():
    state = RunState()
    state.fold(msg(protocol.GPU, 0, 1, **_two_gpus()), now=0.0)
    state.fold(msg(protocol.STATS, 2, 1, memory={"allocated": 2**30, "reserved": 2**30,
                                                 "peak": 2**30, "device": 0,
                                                 "uuid": "GPU-elsewhere"}), now=0.0)
    assert "rank 2 on ?: cuda:0 allocator 1.0/1.0 GiB (peak 1.0)" in _plain(
        gpu_panel_text(state))


def _plain(renderable) -> str:
    from rich.console import Console

    console = Console(width=150, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def test_a_rank_restarted_by_torchrun_is_live_again_after_its_goodbye():
    def at(kind, rank, restart, seq, **payload):
        return protocol.decode(list(protocol.encode(kind, run="job", rank=rank, restart=restart,
                                                    seq=seq, time=0.0, step=5, payload=payload)))

    state = RunState()
    state.fold(at(protocol.HEARTBEAT, 0, 0, 0, dropped=0, samples=0), now=0.0)
    state.fold(at(protocol.GOODBYE, 0, 0, 1, reason="exception"), now=0.0)
    assert state.finished
    state.fold(at(protocol.HEARTBEAT, 0, 1, 0, dropped=0, samples=0), now=0.0)
    assert not state.finished and state.ranks.ranks[0].restart == 1
    assert state.gap_dropped == 0  # seq starts again per restart: no gap counted
    assert "restart 1" in _plain(ranks_table(state))
