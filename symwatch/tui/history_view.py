"""Scroll-back: which stretch of the run the views show, and moving it with the keyboard.

Live, the views follow the newest step. Paused (`p`) or scrolled back (`[` `]` `{` `}`), they
show a window of steps [first, last] of the run's whole history (symwatch.core.downsample keeps it
in bounded memory): the table's values are those at the window's last step, every chart
covers the window, and transitions in it are marked. `z` / `Z` widen / narrow the window,
`L` (or End) goes back to live. Plain functions over RunState, tested without a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rich.text import Text

from symwatch.state.run_state import LayerState, RunState, Series

MIN_SPAN = 8  # steps: narrower than this says nothing
BIG_JUMP = 10  # `{` `}` move a tenth of the run (at least one window)


@dataclass(frozen=True)
class HistoryWindow:
    """`end`: the last step shown, None while live (following the newest step). `span`:
    steps shown, None for the default (what the recent samples of the run cover)."""

    end: int | None = None
    span: int | None = None

    @property
    def live(self) -> bool:
        return self.end is None


def reference_series(state: RunState) -> Series | None:
    """The series whose history stands for the run's: the loss, else the first layer's first
    indicator with samples."""
    if state.loss.store.count:
        return state.loss
    for layer in state.layers.values():
        for series in layer.indicators.values():
            if series.store.count:
                return series
    return None


def run_bounds(state: RunState) -> tuple[int, int] | None:
    """(first step with data, newest step), or None before any sample."""
    firsts = [s.store.first_step for s in _all_series(state) if s.store.first_step is not None]
    if not firsts or state.step is None:
        return None
    return min(firsts), state.step


def _all_series(state: RunState) -> list[Series]:
    out = [state.loss]
    for layer in state.layers.values():
        out.extend(layer.indicators.values())
        break  # the layers are sampled together: the first one speaks for all
    return out


def default_span(state: RunState) -> int:
    """The steps the recent (whole) samples cover: what a live sparkline shows."""
    series = reference_series(state)
    recent = series.history if series is not None else []
    if len(recent) >= 2:
        return max(MIN_SPAN, recent[-1][0] - recent[0][0] + 1)
    return MIN_SPAN * 8


def layer_span(state: RunState, layer: LayerState) -> int:
    """The default span of a layer's own charts: what its recent samples cover, at least the
    run's (a time budget's slices refresh a layer every ~100 steps while the loss comes every
    step: the run's span held one sample of the layer, drawn flat and called constant)."""
    run = default_span(state)
    for series in layer.indicators.values():
        recent = series.history
        if len(recent) >= 2:
            return max(run, recent[-1][0] - recent[0][0] + 1)
    return run


def span_of(window: HistoryWindow, state: RunState) -> int:
    return window.span if window.span is not None else default_span(state)


def steps_shown(window: HistoryWindow, state: RunState) -> tuple[int, int]:
    """(first, last) step of the window; live: the newest `span` steps."""
    span = span_of(window, state)
    last = window.end if window.end is not None else (state.step or 0)
    return last - span + 1, last


def paused_at(state: RunState) -> HistoryWindow:
    """The window that freezes the view where it is now."""
    return HistoryWindow(end=state.step, span=None)


def pan(window: HistoryWindow, state: RunState, windows: float) -> HistoryWindow:
    """Move the window by `windows` of its spans (negative: back), within the run."""
    span = span_of(window, state)
    return _move(window, state, round(windows * span) or (1 if windows > 0 else -1))


def jump(window: HistoryWindow, state: RunState, direction: int) -> HistoryWindow:
    """A big move: a tenth of the run, at least one window."""
    bounds = run_bounds(state)
    if bounds is None:
        return window
    span = span_of(window, state)
    return _move(window, state, direction * max(span, (bounds[1] - bounds[0] + 1) // BIG_JUMP))


def _move(window: HistoryWindow, state: RunState, steps: int) -> HistoryWindow:
    """The window `steps` later (earlier), its end on a stored step of the run, so the values
    shown are exactly those of that step (older history holds fewer steps: see
    symwatch.core.downsample); at least one stored step further, so a move is never stuck."""
    bounds = run_bounds(state)
    if bounds is None:
        return window
    span = span_of(window, state)
    start = window.end if window.end is not None else bounds[1]
    end = _clamp_end(start + steps, span, bounds)
    series = reference_series(state)
    if series is not None:
        store = series.store
        if steps < 0:
            found = store.at(min(end, start - 1))
            snapped = found[0] if found is not None and found[0] < start else None
        else:
            snapped = store.step_after(end)
        if snapped is not None:
            end = _clamp_end(snapped, span, bounds)
    return replace(window, end=end, span=span)


def at_step(window: HistoryWindow, state: RunState, step: int) -> HistoryWindow:
    """The window ending at `step` ("Go to step"), on the stored step at or before it (the
    first one, before the run's first sample), within the run; narrower where the run before
    that step is shorter than the window."""
    bounds = run_bounds(state)
    if bounds is None:
        return window
    end = max(bounds[0], min(step, bounds[1]))
    series = reference_series(state)
    if series is not None:
        found = series.store.at(end)
        if found is not None:
            end = found[0]
    span = max(MIN_SPAN, min(span_of(window, state), end - bounds[0] + 1))
    return replace(window, end=_clamp_end(end, span, bounds), span=span)


def zoom(window: HistoryWindow, state: RunState, factor: float) -> HistoryWindow:
    """Widen (factor > 1) or narrow the window around its last step, up to the whole run."""
    bounds = run_bounds(state)
    span = span_of(window, state)
    whole = (bounds[1] - bounds[0] + 1) if bounds else span
    new = max(MIN_SPAN, min(max(whole, MIN_SPAN), round(span * factor)))
    end = window.end
    if end is not None and bounds is not None:  # wider than what is left of the run: shift
        end = _clamp_end(end, new, bounds)
    return replace(window, span=new, end=end)


def _clamp_end(end: int, span: int, bounds: tuple[int, int]) -> int:
    first, newest = bounds
    return max(min(end, newest), min(newest, first + span - 1))


def window_label(window: HistoryWindow, state: RunState) -> Text:
    """The header's note while not live: 'PAUSED at step N  viewing steps A–B'."""
    text = Text()
    if window.live:
        return text
    first, last = steps_shown(window, state)
    text.append(" PAUSED ", "bold black on bright_white")
    text.append(f" at step {last:,}", "bold")
    text.append(f"  viewing steps {max(first, 0):,}–{last:,}", "dim")
    if state.step is not None and state.step > last:
        text.append(f"  (live: step {state.step:,}; L to follow)", "dim italic")
    return text


def value_at(series: Series | None, window: HistoryWindow) -> float | None:
    """The series' value at the window's last step (its current value while live)."""
    if series is None:
        return None
    if window.live:
        return series.current
    found = series.store.at(window.end)  # type: ignore[arg-type]
    return None if found is None else found[1]
