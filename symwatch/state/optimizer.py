"""The optimizers' settings as the agent publishes them (STATS `optimizer`, EVENT `changes`;
docs/protocol.md), read defensively and written compactly for the header, `symwatch ls` and
`summary`: `lr 3e-4 · wd 0.01`, per group only where the groups differ."""

from __future__ import annotations

import math
from typing import Any

# Wire name → the short label shown; in display order. Betas stay on the wire and in
# `export`, not in the header: they rarely change and the header line is short.
LABELS = {"lr": "lr", "weight_decay": "wd", "momentum": "mom"}

# Groups shown one by one where they differ; more are summarised as "…".
MAX_SHOWN = 3


def short(value: Any) -> str:
    """3e-04 → "3e-4", 0.01 → "0.01", 5.0 → "5"; "?" for anything but a finite number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "?"
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")  # 3e-4, as people write a learning rate
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def groups_of(payload: Any) -> list[dict[str, Any]]:
    """STATS `optimizer`: the group objects that are objects (anything else is skipped)."""
    if not isinstance(payload, list):
        return []
    return [g for g in payload if isinstance(g, dict)]


def settings_text(groups: list[dict[str, Any]]) -> str:
    """`lr 3e-4 · wd 0.01`; groups that differ as `lr 1e-3/1e-4`; several optimizers each
    with its type: `AdamW lr 3e-4 · wd 0.01 | SGD lr 0.1 · mom 0.9`. "" when none."""
    by_optimizer: dict[Any, list[dict[str, Any]]] = {}
    for group in groups:
        by_optimizer.setdefault(group.get("optimizer", 0), []).append(group)
    parts = []
    for members in by_optimizer.values():
        fields = []
        for name, label in LABELS.items():
            values = [short(g[name]) for g in members if name in g]
            if not values or (name == "momentum" and set(values) == {"0"}):
                continue  # momentum 0 (SGD's default) says nothing
            distinct = list(dict.fromkeys(values))
            if len(distinct) == 1:
                fields.append(f"{label} {distinct[0]}")
            else:
                shown = values[:MAX_SHOWN] + (["…"] if len(values) > MAX_SHOWN else [])
                fields.append(f"{label} {'/'.join(shown)}")
        if not fields:
            continue
        text = " · ".join(fields)
        if len(by_optimizer) > 1:
            text = f"{members[0].get('type', '?')} {text}"
        parts.append(text)
    return " | ".join(parts)


def changes_of(payload: Any) -> tuple[tuple[str, float, float], ...]:
    """EVENT `changes`: (name, before, after) of each well-formed change."""
    if not isinstance(payload, list):
        return ()
    found = []
    for change in payload:
        if not isinstance(change, dict) or not isinstance(change.get("name"), str):
            continue
        before, after = change.get("before"), change.get("after")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after)):
            found.append((change["name"], float(before), float(after)))
    return tuple(found)


def change_text(changes: tuple[tuple[str, float, float], ...]) -> str:
    """`wd 0 → 5` (the same change in several groups once): the chart mark's label."""
    parts = dict.fromkeys(f"{LABELS.get(name, name)} {short(before)} → {short(after)}"
                          for name, before, after in changes)
    return ", ".join(parts)
