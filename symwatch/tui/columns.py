"""Column views of the layer table: which indicators show together, and their labels.

The agent publishes some twenty indicators per layer; no terminal shows them all legibly at
once. A view is one symmetry family's columns (plus an overview); `v` cycles through them.
Indicators no view names (a newer agent's) appear in the "all" view, never dropped. Each
attention head's series (`qk_rank.h0`, `vo_sigma1.h0`, …: per-head names, see docs/metrics.md)
have the "heads" view to themselves rather than swamping "all"; the layer detail screen charts
them too.
"""

from __future__ import annotations

import weakref

from symwatch.core.names import NAMES, display, per_head
from symwatch.state.run_state import LayerState, RunState

VIEWS: dict[str, tuple[str, ...]] = {
    # few enough columns that each keeps a sparkline at 120 columns
    "overview": ("broken", "modes", "stable_rank", "effective_rank", "dead_fraction",
                 "duplicate_fraction"),
    "rank": ("modes", "stable_rank", "effective_rank", "participation_ratio",
             "mirror_rank", "delta_rank", "delta_rotation"),
    "units": ("dead_fraction", "relu_dead", "duplicate_fraction", "distinct_units",
              "delta_sign", "delta_perm"),
    "scale": ("weight_norm", "balance", "balance_norm", "angular_update", "effective_lr",
              "update_ratio", "softmax_translation", "delta_rescale", "delta_softmax"),
    # factor pairs with nothing in between: hidden-space rotations, attention heads' QK and VO
    # (and the attention modules' max-logit, beside their head ranks: a stability signal)
    "rotation": ("mirror_rank", "qk_rank", "qk_rank_min", "vo_rank", "vo_rank_min",
                 "dead_heads", "max_logit", "delta_rotation"),
    # representations (docs/metrics.md, "Representations"): activation ranks of the layers,
    # from rows of a sampled step's forward pass; neural collapse on the classifier
    "repr": ("act_erank", "act_modes", "nc1", "nc2", "nc2_norm", "nc3"),
    "heads": (),  # every per-head indicator received (`qk_rank.h0`, `qk_sigma1.h0`, …)
    "all": (),  # every indicator received, in arrival order (per-head ones: the heads view)
}

# (long, short) column labels: one source with the events' text (core/names.py).
LABELS = NAMES



# What each column is, in one line: what it measures, its symmetric state (where the symmetry
# is unbroken: the fixed point restoration drives to) and which way is breaking. Shown under
# the layer table for the column under the cursor (←/→), and listed in help (`?`): a newcomer
# reads `srank` or `Δresc` once there instead of in docs/metrics.md.
LEGEND: dict[str, tuple[str, str, str]] = {
    "weight_norm": ("‖W‖ of the layer's weights", "0", "up: weights grow"),
    "stable_rank": ("Σσ²/σ₁², a scale-free rank", "1: one direction", "up: energy spreads"),
    "numerical_rank": ("singular values above float noise", "0", "up"),
    "modes": ("singular values above the random bulk", "0 modes", "up: a mode learned"),
    "dead_fraction": ("units with ~zero weights in and out, %", "100% dead",
                      "down: units revive"),
    "effective_rank": ("exp(entropy of σ), directions in use", "1", "up"),
    "participation_ratio": ("(Σσ²)²/Σσ⁴, directions carrying energy", "1", "up"),
    "relu_dead": ("ReLU units never active on a batch (relu_dead), %", "100%",
                  "down: units fire again"),
    "balance": ("ΣC = ‖W_in‖² − ‖W_out‖², rescaling imbalance", "0: balanced",
                "away from 0"),
    "balance_norm": ("mean unit imbalance, −1..1", "0: balanced", "towards ±1"),
    "duplicate_fraction": ("live units copying another unit, %", "100%: all merged",
                           "down: units differentiate"),
    "distinct_units": ("live units with no duplicate", "1", "up"),
    "mirror_rank": ("rank of the factor pair's hidden space", "0", "up"),
    "qk_rank": ("heads' QK score rank, mean", "0", "up: a head forms"),
    "qk_rank_min": ("heads' QK score rank, least head", "0", "up"),
    "vo_rank": ("heads' VO output rank, mean", "0", "up: a head forms"),
    "vo_rank_min": ("heads' VO output rank, least head", "0", "up"),
    "dead_heads": ("heads writing nothing, %", "100%", "down: heads revive"),
    "qk_sigma1": ("head's QK product σ₁", "0", "up: a circuit forms"),
    "vo_sigma1": ("head's VO product σ₁", "0", "up: a circuit forms"),
    "qk_stable_rank": ("head's QK stable rank", "1", "up"),
    "vo_stable_rank": ("head's VO stable rank", "1", "up"),
    "qk_erank": ("head's QK effective rank", "1", "up"),
    "vo_erank": ("head's VO effective rank", "1", "up"),
    "qk_modes": ("head's QK modes above the bulk", "0", "up: a direction learned"),
    "vo_modes": ("head's VO modes above the bulk", "0", "up: a direction learned"),
    "max_logit": ("largest pre-softmax attention logit |q·k|/√d, sampled forward", "none",
                  "up: logits grow, an instability risk"),
    "softmax_translation": ("‖mean row‖/‖W‖, rows drifting together, 0..1", "0: centred",
                            "up"),
    "angular_update": ("angle the weights turned since the last sample", "0", "up"),
    "effective_lr": ("lr/‖w‖^p, the step a scale-invariant layer takes", "—",
                     "up: ‖w‖ shrank"),
    "update_ratio": ("‖ΔW‖/‖W‖ per step since the last sample", "none",
                     "up: updates large against the weights, an instability risk"),
    "broken": ("mean of the layer's Δ order parameters, 0..1", "0", "up: more broken"),
    "delta_perm": ("order parameter of unit permutation, 0..1", "0: merged", "up"),
    "delta_sign": ("order parameter of sign flips (live units), 0..1", "0: dead", "up"),
    "delta_rank": ("order parameter of rank (modes), 0..1", "0: rank 0", "up"),
    "delta_rotation": ("order parameter of hidden rotations, 0..1", "0", "up"),
    "delta_rescale": ("order parameter of rescaling, 0..1", "0: balanced", "up"),
    "delta_softmax": ("order parameter of softmax shift, 0..1", "0: centred", "up"),
    "act_erank": ("effective rank of the layer's activations", "1: collapsed", "up"),
    "act_modes": ("activation directions above the bulk", "0", "up"),
    "nc1": ("neural collapse: within/between-class spread", "0: collapsed",
            "up: classes spread"),
    "nc2": ("neural collapse: class means vs a simplex", "0: a simplex", "up"),
    "nc2_norm": ("neural collapse: class means' norm spread", "0", "up"),
    "nc3": ("neural collapse: classifier vs class means", "0: dual", "up"),
}


# What the agent's full tier (exact spectra) gives every layer whose META row says `rank` (a
# real matrix, docs/protocol.md): absent from its samples until that tier has visited it, in
# turn within its share of the budget (on a GPT-style model at the defaults, ~7,000 steps for
# the last layer). Shown as pending (…), not as N/A, which says the indicator does not apply.
SPECTRUM_INDICATORS = frozenset({"modes", "effective_rank", "participation_ratio",
                                 "numerical_rank", "delta_rank"})
PENDING = "…"


def pending(layer: LayerState, indicator: str) -> bool:
    """Whether `indicator` of `layer` is one the agent will measure but has not yet: a
    spectrum indicator of a matrix layer, or a per-head series (`qk_rank.h3`) of an attention
    module's row (META `heads`: the full tier measures its heads), that has been sampled and
    has no such series."""
    if layer.updates == 0 or indicator in layer.indicators or layer.nonfinite:
        return False
    if "weight_norm" in layer.indicators and layer.value("weight_norm") is None:
        return False  # switched off (weights it cannot read) or NaN: N/A, not coming
    if layer.meta.get("heads"):
        return per_head(indicator) is not None
    return indicator in SPECTRUM_INDICATORS and layer.meta.get("rank") is True


def legend(indicator: str) -> str:
    """One line for the column of `indicator`: `srank  stable rank: symmetric at 1: one
    direction, breaking ↑ energy spreads; Σσ²/σ₁², …`. Without an entry: its name alone."""
    family = per_head(indicator)
    base = family[0] if family is not None else indicator
    short = label(indicator, short=True)
    long_ = label(indicator)
    entry = LEGEND.get(base)
    if entry is None:
        return f"{short}  {indicator}" if short != indicator else indicator
    what, symmetric, breaking = entry
    way, _, why = breaking.partition(": ")
    way = {"up": "↑", "down": "↓"}.get(way, way)
    # the symmetric state and the way to breaking first: what a narrow terminal keeps
    return (f"{short}  {long_}: symmetric at {symmetric}, breaking {way}"
            f"{' ' + why if why else ''}; {what}")


# The heads view's order within a head: ranks, then the continuous series (the agent's
# heads.PER_HEAD); a family not listed (a newer agent's) after them, by name.
HEAD_SERIES = ("qk_rank", "vo_rank", "qk_sigma1", "vo_sigma1", "qk_stable_rank",
               "vo_stable_rank", "qk_erank", "vo_erank", "qk_modes", "vo_modes", "max_logit")


def _head_order(indicator: str) -> tuple[int, int, str]:
    family, head = per_head(indicator)  # type: ignore[misc]
    rank = HEAD_SERIES.index(family) if family in HEAD_SERIES else len(HEAD_SERIES)
    return head, rank, family


def label(indicator: str, short: bool = False) -> str:
    """The column's header: the indicator's display name (core/names.py), as events say it."""
    return display(indicator, short)


def view_indicators(view: str, available: list[str]) -> tuple[str, ...]:
    """The view's indicators that this run publishes, in the view's order."""
    if view == "heads":
        return tuple(sorted((n for n in available if per_head(n)), key=_head_order))
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


# A column (and a view) N/A on every layer says nothing: an MLP's heads view was a screen of
# N/A. Which indicators have had a value on some layer is kept per state and looked at again
# only in the layers with a new sample since (1,000 layers: a pass over their update counts).
class _Measured:
    __slots__ = ("checked", "revision", "seen", "shown")

    def __init__(self) -> None:
        self.revision = -1
        self.seen: set[str] = set()
        self.checked: dict[str, int] = {}  # layer -> its `updates` when last looked at
        self.shown: list[str] = []


_measured: weakref.WeakKeyDictionary[RunState, _Measured] = weakref.WeakKeyDictionary()


def measured_indicators(state: RunState) -> list[str]:
    """The run's indicator names (display order) that some layer has had a value of; all of
    them while none has any yet (the first frames). A name once seen stays (a layer N/A now
    keeps its column, showing N/A)."""
    m = _measured.get(state)
    if m is None:
        m = _measured[state] = _Measured()
    if m.revision == state.revision:
        return m.shown
    m.revision = state.revision
    seen, checked = m.seen, m.checked
    for layer in state.layers.values():
        if checked.get(layer.name) == layer.updates:
            continue
        checked[layer.name] = layer.updates
        for name, series in layer.indicators.items():
            if name not in seen and (series.current is not None
                                     or any(v is not None for v in series.values())):
                seen.add(name)
    names = state.indicator_names()
    m.shown = [n for n in names if n in seen] or names
    return m.shown


def shown_views(available: list[str]) -> list[str]:
    """The views with at least one column for this run, in `v`'s order (the tab strip)."""
    return [view for view in VIEWS if view_indicators(view, available)]
