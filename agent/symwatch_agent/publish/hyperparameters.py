"""The optimizers' settings on the wire: STATS `optimizer` (every param group's learning rate,
weight decay, momentum, betas) and a notice EVENT at each boundary change (docs/protocol.md).

Read on the training thread at the steps `every` allows a sample (sampled or not), so a change
is seen within `every` steps whatever the budget does: a few attribute reads per param group,
plain floats only (`read_hyperparameters` skips a tensor-valued setting rather than
synchronising the device). What counts as a change is the detector's own rule
(`BOUNDARY_CHANGE`): a smooth schedule moving the lr a little at every sample is shown in the
header, never announced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from symwatch_agent.publish.transitions import BOUNDARY_CHANGE, read_hyperparameters

Settings = tuple[tuple[str, int, float | None], ...]

# Samples taken at the `every` cadence after a change, whatever the budget's thinning: what
# follows a switch (a norm falling, modes lost) needs points on both sides of it. Their cost is
# an overdraft of the budget's ledger, paid back by skipping later samples (Agent._on_step).
FOLLOW_SAMPLES = 5

# More groups than this are summarised by their first ones on the wire (a per-layer lr decay
# can make hundreds); a change in any group is still announced.
MAX_WIRE_GROUPS = 64

# Names on the wire and in notices, in display order.
NAMES = ("lr", "weight_decay", "momentum", "beta1", "beta2")


def read_settings(optimizers: Sequence[torch.optim.Optimizer]) -> Settings:
    """`read_hyperparameters` (lr, weight decay, momentum) plus Adam's betas, which it does
    not watch; the group key is `optimizer × 1000 + group`, as there."""
    values = list(read_hyperparameters(optimizers))
    for o, optimizer in enumerate(optimizers):
        for g, group in enumerate(optimizer.param_groups):
            betas = group.get("betas")
            if isinstance(betas, tuple) and len(betas) == 2:
                for name, beta in zip(("beta1", "beta2"), betas):
                    if isinstance(beta, (int, float)) and not isinstance(beta, bool):
                        values.append((name, o * 1000 + g, float(beta)))
    return tuple(values)


def changes(previous: Settings, current: Settings) -> list[dict[str, Any]]:
    """The boundary changes from `previous` to `current` (each a wire `changes` object): a
    move by more than BOUNDARY_CHANGE of the larger value, e.g. weight decay 0 → x, a StepLR
    boundary, warm-up's first samples."""
    before = {(name, key): value for name, key, value in previous}
    found = []
    for name, key, value in current:
        old = before.get((name, key))
        if old is None or value is None or old == value:
            continue
        if abs(value - old) > BOUNDARY_CHANGE * max(abs(value), abs(old)):
            found.append({"name": name, "optimizer": key // 1000, "group": key % 1000,
                          "before": old, "after": value})
    return found


def wire_groups(settings: Settings, optimizers: Sequence[torch.optim.Optimizer]
                ) -> list[dict[str, Any]]:
    """STATS `optimizer`: one object per param group, in optimizer then group order."""
    groups: dict[int, dict[str, Any]] = {}
    for name, key, value in settings:
        group = groups.get(key)
        if group is None:
            if len(groups) >= MAX_WIRE_GROUPS:
                continue
            o = key // 1000
            kind = type(optimizers[o]).__name__ if o < len(optimizers) else "?"
            group = groups[key] = {"optimizer": o, "group": key % 1000, "type": kind}
        group[name] = value
    return [groups[key] for key in sorted(groups)]


def notice(step: int, found: list[dict[str, Any]], optimizers: int) -> dict[str, Any]:
    """The EVENT payload announcing the changes found at `step` (severity "notice")."""
    # the same change in several groups (weight decay switched for the whole model) once
    alike: dict[tuple[str, float, float], list[dict[str, Any]]] = {}
    for change in found:
        alike.setdefault((change["name"], change["before"], change["after"]), []).append(change)
    parts = []
    for (name, before, after), members in alike.items():
        where = ""
        if len(members) > 1:
            where = f" ({len(members)} groups)"
        elif optimizers > 1 or members[0]["group"]:
            where = f" (optimizer {members[0]['optimizer']} group {members[0]['group']})"
        # `:g`, as the detector's exogenous labels say it (publish/transitions.py)
        parts.append(f"{name} {before:g} → {after:g}{where}")
    shown = parts[:4] + ([f"+{len(parts) - 4} more"] if len(parts) > 4 else [])
    first = found[0]
    return {"message": f"optimizer: {', '.join(shown)} at step {step:,}",
            "severity": "notice", "metric": first["name"], "before": first["before"],
            "after": first["after"], "changes": found[:MAX_WIRE_GROUPS]}
