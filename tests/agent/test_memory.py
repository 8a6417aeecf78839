"""torch's allocator figures per rank (stats.memory). The CPU path runs for real here (no CUDA:
null, never 0, and CUDA is never initialised by the agent). This machine has no GPU, so the
CUDA path is tested through the narrowest seam, `memory`'s `cuda` argument standing in for
`torch.cuda`; on a GPU, benchmarks/gpu_check.py checks it against the real allocator."""

from __future__ import annotations

import torch

import symwatch
from symwatch.core import protocol
from symwatch_agent.measure import memory


class FakeCuda:
    """The torch.cuda calls memory.py makes, for an initialised process on two devices."""

    def __init__(self, initialised: bool = True) -> None:
        self.initialised = initialised
        self.calls: list[str] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialised

    def current_device(self) -> int:
        return 1

    def device_count(self) -> int:
        return 2

    def memory_allocated(self, d: int) -> int:
        self.calls.append("allocated")
        return (d + 1) * 1000

    def memory_reserved(self, d: int) -> int:
        return (d + 1) * 4000

    def max_memory_allocated(self, d: int) -> int:
        return (d + 1) * 3000

    def get_device_properties(self, d: int):
        class Props:
            uuid = f"58a6c6a2-0000-0000-0000-00000000000{d}"
        return Props()


def test_cpu_reads_none_and_never_initialises_cuda():
    assert memory.rank_device(torch.device("cpu")) is None
    assert memory.allocator_figures(None) is None
    assert memory.allocator_figures(0) is None  # CUDA not initialised: nothing to count
    assert memory.visible_uuids() is None
    assert not torch.cuda.is_initialized()


def test_cuda_figures_through_the_seam():
    cuda = FakeCuda()
    assert memory.rank_device(torch.device("cpu"), cuda) == 1  # set_device(LOCAL_RANK)
    assert memory.allocator_figures(1, cuda, uuid=True) == {
        "allocated": 2000, "reserved": 8000, "peak": 6000, "device": 1,
        "uuid": "GPU-58a6c6a2-0000-0000-0000-000000000001"}
    assert memory.visible_uuids(cuda) == ["GPU-58a6c6a2-0000-0000-0000-000000000000",
                                          "GPU-58a6c6a2-0000-0000-0000-000000000001"]
    payload = {"memory": memory.allocator_figures(0, cuda, uuid=True)}
    frames = protocol.encode(protocol.STATS, run="r", rank=0, restart=0, seq=0, time=0.0,
                             step=1, payload=payload)
    assert protocol.decode(list(frames)).payload == payload


def test_uninitialised_cuda_is_not_initialised_by_reading():
    cuda = FakeCuda(initialised=False)
    assert memory.rank_device(None, cuda) is None
    assert memory.allocator_figures(0, cuda) is None and cuda.calls == []
    assert memory.device_uuid(0, cuda) is None


def test_a_failing_allocator_reads_na():
    cuda = FakeCuda()
    cuda.memory_allocated = lambda d: (_ for _ in ()).throw(RuntimeError("device lost"))
    assert memory.allocator_figures(0, cuda) is None


def test_the_agent_sends_null_memory_on_cpu(collector):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=1, budget=1.0,
                        stats_interval=0.0) as agent:
        sub = collector(agent.endpoint)
        deadline_steps = 0
        while not any(m.kind == protocol.STATS for m in sub.messages) and deadline_steps < 400:
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
            deadline_steps += 1
            sub.drain(0.01)
        stats = sub.wait_for(lambda m: m.kind == protocol.STATS)
    assert "memory" in stats.payload and stats.payload["memory"] is None
    assert not torch.cuda.is_initialized()
