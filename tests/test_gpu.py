"""The NVML sampler. This machine has no GPU: the fake below stands in for the `pynvml` module
(the narrowest seam: GpuSampler's `nvml` argument), with the NVML calls the sampler makes.
The real "library not found" path runs against the real pynvml installed here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from symwatch import protocol
from symwatch_agent.gpu import GpuSampler


class NVMLError(Exception):
    pass


class NotSupported(NVMLError):
    pass


class FakeNVML:
    """Devices as dicts; a field set to NotSupported raises it, as real NVML does."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, devices: list[dict], init_error: Exception | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict:
        return self.devices[i]

    def _get(self, handle: dict, key: str):
        if handle.get("lost"):
            raise NVMLError("GPU is lost")
        value = handle[key]
        if value is NotSupported:
            raise NotSupported("Not Supported")
        return value

    def nvmlDeviceGetName(self, h): return self._get(h, "name")
    def nvmlDeviceGetUUID(self, h): return self._get(h, "uuid")
    def nvmlDeviceGetUtilizationRates(self, h): return SimpleNamespace(gpu=self._get(h, "util"))
    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self._get(h, "used"), total=self._get(h, "total"))
    def nvmlDeviceGetTemperature(self, h, sensor): return self._get(h, "temp")
    def nvmlDeviceGetPowerUsage(self, h): return self._get(h, "power_mw")
    def nvmlDeviceGetEnforcedPowerLimit(self, h): return self._get(h, "limit_mw")


def _device(i: int, **over) -> dict:
    return {"name": b"NVIDIA H200", "uuid": f"GPU-{i}aaa", "util": 87, "used": 40 * 2**30,
            "total": 141 * 2**30, "temp": 61, "power_mw": 450_000, "limit_mw": 700_000, **over}


def _valid(payload: dict) -> dict:
    """What a receiver would see: the payload must pass the protocol's validation."""
    frames = protocol.encode(protocol.GPU, run="r", rank=0, restart=0, seq=0, time=0.0, step=0,
                             payload=payload)
    return protocol.decode(list(frames)).payload


def test_two_gpus_are_reported_in_natural_units(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = GpuSampler(FakeNVML([_device(0), _device(1, util=3)]))
    payload = _valid(sampler.sample())
    assert payload["available"] is True
    assert [(d["index"], d["name"], d["util"]) for d in payload["devices"]] == [
        (0, "NVIDIA H200", 87), (1, "NVIDIA H200", 3)]
    assert payload["devices"][0]["power"] == 450.0 and payload["devices"][0]["power_limit"] == 700.0
    assert payload["devices"][0]["mem_total"] == 141 * 2**30


def test_an_unsupported_field_is_null_never_zero(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = GpuSampler(FakeNVML([_device(0, power_mw=NotSupported, temp=NotSupported)]))
    dev = _valid(sampler.sample())["devices"][0]
    assert dev["power"] is None and dev["temp"] is None and dev["util"] == 87


def test_cuda_visible_devices_is_respected_by_index_and_uuid(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1")
    sampler = GpuSampler(FakeNVML([_device(0), _device(1), _device(2)]))
    assert [d["index"] for d in sampler.sample()["devices"]] == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    sampler = GpuSampler(FakeNVML([_device(0), _device(1), _device(2)]))
    assert [d["index"] for d in sampler.sample()["devices"]] == [0, 2]


def test_a_gpu_lost_mid_run_reads_na_and_the_sampler_survives(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([_device(0), _device(1)])
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
    nvml = FakeNVML([_device(0)])
    sampler = GpuSampler(nvml)
    sampler.close()
    sampler.close()
    assert nvml.shutdowns == 1 and not sampler.available
