"""One line naming the machine a benchmark ran on: CPU model, cores, Python, torch."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(torch_threads: bool = True) -> str:
    parts = [f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores",
             f"{platform.system()} {platform.release()}",
             f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}"
                     + (f" ({torch.get_num_threads()} threads)" if torch_threads else ""))
    except ImportError:
        pass
    return ", ".join(parts)
