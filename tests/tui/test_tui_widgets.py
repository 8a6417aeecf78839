"""Text sparklines and the layer table's column layout (pure functions, no running app)."""

from __future__ import annotations

import math
import time

import pytest

from symwatch.core import protocol
from symwatch.state.run_state import RunState
from symwatch.tui.columns import pending
from symwatch.tui.history_view import HistoryWindow
from symwatch.tui.run_text import command_text, overhead_text, started_text
from symwatch.tui.widgets.header import header_text
from symwatch.tui.widgets.layer_table import VALUE_WIDTH, compute_layout
from symwatch.tui.widgets.panels import events_text, gpu_text, loss_text
from symwatch.tui.widgets.sparkline import BARS, sparkline, sparkline_rows


def test_sparkline_scales_min_to_max_newest_right():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], 8) == BARS
    assert sparkline([1, 8], 4) == "  ▁█"


def test_sparkline_gaps_for_missing_values_and_flat_series():
    assert sparkline([1.0, None, math.nan, 3.0], 4) == "▁  █"
    assert sparkline([2, 2, 2], 3) == "▁▁▁"  # a constant: the baseline, never half-full
    assert sparkline([], 5) == "     " and sparkline([None], 2) == "  "
    assert sparkline([1, 2], 0) == ""


def test_sparkline_buckets_long_history_to_width():
    line = sparkline(list(range(300)), 10)
    assert len(line) == 10 and line[0] == "▁" and line[-1] == "█"
    step = sparkline([1] * 150 + [5] * 150, 6)
    assert step == "▁▁▁███"  # a rank step stays a step


def test_sparkline_rows():
    rows = sparkline_rows([0, 1, 2, 3], 4, 2)
    assert len(rows) == 2 and all(len(r) == 4 for r in rows)
    assert rows[1][0] == "▁" and rows[0][3] == "█" and rows[1][3] == "█"
    assert sparkline_rows([1, 2], 3, 1) == [sparkline([1, 2], 3)]


def _state(n_layers: int = 3, name_len: int = 5) -> RunState:
    s = RunState()
    # four columns with a value (a column N/A on every layer is not shown)
    values = {("x" * (name_len - 1)) + str(i): {"weight_norm": 1.0, "stable_rank": 2.0,
                                                "numerical_rank": 3, "dead_fraction": 0.0}
              for i in range(n_layers)}
    s.fold(protocol.decode(list(protocol.encode(
        protocol.METRICS, run="r", rank=0, restart=0, seq=0, time=0.0, step=0,
        payload={"values": values}))))
    return s


def test_layout_fits_the_width_and_keeps_sparklines_when_possible():
    s = _state()
    wide = compute_layout(s, 120)
    assert wide.spark_w >= 4 and wide.header_height == 1 and wide.type_w > 0
    narrow = compute_layout(s, 80)  # sparklines stay: Type and Shape go first
    assert narrow.spark_w >= 4 and narrow.type_w == narrow.shape_w == 0
    tiny = compute_layout(s, 60)
    assert tiny.spark_w == 0 and tiny.cell_w == VALUE_WIDTH
    for width, layout in ((120, wide), (80, narrow), (60, tiny)):
        used = (layout.layer_w + layout.type_w + layout.shape_w
                + len(layout.indicators) * layout.cell_w
                + 2 * (1 + (2 if layout.type_w else 0) + len(layout.indicators)) + 2)
        assert used <= width


def test_layout_shortens_long_layer_names_before_dropping_sparklines():
    s = _state(name_len=40)
    layout = compute_layout(s, 100)
    assert layout.spark_w >= 4 and layout.layer_w < 40


def test_gpu_line_says_no_gpu_and_na_for_nulls():
    assert "no NVIDIA GPU visible (NVML Shared Library Not Found)" == gpu_text(
        {"available": False, "devices": [],
         "reason": "no NVIDIA GPU visible (NVML Shared Library Not Found)"}).plain.strip()[4:]
    line = gpu_text({"available": True, "devices": [
        {"index": 0, "name": "H100", "util": None, "mem_used": 2 ** 30, "mem_total": None,
         "temp": None, "power": None, "power_limit": 700.0}]}).plain
    assert "util N/A" in line and "mem 1.0/N/A GiB" in line and "N/A/700 W" in line
    assert " 0%" not in line and " 0°C" not in line
    assert "no GPU report yet" in gpu_text(None).plain


def test_events_text_shows_the_latest_lines():
    s = RunState()
    for i in range(4):
        s.fold(protocol.decode(list(protocol.encode(
            protocol.EVENT, run="r", rank=0, restart=0, seq=i, time=0.0, step=i * 10,
            payload={"message": f"event {i}", "severity": "transition"}))))
    text = events_text(s, 2).plain
    assert "event 2" in text and "event 3" in text and "event 1" not in text


def _with_loss(losses) -> RunState:
    s = RunState()
    for i, loss in enumerate(losses, start=1):
        s.fold(protocol.decode(list(protocol.encode(
            protocol.STATS, run="r", rank=0, restart=0, seq=i, time=0.0, step=i,
            payload={"loss": loss}))))
    return s


def _bar_heights(text: str) -> list[int]:
    """Eighths filled per column of a multi-row chart (its rows under the text line)."""
    rows = [row[1:] for row in text.split("\n")[1:]]
    heights = [0] * len(rows[0])
    for row in rows:
        for x, ch in enumerate(row):
            heights[x] += 8 if ch == BARS[-1] else (BARS.index(ch) + 1 if ch in BARS else 0)
    return heights


def test_the_live_loss_chart_is_the_whole_run():
    # 1,000 steps: far more than the recent samples kept whole (64); the first 300 a plateau
    # at 2, then a drop to 1: the plateau must still be on the chart
    s = _with_loss([2.0] * 300 + [1.0] * 700)
    text = loss_text(s, width=102, rows=4).plain
    assert "steps 1–1,000" in text and "log scale" not in text
    heights = _bar_heights(text)
    assert len(heights) == 100 and heights[0] == 32 and heights[-1] <= 2
    assert heights[29] == 32 and heights[31] <= 2  # the drop, 30 % of the way along


def test_a_loss_that_spans_decades_is_drawn_on_a_log_scale():
    # exponential decay from 100 to 0.1: on a log scale a straight line, so the middle column
    # is half-way up; on a linear one it would be nearly empty
    losses = [100 * 0.001 ** (i / 999) for i in range(1000)]
    text = loss_text(_with_loss(losses), width=102, rows=4).plain
    assert "log scale" in text
    heights = _bar_heights(text)
    assert abs(heights[50] - 16) <= 2 and heights[0] == 32
    assert "log scale" not in loss_text(_with_loss([3.0, 2.0, 1.0]), 40, 2).plain


def test_a_window_chart_shows_the_window():
    s = _with_loss([2.0] * 300 + [1.0] * 700)
    text = loss_text(s, width=102, rows=4, window=HistoryWindow(end=200, span=100)).plain
    assert text.startswith(" loss 2") and "steps 101–200" in text
    assert min(_bar_heights(text)) > 0  # the plateau only: a flat chart


def test_started_text_shows_the_date_only_when_not_today():
    now = time.mktime((2026, 3, 10, 12, 0, 0, 0, 0, -1))
    assert started_text(now - 3600, now) == "11:00:00"
    assert started_text(now - 3 * 86400, now) == "2026-03-07 12:00"
    assert started_text(0.0) == "?"
    assert command_text(["/very/long/path/train.py", "--lr", "3e-4"]) == "train.py --lr 3e-4"
    assert len(command_text(["x"] * 40)) == 32


def test_header_names_the_run_by_id_until_meta_arrives():
    s = _state()
    header = header_text(s, "live", endpoint="tcp://h:1").plain
    assert "run r\n" in header
    assert "tcp://h:1" not in header  # the socket is on `g`'s screen, not in the header
    assert "(no run yet)" in header_text(RunState(), "waiting", endpoint="tcp://h:1").plain


def _stats(s: RunState, **payload) -> None:
    s.fold(protocol.decode(list(protocol.encode(
        protocol.STATS, run="r", rank=0, restart=0, seq=1, time=0.0, step=10, payload=payload))))


def test_the_events_logs_why_line_gives_way_to_a_warning_and_says_when_detection_is_off():
    s = _state()
    s.fold(protocol.decode(list(protocol.encode(
        protocol.EVENT, run="r", rank=0, restart=0, seq=2, time=0.0, step=5,
        payload={"message": "symwatch agent: transition detection: ValueError: x; switched "
                            "off (training continues; reported once)", "severity": "warning"}))))
    one = events_text(s, 1).plain
    assert "transition detection" in one and "no transitions" not in one, one  # no room
    two = events_text(s, 2).plain.splitlines()
    assert "transition detection" in two[0], two
    # no warm-up promise: nothing more will come
    assert two[1].strip() == "no transitions: detection was switched off (the warning above)"


def test_a_loss_that_turned_nan_reads_nan_in_red_not_na():
    """STATS `loss_nonfinite`: the header and the loss panel said `loss N/A` (no value) for a
    run that had diverged."""
    s = _state()
    _stats(s, loss=None, loss_nonfinite="nan")
    header = header_text(s, "live", endpoint="tcp://h:1")
    assert " loss NaN " in header.plain, header.plain
    start = header.plain.index(" loss NaN ") + len(" loss ")
    assert any(span.style == "bold red" and span.start <= start < span.end
               for span in header.spans), header.spans
    assert loss_text(s, 80).plain.startswith(" loss NaN")
    _stats(s, loss=0.5)  # finite again (a later STATS): the number
    assert " loss 0.5 " in header_text(s, "live", endpoint="tcp://h:1").plain


@pytest.mark.parametrize("budget, shown", [
    (0.01, "overhead 0.42% of 1%"),  # against the budget it is kept within
    (0.05, "overhead 0.42% of 5%"),
    (1.0, "overhead 0.42%, no budget"),  # every sample taken: no cap to compare with
    (None, "overhead 0.42%"),  # an agent that does not say its budget
])
def test_the_header_reads_the_overhead_against_the_budget(budget, shown):
    s = _state()
    sampling = {"interval": 1, "every": 1, "limit": "every"}
    if budget is not None:
        sampling["budget"] = budget
    _stats(s, overhead=0.0042, sampling=sampling)
    header = header_text(s, "live", endpoint="tcp://h:1", width=200).plain
    assert shown + "  " in header, header


def test_overhead_text_says_na_without_a_figure():
    assert overhead_text(None, {"budget": 0.01}) == "N/A"
    assert overhead_text(0.3161, {"budget": True}) == "31.61%"  # not a number: no comparison


@pytest.mark.parametrize("samples, said", [
    ([12, 12, 5], (" no events yet: ~12 samples a layer so far; jumps are flagged from a "
                   "series' ~30th sample")),
    ([1, 1, 1], (" no events yet: ~1 sample a layer so far; jumps are flagged from a "
                 "series' ~30th sample")),
    ([40, 30, 12], " no events yet"),  # warmed up: nothing to explain
    (None, " no events yet"),  # no layer sampled yet
])
def test_no_events_says_whether_the_detector_is_still_warming_up(samples, said):
    """At the defaults a budget-stretched interval keeps a run's layers under the detector's
    warm-up for long (benchmarks.md, the event corpus at the agent's defaults): the log says
    how far they are, per layer (the median: a sliced sample refreshes only some)."""
    s = _state() if samples is not None else RunState()
    for layer, n in zip(s.layers.values(), samples or ()):
        layer.updates = n
    assert events_text(s, lines=3).plain == said


def test_a_finished_run_without_events_says_none_came_not_yet():
    """A replay or run that ended said `no events yet: … jumps are flagged from a series'
    ~30th sample`, as if more might come (a new user's report); it says none came, and why
    where the run ended inside the warm-up."""
    s = _state()
    for layer in s.layers.values():
        layer.updates = 16
    s.fold(protocol.decode(list(protocol.encode(
        protocol.GOODBYE, run="r", rank=0, restart=0, seq=2, time=0.0, step=300,
        payload={"reason": "finished", "exit_code": 0}))))
    assert s.finished
    assert events_text(s, lines=3).plain == (
        " no events in this run (it ended at ~16 samples a layer, before the detector's "
        "~30-sample warm-up)")
    for layer in s.layers.values():
        layer.updates = 40
    assert events_text(s, lines=3).plain == " no events in this run"


def test_no_events_says_when_the_loss_is_warmed_up_under_a_budget():
    """Under a budget the loss has a detector of its own fed every `run_level_every` steps
    (docs/alerts.md): its warm-up is in its own steps, said beside the layers'."""
    s = _state()
    for layer in s.layers.values():
        layer.updates = 4
    _stats(s, overhead=0.004, loss=0.5, steps_per_s=20.0, sampling={
        "interval": 220, "every": 10, "budget": 0.01, "limit": "budget",
        "run_level_every": 10})
    assert events_text(s, lines=3).plain == (
        " no events yet: ~4 samples a layer so far; jumps are flagged from a series' ~30th "
        "sample (the loss's from step ~300)")


def test_the_sampling_field_is_on_the_first_line_and_fits_120_columns():
    """After the figures on the second line it was cut off at 120 columns, on a default run
    where it explains the N/A cells and the refresh; the first line has room, and the option's
    hint is left out where only the rest fits."""
    s = _state()
    s.name, s.host, s.pid, s.device = "train_gpt.py", "node-17", 70000, "cuda:0"
    _stats(s, overhead=0.004, loss=0.5, steps_per_s=20.0, sampling={
        "interval": 70, "every": 10, "budget": 0.01, "limit": "budget", "layer_interval": 220})
    top, second = [line.rstrip() for line in header_text(
        s, "live", endpoint="tcp://h:1", width=120).plain.split("\n")]
    assert top.endswith("sampling every ~70 steps, each layer every ~220: 1 % budget"), top
    assert len(top) <= 120 and "sampling" not in second
    wide = header_text(s, "live", endpoint="tcp://h:1", width=200).plain.split("\n")[0].rstrip()
    assert wide.endswith(": 1 % budget; --budget to change"), wide


def test_pending_is_for_spectra_still_to_come_never_for_a_layer_that_cannot_get_them():
    """`…` says the full tier has not reached a matrix layer yet; a layer switched off
    (weights the agent cannot read: weight norm null), one whose weights hold NaN, or a
    gain vector (no META `rank`) reads N/A: nothing is coming for it."""
    s = RunState()

    def fold(kind: str, step: int, **payload) -> None:
        s.fold(protocol.decode(list(protocol.encode(
            kind, run="r", rank=0, restart=0, seq=step, time=0.0, step=step, payload=payload))))

    rows = [{"name": n, "type": "Linear", "shape": [8, 8], "params": 64,
             **({"rank": True} if n != "gain" else {})} for n in ("fresh", "off", "nan", "gain")]
    fold(protocol.META, 0, name="r", pid=1, host="h", command=["t.py"], started=1.0, every=1,
         indicators=list(protocol.INDICATORS), layers=rows)
    fold(protocol.METRICS, 1, values={"fresh": {"weight_norm": 1.0}, "off": {"weight_norm": None},
                                      "nan": {"weight_norm": None}, "gain": {"weight_norm": 1.0}},
         nonfinite=["nan"])
    layers = s.layers
    assert pending(layers["fresh"], "modes") and pending(layers["fresh"], "effective_rank")
    assert not pending(layers["fresh"], "weight_norm")  # measured every sample: never pending
    assert not any(pending(layers[n], "modes") for n in ("off", "nan", "gain"))
