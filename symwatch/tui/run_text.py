"""How a registered run reads in a table (`symwatch ls`, the Runs screen): its start time and
its command line, each short enough for one row."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from symwatch.state import numbers


def started_text(started: float, now: float | None = None) -> str:
    """Local time; the date only when it is not today (keeps a row of runs inside 120 columns)."""
    if not started:
        return "?"
    when = time.localtime(started)
    today = time.localtime(time.time() if now is None else now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M:%S", when)
    return time.strftime("%Y-%m-%d %H:%M", when)


def sampling_text(sampling: Any, hint: bool = True) -> str:
    """What sets the interval between samples, from STATS/the registry's `sampling`:
    "every ~190 steps: 1 % budget; --budget to change", "every 10 steps (--every)", with
    ", each layer every ~40" when samples measure slices of the layers; "" when unknown. `hint`: say which option changes it."""
    if not isinstance(sampling, dict):
        return ""
    interval, every = sampling.get("interval"), sampling.get("every")
    if not isinstance(interval, (int, float)) or isinstance(interval, bool):
        interval = every
    if not isinstance(interval, (int, float)) or isinstance(interval, bool):
        return ""
    steps = f"{round(interval):,} step" + ("" if round(interval) == 1 else "s")
    # a sample measuring a slice of the layers: how often each layer is refreshed
    per_layer = sampling.get("layer_interval")
    layers = (f", each layer every ~{round(per_layer):,}"
              if isinstance(per_layer, (int, float)) and not isinstance(per_layer, bool)
              and round(per_layer) > round(interval) else "")
    if sampling.get("limit") == "budget":
        budget = sampling.get("budget")
        share = (f"{budget * 100:.3g} % budget" if isinstance(budget, (int, float))
                 and not isinstance(budget, bool) else "time budget")
        return f"every ~{steps}{layers}: {share}" + ("; --budget to change" if hint else "")
    return f"every {steps}{layers}" + (" (--every)" if hint else "")


def overhead_text(overhead: Any, sampling: Any) -> str:
    """The agent's share of the wall time against its time budget (STATS `overhead` and
    `sampling.budget`): '0.42% of 1%'; '31.61%, no budget' where the budget is 1 or more (every
    sample taken, as in the demo: a large share there is the cost of sampling every step, not
    a budget overrun); the share alone while the budget is unknown."""
    shown = numbers.percent(overhead, 2)
    budget = sampling.get("budget") if isinstance(sampling, dict) else None
    if shown == numbers.NA or not isinstance(budget, (int, float)) or isinstance(budget, bool):
        return shown
    if budget >= 1:
        return f"{shown}, no budget"
    return f"{shown} of {budget * 100:.3g}%"


def command_text(command: Sequence[str], width: int = 32) -> str:
    """The command line, its program as a base name (a full path says little and eats the row)."""
    parts = list(command)
    if parts:
        parts[0] = os.path.basename(parts[0]) or parts[0]
    text = " ".join(parts)
    return text if len(text) <= width else text[:width - 1] + "…"
