"""Column views of the layer table: which indicators show together, and their labels.

The agent publishes some twenty indicators per layer; no terminal shows them all legibly at
once. A view is one symmetry family's columns (plus an overview); `v` cycles through them.
Indicators no view names (a newer agent's) appear in the "all" view, never dropped.
"""

from __future__ import annotations

VIEWS: dict[str, tuple[str, ...]] = {
    # few enough columns that each keeps a sparkline at 120 columns
    "overview": ("broken", "numerical_rank", "stable_rank", "effective_rank", "dead_fraction",
                 "duplicate_fraction"),
    "rank": ("numerical_rank", "stable_rank", "effective_rank", "participation_ratio",
             "mirror_rank", "delta_rank", "delta_rotation"),
    "units": ("dead_fraction", "relu_dead", "duplicate_fraction", "distinct_units",
              "delta_sign", "delta_perm"),
    "scale": ("weight_norm", "balance", "balance_norm", "angular_update", "effective_lr",
              "softmax_translation", "delta_rescale", "delta_softmax"),
    "all": (),  # every indicator received, in arrival order
}

# (long, short) column labels; the short ones are used when even two lines do not fit.
LABELS = {
    "weight_norm": ("weight norm", "norm"),
    "stable_rank": ("stable rank", "srank"),
    "numerical_rank": ("numerical rank", "rank"),
    "dead_fraction": ("dead fraction", "dead"),
    "effective_rank": ("effective rank", "erank"),
    "participation_ratio": ("participation ratio", "PR"),
    "relu_dead": ("never active", "inact"),
    "balance": ("balance ΣC", "bal"),
    "balance_norm": ("balance norm", "baln"),
    "duplicate_fraction": ("duplicate fraction", "dup"),
    "distinct_units": ("distinct units", "uniq"),
    "mirror_rank": ("mirror rank", "mrank"),
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


def label(indicator: str, short: bool = False) -> str:
    long_, short_ = LABELS.get(indicator, (indicator.replace("_", " "),) * 2)
    return short_ if short else long_


def view_indicators(view: str, available: list[str]) -> tuple[str, ...]:
    """The view's indicators that this run publishes, in the view's order."""
    if view == "all" or view not in VIEWS:
        return tuple(available)
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
