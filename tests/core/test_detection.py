"""Online transition detection: analytic and seeded synthetic cases (no timing assertions)."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symwatch.core import protocol
from symwatch.core.detection import (
    KIND_ORDER,
    LOSS_KEY,
    Jump,
    JumpDetector,
    Mover,
    Transition,
    TransitionDetector,
    calibrated_threshold,
    decay_raised,
    default_transform,
    effect,
    family,
    fmt_relative,
    fmt_value,
    holds,
    kind_of,
    mad_sorted,
    median_sorted,
    to_event_payload,
)
from symwatch.core.jumps import SpikeDetector, kth_deviation

ROOT = Path(__file__).resolve().parents[2]


def feed(det: JumpDetector, values: list[float | None], start: int = 0) -> list[Jump]:
    jumps = []
    for i, v in enumerate(values):
        j = det.update(start + i, v)
        if j is not None:
            jumps.append(j)
    return jumps


def noisy(n: int, rng: random.Random, sigma: float = 1.0) -> list[float]:
    return [rng.gauss(0.0, sigma) for _ in range(n)]


# -- robust statistics -------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(-3, 3).map(float),
                          st.floats(-1e3, 1e3, allow_nan=False)), min_size=1, max_size=40))
def test_median_and_mad_match_statistics(values: list[float]) -> None:
    a = sorted(values)
    med = statistics.median(a)
    assert median_sorted(a) == pytest.approx(med)
    assert mad_sorted(a) == pytest.approx(statistics.median([abs(x - med) for x in a]), abs=1e-9)
    devs = sorted(abs(x - med) for x in a)
    for k in range(len(a)):
        assert kth_deviation(a, med, k) == pytest.approx(devs[k], abs=1e-9)


# -- one series --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [8.0, -8.0])
def test_clean_step_is_found_quickly_with_before_and_after(size: float) -> None:
    rng = random.Random(1)
    values = [10 + x + (size if i >= 300 else 0.0) for i, x in enumerate(noisy(500, rng, 0.5))]
    jumps = feed(JumpDetector(), values)
    assert len(jumps) == 1
    j = jumps[0]
    assert 300 <= j.step <= 305
    assert abs(j.onset - 300) <= 2
    assert j.direction == ("up" if size > 0 else "down")
    assert j.before == pytest.approx(10, abs=1.0)
    assert j.after == pytest.approx(10 + size, abs=1.0)
    assert j.score >= JumpDetector().threshold


def test_noise_free_step_reports_exact_levels_and_onset() -> None:
    jumps = feed(JumpDetector(), [5.0] * 200 + [1.0] * 200)
    assert len(jumps) == 1
    assert (jumps[0].before, jumps[0].after, jumps[0].onset) == (5.0, 1.0, 200)
    assert jumps[0].direction == "down"


def test_single_and_double_sample_spikes_never_fire() -> None:
    rng = random.Random(2)
    values = noisy(2000, rng, 0.3)
    for t in range(100, 1900, 97):
        values[t] += 50.0  # one-sample spike
    for t in range(150, 1900, 211):
        values[t] -= 40.0
        values[t + 1] -= 40.0  # two-sample spike: a median of 5 still ignores it
    assert feed(JumpDetector(), values) == []


def test_smooth_exponential_decay_never_fires() -> None:
    rng = random.Random(3)
    clean = [2.0 * math.exp(-i / 150) + 0.05 for i in range(3000)]
    assert feed(JumpDetector(transform="log"), clean) == []
    noisy_loss = [v * math.exp(rng.gauss(0, 0.02)) for v in clean]
    assert feed(JumpDetector(transform="log"), noisy_loss) == []


def test_constant_integer_series_with_one_step_fires_exactly_once() -> None:
    jumps = feed(JumpDetector(), [2] * 120 + [3] * 400)
    assert len(jumps) == 1
    j = jumps[0]
    assert (j.before, j.after, j.direction, j.onset) == (2, 3, "up", 120)
    assert 120 <= j.step <= 125


def test_rank_staircase_up_and_down() -> None:
    ranks = [1] * 150 + [2] * 100 + [3] * 100 + [2] * 100
    jumps = feed(JumpDetector(), ranks)
    assert [(j.before, j.after) for j in jumps] == [(1, 2), (2, 3), (3, 2)]
    assert [j.onset for j in jumps] == [150, 250, 350]


def test_missing_values_are_skipped() -> None:
    det = JumpDetector()
    values: list = []
    for i in range(400):
        values.append(float(i >= 250) * 6 + 1)
        if i % 7 == 0:
            values.append(None)
        if i % 11 == 0:
            values.append(float("nan"))
        if i % 13 == 0:
            values.append(float("inf"))
    jumps = []
    for k, v in enumerate(values):
        j = det.update(k, v)
        if j:
            jumps.append(j)
    assert det.samples == 400
    assert det.skipped == len(values) - 400
    assert len(jumps) == 1 and (jumps[0].before, jumps[0].after) == (1, 7)
    assert det.update(10**6, "7") is None  # type: ignore[arg-type]
    assert det.update(10**6, True) is None


def test_log_transform_skips_non_positive_and_reports_relative_change() -> None:
    det = JumpDetector(transform="log")
    values = [1.0] * 100 + [0.0, -1.0] + [1.0] * 100 + [0.59] * 100
    jumps = feed(det, values)
    assert det.skipped == 2
    assert len(jumps) == 1
    assert jumps[0].change == pytest.approx(-0.41)


def test_a_step_held_for_a_long_time_fires_once() -> None:
    rng = random.Random(4)
    values = [x + (10.0 if i >= 200 else 0.0) for i, x in enumerate(noisy(5000, rng))]
    assert len(feed(JumpDetector(), values)) == 1


def test_warmup_suppresses_early_alarms() -> None:
    assert feed(JumpDetector(), [0.0] * 10 + [5.0] * 40) == []
    # a continuous (noisy) series gets the full warm-up: a change at sample 20 is too early
    rng = random.Random(3)
    values = [x + (5.0 if i >= 20 else 0.0) for i, x in enumerate(noisy(60, rng, 0.1))]
    assert feed(JumpDetector(), values) == []


def test_ramp_spread_over_samples_fires_once() -> None:
    rng = random.Random(5)
    values = [x + min(max(i - 300, 0), 8) * 1.5 for i, x in enumerate(noisy(700, rng, 0.5))]
    jumps = feed(JumpDetector(), values)
    assert len(jumps) == 1 and 300 <= jumps[0].step <= 320


def test_false_alarms_on_jump_free_noisy_curves_are_rare() -> None:
    """Seeded batch of trends with Gaussian, heavy-tailed and AR(1) noise; loose bound."""
    rng = random.Random(6)
    alarms = samples = 0
    for k in range(45):
        n, kind = 1500, k % 3
        x, values = 0.0, []
        for i in range(n):
            if kind == 0:
                e = rng.gauss(0, 1)
            elif kind == 1:  # Student-t with 3 degrees of freedom
                e = rng.gauss(0, 1) / math.sqrt(rng.gammavariate(1.5, 2.0) / 3)
            else:
                x = 0.8 * x + rng.gauss(0, 0.6)
                e = x
            values.append(0.002 * i + 2 * math.sin(i / 150) + e)
        alarms += len(feed(JumpDetector(), values))
        samples += n
    assert alarms <= 3, f"{alarms} false alarms in {samples} samples"


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        JumpDetector(transform="sqrt")
    with pytest.raises(ValueError):
        JumpDetector(scales=((5, 4),))


# -- calibration -------------------------------------------------------------------------------

def test_threshold_grows_with_the_number_of_series() -> None:
    ths = [calibrated_threshold(n) for n in (1, 10, 100, 1000, 10**6)]
    assert ths == sorted(ths)
    assert ths[0] >= 6.0 and ths[-1] <= 12.0
    det = TransitionDetector()
    det.update(0, {("l", f"m{k}"): 1.0 for k in range(1000)})
    assert det.threshold == calibrated_threshold(1000)
    assert all(d.threshold == det.threshold for d in det.series.values())
    assert TransitionDetector(threshold=9.0).threshold == 9.0


def test_default_transforms() -> None:
    assert default_transform("loss") == "log" and default_transform("weight_norm") == "log"
    assert default_transform("numerical_rank") == "identity"
    assert default_transform("dead_fraction") == "identity"


# -- many series -------------------------------------------------------------------------------

def run_detector(det: TransitionDetector, n: int, sample, flush: bool = True) -> list[Transition]:
    out: list[Transition] = []
    for i in range(n):
        out += det.update(10 * i, sample(i), time=1000.0 + i)
    return out + (det.flush() if flush else [])


def test_simultaneous_jumps_in_three_series_give_one_transition() -> None:
    rng = random.Random(7)

    def sample(i: int) -> dict:
        return {("fc1", "stable_rank"): 3 + rng.gauss(0, 0.05) + (2.0 if i >= 200 else 0.0),
                ("fc2", "numerical_rank"): 2 + (i >= 200),
                LOSS_KEY: 1.0 * math.exp(rng.gauss(0, 0.02)) * (0.59 if i >= 200 else 1.0),
                ("fc3", "weight_norm"): 1.0 * math.exp(rng.gauss(0, 0.01))}

    found = run_detector(TransitionDetector(), 400, sample)
    assert len(found) == 1
    t = found[0]
    assert {j.key for j in t.jumps} == {("fc1", "stable_rank"), ("fc2", "numerical_rank"), LOSS_KEY}
    assert t.top is t.jumps[0] and t.top.score == max(j.score for j in t.jumps)
    # the headline is the biggest mover (fc1's stable rank moved by 10 times its 5 % floor; the
    # rank by one unit); the loss is quoted in the same window, not as a cause
    assert t.message.startswith("a transition: fc1 stable rank"), t.message
    assert [m.key for m in t.movers][:2] == [("fc1", "stable_rank"), ("fc2", "numerical_rank")]
    assert "loss −41% in the same window" in t.message
    assert t.step == 2000 and t.time >= 1200.0 and t.exogenous is None
    assert "−41%" in t.message


def test_message_for_a_rank_step_quotes_the_loss_over_the_same_window() -> None:
    rng = random.Random(8)

    def sample(i: int) -> dict:
        return {("linear.0", "numerical_rank"): 2 + (i >= 66 + 100),
                LOSS_KEY: 0.5 * math.exp(rng.gauss(0, 0.3))}  # too noisy to jump itself

    found = run_detector(TransitionDetector(), 300, sample)
    assert len(found) == 1
    msg = found[0].message
    assert msg.startswith("a transition: linear.0 numerical rank 2 → 3 at step 1660; loss ")
    assert msg.endswith("% in the same window")


def test_exogenous_changes_are_labelled() -> None:
    def sample(i: int) -> dict:
        # at 300 a rank gained with the loss halving (a count alone is no event)
        return {LOSS_KEY: 1.0 if i < 150 else 0.3 if i < 300 else 0.15,
                ("fc1", "numerical_rank"): 4 + (i >= 300)}

    det = TransitionDetector()
    det.mark_exogenous(1500, "learning-rate drop")
    found = run_detector(det, 450, sample)
    assert [t.exogenous for t in found] == ["learning-rate drop", None]
    assert "[exogenous: learning-rate drop]" in found[0].message
    assert "a transition: fc1 numerical rank 4 → 5 at step 3000" == \
        found[1].message.split(";")[0]


def test_event_payload_follows_the_protocol() -> None:
    def sample(i: int) -> dict:
        # a rank gained with the loss falling (a count alone is no event); a NaN series
        return {("fc1", "numerical_rank"): 2 + (i >= 100), ("fc1", "weight_norm"): float("nan"),
                LOSS_KEY: 1.0 if i < 100 else 0.5}

    (t,) = run_detector(TransitionDetector(), 200, sample)
    payload = to_event_payload(t)
    top = payload["jumps"][0]
    assert {k: payload[k] for k in ("message", "severity", "layer", "metric", "direction",
                                    "before", "after", "score", "exogenous", "onset")} == {
        "message": t.message, "severity": "transition", "layer": top["layer"],
        "metric": top["metric"], "direction": top["direction"], "before": top["before"],
        "after": top["after"], "score": round(t.top.score, 3), "exogenous": None,
        "onset": t.step}
    assert {(j["layer"], j["metric"]) for j in payload["jumps"]} == {("fc1", "numerical_rank"),
                                                                     (None, "loss")}
    assert payload["headline"] == {"layer": "fc1", "metric": "numerical_rank"}
    frames = protocol.encode(protocol.EVENT, run="r", rank=0, restart=0, seq=0, time=1.0,
                             step=t.step, payload=payload)
    message = protocol.decode(list(frames))
    assert message.payload == payload
    assert json.dumps(payload, allow_nan=False)


def test_number_formatting() -> None:
    assert fmt_value(3.0) == "3" and fmt_value(2.5) == "2.5"
    assert fmt_value(0.125, "dead_fraction") == "12.5%"  # the table's unit
    assert fmt_value(0.015625, "relu_dead") == "1.6%"  # a fraction by another name
    assert fmt_relative(-0.41) == "−41%" and fmt_relative(0.032) == "+3.2%"
    # ten times and more as a factor: the demo's converged loss rising again read
    # '+85759023065 %'
    assert fmt_relative(8.9) == "+890%" and fmt_relative(11) == "×12"
    assert fmt_relative(150) == "×151" and fmt_relative(857590230.65) == "×8.6e+8"


def test_imports_with_the_standard_library_only() -> None:
    code = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"numpy", "torch", "zmq", "rich", "textual"}:
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        before = set(sys.modules)
        from symwatch.core.detection import TransitionDetector, to_event_payload
        det = TransitionDetector()
        out = []
        for i in range(200):
            out += det.update(i, {("fc1", "numerical_rank"): 2 + (i >= 100),
                                  (None, "loss"): 1.0 if i < 100 else 0.5})
        assert len(out) == 1, out
        to_event_payload(out[0])
        new = {m.split(".")[0] for m in set(sys.modules) - before}
        extra = new - set(sys.stdlib_module_names) - {"symwatch"}
        assert not extra, extra
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_still_series_is_watched_from_the_end_of_warmup() -> None:
    """A rank that sat still needs no long history: its first steps are found early."""
    jumps = feed(JumpDetector(), [2] * 40 + [3] * 25 + [4] * 100)
    assert [(j.before, j.after, j.onset) for j in jumps] == [(2, 3, 40), (3, 4, 65)]
    assert feed(JumpDetector(), [2] * 10 + [3] * 100) == []  # inside the warm-up: too early


def test_an_early_rank_staircase_is_found_step_by_step() -> None:
    """The demo's staircase: steps soon after the start and close together, each one found
    (earlier steps in the history must not mask the next; SCIENCE.md's rank growth)."""
    steps = [25, 72, 125, 214, 327]
    values = [sum(1 for s in steps if i >= s) for i in range(450)]
    jumps = feed(JumpDetector(), values)
    assert [(j.before, j.after, j.onset) for j in jumps] == [
        (k, k + 1, s) for k, s in enumerate(steps)]


def test_numpy_like_scalars_are_accepted() -> None:
    from fractions import Fraction  # a numbers.Real that is neither int nor float

    det = JumpDetector()
    assert det.update(0, Fraction(1, 2)) is None and det.samples == 1


def test_a_rank_fall_soon_after_another_is_its_own_jump() -> None:
    """Weight decay restores two modes 12 samples apart (the demo at steps 406 and 418): the
    second step must not be swallowed by the first one's blocking window."""
    moves = [(25, 1), (72, 1), (125, 1), (214, 1), (327, 1), (406, -1), (418, -1), (641, 1)]
    values = [sum(d for s, d in moves if i >= s) for i in range(800)]
    jumps = feed(JumpDetector(), values)
    assert [(j.onset, j.before, j.after) for j in jumps] == [
        (25, 0, 1), (72, 1, 2), (125, 2, 3), (214, 3, 4), (327, 4, 5), (406, 5, 4),
        (418, 4, 3), (641, 3, 4)]


def test_an_integer_series_drifting_one_unit_at_a_time_goes_quiet() -> None:
    """A wide layer's rank drifting down by one every 12-40 samples is a trend: it is not
    reported change by change (unlike a staircase), only now and then."""
    rng = random.Random(1)
    values, level, next_change = [], 41, 20
    for i in range(1200):
        if i == next_change:
            level -= 1
            next_change = i + rng.randint(12, 40)
        values.append(level)
    changes = sum(1 for a, b in itertools.pairwise(values) if a != b)
    jumps = feed(JumpDetector(), values)
    assert changes >= 40 and len(jumps) <= changes // 3


# -- effect-size floors, hysteresis, attribution, spikes ----------------------------------------



def _steady(level: float, noise: float, n: int, rng: random.Random) -> list[float]:
    return [level + rng.gauss(0, noise) for _ in range(n)]


@pytest.mark.parametrize("metric, before, after, width", [
    # the demo's noise events, each large against its noise but not in its own terms
    ("balance_norm", 1.3e-6, 1.1e-6, 16),
    ("balance", 1.865, 1.8649, 64),
    ("stable_rank", 17.53, 17.5, 64),
    ("participation_ratio", 12.99, 12.97, 64),
    ("stable_rank", 340.0, 339.0, 768),
    ("weight_norm", 55.0, 54.5, 4096),
])
def test_a_tiny_move_of_a_near_constant_series_is_no_event(metric, before, after, width):
    """Noise 100× smaller than the move: the jump statistic fires, the floor keeps it out."""
    rng = random.Random(width)
    noise = abs(after - before) / 100
    series = _steady(before, noise, 200, rng) + _steady(after, noise, 100, rng)
    det = TransitionDetector()
    found = run_detector(det, len(series), lambda i: {("fc", metric): series[i]})
    assert found == [] and det.suppressed >= 1, [t.message for t in found]
    assert effect(metric, before, after) < 1


@pytest.mark.parametrize("metric, before, after", [
    ("weight_norm", 4.12, 3.90),  # weight decay switched on: −5.3 % (the demo at step 401)
    ("stable_rank", 3.0, 3.6),  # +20 %
    ("balance_norm", 0.02, 0.4),
    ("modes", 3, 4),
])
def test_a_move_large_in_its_own_terms_is_an_event(metric, before, after):
    rng = random.Random(3)
    scale = abs(after - before) / 50
    noisy = family(metric) != "count"
    series = ([before + (rng.gauss(0, scale) if noisy else 0) for _ in range(200)]
              + [after + (rng.gauss(0, scale) if noisy else 0) for _ in range(100)])
    # a count is an event with the loss moving the way it says (a mode learned: −20 %); the
    # loss alone moves by less than its floor would need to be the headline
    loss = ({LOSS_KEY: 1.0 if i < 200 else 0.8} if not noisy else {} for i in range(300))
    values = [{("fc", metric): v, **extra} for v, extra in zip(series, loss)]
    found = run_detector(TransitionDetector(), len(series), lambda i: values[i])
    assert len(found) == 1 and found[0].step == 2000, [t.message for t in found]
    assert found[0].movers[0].key == ("fc", metric)


@pytest.mark.parametrize("units", [64, 768, 4096])
def test_one_relu_unit_flickering_is_no_event_but_units_dying_and_holding_is(units):
    """relu_dead of a layer of `units` units: one unit flickering 0 ↔ 1/units (the demo's
    `relu_dead 0 → 0.01562`) never fires; 10 % of the units dying and staying dead does."""
    rng = random.Random(units)
    flicker = [(1 / units if rng.random() < 0.3 else 0.0) for _ in range(400)]
    det = TransitionDetector()
    assert run_detector(det, 400, lambda i: {("fc", "relu_dead"): flicker[i]}) == []
    dying = [(1 / units if rng.random() < 0.3 else 0.0) + (0.1 if i >= 250 else 0.0)
             for i in range(400)]
    found = run_detector(TransitionDetector(), 400, lambda i: {("fc", "relu_dead"): dying[i]})
    assert [t.kind for t in found] == ["units died"], [t.message for t in found]


def test_a_count_step_that_does_not_hold_is_no_event():
    """Hysteresis: a count that steps up for 3 samples and comes back is no event (the jump
    statistic fires on it: its median of 5 moved); one that holds is."""
    series = [3] * 200 + [4, 4, 4, 3, 4, 3, 3] + [3] * 100
    det = TransitionDetector()
    assert run_detector(det, len(series), lambda i: {("fc", "modes"): series[i]}) == []
    assert holds([4, 4, 4], 3, 4) and not holds([4, 3, 4], 3, 4)


def test_the_headline_is_the_biggest_mover_and_the_loss_is_context():
    """A loss drop with, in the same window, a large move of one layer and a small one of
    another: the headline names the large mover, the loss is quoted 'in the same window'."""
    rng = random.Random(11)

    def sample(i: int) -> dict:
        after = i >= 200
        return {LOSS_KEY: math.exp(rng.gauss(0, 0.01)) * (0.5 if after else 1.0),
                ("enc.0", "stable_rank"): 5 + rng.gauss(0, 0.02) + (0.4 if after else 0),
                ("enc.3", "weight_norm"): 2 * math.exp(rng.gauss(0, 0.002)) * (1.6 if after else 1),
                ("dec", "weight_norm"): 3 * math.exp(rng.gauss(0, 0.01))}

    found = run_detector(TransitionDetector(), 320, sample)
    assert len(found) == 1
    t = found[0]
    assert [m.key[0] for m in t.movers][:2] == ["enc.3", "enc.0"]
    assert t.kind == "weights grew"
    assert t.message.startswith("weights grew: enc.3 weight norm")
    assert "loss −50% in the same window" in t.message and "dec" not in t.message
    payload = to_event_payload(t)
    assert payload["headline"] == {"layer": "enc.3", "metric": "weight_norm"}
    assert payload["what"] == "weights grew"
    assert payload["in_window"][0]["metric"] == "loss"


@pytest.mark.parametrize("metric, direction, decaying, kind", [
    ("modes", "up", False, "a mode learned"),
    ("modes", "down", True, "a mode lost to weight decay"),
    ("modes", "down", False, "a mode lost"),
    ("relu_dead", "up", False, "units died"),
    ("duplicate_fraction", "up", False, "units merged"),
    ("distinct_units", "down", False, "units merged"),
    ("qk_sigma1.h3", "up", False, "a head formed"),
])
def test_kinds_in_the_papers_words(metric, direction, decaying, kind):
    before, after = (1.0, 2.0) if direction == "up" else (2.0, 1.0)
    mover = Mover(("fc", metric), before, after, 5.0, 20.0, 2.0)
    assert kind_of((), (mover,), None, decaying) == (kind, mover)


def _spiky(n: int, spikes: dict[int, float], rng: random.Random, noise: float = 0.1,
           ) -> list[float]:
    return [math.exp(rng.gauss(0, noise)) * (1 + 3 / (1 + i / 50)) * spikes.get(i, 1.0)
            for i in range(n)]


def test_spike_rule_finds_a_spike_that_comes_back_and_nothing_in_noise():
    rng = random.Random(5)
    calm = _spiky(2000, {}, rng)
    det = SpikeDetector("loss")
    assert [det.update(i, v) for i, v in enumerate(calm)].count(None) == len(calm)
    spiky = _spiky(600, {300: 4.0, 301: 6.0, 302: 3.0}, rng)
    det = SpikeDetector("loss")
    found = [s for i, v in enumerate(spiky) if (s := det.update(i, v)) is not None]
    assert [(s.kind, s.step) for s in found] == [("spike", 300)]
    assert found[0].peak > 5 * found[0].baseline / 1.5


def test_a_lasting_level_change_is_not_a_spike_and_a_nan_is_divergence():
    rng = random.Random(6)
    level = [math.exp(rng.gauss(0, 0.05)) * (3.0 if i >= 200 else 1.0) for i in range(400)]
    det = SpikeDetector("loss")
    assert all(det.update(i, v) is None for i, v in enumerate(level))
    det = SpikeDetector("loss")
    values = [math.exp(rng.gauss(0, 0.05)) for _ in range(100)] + [math.nan] * 5
    found = [s for i, v in enumerate(values) if (s := det.update(i, v)) is not None]
    assert [(s.kind, s.step) for s in found] == [("divergence", 100)]


def test_a_converged_losss_numerical_noise_is_no_event_but_a_real_drop_is() -> None:
    """A loss that fell from 44 to ~1e-10 moves by tens of percent between samples (the demo:
    `linear_loss 2.7e-10 → 1.8e-10`): under LOSS_RESOLUTION of its largest value it is noise.
    The same relative drop at the loss's own scale is a transition."""
    rng = random.Random(3)

    def converged(i: int) -> dict:
        level = 44.0 if i < 20 else 2e-10 * (0.6 if i >= 200 else 1.0)
        return {(None, "linear_loss"): level * math.exp(rng.gauss(0, 0.02))}

    found = run_detector(TransitionDetector(), 400, converged)
    assert not [t for t in found if t.step > 1000], [t.message for t in found]  # after the fall

    def live(i: int) -> dict:
        return {(None, "linear_loss"): 2.0 * (0.6 if i >= 200 else 1.0) * math.exp(rng.gauss(0, 0.02))}

    found = run_detector(TransitionDetector(), 400, live)
    assert [t.step for t in found] == [2000], [t.message for t in found]


@pytest.mark.parametrize("metric, factor, kind", [
    ("max_logit.h1", 4.0, "attention logits grew"),
    ("max_logit", 0.25, "attention logits cooled"),
    ("update_ratio", 5.0, "updates grew against the weights")])
def test_stability_signals_are_named_for_what_they_are(metric, factor, kind):
    """A head's max attention logit growing ×4 (the early warning before an attention-entropy
    collapse) and a layer's update/weight ratio jumping are said in words, not as
    'a transition'."""
    rng = random.Random(5)

    def sample(i: int) -> dict:
        after = i >= 200
        return {LOSS_KEY: math.exp(rng.gauss(0, 0.01)),
                ("tf.attn.1", metric): 10 * math.exp(rng.gauss(0, 0.01)) * (factor if after
                                                                           else 1.0)}

    found = run_detector(TransitionDetector(), 320, sample)
    assert found, "the jump was not detected"
    assert found[0].kind == kind
    assert found[0].message.startswith(f"{kind}: tf.attn.1")


@pytest.mark.parametrize("metric, before, after, kind", [
    ("modes", 2, 5, "a mode learned"),
    ("modes", 5, 2, "a mode lost"),
    ("dead_fraction", 0.1, 0.5, "units died"),
    ("dead_fraction", 0.5, 0.1, "units revived"),
    ("duplicate_fraction", 0.1, 0.5, "units merged"),
    ("duplicate_fraction", 0.5, 0.1, "units separated"),
    ("dead_heads", 0.1, 0.5, "heads died"),
    ("dead_heads", 0.5, 0.1, "heads revived"),
    ("qk_sigma1.h2", 1.0, 3.0, "a head formed"),
    ("vo_sigma1.h0", 3.0, 1.0, "a head faded"),
    ("weight_norm", 2.0, 4.0, "weights grew"),
    ("weight_norm", 4.0, 2.0, "weights shrank")])
def test_each_kind_of_layer_event_is_said_in_its_own_words(metric, before, after, kind):
    """Every kind the detector names (KIND_ORDER), from a real detector fed a lasting step in
    the one series that tells it: the headline names that layer and series. A count moves with
    the loss (a count alone is no event), the way the count says: down for a mode learned."""
    rng = random.Random(3)
    count = family(metric) == "count"
    learned = after > before

    def sample(i: int) -> dict:
        level = after if i >= 200 else before
        series = {("blk.1", metric): level + (0 if count else rng.gauss(0, 0.003)),
                  LOSS_KEY: math.exp(rng.gauss(0, 0.01))}
        if count and i >= 200:
            series[LOSS_KEY] *= 0.5 if learned else 2.0
        return series

    found = run_detector(TransitionDetector(), 320, sample)
    assert found, f"no event for {metric} {before} → {after}"
    assert found[0].kind == kind, found[0].message
    assert kind in KIND_ORDER
    payload = to_event_payload(found[0])
    assert payload["headline"] == {"layer": "blk.1", "metric": metric}
    assert payload["what"] == kind


@pytest.mark.parametrize("ramp", [1, 15])
@pytest.mark.parametrize("fading", [True, False])
def test_modes_fading_after_weight_decay_is_its_own_event(ramp: int, fading: bool) -> None:
    """Weight decay switched on: the norms fall at once (the switch's own event, exogenous);
    a layer whose effective rank falls with them (at once, or over 15 samples) is losing its
    weak modes, restoration under way: a second event, `modes fading under weight decay`,
    headed by that series. A uniform shrink (the effective rank stays) gives no second one."""
    rng = random.Random(11)
    det = TransitionDetector()
    det.mark_exogenous(2000, "optimizer weight_decay 0 → 1.5")

    def sample(i: int) -> dict:
        if i == 200:
            det.weight_decay = 1.5
        after = min(1.0, max(0.0, (i - 199) / ramp))
        erank = 4.0 - (0.9 * after if fading else 0.0)
        return {("lin.0", "weight_norm"): 3.0 * (0.8 if i >= 200 else 1.0)
                * math.exp(rng.gauss(0, 0.002)),
                ("lin.0", "effective_rank"): erank + rng.gauss(0, 0.003),
                LOSS_KEY: 0.01 * (20.0 if i >= 200 else 1.0) * math.exp(rng.gauss(0, 0.01))}

    found = run_detector(det, 320, sample)
    kinds = [t.kind for t in found]
    assert kinds[0] == "weights shrank under weight decay", [t.message for t in found]
    assert found[0].exogenous
    fade = [t for t in found if t.kind == "modes fading under weight decay"]
    if not fading:
        assert not fade, [t.message for t in found]
        return
    assert len(fade) == 1, [t.message for t in found]
    assert fade[0].step >= 1990
    assert to_event_payload(fade[0])["headline"] == {"layer": "lin.0",
                                                     "metric": "effective_rank"}
    assert fade[0].message.startswith("modes fading under weight decay: lin.0 effective rank")


@pytest.mark.parametrize("mark, raised", [
    ("optimizer weight_decay 0 → 1.5", True),
    ("optimizer weight_decay 0.01 → 0.1", True),
    ("optimizer lr 0.1 → 0.01, weight_decay 0 → 1e-04", True),
    ("optimizer weight_decay 1.5 → 0", False),
    ("optimizer weight_decay 0.1 → 0.01, lr 0.01 → 0.1", False),
    ("optimizer weight_decay 0 → 0.1; optimizer lr 0.1 → 0.01", True),  # marks joined by "; "
    ("optimizer lr 0.1 → 0.01", False),
    ("resumed from a checkpoint", False),
    (None, False),
])
def test_only_weight_decay_coming_on_counts_as_weight_decay_at_work(mark, raised):
    assert decay_raised(mark) is raised


def test_weight_decay_switched_off_explains_no_shrinking_as_weight_decay() -> None:
    """The same fall as above right after weight decay was switched *off* (the demo does it
    every cycle): the mark explains the event, but neither `weights shrank under weight
    decay` nor `modes fading under weight decay` (before: any mark naming weight_decay)."""
    rng = random.Random(11)
    det = TransitionDetector()
    det.weight_decay = 1.5
    det.mark_exogenous(2000, "optimizer weight_decay 1.5 → 0")

    def sample(i: int) -> dict:
        if i == 200:
            det.weight_decay = 0.0
        after = 1.0 if i >= 200 else 0.0
        return {("lin.0", "weight_norm"): 3.0 * (0.8 if i >= 200 else 1.0)
                * math.exp(rng.gauss(0, 0.002)),
                ("lin.0", "effective_rank"): 4.0 - 0.9 * after + rng.gauss(0, 0.003),
                LOSS_KEY: 0.01 * (20.0 if i >= 200 else 1.0) * math.exp(rng.gauss(0, 0.01))}

    found = run_detector(det, 320, sample)
    assert found and found[0].exogenous, [t.message for t in found]
    kinds = [t.kind for t in found]
    assert "weights shrank" in kinds, kinds
    assert not any("under weight decay" in k for k in kinds), kinds


def test_a_shape_falling_while_weight_decay_is_merely_on_is_not_called_fading() -> None:
    """AdamW's default weight decay (0.01) is on from the start: a stable rank falling as the
    loss falls (σ₁ growing: a mode being learned) is not `modes fading under weight decay`;
    that kind is for a fall an optimizer change to weight decay explains."""
    rng = random.Random(12)
    det = TransitionDetector()
    det.weight_decay = 0.01

    def sample(i: int) -> dict:
        after = i >= 200
        return {("lin.0", "stable_rank"): (2.0 if after else 3.0) + rng.gauss(0, 0.003),
                LOSS_KEY: (0.4 if after else 1.0) * math.exp(rng.gauss(0, 0.01))}

    found = run_detector(det, 320, sample)
    assert found, "the fall was not detected"
    assert all(t.kind != "modes fading under weight decay" for t in found), \
        [t.message for t in found]


@pytest.mark.parametrize("before, said", [
    ([2.0, 1.8], "divergence: loss 1.897 → a non-finite value at step 30"),
    ([], "divergence: loss non-finite at step 10"),  # non-finite from its first sample on
])
def test_a_non_finite_loss_is_divergence_at_once_even_before_the_warm_up(before, said):
    """A NaN loss needs no noise model: reported at the first non-finite sample, once, also
    within the spike rule's 20-sample warm-up (before: never, while the baseline was short: a
    run blowing up in its first samples, as one at a 1 % budget can for thousands of steps,
    raised no alert). Its payload is valid on the wire."""
    det = TransitionDetector()
    found = []
    for i, v in enumerate([*before, math.nan, math.inf, math.nan]):
        found += det.update(10 * (i + 1), {LOSS_KEY: v})
    assert [t.kind for t in found] == ["divergence"], [t.message for t in found]
    assert found[0].step == 10 * (len(before) + 1)
    assert found[0].message.startswith(said), found[0].message
    payload = to_event_payload(found[0])
    protocol.decode(list(protocol.encode(protocol.EVENT, run="r", rank=0, restart=0, seq=0,
                                         time=0.0, step=found[0].step, payload=payload)))
