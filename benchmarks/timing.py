"""Median wall time of a piece of device work, the kernels' time rather than their launch's."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """(median seconds of `repeats` runs after one warm-up, the last run's result)."""
    out = fn()  # warm-up (LAPACK / cuSOLVER initialisation, warm power vectors)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out
