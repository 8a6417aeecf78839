"""Column views of the layer table: which indicators show together, and their labels.

The agent publishes some twenty indicators per layer; no terminal shows them all legibly at
once. A view is one symmetry family's columns (plus an overview); `v` cycles through them.
Indicators no view names (a newer agent's) appear in the "all" view, never dropped. Each
attention head's ranks (`qk_rank.h0`, `vo_rank.h0`, …: per-head names, see docs/metrics.md)
have the "heads" view to themselves rather than swamping "all"; the layer detail screen charts
them too.
"""

from __future__ import annotations

VIEWS: dict[str, tuple[str, ...]] = {
    # few enough columns that each keeps a sparkline at 120 columns
    "overview": ("broken", "modes", "stable_rank", "effective_rank", "dead_fraction",
                 "duplicate_fraction"),
    "rank": ("modes", "stable_rank", "effective_rank", "participation_ratio",
             "mirror_rank", "delta_rank", "delta_rotation"),
    "units": ("dead_fraction", "relu_dead", "duplicate_fraction", "distinct_units",
              "delta_sign", "delta_perm"),
    "scale": ("weight_norm", "balance", "balance_norm", "angular_update", "effective_lr",
              "softmax_translation", "delta_rescale", "delta_softmax"),
    # factor pairs with nothing in between: hidden-space rotations, attention heads' QK and VO
    "rotation": ("mirror_rank", "qk_rank", "qk_rank_min", "vo_rank", "vo_rank_min",
                 "dead_heads", "delta_rotation"),
    "heads": (),  # every per-head indicator received (`qk_rank.h0`, …)
    "all": (),  # every indicator received, in arrival order (per-head ones: the heads view)
}

# (long, short) column labels; the short ones are used when even two lines do not fit.
LABELS = {
    "weight_norm": ("weight norm", "norm"),
    "stable_rank": ("stable rank", "srank"),
    "numerical_rank": ("numerical rank", "rank"),
    "modes": ("modes", "modes"),
    "dead_fraction": ("dead fraction", "dead"),
    "effective_rank": ("effective rank", "erank"),
    "participation_ratio": ("participation ratio", "PR"),
    "relu_dead": ("never active", "inact"),
    "balance": ("balance ΣC", "bal"),
    "balance_norm": ("balance norm", "baln"),
    "duplicate_fraction": ("duplicate fraction", "dup"),
    "distinct_units": ("distinct units", "uniq"),
    "mirror_rank": ("mirror rank", "mrank"),
    "qk_rank": ("QK rank (mean)", "qk"),
    "qk_rank_min": ("QK rank (min)", "qkmin"),
    "vo_rank": ("VO rank (mean)", "vo"),
    "vo_rank_min": ("VO rank (min)", "vomin"),
    "dead_heads": ("dead heads", "dhead"),
    "softmax_translation": ("softmax shift", "smax"),
    "angular_update": ("angular update", "angle"),
    "effective_lr": ("effective lr", "eff lr"),
    "broken": ("broken Δ", "brkn"),
    "delta_perm": ("Δ perm", "Δperm"),
    "delta_sign": ("Δ sign", "Δsign"),
    "delta_rank": ("Δ rank", "Δrank"),
    "delta_rotation": ("Δ rotation", "Δrot"),
    "delta_rescale": ("Δ rescale", "Δresc"),
    "delta_softmax": ("Δ softmax", "Δsmax"),
}


def per_head(indicator: str) -> tuple[str, int] | None:
    """(family, head) for a per-head indicator name like `qk_rank.h3`, else None."""
    base, sep, head = indicator.rpartition(".h")
    return (base, int(head)) if sep and base and head.isdigit() else None


def label(indicator: str, short: bool = False) -> str:
    head = per_head(indicator)
    if head is not None and head[0] in LABELS:  # "QK rank h3" / "qk3"
        long_, short_ = LABELS[head[0]]
        return f"{short_}{head[1]}" if short else f"{long_.split(' (')[0]} h{head[1]}"
    long_, short_ = LABELS.get(indicator, (indicator.replace("_", " "),) * 2)
    return short_ if short else long_


def view_indicators(view: str, available: list[str]) -> tuple[str, ...]:
    """The view's indicators that this run publishes, in the view's order."""
    if view == "heads":
        return tuple(sorted((n for n in available if per_head(n)),
                            key=lambda n: (per_head(n)[1], n)))  # type: ignore[index]
    if view == "all" or view not in VIEWS:
        return tuple(n for n in available if not per_head(n))
    if view == "overview" and len(available) <= len(VIEWS["overview"]):
        return tuple(available)  # a run with few indicators (an older agent): they all fit
    have = set(available)
    return tuple(name for name in VIEWS[view] if name in have)


def next_view(view: str, available: list[str]) -> str:
    """The view after `view` that has at least one column for this run."""
    names = list(VIEWS)
    start = names.index(view) if view in names else -1
    for offset in range(1, len(names) + 1):
        candidate = names[(start + offset) % len(names)]
        if view_indicators(candidate, available):
            return candidate
    return "all"
