"""Keep a long run's history out of the garbage collector's full passes.

A 1,000-layer run holds 15,000 series, each a handful of arrays: some 250,000 objects the
collector tracks, though none of them ever forms a reference cycle. Python's full (generation 2)
collection walks them all, ~100 ms on the machine of docs/benchmarks.md, and it runs every few
seconds while the TUI renders (its caches churn objects), so a key press that met one waited
for it. `gc.freeze()` moves every object alive at that moment out of the collector's sight;
done once the series exist (after a full collection, so no garbage is frozen with them), the
full passes only walk what the view creates afterwards.

Objects frozen and later released are still freed by reference counting; only a reference
cycle among them would outlive its use, which the series and layers never form.
"""

from __future__ import annotations

import gc

# Below this many series a full collection is quick: freezing is not worth its one pause.
MIN_SERIES = 1_000
GROWTH = 1.25  # freeze again once the run has this many times the series frozen last time


class LongLivedHistory:
    """Decides when to freeze: the first time the run has MIN_SERIES series, and again each
    time their number has grown by GROWTH (a model that keeps adding layers)."""

    def __init__(self) -> None:
        self.frozen_at = 0  # series alive at the last freeze
        self.freezes = 0

    def update(self, series: int) -> bool:
        """Freeze if `series` calls for it; True when it did."""
        if series < max(MIN_SERIES, GROWTH * self.frozen_at):
            return False
        gc.collect()
        gc.freeze()
        self.frozen_at = series
        self.freezes += 1
        return True

    def restart(self) -> None:
        """A new run in the same view: its series are counted afresh."""
        self.frozen_at = 0
