"""The rank's own GPU memory as torch's caching allocator counts it (allocated, reserved, peak).

NVML sees memory per device and per process id; inside a container the process ids it reports
are the host's, so a job cannot find its own processes there. The allocator's figures are this
process's, exact and cheap (a few µs: counters kept by the allocator, no device sync), and
work wherever CUDA does. They are read on the publisher thread for the `stats` message.

Never initialises CUDA: a process that has not touched the GPU yet (or a CPU-only run) reads
None ("N/A"), never a fake 0. `cuda` is the seam tests use to stand in for `torch.cuda` on a
machine without a GPU.
"""

from __future__ import annotations

from typing import Any

import torch


def rank_device(models_device: torch.device | None, cuda: Any = None) -> int | None:
    """The CUDA device index this rank trains on: the models' device when it is a GPU, else
    the current device once CUDA is initialised (torchrun scripts call set_device(LOCAL_RANK)),
    else None. Never initialises CUDA."""
    cuda = torch.cuda if cuda is None else cuda
    if models_device is not None and models_device.type == "cuda" and models_device.index is not None:
        return models_device.index
    try:
        if cuda.is_available() and cuda.is_initialized():
            return int(cuda.current_device())
    except Exception:
        pass
    return None


def allocator_figures(device: int | None, cuda: Any = None,
                      uuid: bool = False) -> dict[str, Any] | None:
    """{"allocated", "reserved", "peak"} in bytes, and the CUDA "device" index, for `device`;
    with `uuid`, also the device's NVML "uuid" (so a viewer can match it to the node's GPU
    report). None when there is no CUDA device or CUDA is not initialised in this process
    (then there is nothing to count)."""
    cuda = torch.cuda if cuda is None else cuda
    if device is None:
        return None
    try:
        if not cuda.is_initialized():
            return None
        figures: dict[str, Any] = {"allocated": int(cuda.memory_allocated(device)),
                                   "reserved": int(cuda.memory_reserved(device)),
                                   "peak": int(cuda.max_memory_allocated(device)),
                                   "device": int(device)}
    except Exception:  # a lost device, a driver error: N/A, the run goes on
        return None
    if uuid:
        name = device_uuid(device, cuda)
        if name:
            figures["uuid"] = name
    return figures


def device_uuid(device: int | None, cuda: Any = None) -> str | None:
    """NVML's name for the rank's device ("GPU-…"), from torch's device properties, so that the
    NVML sampler can tell which device is this rank's whatever CUDA_VISIBLE_DEVICES and
    CUDA_DEVICE_ORDER say. None without an initialised CUDA device."""
    cuda = torch.cuda if cuda is None else cuda
    if device is None:
        return None
    try:
        if not cuda.is_initialized():
            return None
        uuid = str(cuda.get_device_properties(device).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def visible_uuids(cuda: Any = None) -> list[str] | None:
    """The NVML UUIDs of every device this process can see, in CUDA's order, once CUDA is
    initialised (exact whatever CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER say); None before,
    and then the NVML sampler falls back on CUDA_VISIBLE_DEVICES."""
    cuda = torch.cuda if cuda is None else cuda
    try:
        if not cuda.is_initialized():
            return None
        names = [device_uuid(i, cuda) for i in range(cuda.device_count())]
    except Exception:
        return None
    return [n for n in names if n] or None
