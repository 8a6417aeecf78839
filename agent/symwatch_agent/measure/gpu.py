"""GPU statistics through NVML (nvidia-ml-py, imported as `pynvml`), sampled off the training thread.

No GPU, no driver, no library or an unsupported field never crash and never read as 0: the
sampler reports `available: false` with a reason, and a field NVML cannot give is None (N/A).
The `nvml` constructor argument is the seam tests use to stand in for a GPU this machine lacks.

Cost: NVML is initialised once and the device handles are kept open until `close`. The cheap
reads (utilisation, memory, temperature, power, SM clock and its maximum, the clock-throttle
reasons: tens of µs each) run at every sample (2 s);
the process list (`nvmlDeviceGetComputeRunningProcesses`, milliseconds per call) only every
`process_interval` seconds (30 s), its last answer repeated in between. In a distributed job
only each node's local rank 0 runs a sampler (one poller per node; the agent decides).

Devices carry their NVML UUID, so a viewer can tell which one a rank trains on (the agent sends
that device's UUID with the rank's allocator figures, from torch's own device properties).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable

PROCESS_INTERVAL_S = 30.0

# NVML's clock-throttle ("clocks event" since nvidia-ml-py 12.535) reasons: the bit, by the
# module's constant when it has one (either name), else NVML's documented value, and the short
# name the payload's `throttle` list carries (docs/protocol.md).
THROTTLE_REASONS: tuple[tuple[str, int, str], ...] = (
    ("GpuIdle", 0x1, "idle"),
    ("ApplicationsClocksSetting", 0x2, "app clocks"),
    ("SwPowerCap", 0x4, "power cap"),
    ("HwSlowdown", 0x8, "hw slowdown"),
    ("SyncBoost", 0x10, "sync boost"),
    ("SwThermalSlowdown", 0x20, "sw thermal"),
    ("HwThermalSlowdown", 0x40, "hw thermal"),
    ("HwPowerBrakeSlowdown", 0x80, "power brake"),
    ("DisplayClockSetting", 0x100, "display clocks"),
    ("BoardLimit", 0x200, "board limit"),
    ("Reliability", 0x400, "reliability"),
)


def _import_pynvml() -> Any:
    import pynvml  # noqa: PLC0415 (lazy: nvidia-ml-py, optional at run time; NVML at first poll)

    return pynvml


class GpuSampler:
    """Opens NVML once, keeps the device handles, and samples every visible device."""

    def __init__(self, nvml: Any | None = None, *, process_interval: float = PROCESS_INTERVAL_S,
                 job_pids: Callable[[], Iterable[int]] | None = None,
                 visible_uuids: Iterable[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reason = ""
        self._nvml: Any = None
        self._handles: list[tuple[int, Any]] = []
        self._uuids: dict[int, str | None] = {}
        self.process_interval = process_interval
        self._job_pids = job_pids or sibling_pids
        self._clock = clock
        self._processes_at: float | None = None  # when the process list was last read
        self._processes: dict[int, list[dict[str, Any]] | None] = {}
        self.process_reads = 0  # calls of the costly process list, for tests and overhead
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
        self._uuids = {i: _field(lambda: _text(lib.nvmlDeviceGetUUID(h))) for i, h in handles}
        self._handles = _visible(handles, self._uuids, visible_uuids)
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
        now = self._clock()
        if self._processes_at is None or now - self._processes_at >= self.process_interval:
            self._processes_at = now
            self._read_processes()
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
                "sm_clock_mhz": _field(lambda: lib.nvmlDeviceGetClockInfo(handle, self._clock_sm)),
                "sm_clock_max_mhz": _field(
                    lambda: lib.nvmlDeviceGetMaxClockInfo(handle, self._clock_sm)),
                "throttle": self._throttle(handle),
            })
            uuid = self._uuids.get(index)
            if uuid:
                devices[-1]["uuid"] = uuid
            processes = self._processes.get(index)
            if processes is not None:  # absent: the driver cannot list processes (N/A)
                devices[-1]["processes"] = processes
                known = [p["mem_used"] for p in processes if p["mem_used"] is not None]
                devices[-1]["job_mem_used"] = sum(known) if known else None
        return {"available": True, "devices": devices}

    @property
    def _clock_sm(self) -> int:
        return getattr(self._nvml, "NVML_CLOCK_SM", 1)

    def _throttle(self, handle: Any) -> list[str] | None:
        """The active clock-throttle reasons by short name ([] when none), None (N/A) when the
        device or driver cannot say. Newer nvidia-ml-py names the call ...ClocksEventReasons,
        older ...ClocksThrottleReasons; either is used. Bits this table does not know: "other"."""
        lib = self._nvml
        read = (getattr(lib, "nvmlDeviceGetCurrentClocksEventReasons", None)
                or getattr(lib, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        if read is None:
            return None
        mask = _field(lambda: read(handle))
        if not isinstance(mask, int) or isinstance(mask, bool) or mask < 0:
            return None
        return decode_throttle(mask, lib)

    def _read_processes(self) -> None:
        """The job's processes on each device with their memory: the costly NVML call, kept
        rare. Only this job's pids are kept (the rest of the node is not ours to show)."""
        lib = self._nvml
        try:
            mine = set(self._job_pids())
        except Exception:
            mine = {os.getpid()}
        self.process_reads += 1
        for index, handle in self._handles:
            listed = _field(lambda: lib.nvmlDeviceGetComputeRunningProcesses(handle))
            if listed is None:
                self._processes[index] = None
                continue
            self._processes[index] = [
                {"pid": int(p.pid), "mem_used": _memory(getattr(p, "usedGpuMemory", None))}
                for p in listed if getattr(p, "pid", None) in mine]

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
            self._handles = []


def _visible(handles: list[tuple[int, Any]], uuids: dict[int, str | None],
             visible_uuids: Iterable[str] | None = None) -> list[tuple[int, Any]]:
    """The devices this process may use; NVML itself ignores CUDA_VISIBLE_DEVICES.

    By UUID when torch told us (`visible_uuids`, from its device properties: exact whatever
    CUDA_DEVICE_ORDER is). Else from CUDA_VISIBLE_DEVICES: UUIDs (or unique prefixes) are
    exact; indices are taken as NVML indices, which is right with CUDA_DEVICE_ORDER=PCI_BUS_ID
    (what torchrun/SLURM set-ups normally use) and may name another device without it."""
    if visible_uuids is not None:
        wanted_uuids = [u for u in visible_uuids if u]
        if wanted_uuids:
            return [(i, h) for i, h in handles
                    if any((uuids.get(i) or "").startswith(w) for w in wanted_uuids)]
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return handles
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = []
    for index, handle in handles:
        uuid = uuids.get(index) or ""
        if str(index) in wanted or any(w and uuid.startswith(w) for w in wanted):
            chosen.append((index, handle))
    return chosen


def sibling_pids() -> set[int]:
    """This process and its siblings (same parent: torchrun's or mp.spawn's other local ranks),
    from /proc; just this process where /proc is not there. NVML lists every process on a
    device; these are the ones of this job. (Inside a container NVML reports host pids, which
    match none of these: the allocator figures cover that case.)"""
    me = os.getpid()
    parent = os.getppid()
    pids = {me}
    if parent <= 1:  # an orphan or a container's init: its "siblings" are unrelated
        return pids
    try:
        names = os.listdir("/proc")
    except OSError:
        return pids
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
            # pid (comm) state ppid …; comm may hold spaces and parentheses: split after ")"
            fields = stat[stat.rindex(b")") + 2:].split()
            if int(fields[1]) == parent:
                pids.add(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def decode_throttle(mask: int, lib: Any = None) -> list[str]:
    """The short names of the reasons set in NVML's bit mask, in THROTTLE_REASONS' order."""
    names, known = [], 0
    for const, default, name in THROTTLE_REASONS:
        bit = default
        for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
            value = getattr(lib, prefix + const, None)
            if isinstance(value, int) and not isinstance(value, bool):
                bit = value
                break
        known |= bit
        if mask & bit:
            names.append(name)
    if mask & ~known:
        names.append("other")
    return names


def _memory(value: Any) -> int | None:
    """NVML's per-process memory: None when the driver says it is not available (it reports
    NVML_VALUE_NOT_AVAILABLE, 2**64 - 1, on some platforms, e.g. under WSL or MIG)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**63:
        return None
    return value


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
