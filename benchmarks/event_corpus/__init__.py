"""A labelled corpus of real training runs, each with the symwatch agent inside and its ground
truth computed independently of symwatch's indicators; `benchmarks/event_corpus.py` runs them
and scores the agent's transition events against the truths (docs/benchmarks.md, *Events on
real training runs*).

Each run module has `NAME`, `TRUTH` (how its ground truth is defined, for the doc) and
`run(steps: int | None = None, seed: int = 0) -> RunResult` (None: the corpus's length).
"""

RUNS = ("saxe_staircase", "lowrank_default", "wd_restoration", "relu_units", "induction",
        "neural_collapse", "loss_spike", "adamw_decay_switch", "quiet", "demo")
