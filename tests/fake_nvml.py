"""A stand-in for the `pynvml` module, for a machine without a GPU (this one, CI).

It is faked at the narrowest seam: GpuSampler's `nvml` argument takes a module, and this class
has the NVML calls the sampler makes, reading devices described as dicts. Faked too: the SM
clock (`nvmlDeviceGetClockInfo`/`nvmlDeviceGetMaxClockInfo` with NVML_CLOCK_SM) and the
clock-throttle reasons, a bit mask read by `nvmlDeviceGetCurrentClocksEventReasons` (newer
nvidia-ml-py) or, with `event_names=False`, only by the older
`nvmlDeviceGetCurrentClocksThrottleReasons`, with NVML's reason constants under both names. Shared by the
sampler's tests (tests/agent/test_gpu.py) and the GPU panel's (tests/tui/test_tui_ranks.py)."""

from __future__ import annotations

from types import SimpleNamespace


class NVMLError(Exception):
    pass


class NotSupported(NVMLError):
    pass


# NVML's clock-throttle reason bits (nvml.h), set below as nvmlClocksEventReason* and
# nvmlClocksThrottleReason* class constants, as pynvml has them.
THROTTLE_BITS = {"GpuIdle": 0x1, "ApplicationsClocksSetting": 0x2, "SwPowerCap": 0x4,
                 "HwSlowdown": 0x8, "SyncBoost": 0x10, "SwThermalSlowdown": 0x20,
                 "HwThermalSlowdown": 0x40, "HwPowerBrakeSlowdown": 0x80,
                 "DisplayClockSetting": 0x100}


class FakeNVML:
    """Devices as dicts; a field set to NotSupported raises it, as real NVML does."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, devices: list[dict], init_error: Exception | None = None,
                 event_names: bool = True) -> None:
        self.devices = devices
        self.init_error = init_error
        self.shutdowns = 0
        if not event_names:  # an older nvidia-ml-py: only the ...Throttle... names
            self.nvmlDeviceGetCurrentClocksEventReasons = None
            for name in THROTTLE_BITS:
                setattr(self, f"nvmlClocksEventReason{name}", None)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h): return self._get(h, "throttle_mask")
    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h): return self._get(h, "throttle_mask")
    def nvmlDeviceGetClockInfo(self, h, clock):
        assert clock == self.NVML_CLOCK_SM
        return self._get(h, "sm_clock")
    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        assert clock == self.NVML_CLOCK_SM
        return self._get(h, "sm_clock_max")

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
    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self.process_calls = getattr(self, "process_calls", 0) + 1
        return [SimpleNamespace(pid=pid, usedGpuMemory=used)
                for pid, used in self._get(h, "processes")]


for _name, _bit in THROTTLE_BITS.items():
    setattr(FakeNVML, f"nvmlClocksEventReason{_name}", _bit)
    setattr(FakeNVML, f"nvmlClocksThrottleReason{_name}", _bit)


def fake_device(i: int, **over) -> dict:
    return {"name": b"NVIDIA H200", "uuid": f"GPU-{i}aaa", "util": 87, "used": 40 * 2**30,
            "total": 141 * 2**30, "temp": 61, "power_mw": 450_000, "limit_mw": 700_000,
            "sm_clock": 1980, "sm_clock_max": 1980, "throttle_mask": 0,
            "processes": [], **over}
