"""The whole run in bounded memory (symwatch.core.downsample) and scrolling back through it in the
real Textual app (symwatch.tui.history_view), fed 50,000 steps through a ListSource."""

from __future__ import annotations

import math
from dataclasses import replace

from symwatch.state import numbers
from symwatch.core import protocol
from symwatch.sources.memory import ListSource
from symwatch.core.downsample import VIEWER, Downsample, TieredSeries
from symwatch.state.run_state import DEFAULT_MAX_EVENTS, RunState
from symwatch.tui.app import SymwatchApp
from symwatch.tui.widgets.header import RunHeader
from symwatch.tui.history_view import HistoryWindow, steps_shown
from symwatch.tui.widgets.layer_table import LayerTable, column_key
from symwatch.tui.widgets.panels import LossPanel
from tests.tui.test_tui_app import text_of, until

RUN_STEPS = 50_000
STEP_UP_AT = 20_000  # stable_rank: 1.0 before, 5.0 from here on
SPIKE_AT = 12_345  # weight_norm: one sample of 1e6 in a ramp


def _weight_norm(step: int) -> float:
    return 1e6 if step == SPIKE_AT else float(step)


def _series(n: int, policy: Downsample = VIEWER) -> TieredSeries:
    s = TieredSeries(policy)
    for step in range(1, n + 1):
        s.append(step, _weight_norm(step))
    return s


# -- the store ---------------------------------------------------------------------------------

def test_stored_entries_are_bounded_whatever_the_run_length():
    bound = VIEWER.max_entries()
    s = TieredSeries()
    largest = 0
    for step in range(1, 400_001):  # 400,000 samples: 11 hours at 10 Hz
        s.append(step, float(step))
        if step % 997 == 0:
            largest = max(largest, len(s))
    assert largest <= bound == 448 and s.count == 400_000


def test_old_history_keeps_spikes_exact_values_and_the_first_step():
    s = _series(RUN_STEPS)
    assert s.count == RUN_STEPS and s.first_step == 1 and s.last_step == RUN_STEPS
    # the one-sample spike, long merged into a coarse entry, still is that entry's max ...
    assert max(hi for _, _, hi, _ in s.entries()) == 1e6
    # ... and shows in a chart of the whole run, in the right place
    cols = s.columns(1, RUN_STEPS, 100)
    assert max(c for c in cols if c is not None) == 1e6
    spike_col = cols.index(1e6)
    assert abs(spike_col - 100 * SPIKE_AT // RUN_STEPS) <= 3
    # an entry's value is exactly the value of its last sample, at that sample's step
    for step in (3, 5_000, 30_001, RUN_STEPS - 10, RUN_STEPS):
        at_step, value = s.at(step)
        oldest_entry_step = next(s.entries())[0]  # inside it, its own step is the answer
        assert at_step <= step or at_step == oldest_entry_step
        assert value == _weight_norm(at_step)
    # the recent samples are whole
    assert s.recent()[-3:] == [(RUN_STEPS - 2, RUN_STEPS - 2.0), (RUN_STEPS - 1, RUN_STEPS - 1.0),
                               (RUN_STEPS, float(RUN_STEPS))]
    assert s.at(0) is None


def test_a_step_stays_a_step_and_na_stays_na():
    s = TieredSeries()
    for step in range(1, 10_001):
        s.append(step, 1.0 if step < 4_000 else (math.nan if step % 7 == 0 else 5.0))
    cols = s.columns(1, 10_000, 50)
    assert set(cols[:18]) == {1.0} and set(cols[22:]) == {5.0}  # the step near 4000/10000
    assert s.recent_values()[-5] is None  # step 9,996 = 7 × 1,428: N/A, never 0
    merged = s.entries(None, s.recent()[0][0] - 1)  # older than the recent samples
    assert all(not math.isnan(lo) for _, lo, _, _ in merged)  # merged: known values win


def _retiring(series: list[TieredSeries], steps: range) -> dict[int, int]:
    """Step -> how many of `series` (appended together) moved recent samples into their tiers
    at that step (each such move can cascade merges down to the oldest tier)."""
    out: dict[int, int] = {}
    for step in steps:
        before = [s._steps[0] if s._steps else None for s in series]
        for s in series:
            s.append(step, float(step % 97))
        moved = sum(1 for s, first in zip(series, before) if s._steps[0] != first)
        if moved:
            out[step] = moved
    return out


def test_series_sampled_together_merge_at_different_steps():
    # 1,000 layers are 15,000 series appended at the same steps: in lockstep they all merged
    # their tiers at one step, a second of the viewer's CPU every 512 steps.
    lockstep = _retiring([TieredSeries() for _ in range(64)], range(1, 2_001))
    assert max(lockstep.values()) == 64
    spread = _retiring([TieredSeries(phase=i) for i in range(64)], range(1, 2_001))
    # the first two retirements (steps 128, 192) are still together: they only fill tier 1
    after_second = {step: n for step, n in spread.items() if step > 3 * VIEWER.recent}
    half = VIEWER.recent // 2  # distinct phases: 64 series, two at each
    assert max(after_second.values()) <= 64 // half
    assert len(after_second) >= half * (2_000 - 3 * VIEWER.recent) // VIEWER.recent


def test_staggered_series_keep_exact_aligned_history_in_the_same_bound():
    for phase in (0, 1, 17, 31, 32, 63):
        s = TieredSeries(phase=phase)
        values = {}
        largest = 0
        for step in range(1, 60_001):
            values[step] = math.nan if step % 1_009 == 0 else math.sin(step / 50) * step
            s.append(step, values[step])
            largest = max(largest, len(s))
        assert largest <= VIEWER.max_entries()
        assert [v for _, v in s.recent()][-VIEWER.recent:] == \
            [values[k] for k in range(60_001 - VIEWER.recent, 60_001)]
        previous = 0
        for step, lo, hi, last in s.entries():  # each entry: a block of 2^j aligned samples
            block = [values[k] for k in range(previous + 1, step + 1)]
            size = step - previous
            assert size & (size - 1) == 0 and previous % size == 0, (phase, step)
            known = [v for v in block if v == v]
            assert (lo, hi) == (min(known), max(known)) and last == block[-1] or \
                (last != last and block[-1] != block[-1])
            previous = step
        assert previous == 60_000


def test_a_runs_series_get_different_phases():
    state = RunState()
    layers = [f"l{i}" for i in range(16)]
    for step in range(1, 401):
        state.fold(protocol.decode(list(protocol.encode(
            protocol.METRICS, run="r", rank=0, restart=0, seq=step, time=0.0, step=step,
            payload={"values": {name: {"weight_norm": 1.0, "stable_rank": 2.0}
                                for name in layers}}))))
    series = [s.store for name in layers for s in state.layers[name].indicators.values()]
    recent = {len(s._steps) for s in series}  # where each one is in its own cycle
    assert len(recent) >= 16


def test_recordings_thin_with_the_same_tiers_as_before():
    # symwatch.core.recording's stride tiers (unchanged by sharing the policy with the viewer)
    d = Downsample(recent=100)
    assert list(d.ranges(1_000)) == [(700, 900, 2), (300, 700, 4), (-500, 300, 8)]


# -- scrolling back in the app ------------------------------------------------------------------

def _template(kind: str, **payload: object) -> protocol.Message:
    return protocol.decode(list(protocol.encode(kind, run="long-run", rank=0, restart=0, seq=0,
                                                time=1.0, step=0, payload=payload)))


def _transition_steps() -> list[int]:
    # more transitions than the events log keeps: every one of them stays for the charts
    return list(range(100, RUN_STEPS, 100))[:DEFAULT_MAX_EVENTS + 50]


def long_run() -> list[protocol.Message]:
    """META, then 50,000 steps of METRICS and STATS, and transitions every 100 steps (a
    decoded template per kind, its step and payload replaced: encoding 100,000 messages
    would take longer than the test)."""
    meta = protocol.decode(list(protocol.encode(
        protocol.META, run="long-run", rank=0, restart=0, seq=0, time=1.0, step=0,
        payload={"name": "long", "pid": 1, "host": "h", "command": ["x"], "started": 1.0,
                 "every": 1, "indicators": list(protocol.INDICATORS),
                 "layers": [{"name": "fc1", "type": "Linear", "shape": [4, 4], "params": 16}]})))
    metrics = _template(protocol.METRICS, values={"fc1": {"weight_norm": 1.0}})
    stats = _template(protocol.STATS, loss=1.0)
    event = _template(protocol.EVENT, message="x", severity="transition", layer="fc1",
                      metric="stable_rank", direction="up", before=1.0, after=5.0)
    transitions = set(_transition_steps())
    out = [meta]
    seq = 1
    for step in range(1, RUN_STEPS + 1):
        values = {"fc1": {"weight_norm": _weight_norm(step),
                          "stable_rank": 1.0 if step < STEP_UP_AT else 5.0}}
        out.append(replace(metrics, step=step, seq=seq, payload={"values": values}))
        out.append(replace(stats, step=step, seq=seq + 1, payload={"loss": 1.0 / step}))
        seq += 2
        if step in transitions:
            out.append(replace(event, step=step, seq=seq, payload={
                **event.payload, "message": f"fc1: stable_rank jumps at step {step}"}))
            seq += 1
    return out


async def test_scroll_back_through_50000_steps_shows_old_values_and_every_transition():
    app = SymwatchApp(ListSource(long_run()), tick_s=0.05)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.state.step == RUN_STEPS, timeout=60, what="the run")
        await pilot.pause(0.1)
        state = app.state
        header = app.query_one(RunHeader)
        # memory: every series holds a bounded number of entries, far fewer than its samples
        series = [state.loss, *state.layers["fc1"].indicators.values()]
        assert all(s.store.count == RUN_STEPS for s in series)
        assert all(len(s.store) <= VIEWER.max_entries() for s in series)
        # transitions are kept exactly, beyond what the events log keeps
        assert [ev.step for ev in state.transitions] == _transition_steps()
        assert len(state.events) == DEFAULT_MAX_EVENTS < len(state.transitions)

        await pilot.press("p")
        assert app.paused and "PAUSED" in text_of(header) and f"at step {RUN_STEPS:,}" in \
            text_of(header)
        for _ in range(9):  # `{`: a tenth of the run back each time
            await pilot.press("left_curly_bracket")
        first, last = steps_shown(app.window, state)
        # a tenth of the run back each time, the window's end on a step the history kept (old
        # history is coarse: here one entry per ~1,000 steps)
        assert RUN_STEPS - 9 * (RUN_STEPS // 10) - 2048 <= last <= 5_000
        assert f"at step {last:,}" in text_of(header)
        assert f"viewing steps {first:,}–{last:,}" in text_of(header)
        # the table shows the values of that step's sample: exact, not averaged
        assert state.layers["fc1"].indicators["weight_norm"].store.at(last) == (
            last, _weight_norm(last))
        cell = app.query_one(LayerTable).get_cell("fc1", column_key("weight_norm")).plain
        assert cell.split()[-1] == numbers.indicator("weight_norm", _weight_norm(last))
        assert "loss" in text_of(app.query_one(LossPanel))

        # the detail of fc1 over that window: the transition at step 5,000 listed and marked
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.__class__.__name__ == "LayerDetailScreen",
                    what="the layer detail")
        body = str(app.screen.query_one("#detail-body").content)
        assert f"steps {first:,}–{last:,}" in body
        shown = [ev.step for ev in state.transitions if ev.step <= last]
        assert f"fc1: stable_rank jumps at step {shown[-1]}" in body  # exact, as sent
        assert f"jumps at step {shown[-1] + 100}" not in body  # after the window
        in_window = [s for s in shown if s >= first]
        marks = [line for line in body.splitlines() if "▲" in line]
        assert bool(marks) == bool(in_window)
        # `]` moves forward inside the detail too; the whole run with `z`
        await pilot.press("right_square_bracket")
        assert steps_shown(app.window, state)[1] > last
        for _ in range(12):
            await pilot.press("z")
        first, last = steps_shown(app.window, state)
        assert (first, last) == (1, app.window.end) and app.window.span >= last
        await until(pilot, lambda: f"steps 1–{last:,}" in
                    str(app.screen.query_one("#detail-body").content), what="the whole run")
        body = str(app.screen.query_one("#detail-body").content)
        assert "stable rank" in body
        await pilot.press("escape")

        # `L`: live again, the header follows the newest step
        await pilot.press("L")
        await until(pilot, lambda: not app.paused, what="live")
        assert "PAUSED" not in text_of(header) and f"step {RUN_STEPS:,}" in text_of(header)
        assert app.window == HistoryWindow(span=app.window.span)


def test_the_whole_run_chart_shows_the_step_where_it_happened():
    state = RunState()
    for msg in long_run()[:2 * 30_000]:
        state.fold(msg, 0.0)
    rank = state.layers["fc1"].indicators["stable_rank"].store
    cols = rank.columns(1, state.step, 60)
    edge = 60 * STEP_UP_AT // state.step
    assert set(cols[:edge - 1]) == {1.0} and set(cols[edge + 1:]) == {5.0}


def test_a_layers_detail_covers_its_own_recent_samples_not_the_losss_steps():
    """Under a time budget a layer is sampled every ~100 steps while the loss comes every
    step: the detail's default window was the loss's recent steps (~60), which held one sample
    of the layer, drawn flat and called "constant" while the table's sparkline moved."""
    from symwatch.tui.screens.layer_detail import layer_detail_text

    state = RunState()
    for step in range(1, 2001):
        if step % 100 == 0:
            state.fold(_message(protocol.METRICS, step, values={
                "fc": {"weight_norm": 1.0 + step / 1000, "stable_rank": 2.0}}))
        state.fold(_message(protocol.STATS, step, loss=1.0 / step))
    text = layer_detail_text(state, state.layers["fc"], 100).plain
    weight = next(line for line in text.splitlines() if line.strip().startswith("weight norm"))
    assert "constant" not in weight and "min" in weight, weight
    first, last = (int(s.replace(",", "")) for s in
                   text.splitlines()[1].split()[1].split("–"))
    assert last == 2000 and last - first + 1 >= 10 * 100, text.splitlines()[1]
    # a window the user chose (z, Z, or scrolled back) is kept as it is
    chosen = layer_detail_text(state, state.layers["fc"], 100, HistoryWindow(end=2000, span=50))
    assert chosen.plain.splitlines()[1].split()[1] == "1,951–2,000"


def _message(kind: str, step: int, **payload: object) -> protocol.Message:
    return protocol.decode(list(protocol.encode(kind, run="r", rank=0, restart=0, seq=step,
                                                time=0.0, step=step, payload=payload)))
