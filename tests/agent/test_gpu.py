"""The NVML sampler. This machine has no GPU: the fake below stands in for the `pynvml` module
(the narrowest seam: GpuSampler's `nvml` argument), with the NVML calls the sampler makes.
The real "library not found" path runs against the real pynvml installed here."""

from __future__ import annotations


import pytest

from symwatch.core import protocol
from fake_nvml import FakeNVML, NotSupported, NVMLError, fake_device
from symwatch_agent.measure.gpu import GpuSampler, decode_throttle


def _valid(payload: dict) -> dict:
    """What a receiver would see: the payload must pass the protocol's validation."""
    frames = protocol.encode(protocol.GPU, run="r", rank=0, restart=0, seq=0, time=0.0, step=0,
                             payload=payload)
    return protocol.decode(list(frames)).payload


def test_two_gpus_are_reported_in_natural_units(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = GpuSampler(FakeNVML([fake_device(0), fake_device(1, util=3)]))
    payload = _valid(sampler.sample())
    assert payload["available"] is True
    assert [(d["index"], d["name"], d["util"]) for d in payload["devices"]] == [
        (0, "NVIDIA H200", 87), (1, "NVIDIA H200", 3)]
    assert payload["devices"][0]["power"] == 450.0 and payload["devices"][0]["power_limit"] == 700.0
    assert payload["devices"][0]["mem_total"] == 141 * 2**30


def test_an_unsupported_field_is_null_never_zero(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = GpuSampler(FakeNVML([fake_device(0, power_mw=NotSupported, temp=NotSupported)]))
    dev = _valid(sampler.sample())["devices"][0]
    assert dev["power"] is None and dev["temp"] is None and dev["util"] == 87


def test_cuda_visible_devices_is_respected_by_index_and_uuid(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1")
    sampler = GpuSampler(FakeNVML([fake_device(0), fake_device(1), fake_device(2)]))
    assert [d["index"] for d in sampler.sample()["devices"]] == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    sampler = GpuSampler(FakeNVML([fake_device(0), fake_device(1), fake_device(2)]))
    assert [d["index"] for d in sampler.sample()["devices"]] == [0, 2]


def test_a_gpu_lost_mid_run_reads_na_and_the_sampler_survives(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([fake_device(0), fake_device(1)])
    sampler = GpuSampler(nvml)
    assert sampler.sample()["devices"][1]["util"] == 87
    nvml.devices[1]["lost"] = True
    devices = _valid(sampler.sample())["devices"]
    assert devices[0]["util"] == 87
    assert all(devices[1][k] is None for k in ("util", "mem_used", "temp", "power"))


def test_a_failing_nvml_init_says_why():
    sampler = GpuSampler(FakeNVML([], init_error=NVMLError("Driver Not Loaded")))
    payload = _valid(sampler.sample())
    assert payload == {"available": False, "devices": [],
                       "reason": "no NVIDIA GPU visible (Driver Not Loaded)"}


def test_the_real_library_not_found_path_on_this_machine():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except Exception:
        pass
    else:  # a machine with a driver: this test is about machines without one
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present here")
    payload = _valid(GpuSampler().sample())
    assert payload["available"] is False
    assert payload["reason"].startswith("no NVIDIA GPU visible (")
    assert payload["devices"] == []


def test_close_shuts_nvml_down_once(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([fake_device(0)])
    sampler = GpuSampler(nvml)
    sampler.close()
    sampler.close()
    assert nvml.shutdowns == 1 and not sampler.available


# -- the process list: the job's own GPU memory, polled rarely ---------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_process_list_keeps_the_jobs_pids_and_is_read_rarely(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock = Clock()
    nvml = FakeNVML([fake_device(0, processes=[(11, 5 * 2**30), (99, 7 * 2**30), (12, 2**30)]),
                     fake_device(1, processes=[(99, 3 * 2**30)])])
    sampler = GpuSampler(nvml, process_interval=30.0, job_pids=lambda: {11, 12}, clock=clock)
    first = _valid(sampler.sample())["devices"]
    assert first[0]["processes"] == [{"pid": 11, "mem_used": 5 * 2**30},
                                     {"pid": 12, "mem_used": 2**30}]  # pid 99: not this job
    assert first[0]["job_mem_used"] == 6 * 2**30
    assert first[1]["processes"] == [] and first[1]["job_mem_used"] is None  # N/A, not 0
    assert sampler.process_reads == 1 and nvml.process_calls == 2  # one call per device
    for _ in range(10):  # the cheap fields every sample; the costly list every 30 s only
        clock.now += 2.0
        nvml.devices[0]["util"] += 1
        payload = _valid(sampler.sample())
    assert payload["devices"][0]["util"] == 97
    assert sampler.process_reads == 1 and payload["devices"][0]["job_mem_used"] == 6 * 2**30
    clock.now += 10.0
    nvml.devices[0]["processes"] = [(11, 8 * 2**30)]
    assert _valid(sampler.sample())["devices"][0]["job_mem_used"] == 8 * 2**30
    assert sampler.process_reads == 2


def test_a_process_list_the_driver_cannot_give_is_absent_and_unknown_memory_is_null(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([fake_device(0, processes=NotSupported),
                     fake_device(1, processes=[(11, None), (12, 2**64 - 1)])])
    devices = _valid(GpuSampler(nvml, job_pids=lambda: {11, 12}).sample())["devices"]
    assert "processes" not in devices[0] and "job_mem_used" not in devices[0]
    assert devices[1]["processes"] == [{"pid": 11, "mem_used": None},
                                       {"pid": 12, "mem_used": None}]  # NVML's "N/A" value
    assert devices[1]["job_mem_used"] is None


def test_devices_carry_their_uuid_and_torchs_uuids_choose_them_exactly(monkeypatch):
    # torch named the devices it sees (CUDA order may differ from NVML's): exact by UUID,
    # whatever CUDA_VISIBLE_DEVICES says in indices.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    nvml = FakeNVML([fake_device(0), fake_device(1), fake_device(2)])
    sampler = GpuSampler(nvml, visible_uuids=["GPU-2aaa", "GPU-0aaa"])
    devices = sampler.sample()["devices"]
    assert [(d["index"], d["uuid"]) for d in devices] == [(0, "GPU-0aaa"), (2, "GPU-2aaa")]


def test_sibling_pids_include_this_process_and_its_siblings():
    import os
    import subprocess
    import sys

    import symwatch_agent.measure.gpu as gpu_module
    from symwatch_agent.measure.gpu import sibling_pids

    # Two children of ours, alive together: each finds itself and the other (same parent), not
    # us. gpu.py is loaded on its own (the package would import torch: seconds per child). A
    # child looks when told ("go": both exist by then), prints, then waits for its stdin to
    # close, so neither can exit before the other has looked.
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('gpu', {gpu_module.__file__!r}); "
            "gpu = importlib.util.module_from_spec(spec); spec.loader.exec_module(gpu); "
            "sys.stdin.readline(); print(sorted(gpu.sibling_pids()), flush=True); "
            "sys.stdin.read()")
    children = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for c in children:
            c.stdin.write("go\n")
            c.stdin.flush()
        outputs = [eval(c.stdout.readline()) for c in children]
    finally:
        for c in children:
            c.stdin.close()
            c.wait(30)
    pids = {c.pid for c in children}
    for out in outputs:
        assert pids <= set(out) and os.getpid() not in out
    assert os.getpid() in sibling_pids()


def test_one_poller_per_node_and_the_nvml_seam_through_the_agent(monkeypatch, collector):
    """The agent on local rank 0 polls the (fake) NVML; local rank 1 of the same job never
    does, and publishes no GPU message."""
    torch = pytest.importorskip("torch")
    import symwatch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvmls, agents = [], []
    for local in (0, 1):
        nvml = FakeNVML([fake_device(0)])
        nvmls.append(nvml)
        agents.append(symwatch.watch(torch.nn.Linear(2, 2), endpoint="tcp://127.0.0.1:0",
                                     rank=local, world_size=2, local_rank=local, nvml=nvml,
                                     gpu_interval=0.05, heartbeat_interval=0.05))
    subs = [collector(a.endpoint) for a in agents]
    try:
        subs[0].wait_for(lambda m: m.kind == protocol.GPU)
        subs[1].wait_for(lambda m: m.kind == protocol.HEARTBEAT and m.seq > 5)
        assert subs[1].of_kind(protocol.GPU) == []
        gpu = subs[0].of_kind(protocol.GPU)[-1]
        assert gpu.payload["devices"][0]["uuid"] == "GPU-0aaa"
        assert not hasattr(nvmls[1], "process_calls")  # rank 1 never touched NVML
    finally:
        for agent in agents:
            agent.close()
    assert nvmls[0].shutdowns == 1  # handles kept open while running, closed at the end


def test_a_gpu_lost_mid_run_loses_its_process_list_too(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock = Clock()
    nvml = FakeNVML([fake_device(0, processes=[(11, 2**30)]), fake_device(1, processes=[(11, 2**30)])])
    sampler = GpuSampler(nvml, process_interval=30.0, job_pids=lambda: {11}, clock=clock)
    assert _valid(sampler.sample())["devices"][1]["job_mem_used"] == 2**30
    nvml.devices[1]["lost"] = True
    clock.now += 30.0
    devices = _valid(sampler.sample())["devices"]
    assert devices[0]["job_mem_used"] == 2**30
    assert "processes" not in devices[1] and devices[1]["util"] is None  # N/A, not stale


def test_bad_memory_and_process_fields_are_refused_by_the_protocol():
    with pytest.raises(protocol.ProtocolError, match="stats.memory.allocated"):
        protocol.encode(protocol.STATS, run="r", rank=0, restart=0, seq=0, time=0.0, step=0,
                        payload={"memory": {"allocated": "1 GiB"}})
    with pytest.raises(protocol.ProtocolError, match=r"processes\[0\]: missing field 'pid'"):
        protocol.encode(protocol.GPU, run="r", rank=0, restart=0, seq=0, time=0.0, step=0,
                        payload={"available": True, "devices": [
                            {"index": 0, "name": "x", "processes": [{"mem_used": 1}]}]})


# -- SM clock and clock-throttle reasons (issue #17) -------------------------------------------

POWER_CAP, SW_THERMAL, HW_SLOWDOWN, IDLE = 0x4, 0x20, 0x8, 0x1


def test_the_sm_clock_and_several_throttle_reasons_at_once_are_sampled(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([fake_device(0, sm_clock=1410, sm_clock_max=1980,
                                 throttle_mask=POWER_CAP | SW_THERMAL | HW_SLOWDOWN)])
    dev = _valid(GpuSampler(nvml).sample())["devices"][0]
    assert dev["sm_clock_mhz"] == 1410 and dev["sm_clock_max_mhz"] == 1980
    assert dev["throttle"] == ["power cap", "hw slowdown", "sw thermal"]


def test_idle_alone_and_no_reason_at_all(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([fake_device(0, throttle_mask=IDLE, sm_clock=210), fake_device(1)])
    idle, busy = _valid(GpuSampler(nvml).sample())["devices"]
    assert idle["throttle"] == ["idle"] and idle["sm_clock_mhz"] == 210
    assert busy["throttle"] == []  # read, and nothing holds the clock down


def test_clocks_and_reasons_nvml_cannot_give_are_null_never_zero(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([fake_device(0, sm_clock=NotSupported, sm_clock_max=NotSupported,
                                 throttle_mask=NotSupported)])
    dev = _valid(GpuSampler(nvml).sample())["devices"][0]
    assert dev["sm_clock_mhz"] is None and dev["sm_clock_max_mhz"] is None
    assert dev["throttle"] is None and dev["util"] == 87


def test_an_older_nvidia_ml_py_with_only_the_throttle_names(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([fake_device(0, throttle_mask=POWER_CAP | 0x4000)], event_names=False)
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons is None
    dev = _valid(GpuSampler(nvml).sample())["devices"][0]
    assert dev["throttle"] == ["power cap", "other"]  # an unknown bit is not dropped


def test_a_library_without_either_reasons_call_reports_them_na(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([fake_device(0, throttle_mask=POWER_CAP)], event_names=False)
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = None
    assert _valid(GpuSampler(nvml).sample())["devices"][0]["throttle"] is None


def test_the_real_pynvml_constants_decode_as_the_table_says():
    pynvml = pytest.importorskip("pynvml")
    mask = (pynvml.nvmlClocksThrottleReasonSwPowerCap
            | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown)
    assert decode_throttle(mask, pynvml) == ["power cap", "hw thermal"]
    assert decode_throttle(0, pynvml) == []
