"""benchmarks/event_corpus: the scorer's matching on hand-made event lists, and one short real
corpus run (a real training loop with the agent recording its own stream) scored end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from event_corpus import RUNS
from event_corpus.common import Event, RunResult, Truth, crossing_truth
from event_corpus.scoring import Score, matches, score, score_run


def ev(onset: int, *layers: str | None, detected: int | None = None,
       exogenous: str | None = None) -> Event:
    return Event(onset=onset, detected=onset + 4 if detected is None else detected,
                 layers=layers or ("fc1",), exogenous=exogenous, message=f"event at {onset}")


def test_precision_recall_and_delay_on_a_hand_made_list() -> None:
    truths = [Truth(step=100, label="a", lo=90, hi=110), Truth(step=300, label="b")]
    events = [ev(95, detected=104), ev(200), ev(305, detected=312)]
    s = score(truths, events, tol=10, steps=1000)
    assert (s.events, s.matched_events, s.truths, s.detected) == (3, 2, 2, 2)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == 1.0
    assert s.delays == [4, 12]  # detection step − truth step
    assert s.onset_errors == [-5, 5]
    assert s.median_delay == 8
    assert s.false_alarms == ["200: event at 200"]
    assert s.false_per_1000 == pytest.approx(1.0)


def test_window_edges_are_inclusive_and_one_step_beyond_is_not() -> None:
    truth = Truth(step=50, label="t", lo=40, hi=60)
    assert matches(ev(30), truth, tol=10) and matches(ev(70), truth, tol=10)
    assert not matches(ev(29), truth, tol=10) and not matches(ev(71), truth, tol=10)
    # no extent: the step itself ± tol
    point = Truth(step=50, label="p")
    assert matches(ev(45), point, tol=5) and not matches(ev(56), point, tol=5)


def test_layers_must_fit_and_the_loss_counts_only_where_the_transition_shows_in_it() -> None:
    named = Truth(step=10, label="t", layers=("fc1", "fc2"))
    hidden = Truth(step=10, label="t", layers=("fc1",), in_loss=False)
    assert matches(ev(10, "fc2"), named, 0)
    assert not matches(ev(10, "fc3"), named, 0)
    assert matches(ev(10, "fc3", "fc1"), named, 0)  # one of the grouped jumps is enough
    assert matches(ev(10, None), named, 0)  # the loss
    assert not matches(ev(10, None), hidden, 0)
    assert matches(ev(10, "anything"), Truth(step=10, label="any"), 0)


def test_one_event_detects_one_truth_even_where_windows_overlap() -> None:
    truths = [Truth(step=100, label="a", lo=60, hi=140), Truth(step=120, label="b", lo=80, hi=160)]
    s = score(truths, [ev(118)], tol=0)
    assert (s.matched_events, s.detected, s.missed) == (1, 1, ["100: a"])
    assert s.delays == [2]  # assigned to b (nearest step), detected at 122
    s = score(truths, [ev(90), ev(118)], tol=0)
    assert (s.detected, s.duplicates) == (2, 0)


def test_duplicates_on_one_truth_count_as_matched_and_are_reported() -> None:
    s = score([Truth(step=100, label="a")], [ev(96, detected=110), ev(100, detected=103),
                                             ev(104)], tol=5)
    assert (s.precision, s.recall, s.duplicates) == (1.0, 1.0, 2)
    assert s.delays == [3]  # the earliest detection among the truth's events


def test_empty_cases() -> None:
    nothing = score([], [], tol=5, steps=500)
    assert (nothing.precision, nothing.recall, nothing.median_delay) == (None, None, None)
    assert nothing.false_per_1000 == 0.0
    quiet = score([], [ev(10), ev(20)], tol=5, steps=1000)
    assert (quiet.precision, quiet.recall, quiet.false_per_1000) == (0.0, None, 2.0)
    missed = score([Truth(step=10, label="a")], [], tol=5)
    assert (missed.precision, missed.recall, missed.missed) == (None, 0.0, ["10: a"])


def test_totals_add_up_over_runs() -> None:
    total = Score()
    total.add(score([Truth(step=10, label="a")], [ev(10)], tol=2, steps=100))
    total.add(score([Truth(step=10, label="a")], [ev(50)], tol=2, steps=100))
    assert (total.events, total.matched_events, total.truths, total.detected) == (2, 1, 2, 1)
    assert (total.precision, total.recall, total.steps) == (0.5, 0.5, 200)


def test_crossing_truth_takes_midpoint_and_extent_of_a_falling_series() -> None:
    series = [(s, 10.0 - s) for s in range(11)]  # 10 → 0
    t = crossing_truth(series, 10.0, 0.0, "fall")
    assert t is not None and (t.step, t.start, t.end) == (5, 1, 9)
    assert crossing_truth([(0, 0.0), (1, 0.2)], 0.0, 1.0, "never half way") is None


def test_results_survive_the_json_round_trip_the_subprocesses_use() -> None:
    r = RunResult("x", 100, 2, 5, [Truth(step=3, label="a", layers=("l",))],
                  [ev(4, "l", None)], notices=1, seconds=0.5, facts={"k": [1, 2]})
    back = RunResult.from_json(r.to_json())
    assert back == r
    assert score_run(back).recall == 1.0


def _scorer():  # benchmarks/event_corpus.py: its name is the package's, so load it by path
    spec = importlib.util.spec_from_file_location("event_corpus_scorer",
                                                  BENCHMARKS / "event_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_doc_table_carries_each_runs_scores_and_its_truth(tmp_path: Path) -> None:
    scorer = _scorer()
    runs = [RunResult("saxe_staircase", 450, 2, 10, [Truth(step=45, label="mode 1 learned"),
                                                      Truth(step=80, label="mode 2 learned")],
                      [ev(44), ev(300)], seconds=3.0, samples=225),
            RunResult("quiet", 1000, 5, 25, [], [ev(10)], seconds=9.0)]
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    scorer.write_section(doc, scorer.SECTION, scorer.markdown(runs, "CMD"))
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and "```bash\nCMD\n```" in text
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and " | " in line}
    assert rows["saxe_staircase"][1:9] == ["450 (2)", "225", "2", "2", "1", "0", "50 %",
                                           "50 %"]
    assert rows["quiet"][2] == "" and rows["quiet"][7:9] == ["0 %", "–"]  # samples unknown
    assert rows["**all**"][3:9] == ["2", "3", "1", "0", "33 %", "50 %"]
    assert "Missed: 80: mode 2 learned" in text
    assert "*Truth:*" in text and "saxe_staircase" in text
    # --defaults: its own section beside this one, the same rows, the misses in one line
    scorer.write_section(doc, scorer.SECTION + "-defaults",
                         scorer.markdown_defaults(runs, "CMD --defaults"))
    text = doc.read_text()
    assert "<!-- event-corpus:begin -->" in text and "<!-- event-corpus-defaults:begin -->" in text
    defaults = text.split("<!-- event-corpus-defaults:begin -->")[1]
    assert "### The same runs at the agent's defaults" in defaults
    assert "| saxe_staircase | 450 (2) | 225 | 2 | 2 | 1 | 0 | 50 % | 50 % |" in defaults
    assert "Missed: saxe_staircase: 80: mode 2 learned." in defaults


def test_a_short_real_staircase_run_is_scored_end_to_end() -> None:
    # The fastest script, cut to its first three modes (s = 8, 4, 2 are learned by step ~190),
    # through the scorer's own path: a subprocess trains with the agent inside, reads the
    # events back from the agent's own recording and hands the result over as JSON.
    assert "saxe_staircase" in RUNS
    result = _scorer().run_in_subprocess("saxe_staircase", 220, 0, timeout=100)
    labels = [t.label for t in result.truths]
    assert labels == ["mode 1 (s=8) learned", "mode 2 (s=4) learned", "mode 3 (s=2) learned"]
    steps = [t.step for t in result.truths]
    assert steps == sorted(steps) and steps[0] > 20  # a staircase: plateaus, in order
    assert result.events, "the agent published no transition on a staircase"
    assert result.samples == 1 + 110, result.samples  # step 1, then every 2nd: read back
    assert all(e.layers for e in result.events)
    s = score_run(result)
    assert s.truths == 3 and s.events == len(result.events)
    assert s.precision is not None and s.recall is not None
    # At least one step of the staircase is found (the first may fall inside the detector's
    # warm-up; how many more is what the corpus measures, not this test).
    assert s.detected >= 1, (s.missed, s.false_alarms)
    assert 0 < s.matched_events <= s.events
