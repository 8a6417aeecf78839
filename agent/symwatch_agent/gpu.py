"""GPU statistics through NVML (nvidia-ml-py, imported as `pynvml`), sampled off the training thread.

No GPU, no driver, no library or an unsupported field never crash and never read as 0: the
sampler reports `available: false` with a reason, and a field NVML cannot give is None (N/A).
The `nvml` constructor argument is the seam tests use to stand in for a GPU this machine lacks.
"""

from __future__ import annotations

import os
from typing import Any, Callable


def _import_pynvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


class GpuSampler:
    """Opens NVML once, keeps the device handles, and samples every visible device."""

    def __init__(self, nvml: Any | None = None) -> None:
        self.reason = ""
        self._nvml: Any = None
        self._handles: list[tuple[int, Any]] = []
        try:
            lib = nvml if nvml is not None else _import_pynvml()
            lib.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver missing…
            self.reason = f"no NVIDIA GPU visible ({_describe(exc)})"
            return
        self._nvml = lib
        try:
            count = lib.nvmlDeviceGetCount()
            handles = [(i, lib.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        except Exception as exc:
            self.reason = f"no NVIDIA GPU visible ({_describe(exc)})"
            self.close()
            return
        self._handles = _visible(lib, handles)
        if not self._handles:
            self.reason = "no NVIDIA GPU visible (NVML lists no device for this process)"

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> dict[str, Any]:
        """The payload of a GPU message."""
        if not self.available:
            return {"available": False, "devices": [], "reason": self.reason}
        lib = self._nvml
        devices = []
        for index, handle in self._handles:
            util = _field(lambda: lib.nvmlDeviceGetUtilizationRates(handle).gpu)
            mem = _field(lambda: lib.nvmlDeviceGetMemoryInfo(handle))
            power = _field(lambda: lib.nvmlDeviceGetPowerUsage(handle))  # milliwatts
            limit = _field(lambda: lib.nvmlDeviceGetEnforcedPowerLimit(handle))
            devices.append({
                "index": index,
                "name": _field(lambda: _text(lib.nvmlDeviceGetName(handle))) or f"GPU {index}",
                "util": util,
                "mem_used": getattr(mem, "used", None),
                "mem_total": getattr(mem, "total", None),
                "temp": _field(lambda: lib.nvmlDeviceGetTemperature(handle, lib.NVML_TEMPERATURE_GPU)),
                "power": power / 1000.0 if power is not None else None,
                "power_limit": limit / 1000.0 if limit is not None else None,
            })
        return {"available": True, "devices": devices}

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
            self._handles = []


def _visible(lib: Any, handles: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Respect CUDA_VISIBLE_DEVICES (indices or UUIDs); NVML itself ignores it."""
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return handles
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = []
    for index, handle in handles:
        uuid = _field(lambda: _text(lib.nvmlDeviceGetUUID(handle))) or ""
        if str(index) in wanted or any(w and uuid.startswith(w) for w in wanted):
            chosen.append((index, handle))
    return chosen


def _field(read: Callable[[], Any]) -> Any:
    """One NVML read; None when the device does not support it (NVMLError_NotSupported) or
    fails, so the viewer shows N/A instead of a made-up value."""
    try:
        return read()
    except Exception:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
