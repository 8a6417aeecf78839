"""Keep long-lived objects out of the garbage collector's full passes while the view runs.

A full (generation 2) collection walks every object the collector tracks. Two kinds of objects
make that walk long, though none of them is ever garbage while the view runs:

- the app itself: Textual, Rich, the modules, the widgets and their styles, some 230,000
  objects. A full pass over them took ~130 ms on the machine of docs/benchmarks.md, every few
  seconds, and the screen update (or key press) that met one waited for it: that was most of
  the step-to-screen latency's p95. `settle` freezes them once, after the first screen update.
- a long run's history: 1,000 layers are 15,000 series, each a handful of arrays, some
  250,000 objects (~100 ms a pass). `update` freezes them once the series exist, and again as
  their number grows.

`gc.freeze()` moves every object alive at that moment out of the collector's sight, after a
collection (so no garbage, or at start-up little, is frozen); the full passes then only walk
what the view creates afterwards. Objects frozen and later released are still freed by reference counting; only a
reference cycle among them would outlive its use until `release` (when the view ends) hands
them back to the collector.
"""

from __future__ import annotations

import gc

# Below this many series a full collection is quick: freezing is not worth its one pause.
MIN_SERIES = 1_000
GROWTH = 1.25  # freeze again once the run has this many times the series frozen last time


class LongLivedHistory:
    """Decides when to freeze: once the app has settled (`settle`), the first time the run has
    MIN_SERIES series, and again each time their number has grown by GROWTH (a model that keeps
    adding layers)."""

    def __init__(self) -> None:
        self.frozen_at = 0  # series alive at the last freeze
        self.freezes = 0
        self.settled = False

    def settle(self) -> bool:
        """Freeze what the app holds once it is up (its first screen drawn); True the first
        time, when it did."""
        if self.settled:
            return False
        self.settled = True
        # Only the young generations are collected first: a full pass here would be the very
        # pause this avoids (and, in a process that runs many views, one per view); what little
        # older garbage exists at start-up is frozen with the rest until `release`.
        gc.collect(1)
        gc.freeze()
        self.freezes += 1
        return True

    def update(self, series: int) -> bool:
        """Freeze if `series` calls for it; True when it did."""
        if series < max(MIN_SERIES, GROWTH * self.frozen_at):
            return False
        self._freeze()
        self.frozen_at = series
        return True

    def _freeze(self) -> None:
        gc.collect()
        gc.freeze()
        self.freezes += 1

    def restart(self) -> None:
        """A new run in the same view: its series are counted afresh."""
        self.frozen_at = 0

    def release(self) -> None:
        """The view ends: what was frozen goes back to the collector (a reference cycle among
        the app's objects is collected again, e.g. in a process that runs many views)."""
        if self.freezes:
            gc.unfreeze()
            self.freezes = 0
            self.frozen_at = 0
            self.settled = False
