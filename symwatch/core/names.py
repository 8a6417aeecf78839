"""Each indicator's display name, one source for every place that shows one: the layer table's
header (long or short form), its legend, the layer detail, and the events' text (the detector
writes `linear.0 weight norm 4.12 → 3.902`, the table's own words). The wire name (`weight_norm`)
stays the data's key: the protocol, the export, alerts' `metric` fields. Stdlib only, so core
can use it (core may not import tui or state)."""

from __future__ import annotations

# (long, short) display names: the long one heads the table's column and names the series in
# events; the short one is the header when even two lines do not fit (the legend explains it).
NAMES: dict[str, tuple[str, str]] = {
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
    # per head only (`qk_sigma1.h3`: "QK σ₁ h3" / "qkσ3")
    "qk_sigma1": ("QK σ₁", "qkσ"),
    "vo_sigma1": ("VO σ₁", "voσ"),
    "qk_stable_rank": ("QK stable rank", "qksr"),
    "vo_stable_rank": ("VO stable rank", "vosr"),
    "qk_erank": ("QK effective rank", "qker"),
    "vo_erank": ("VO effective rank", "voer"),
    "qk_modes": ("QK modes", "qkm"),
    "vo_modes": ("VO modes", "vom"),
    # the attention max-logit (measure/logits.py): per head `max logit h0` / `mlog0`, and the
    # module's largest, so an event reads "tf.attn.1 max logit h0 12 → 45"
    "max_logit": ("max logit", "mlog"),
    "softmax_translation": ("softmax shift", "smax"),
    "angular_update": ("angular update", "angle"),
    "effective_lr": ("effective lr", "eff lr"),
    "update_ratio": ("update/weight", "upd"),
    "broken": ("broken Δ", "brkn"),
    "delta_perm": ("Δ perm", "Δperm"),
    "delta_sign": ("Δ sign", "Δsign"),
    "delta_rank": ("Δ rank", "Δrank"),
    "delta_rotation": ("Δ rotation", "Δrot"),
    "delta_rescale": ("Δ rescale", "Δresc"),
    "delta_softmax": ("Δ softmax", "Δsmax"),
    "act_erank": ("activation erank", "aerank"),
    "act_modes": ("activation modes", "amodes"),
    "nc1": ("NC1 within/between", "NC1"),
    "nc2": ("NC2 angles to ETF", "NC2"),
    "nc2_norm": ("NC2 norm spread", "NC2n"),
    "nc3": ("NC3 classifier vs means", "NC3"),
}


def per_head(indicator: str) -> tuple[str, int] | None:
    """(family, head) for a per-head indicator name like `qk_rank.h3`, else None."""
    base, sep, head = indicator.rpartition(".h")
    return (base, int(head)) if sep and base and head.isdigit() else None


def display(indicator: str, short: bool = False) -> str:
    """The name `indicator` (a wire name) is shown under: `weight norm` / `norm`; per head
    `QK rank h3` / `qk3` (the family's long name less its "(mean)"). A name without an entry
    (a newer agent's) reads with spaces for underscores, the same everywhere."""
    head = per_head(indicator)
    if head is not None and head[0] in NAMES:
        long_, short_ = NAMES[head[0]]
        return f"{short_}{head[1]}" if short else f"{long_.split(' (')[0]} h{head[1]}"
    long_, short_ = NAMES.get(indicator, (indicator.replace("_", " "),) * 2)
    return short_ if short else long_
