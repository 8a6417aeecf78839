"""A GPU device's SM clock and clock-throttle reasons as the viewers show them (stdlib only).

The agent's NVML sampler sends `sm_clock_mhz`, `sm_clock_max_mhz` and `throttle` (the active
reasons by short name, null when NVML cannot say; docs/protocol.md). "idle" and "app clocks"
are expected states; any other reason means the device runs slower than it could."""

from __future__ import annotations

import math
from typing import Any

from symwatch.state import numbers

BENIGN_REASONS = frozenset({"idle", "app clocks"})


def throttle_reasons(dev: dict[str, Any]) -> list[str] | None:
    """The device's reasons as strings; None when absent or N/A."""
    reasons = dev.get("throttle")
    if not isinstance(reasons, list):
        return None
    return [str(r) for r in reasons]


def throttled(dev: dict[str, Any]) -> list[str]:
    """The reasons that slow the device (not idle, not application clocks); [] when none."""
    return [r for r in throttle_reasons(dev) or [] if r not in BENIGN_REASONS]


def clock_text(dev: dict[str, Any]) -> str:
    """E.g. "1410/1980 MHz  throttled: power cap, sw thermal"; "" when the device reports
    none of it (an older agent). N/A for a clock NVML cannot give."""
    if not any(k in dev for k in ("sm_clock_mhz", "sm_clock_max_mhz", "throttle")):
        return ""
    text = f"{_mhz(dev.get('sm_clock_mhz'))}/{_mhz(dev.get('sm_clock_max_mhz'))} MHz"
    reasons = throttle_reasons(dev)
    if reasons is None:
        if "throttle" in dev:
            text += f"  throttle {numbers.NA}"
        return text
    slowing = throttled(dev)
    if slowing:
        text += "  throttled: " + ", ".join(slowing)
    elif reasons:
        text += "  " + ", ".join(reasons)
    return text


def _mhz(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        return numbers.NA
    return f"{round(value)}"
