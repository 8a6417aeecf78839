"""A tape of what the agent's detector was fed during a corpus run, so that a change to the
detector can be scored again in seconds, without re-training (benchmarks/event_corpus_replay.py).

Set SYMWATCH_CORPUS_TAPE=DIR before a run (`benchmarks/event_corpus.py --tape DIR`): every
`TransitionWatch.update` call (the sample's indicators, loss, optimizer settings, logged
scalars) and every exogenous mark registered from outside it is appended to DIR/NAME.pkl.
Replaying the tape through a fresh TransitionWatch gives the events the agent would have
published with the detector as it is now (the samples are the same: budget=1, one thread)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from symwatch_agent.publish.transitions import TransitionWatch

from symwatch.core.detection import TransitionDetector

ENV_TAPE = "SYMWATCH_CORPUS_TAPE"
_records: list[tuple[Any, ...]] = []
_inside = [False]


def install() -> None:
    """Wrap TransitionWatch.update and TransitionDetector.mark_exogenous (this process only)."""
    update, mark = TransitionWatch.update, TransitionDetector.mark_exogenous

    def taped_update(self: TransitionWatch, step: int, values: Any, loss: Any,
                     hyperparameters: Any, time: Any = None, scalars: Any = None) -> Any:
        _records.append(("u", step, {k: dict(v) for k, v in values.items()}, loss,
                         hyperparameters, dict(scalars or {})))
        _inside[0] = True
        try:
            return update(self, step, values, loss, hyperparameters, time=time,
                          scalars=scalars)
        finally:
            _inside[0] = False

    def taped_mark(self: TransitionDetector, step: int, reason: str) -> None:
        if not _inside[0]:  # the watch's own marks come back when the tape is replayed
            _records.append(("m", step, reason))
        mark(self, step, reason)

    TransitionWatch.update = taped_update  # type: ignore[method-assign]
    TransitionDetector.mark_exogenous = taped_mark  # type: ignore[method-assign]


def save(name: str) -> None:
    folder = os.environ.get(ENV_TAPE)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.pkl").write_bytes(pickle.dumps(_records))


def load(folder: Path, name: str) -> list[tuple[Any, ...]]:
    return pickle.loads((folder / f"{name}.pkl").read_bytes())
