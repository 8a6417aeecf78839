"""Headless view: a compact text summary of a RunState, printed about once a second, and each
event as it passes."""

from __future__ import annotations

import time
from typing import Any, Callable, TextIO

from symwatch.core import protocol
from symwatch.state import numbers
from symwatch.sources.base import MessageSource
from symwatch.state.optimizer import settings_text
from symwatch.state.run_state import RunState

SUMMARY_INDICATORS = ("modes", "stable_rank")
# an agent from before `modes` publishes numerical_rank in its place
FALLBACK = {"modes": "numerical_rank"}


def summary_lines(state: RunState, now: float | None = None, *, max_layers: int = 16,
                  name: str | None = None) -> list[str]:
    """One status line, then one line per layer with its modes (singular values above the
    random bulk; numerical_rank from an agent without it) and stable rank. `name`
    stands in for the run's own until its META arrives (re-sent every few seconds)."""
    step = f"{state.step}" if state.step is not None else numbers.NA
    head = (f"[{state.connection(now)}] {state.name or name or '-'} step {step} "
            f"loss {state.loss_text()} "
            f"steps/s {numbers.compact(state.steps_per_s, 3)} dropped {state.dropped}")
    settings = settings_text(state.optimizer)
    if settings:  # the optimizers' lr and weight decay now (STATS `optimizer`)
        head += f" {settings}"
    if state.garbage:
        head += f" garbage {state.garbage}"
    lines = [head]
    layers = list(state.layers.values())
    width = max([len(x.name) for x in layers[:max_layers]] + [5])
    for layer in layers[:max_layers]:
        shown = [FALLBACK[ind] if ind in FALLBACK and ind not in layer.indicators
                 and FALLBACK[ind] in layer.indicators else ind for ind in SUMMARY_INDICATORS]
        cells = "  ".join(f"{ind} {numbers.indicator(ind, layer.value(ind)):>7}"
                          for ind in shown)
        lines.append(f"  {layer.name:<{width}}  {cells}")
    if len(layers) > max_layers:
        lines.append(f"  … {len(layers) - max_layers} more layers")
    return lines


class PrintEvents:
    """The feed, printing each event as it passes (the summary alone, printed once a second,
    would show the indicators but never say what happened): a transition as `event step N:
    …`, the agent's notices (a module it does not measure, an indicator switched off) under
    their severity."""

    def __init__(self, source: MessageSource, out: TextIO) -> None:
        self._source, self._out = source, out

    def __getattr__(self, name: str) -> Any:  # endpoint, garbage, last_error, close
        return getattr(self._source, name)

    def poll(self, timeout_ms: int = 0) -> list[Any]:
        messages = self._source.poll(timeout_ms)
        for m in messages:
            if m.kind != protocol.EVENT:
                continue
            severity = m.payload.get("severity")
            label = "event" if severity == "transition" else str(severity or "event")
            self._out.write(f"{label} step {m.step}: {m.payload.get('message', '')}\n")
            self._out.flush()
        return messages


def follow(source: MessageSource, out: TextIO, *, interval: float = 1.0,
           should_stop: Callable[[], bool] | None = None, state: RunState | None = None,
           drain_after_stop: float = 0.5, name: str | None = None) -> RunState:
    """Fold messages from `source` and print a summary every `interval` seconds, until the run
    says goodbye or `should_stop()` turns true (then drain a little longer for the goodbye)."""
    state = state or RunState()
    next_print = time.monotonic()
    stop_at: float | None = None
    while True:
        state.fold_all(source.poll(100))
        state.garbage = int(source.garbage)
        now = time.monotonic()
        done = state.finished or (stop_at is not None and now >= stop_at)
        if now >= next_print or done:
            out.write("\n".join(summary_lines(state, now, name=name)) + "\n")
            out.flush()
            next_print = now + interval
        if done:
            return state
        if stop_at is None and should_stop is not None and should_stop():
            stop_at = now + drain_after_stop
