"""Online transition detection over a run's series (standard library only).

Shared by the agent (inside a training process: torch and pyzmq only) and by observers (no
numpy, no torch). Accuracy, false-alarm rate, calibration and cost are measured in
docs/benchmarks.md ("Detection"); `benchmarks/detection.py` reproduces them.

- `JumpDetector` (from `symwatch.core.jumps`): one series, the multi-scale robust jump statistic;
  its module docstring has the formulas.
- `TransitionDetector`: many series keyed by (layer, metric), layer None for run-level series
  such as the loss. Each series gets its own JumpDetector on first sight (log transform for
  the loss and norms, identity for fractions and ranks). Jumps that fire within
  `group_samples` samples form one `Transition`, ranked by score, with a sentence a person can
  read. Transitions that coincide with a registered exogenous change (`mark_exogenous`: a
  learning-rate boundary, the end of warm-up, a resume) carry `exogenous=reason`.
- `to_event_payload`: the payload of a protocol EVENT message for a transition.

What becomes an event (docs/alerts.md, *What an event says*): a jump large in its indicator's
own terms (effect-size floors); a count only when something continuous confirms it
(`_corroborated`); per-head counts never as the trigger; a loss falling off a plateau also
from `jumps.DropDetector`; one lasting change once (REFRACTORY_SAMPLES).

Sensitivity is one number, the per-series |z| threshold. By default it follows the number of
series N seen so far, theta(N) = `calibrated_threshold(N)`, so that the whole run stays within
`RUN_BUDGET` false transitions per sample (one per 10,000 samples), whatever N is.

Usage::

    det = TransitionDetector()
    det.mark_exogenous(1000, "learning-rate drop")
    for step, sample, loss in run:
        for t in det.update_metrics(step, sample, loss=loss):
            publish(to_event_payload(t))
"""

from __future__ import annotations

import math
import re
import time as _time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from symwatch.core.jumps import (
    DEFAULT_SCALES,
    RUN_BUDGET,
    DropDetector,
    Jump,
    JumpDetector,
    Spike,
    SpikeDetector,
    calibrated_threshold,
    default_transform,
    mad_sorted,
    median_sorted,
)
from symwatch.core.names import display
from symwatch.core.units import is_fraction, percent

SeriesKey = Hashable  # (layer, metric) for TransitionDetector.update_metrics; any key works
LOSS_KEY: tuple[None, str] = (None, "loss")

# Indicators not followed by default. Δ_G and `broken` are functions of the other indicators: a
# jump in them is already a jump in their source (and would outrank it in the message).
# `numerical_rank` counts singular values above float32's resolution of σ₁: under weight decay
# directions at that resolution come and go, so its steps are the arithmetic's, not the
# training's; `modes` counts what was learned.
# `mirror_rank` is the same kind of count (its threshold is numerical_rank's, on the mirror
# spectrum): integer events come from `modes`-type counts only.
NOT_DETECTED = frozenset({"broken", "numerical_rank", "mirror_rank"})


def detected(metric: str) -> bool:
    """Whether a change of this indicator can be a transition (see NOT_DETECTED)."""
    return metric not in NOT_DETECTED and not metric.startswith("delta_")


# ---------------------------------------------------------------------------------------------
# Effect-size floors. A jump is an event only if it is large in the indicator's own terms, not
# only against its noise: a near-constant series has a tiny noise, so a tiny move scores high
# (the demo's `balance_norm 1.3e-6 → 1.1e-6`, `stable_rank 17.53 → 17.5`). Each family has a
# floor; `effect` is the change in multiples of it (an event needs >= 1).

LOSS_FLOOR = 0.05  # a loss (any logged scalar named *loss*) must move by 5 %
LOSS_RESOLUTION = 1e-4  # and by 1e-4 of its largest value so far (a converged loss's noise)
NORM_FLOOR = 0.03  # weight norms, effective_lr: 3 % (weight decay switched on: -5 % in 2 samples)
RELATIVE_FLOOR = 0.05  # continuous indicators (stable rank, participation ratio, ...): 5 %
BALANCE_NORM_FLOOR = 0.05  # balance_norm lives in [-1, 1]: 0.05 absolute
BALANCE_FLOOR = 0.05  # balance: 5 % of the layer's ‖W‖² (its natural scale), or of itself
# A fraction of units: two units (2/units; one unit is what a fraction measured on a sampled
# batch flickers by, and a one-unit flicker holds 3 samples in a row every few hundred
# samples) and >= 1 percentage point.
FRACTION_FLOOR = 0.01
FRACTION_UNITS = 2
HOLD_SAMPLES = 3  # a count or fraction must hold its new level on the last 3 samples
# A count that moved with nothing else is not a transition: the bulk-edge count of a wide
# random-ish layer drifts by one now and then (measured on the event corpus: `modes 27 → 26`
# of a converged MLP, `net.2 modes` +1 every ~70 steps through neural collapse, a small-init
# layer's modes leaving its tiny random bulk while their strength is ~1e-5 of its final
# value). A count change is an event when something continuous says the change is real in
# the same window (`TransitionDetector._corroborated`): a loss that speaks for the layer moving
# by COUNT_LOSS_FLOOR the way the count says, by RESTORATION_LOSS_FLOOR for a mode lost while
# weight decay is on (the loss is then dominated by the strong modes' shrinkage), or a
# continuous series of the same layer moving by twice its floor. Measured on the corpus
# (docs/benchmarks.md, "Events on real training runs"): the modes learned there moved their
# loss by 11-87 %, the drifting counts by under 3 % or the wrong way.
COUNT_LOSS_FLOOR = 0.1
RESTORATION_LOSS_FLOOR = 0.02
# Per-head counts (a head's QK/OV rank or modes) are movers, never the trigger: they flicker
# one direction at a time in a head of 16; a head forming shows in its continuous σ₁ series.
HEAD_COUNT_PREFIXES = ("qk_rank", "vo_rank", "qk_modes", "vo_modes")
# A head's σ₁ (QK or OV product) must move by 50 % for a head to have formed or faded.
HEAD_SIGMA_FLOOR = 0.5
# One lasting change is one event: after a transition, a jump of one of its series (or of
# its movers) in the same direction within REFRACTORY_SAMPLES samples is the same change
# going on (weight decay shrinking a layer over 40 samples), absorbed, and the refractory
# period runs on from it while it lasts.
REFRACTORY_SAMPLES = 12
# The spectrum's shape (how the weight's energy is spread over its modes) is not absorbed by
# an optimizer change's refractory period: weight decay switched on shrinks every singular
# value by the same factor at first (the norms fall, the shape stays), and what follows, the
# weak modes pushed back to the symmetric state faster than the strong ones shrink, is the
# restoration itself, its own event (wd_restoration and the demo in docs/benchmarks.md,
# "Events on real training runs": the effective rank falls 3.9 → 3.0 in the 40 steps after
# the switch, ~60 steps before the `modes` count drops).
SHAPE_METRICS = frozenset({"effective_rank", "participation_ratio", "stable_rank"})
# Rates of change of the weights, not their state: never named as where a loss's fall
# happened when the movers are measured in their own terms only (TransitionDetector._movers).
RATE_METRICS = frozenset({"update_ratio", "angular_update", "effective_lr"})
# Scalars passed to `agent.log` that are settings, not measurements of the training: never
# detected on (their changes are marked as exogenous instead, from the optimizer).
SETTING_SCALARS = frozenset({"lr", "learning_rate", "weight_decay", "wd", "momentum", "epoch",
                             "step", "global_step", "batch_size", "beta1", "beta2", "warmup"})


def family(metric: str) -> str:
    """The floor family of an indicator or a logged scalar."""
    name = metric.lower()
    if "loss" in name:
        return "loss"
    if name == "balance_norm":
        return "balance_norm"
    if name == "balance":
        return "balance"
    if is_fraction(name):
        return "fraction"
    if name in ("modes", "distinct_units", "mirror_rank", "numerical_rank") or \
            name.startswith(("qk_rank.h", "vo_rank.h", "qk_modes.h", "vo_modes.h")):
        return "count"
    if name.endswith("norm") or name == "effective_lr":
        return "norm"
    if name.startswith(("qk_sigma1.h", "vo_sigma1.h")):
        return "head_sigma"
    return "relative"


def head_count(metric: str) -> bool:
    """A per-head (or per-module head summary) count: a mover, never an event's trigger."""
    return metric.startswith(HEAD_COUNT_PREFIXES)


def _relative(before: float, after: float, floor: float) -> float:
    if before > 0 and after > 0:
        return abs(math.log(after / before)) / math.log1p(floor)
    return abs(after - before) / (floor * max(abs(before), abs(after), 1e-300))


def effect(metric: str, before: float, after: float, *, quantum: float = math.inf,
           scale: float | None = None) -> float:
    """The change before → after in multiples of its family's floor (>= 1: an event).
    `quantum`: the series' smallest step (a fraction's 1/units); `scale`: the layer's ‖W‖² for
    `balance`, a loss's largest value so far for a loss (a move under LOSS_RESOLUTION of it is
    numerical noise whatever its relative size: the demo's converged `linear_loss` went
    2.7e-10 → 1.8e-10, −33%)."""
    if not (math.isfinite(before) and math.isfinite(after)):
        return math.inf if math.isfinite(before) != math.isfinite(after) else 0.0
    fam = family(metric)
    if fam == "loss":
        rel = _relative(before, after, LOSS_FLOOR)
        if scale:
            return min(rel, abs(after - before) / (LOSS_RESOLUTION * scale))
        return rel
    if fam == "norm":
        return _relative(before, after, NORM_FLOOR)
    if fam == "count":
        return abs(after - before)
    if fam == "fraction":
        unit = FRACTION_UNITS * quantum if math.isfinite(quantum) else 0.0
        return abs(after - before) / max(unit, FRACTION_FLOOR)
    if fam == "head_sigma":
        return _relative(before, after, HEAD_SIGMA_FLOOR)
    if fam == "balance_norm":
        return abs(after - before) / BALANCE_NORM_FLOOR
    if fam == "balance":
        ref = max(abs(before), abs(after), scale or 0.0)
        return abs(after - before) / (BALANCE_FLOOR * ref) if ref > 0 else 0.0
    return _relative(before, after, RELATIVE_FLOOR)


def holds(recent: list[float], before: float, after: float, n: int = HOLD_SAMPLES) -> bool:
    """The last n values all lie past the midpoint from `before` towards `after`: the new level
    holds (a one-unit flicker that went back does not)."""
    if len(recent) < n:
        return False
    mid = 0.5 * (before + after)
    return all((v > mid) if after > before else (v < mid) for v in recent[-n:])


def detected_scalar(name: str) -> bool:
    """Whether a scalar passed to `agent.log` is followed (a loss, an accuracy: yes; a
    learning rate or weight decay logged by hand: no, those are settings)."""
    return name.lower() not in SETTING_SCALARS and not name.lower().startswith(("lr_", "lr/"))


@dataclass(frozen=True)
class Mover:
    """A layer's series that moved in a transition's window: before → after (series units),
    `effect` in multiples of its family's floor, `z` against its own noise, `strength` =
    min(effect, |z| / threshold): large only when large in both its own terms and its noise."""

    key: SeriesKey
    before: float
    after: float
    effect: float
    z: float
    strength: float
    transform: str = "identity"

    @property
    def direction(self) -> str:
        return "up" if self.after > self.before else "down"


@dataclass(frozen=True)
class Transition:
    """Jumps in one or more series within one grouping window.

    `step` is the top jump's estimated onset (when it happened); `detected` the step at which
    the group closed and the transition was emitted; `jumps` sorted by score, highest first."""

    step: int
    time: float
    jumps: tuple[Jump, ...]
    message: str
    detected: int
    exogenous: str | None = None
    kind: str = "a transition"  # in the paper's words: "a mode learned", "a loss spike", ...
    movers: tuple[Mover, ...] = ()  # layers' series that moved most in the window, in order
    context: tuple[tuple[str, float, float], ...] = ()  # (loss name, before, after) same window

    @property
    def top(self) -> Jump:
        """The jump with the largest score."""
        return self.jumps[0]


class TransitionDetector:
    """Jump detection over many series, grouped into transitions.

    `threshold`: the per-series |z| threshold; None (default) = calibrated to `budget` false
    transitions per sample for the whole run, re-derived whenever a new series appears.
    `group_samples`: jumps whose alarms fall within this many consecutive samples form one
    transition, emitted when the window closes (so up to group_samples-1 samples late).
    `transforms`: metric name -> "log"/"identity" (or a function of the metric name);
    `default_transform` otherwise. `exogenous_slack`: a mark explains a transition when it lies
    between (the earliest onset minus this many samples) and the last alarm. Other keyword
    arguments go to every JumpDetector. A sample is one distinct step: feed all series of a
    sample (the loss included) in one call.

    Two detectors can split a run (the agent under a time budget: publish/transitions.py):
    one fed the layers at their samples with `run_level_triggers` False, which follows the
    run-level series (the loss, logged scalars) only for what they say about the layers'
    transitions (a count corroborated by the loss, the loss quoted beside a layer's event)
    and raises nothing on them; and one fed the run-level series alone at their own cadence,
    with `layers_from` the first, whose layers' series name what moved with its events.
    """

    def __init__(self, threshold: float | None = None, *, budget: float = RUN_BUDGET,
                 group_samples: int = 5,
                 transforms: Mapping[str, str] | Callable[[str], str] | None = None,
                 exogenous_slack: int = 5, run_level_triggers: bool = True,
                 layers_from: TransitionDetector | None = None, **options: Any) -> None:
        self.run_level_triggers = run_level_triggers
        self.layers_from = layers_from
        self._run_series = 0  # the run's series count, where more than this one's (recalibrate)
        self.budget = budget
        self.group_samples = max(1, group_samples)
        self.exogenous_slack = exogenous_slack
        self._fixed = threshold
        self._transforms = transforms
        self._options = options
        self._detectors: dict[SeriesKey, JumpDetector] = {}
        self._peaks: dict[SeriesKey, float] = {}  # each loss series' largest |value| so far
        self._threshold = calibrated_threshold(1, budget) if threshold is None else float(threshold)
        self._steps: deque[int] = deque(maxlen=256)  # recent sample steps, oldest first
        self._last_step: int | None = None
        self._sample = -1
        self._open: list[Jump] = []
        self._open_sample = 0
        self._open_time = 0.0
        self._marks: deque[tuple[int, str]] = deque(maxlen=256)
        self._spikes: dict[SeriesKey, SpikeDetector] = {}  # one per loss series
        self._drops: dict[SeriesKey, DropDetector] = {}  # one per loss series
        self._deferred: dict[SeriesKey, Jump] = {}  # drops waiting for the open group to close
        # jumps waiting to show they are large enough and hold: (jump, sample of the alarm)
        self._holding: dict[SeriesKey, tuple[Jump, int]] = {}
        self._closed_sample = -1  # the sample at which the last transition closed
        # changes of recent transitions: (layer or run-level series, direction) -> the last
        # sample of their refractory period, and whether an optimizer change set it (such a
        # period does not hold SHAPE_METRICS)
        self._refractory: dict[tuple[Any, ...], tuple[int, bool]] = {}
        self.suppressed = 0  # jumps below their family's effect-size floor, or not holding
        # The optimizer's weight decay now (set by the agent from its param groups): a mode
        # lost while it is on is "a mode lost to weight decay".
        self.weight_decay = 0.0

    # -- configuration --------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        """The per-series threshold in force (depends on the number of series when auto)."""
        return self._threshold

    @property
    def fixed_threshold(self) -> float | None:
        """The threshold given by hand (None: calibrated to the run's series)."""
        return self._fixed

    @property
    def series(self) -> dict[SeriesKey, JumpDetector]:
        return self._detectors

    def _transform_for(self, key: SeriesKey) -> str:
        metric = key[1] if isinstance(key, tuple) and len(key) == 2 else str(key)
        metric = str(metric)
        if callable(self._transforms):
            return self._transforms(metric)
        if self._transforms is not None and metric in self._transforms:
            return self._transforms[metric]
        return default_transform(metric)

    def _detector(self, key: SeriesKey) -> JumpDetector:
        det = JumpDetector(key, threshold=self._threshold, transform=self._transform_for(key),
                           **self._options)
        self._detectors[key] = det
        if self._fixed is None:
            # The run now has one more series: raise every series' threshold so that the
            # run-level budget still holds (theta grows like N ** (1/K)).
            self._threshold = calibrated_threshold(
                max(len(self._detectors), self._run_series), self.budget)
            for other in self._detectors.values():
                other.threshold = self._threshold
        return det

    def recalibrate(self, n_series: int) -> None:
        """Calibrate the automatic threshold for a run of at least `n_series` series (the
        detector that splits a run with this one counts them all), also when this one adds
        a series of its own later: one run, one false-alarm budget."""
        self._run_series = max(self._run_series, n_series)
        if self._fixed is None:
            self._threshold = calibrated_threshold(
                max(self._run_series, len(self._detectors)), self.budget)
            for det in self._detectors.values():
                det.threshold = self._threshold

    @property
    def last_step(self) -> int:
        """The step of the latest sample fed (−1 before any)."""
        return -1 if self._last_step is None else self._last_step

    def mark_exogenous(self, step: int, reason: str) -> None:
        """Register a known external change at `step` (a schedule boundary, warm-up end, a
        resume): transitions it explains are labelled with `reason` instead of discoveries."""
        self._marks.append((int(step), str(reason)))

    # -- feeding --------------------------------------------------------------------------------

    def update(self, step: int, values: Mapping[SeriesKey, float | int | None],
               time: float | None = None) -> list[Transition]:
        """Feed one sample of any number of series; returns the transitions that closed."""
        if step != self._last_step:
            self._last_step = step
            self._sample += 1
            self._steps.append(step)
        now = _time.time() if time is None else time
        spikes: list[Spike] = []
        for key, value in values.items():
            det = self._detectors.get(key)
            if det is None:
                det = self._detector(key)
            if value is not None and family(_name(key)[1]) == "loss" and math.isfinite(value):
                self._peaks[key] = max(self._peaks.get(key, 0.0), abs(float(value)))
            if not self.run_level_triggers and _name(key)[0] is None:
                det.update(step, value)  # its levels only: the context of the layers' events
                continue
            jump = det.update(step, value)
            # A jump becomes an event once it is large in its own terms and (counts,
            # fractions) holds. The alarm often fires while the change is under way (its
            # windows' medians half-way), so a jump that is not there yet waits up to
            # 2 × HOLD_SAMPLES samples, its `after` refreshed, before it is dropped.
            waiting = (jump, self._sample) if jump is not None else self._holding.pop(key, None)
            jump = None
            if waiting is not None:
                pending = self._refresh(waiting[0], det)
                if self._accept(key, pending, det):
                    # one whose alarm came before the last transition closed belongs to it
                    # (measured there among the movers), not to a second event; so does one
                    # that continues a recent transition's change (refractory)
                    if waiting[1] > self._closed_sample and not self._continues(pending):
                        jump = pending
                    else:
                        self.suppressed += 1
                elif self._sample - waiting[1] < 2 * HOLD_SAMPLES:
                    self._holding[key] = (pending, waiting[1])
                else:
                    self.suppressed += 1  # too small, or it went back: a flicker
            if _is_loss(key):
                # a loss falling off a plateau by a large factor (jumps.DropDetector), which
                # the jump statistic misses once earlier drops have inflated its noise
                dropper = self._drops.get(key)
                if dropper is None:
                    # a threshold given by hand asks for more evidence from this rule too
                    dropper = self._drops[key] = DropDetector(
                        key, threshold=max(6.0, self._fixed or 0.0))
                drop = dropper.update(step, value) or self._deferred.pop(key, None)
                if drop is not None and jump is None and self._accept(key, drop, det) and \
                        not self._continues(drop):
                    if all(j.key != key for j in self._open):
                        jump = drop
                    elif all(j.direction != drop.direction for j in self._open if j.key == key):
                        # the loss coming back down after the rise in the open group (a spike's
                        # recovery): its own event, once that group has closed
                        self._deferred[key] = drop
                elif jump is not None:
                    # the jump statistic's own alarm (its windows, its score) replaces a drop
                    # of the same loss already in the group
                    self._open = [j for j in self._open if j.key != key]
            if jump is not None:
                if not self._open:
                    self._open_sample, self._open_time = self._sample, now
                self._open.append(jump)
            if _is_loss(key):
                spiker = self._spikes.get(key)
                if spiker is None:
                    spiker = self._spikes[key] = SpikeDetector(key)
                spike = spiker.update(step, value)
                if spike is not None:
                    spikes.append(spike)
        out = [self._spike_transition(spike, now) for spike in spikes]
        if self._open and self._sample - self._open_sample >= self.group_samples - 1:
            closed = self._close(step)
            if closed is not None:
                out.append(closed)
        return out

    @staticmethod
    def _lasting(key: SeriesKey, direction: str) -> tuple[Any, ...]:
        """What a lasting change is kept under: a layer and a direction (weight decay shrinks
        a layer's norm, then its balance, then its stable rank: one change), or the run-level
        series together and a direction (the total loss falls with the model's own loss that
        makes it fall: one change, whichever alarms first)."""
        layer = _name(key)[0]
        return (layer, direction) if layer is not None else (None, direction)

    def _continues(self, jump: Jump) -> bool:
        """Whether `jump` is a recent transition's change going on (same layer or run-level
        series, same direction, within the refractory period); if so the period runs on."""
        shape = _name(jump.key)[1] in SHAPE_METRICS
        for lasting in (self._lasting(jump.key, jump.direction),
                        ("*", _name(jump.key)[1], jump.direction)):
            held = self._refractory.get(lasting)
            if held is not None and self._sample <= held[0] and not (shape and held[1]):
                self._refractory[lasting] = (self._sample + REFRACTORY_SAMPLES, held[1])
                return True
        return False

    def _corroborated(self, jumps: tuple[Jump, ...], movers: tuple[Mover, ...],
                      context: tuple[tuple[str, float, float], ...]) -> bool:
        """Counts (`jumps`, all of the count family) are a transition when something
        continuous moved with them (see COUNT_LOSS_FLOOR): a continuous series of a counted
        layer among the movers, by twice its floor; or a loss that can speak for the counted
        layers (the total loss, or `<model>_loss` for layers named `<model>...`) moving by
        COUNT_LOSS_FLOOR the way the count says (a mode learned: the loss falls; a mode lost
        with no weight decay: it rises), RESTORATION_LOSS_FLOOR for a mode lost under
        weight decay."""
        # a mode lost under weight decay (restoration) needs a smaller loss move: the loss
        # is then dominated by the strong modes' shrinkage, a lost weak mode adds little
        floor = COUNT_LOSS_FLOOR
        if self.weight_decay > 0 and any(j.direction == "down" and _name(j.key)[1] == "modes"
                                         for j in jumps):
            floor = RESTORATION_LOSS_FLOOR
        layers = {_name(j.key)[0] or "" for j in jumps}
        if any(_name(m.key)[0] in layers and family(_name(m.key)[1]) != "count"
               and m.effect >= 2.0 for m in movers):
            return True
        up = jumps[0].direction == "up"
        models = {name[:-len("_loss")] for name, _, _ in context if name.endswith("_loss")}
        for name, before, after in context:
            if not (before > 0 and after > 0):
                continue
            model = name[:-len("_loss")] if name.endswith("_loss") else ""
            if model and not any(layer.startswith(model) for layer in layers):
                continue  # another model's loss
            if not model and all(any(layer.startswith(m) for m in models) for layer in layers):
                continue  # the total of several models' losses: the layers' own one speaks
            change = math.log(after / before)
            if abs(change) >= math.log1p(floor) and (change < 0) == up:
                return True
        return False

    def _accept(self, key: SeriesKey, jump: Jump, det: JumpDetector) -> bool:
        """The effect-size floor and, for counts and fractions, the hold (hysteresis): the
        new level on each of the last HOLD_SAMPLES samples."""
        layer, metric = _name(key)
        scale = self._peaks.get(key) if family(metric) == "loss" else self._layer_scale(layer)
        eff = effect(metric, jump.before, jump.after,
                     quantum=det.quantum if det.transform == "identity" else math.inf,
                     scale=scale)
        if eff < 1.0 or head_count(metric):
            return False
        if family(metric) in ("count", "fraction"):
            return holds(det.recent(HOLD_SAMPLES), jump.before, jump.after)
        return True

    @staticmethod
    def _refresh(jump: Jump, det: JumpDetector) -> Jump:
        """The jump with `after` = the median of the latest m samples, if that moved further
        the same way (the change went on after the alarm)."""
        recent = sorted(det.recent(jump.scale[1]))
        if not recent:
            return jump
        now = recent[len(recent) // 2]
        further = now > jump.after if jump.after > jump.before else now < jump.after
        return replace(jump, after=now) if further else jump

    def _layer_scale(self, layer: str | None) -> float | None:
        """The layer's ‖W‖² (the natural scale of its `balance`), if it is followed."""
        det = self._detectors.get((layer, "weight_norm")) if layer is not None else None
        last = det.recent(1) if det is not None else []
        return last[0] ** 2 if last else None

    def update_metrics(self, step: int, metrics: Mapping[str, Mapping[str, float | int | None]],
                       loss: float | None = None, time: float | None = None,
                       scalars: Mapping[str, float | int | None] | None = None
                       ) -> list[Transition]:
        """Feed a METRICS-shaped sample ({layer: {indicator: value}}) plus the run's loss and
        other run-level scalars (keyed (None, name))."""
        values: dict[SeriesKey, float | int | None] = {
            (layer, name): v for layer, row in metrics.items() for name, v in row.items()}
        if loss is not None:
            values[LOSS_KEY] = loss
        for name, v in (scalars or {}).items():
            values[(None, name)] = v
        return self.update(step, values, time)

    def flush(self) -> list[Transition]:
        """Close the open group now (end of the run)."""
        closed = self._close(self._last_step or 0) if self._open else None
        return [closed] if closed is not None else []

    # -- grouping and labelling -----------------------------------------------------------------

    def _close(self, step: int) -> Transition | None:
        """The open group as one transition (None: counts that nothing continuous confirms)."""
        jumps = tuple(sorted(self._open, key=lambda j: -j.score))
        self._open = []
        self._closed_sample = self._sample
        movers = self._movers(jumps[0], jumps)
        # each count must be confirmed on its own (a loss event does not carry a count that
        # moved the other way, or another model's count, into its message)
        kept = tuple(j for j in jumps if family(_name(j.key)[1]) != "count"
                     or self._corroborated((j,), movers, self._context(j, (j,))))
        self.suppressed += len(jumps) - len(kept)
        if not kept:
            return None
        if len(kept) < len(jumps):
            jumps = kept
            movers = tuple(m for m in self._movers(jumps[0], jumps)
                           if family(_name(m.key)[1]) != "count"
                           or any(j.key == m.key for j in jumps))
        reason = self._explained_by(jumps)
        shape = tuple(j for j in jumps if _name(j.key)[0] is not None
                      and _name(j.key)[1] in SHAPE_METRICS)
        if reason is not None and shape and len(shape) < len(jumps):
            # An optimizer change's own group keeps what it moved at once (the norms, the
            # loss); the spectrum's shape changing with it is the restoration that follows,
            # its own transition (SHAPE_METRICS), closed after its own window.
            jumps = tuple(j for j in jumps if j not in shape)
            movers = tuple(m for m in self._movers(jumps[0], jumps)
                           if _name(m.key)[1] not in SHAPE_METRICS)
            self._open, self._open_sample = list(shape), self._sample
        top = jumps[0]
        if not movers and _is_loss(top.key):
            movers = self._movers(top, jumps, relaxed=True)
        context = self._context(top, jumps)
        until = self._sample + REFRACTORY_SAMPLES
        by_optimizer = reason is not None
        for series in (*jumps, *movers):
            self._refractory[self._lasting(series.key, series.direction)] = (until, by_optimizer)
            if by_optimizer:
                # an optimizer change (weight decay switched on) moves every layer the same
                # way, and the losses with them: all of it is that one change going on
                self._refractory[("*", _name(series.key)[1], series.direction)] = (until, True)
        if by_optimizer:
            for direction in ("up", "down"):
                self._refractory[(None, direction)] = (until, True)
        for held in [k for k, (last, _) in self._refractory.items() if last < self._sample]:
            del self._refractory[held]
        kind, telling = kind_of(jumps, movers, reason, self.weight_decay > 0)
        if telling is not None and movers and telling is not movers[0]:
            # the headline layer is named by the series that tells what happened to it
            movers = (telling,) + tuple(m for m in movers if m is not telling)
        message = describe(jumps, self._detectors.get(LOSS_KEY), reason, movers=movers,
                           context=context, kind=kind)
        return Transition(step=top.onset, time=self._open_time, jumps=jumps, message=message,
                          detected=step, exogenous=reason, kind=kind, movers=movers,
                          context=context)

    def _spike_transition(self, spike: Spike, now: float) -> Transition:
        """A loss spike or a divergence: its own event, attributed like any transition, over
        the window from the samples before the spike to the sample that decided it."""
        steps = [s for s in self._steps if s < spike.step][-10:] or [spike.step]
        jump = Jump(key=spike.key, step=spike.detected, direction="up", before=spike.baseline,
                    after=spike.peak, score=spike.score if math.isfinite(spike.score) else 1e9,
                    scale=(0, 0), onset=spike.step, delay=0, transform="log",
                    before_steps=(steps[0], steps[-1]), after_steps=(spike.step, spike.detected))
        reason = self._explained_by((jump,))
        movers = self._movers(jump, (jump,))
        context = self._context(jump, (jump,))
        _, metric = _name(spike.key)
        kind = "divergence" if spike.kind == "divergence" else "a loss spike"  # LOSS_KINDS
        peak = "a non-finite value" if not math.isfinite(spike.peak) else \
            f"{fmt_value(spike.peak, metric)} (×{spike.peak / spike.baseline:.3g})"
        # no baseline: the loss was non-finite at its first sample
        change = (f"{fmt_value(spike.baseline, metric)} → {peak}"
                  if math.isfinite(spike.baseline) else "non-finite")
        what = (f"{_who(_name(spike.key)[0], metric)} {change} at step {spike.step}"
                + (f", back within {spike.samples} samples" if spike.kind == "spike" else ""))
        message = describe((jump,), None, reason, movers=movers, context=context, kind=kind,
                           headline=what)
        return Transition(step=spike.step, time=now, jumps=(jump,), message=message,
                          detected=spike.detected, exogenous=reason, kind=kind, movers=movers,
                          context=context)

    def _movers(self, trigger: Jump, jumps: tuple[Jump, ...],
                relaxed: bool = False) -> tuple[Mover, ...]:
        """The layers' series that moved most over the trigger's windows, each against its own
        noise and its own scale, strongest first (at most one per layer and metric). Only series
        whose latest |z| reaches a third of the threshold are measured: a cheap pre-filter
        (the windows are at most 29 samples, and a move over them shows in z). `relaxed`: a
        loss fell or rose and no layer passed those tests (a staircase's earlier drops inflate
        every series' noise alike, so z says little): every series is measured, and one over
        its own floor whose latest values all lie past the midpoint of its move is named,
        ranked by its effect, so the event still names where it happened. Only when such a
        group closes, never per sample. With `layers_from`, that detector's layers."""
        if self.layers_from is not None:
            return self.layers_from._movers(trigger, jumps, relaxed)
        (b0, b1), (a0, a1) = trigger.before_steps, trigger.after_steps
        theta = self._threshold
        found: dict[SeriesKey, Mover] = {}
        for j in jumps:  # the jumps themselves, over their own windows
            layer, metric = _name(j.key)
            if layer is None:
                continue
            det = self._detectors[j.key]
            eff = effect(metric, j.before, j.after,
                         quantum=det.quantum if det.transform == "identity" else math.inf,
                         scale=self._layer_scale(layer))
            found[j.key] = Mover(j.key, j.before, j.after, eff, j.score if j.direction == "up"
                                 else -j.score, min(eff, j.score / theta), j.transform)
        for key, det in self._detectors.items():
            layer, metric = _name(key)
            if layer is None or key in found or det.last_z is None or \
                    (not relaxed and abs(det.last_z) < theta / 3):
                continue
            before, after = det.level_between(b0, b1), det.level_between(a0, a1)
            if before is None or after is None or before == after:
                continue
            eff = effect(metric, before, after,
                         quantum=det.quantum if det.transform == "identity" else math.inf,
                         scale=self._layer_scale(layer))
            if eff < 1.0:
                continue
            z = det.movement_z(before, after, trigger.scale if trigger.scale != (0, 0) else None)
            if relaxed:
                # its own terms only, and a move that holds: the latest values all past the
                # midpoint (a noisy series' window does not); the state of the weights only,
                # not rates of change (those follow the loss's own speed)
                if metric in RATE_METRICS or not _speaks_for(trigger.key, layer) or not holds(det.recent(min(10, max(3, trigger.scale[0]))), before, after,
                             min(10, max(3, trigger.scale[0]))):
                    continue
                z = z if z is not None else 0.0
            elif z is None or abs(z) < theta / 2:
                continue
            found[key] = Mover(key, before, after, eff, z,
                               eff if relaxed else min(eff, abs(z) / theta), det.transform)
        return tuple(sorted(found.values(), key=lambda m: -m.strength))

    def _context(self, trigger: Jump, jumps: tuple[Jump, ...]) -> tuple[tuple[str, float, float],
                                                                        ...]:
        """Every loss series' change over the trigger's windows: quoted 'in the same window',
        never as a cause. The total loss first."""
        out: list[tuple[str, float, float]] = []
        own = {j.key: j for j in jumps}
        keys = sorted((k for k in self._detectors if _is_loss(k) and k != trigger.key),
                      key=lambda k: (k != LOSS_KEY, str(k)))
        for key in keys:
            if key in own:
                before, after = own[key].before, own[key].after
            else:
                det = self._detectors[key]
                before = det.level_between(*trigger.before_steps)
                after = det.level_between(*trigger.after_steps)
            if before and after and before > 0:
                out.append((_name(key)[1], before, after))
        return tuple(out)

    def _explained_by(self, jumps: Iterable[Jump]) -> str | None:
        jumps = list(jumps)
        if not self._marks:
            return None
        first = min(j.onset for j in jumps)
        last = max(j.step for j in jumps)
        # `first` moved back by exogenous_slack samples: onsets are estimates, and an external
        # change can show one or two samples before the step it was registered at.
        steps = list(self._steps)
        lo = first
        for k in range(len(steps) - 1, -1, -1):
            if steps[k] <= first:
                lo = steps[max(0, k - self.exogenous_slack)]
                break
        reasons = [reason for mark, reason in self._marks if lo <= mark <= last]
        # every external change in the window, once each, in the order they were registered
        return "; ".join(dict.fromkeys(reasons)) or None


# ---------------------------------------------------------------------------------------------
# Messages.

def _name(key: SeriesKey) -> tuple[str | None, str]:
    if isinstance(key, tuple) and len(key) == 2:
        return (None if key[0] is None else str(key[0])), str(key[1])
    return None, str(key)


def _who(layer: str | None, metric: str) -> str:
    """'fc2 weight norm': a layer's series under the table's display name (core/names.py), so
    an event and the table name a number alike; a run-level series (a loss) by its own name."""
    return f"{layer} {display(metric)}" if layer is not None else metric


def fmt_value(value: float, metric: str = "") -> str:
    """Integers as integers, fractions as percentages, otherwise 4 significant digits."""
    if not math.isfinite(value):
        return "N/A"
    if is_fraction(metric):  # the table's unit (core/units.py)
        return percent(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def fmt_relative(change: float) -> str:
    """A relative change as a signed percentage with a real minus sign: '−41%', '+3.2%'
    (no space: a narrow events column wrapped '+139 %' before its '%'; units.percent writes
    '1.2%' too); a rise of ten times or more as a factor, '×12', '×8.6e+08' (the demo's
    converged `linear_loss` rising again under weight decay read '+85759023065%')."""
    ratio = 1 + change
    if ratio >= 1e5:
        return f"×{ratio:.2g}".replace("e+0", "e+")
    if ratio >= 10:
        return f"×{ratio:.2g}" if ratio < 100 else f"×{ratio:,.0f}"
    pct = 100 * change
    digits = f"{abs(pct):.0f}" if abs(pct) >= 10 else f"{abs(pct):.2g}"
    return f"{'−' if pct < 0 else '+'}{digits}%"


def describe_jump(jump: Jump) -> str:
    """'fc1 modes 2 → 3' or 'loss 0.52 → 0.31 (−41%)'."""
    layer, metric = _name(jump.key)
    text = f"{fmt_value(jump.before, metric)} → {fmt_value(jump.after, metric)}"
    if jump.transform == "log" and jump.before > 0:
        text += f" ({fmt_relative(jump.change)})"
    return f"{_who(layer, metric)} {text}"


def _brief(jump: Jump) -> str:
    """'fc2 stable rank 3.1 → 4.2' or 'fc2 weight norm +12 %' for the list of other series."""
    layer, metric = _name(jump.key)
    who = _who(layer, metric)
    if jump.transform == "log" and jump.before > 0:
        return f"{who} {fmt_relative(jump.change)}"
    return f"{who} {fmt_value(jump.before, metric)} → {fmt_value(jump.after, metric)}"


def _speaks_for(loss: SeriesKey, layer: str) -> bool:
    """Whether a loss series can be about a layer: `<model>_loss` only about layers named
    `<model>...` (the demo's `linear_loss` is not about `mlp.4`); any other loss about any."""
    name = _name(loss)[1]
    return not name.endswith("_loss") or layer.startswith(name[:-len("_loss")])


def _is_loss(key: SeriesKey) -> bool:
    layer, metric = _name(key)
    return layer is None and family(metric) == "loss"


# An optimizer mark's weight-decay change, as TransitionWatch writes it ("optimizer lr 0.1 →
# 0.01, weight_decay 0 → 1.5"; marks that explain one event are joined with "; "): the values
# before and after.
_DECAY_CHANGE = re.compile(r"\bweight_decay (\S+?) → ([^\s,;]+)")


def decay_raised(exogenous: str | None) -> bool:
    """Whether an exogenous mark says weight decay was switched on or raised. Only then does
    it explain weights shrinking or modes fading: switched off or lowered, the same mark
    explains the event as a change of the optimizer, not as weight decay at work."""
    for before, after in _DECAY_CHANGE.findall(exogenous or ""):
        try:
            if float(after) > float(before):
                return True
        except ValueError:  # a mark written by hand: no number to compare
            continue
    return False


def _kind(metric: str, direction: str, exogenous: str | None,
          decaying: bool = False) -> str | None:
    """What a change of this indicator means, in the paper's words (None: nothing specific).
    `decaying`: weight decay is on (a mode lost then is lost to it)."""
    up = direction == "up"
    switched = decay_raised(exogenous)  # the event is explained by weight decay coming on
    decay = decaying or switched
    if metric == "modes":
        return "a mode learned" if up else ("a mode lost to weight decay" if decay
                                            else "a mode lost")
    if metric.startswith(("qk_", "vo_")) and ".h" in metric:
        return "a head formed" if up else "a head faded"
    if metric == "dead_heads":
        return "heads died" if up else "heads revived"
    if metric == "max_logit" or metric.startswith("max_logit.h"):
        # a stability signal, not a symmetry: attention logits growing without bound come
        # before attention entropy collapse and loss spikes (Dehghani et al. 2023)
        return "attention logits grew" if up else "attention logits cooled"
    if metric == "update_ratio":
        return ("updates grew against the weights" if up
                else "updates shrank against the weights")
    if metric in ("dead_fraction", "relu_dead"):
        return "units died" if up else "units revived"
    if metric == "duplicate_fraction":
        return "units merged" if up else "units separated"
    if metric == "distinct_units":
        return "units separated" if up else "units merged"
    if metric == "weight_norm":
        return "weights grew" if up else ("weights shrank under weight decay" if decay
                                          else "weights shrank")
    if metric in SHAPE_METRICS and not up and switched:
        # Right after weight decay was switched on or raised (the event is explained by that
        # change): uniform shrinkage keeps these, so a fall means the weak modes are pushed
        # back to the symmetric state faster than the strong ones shrink (restoration under
        # way, before the `modes` count drops). Not merely while decay is on (AdamW's default
        # 0.01): the first mode learned lowers the effective rank too.
        return "modes fading under weight decay"
    if family(metric) == "loss":
        return f"{metric} rose" if up else f"{metric} fell"
    return None


# Which kind names an event when a layer's series tell several: what breaks or restores a
# symmetry first (units dying, modes, merges, heads), the scale of the weights last.
KIND_ORDER = ("units died", "heads died", "a mode lost to weight decay", "a mode lost",
              "a mode learned", "units merged", "a head formed", "a head faded",
              "units revived", "heads revived", "units separated",
              "modes fading under weight decay", "weights shrank under weight decay", "weights shrank", "weights grew",
              "attention logits grew", "attention logits cooled",
              "updates grew against the weights", "updates shrank against the weights")

# A loss series' own kinds besides `<loss> fell` / `<loss> rose` (SpikeDetector's).
LOSS_KINDS = ("a loss spike", "divergence")


def _rank(kind: str | None) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def kind_of(jumps: tuple[Jump, ...], movers: tuple[Mover, ...],
            exogenous: str | None = None, decaying: bool = False) -> tuple[str, Mover | None]:
    """The event's kind and the series that tells it: among the headline layer's movers (the
    layer that moved most) the one whose kind comes first in KIND_ORDER; else the first layer
    jump with a kind; else the loss's ('<loss> fell'); else 'a transition'."""
    if movers:
        layer = _name(movers[0].key)[0]
        telling = [(m, _kind(_name(m.key)[1], m.direction, exogenous, decaying)) for m in movers
                   if _name(m.key)[0] == layer and family(_name(m.key)[1]) != "loss"]
        telling = [(m, k) for m, k in telling if k in KIND_ORDER]
        if telling:
            m, k = min(telling, key=lambda mk: _rank(mk[1]))
            return k or "a transition", m
        for j in jumps:
            jl, metric = _name(j.key)
            kind = _kind(metric, j.direction, exogenous, decaying)
            if kind and jl is not None:
                return kind, None
        return "a transition", None  # a layer moved most: the loss is context, never the kind
    for j in jumps:
        kind = _kind(_name(j.key)[1], j.direction, exogenous)
        if kind:
            return kind, None
    return "a transition", None


def _mover_text(m: Mover, brief: bool = False) -> str:
    layer, metric = _name(m.key)
    if m.transform == "log" and m.before > 0:
        change = f"{fmt_value(m.before, metric)} → {fmt_value(m.after, metric)} " \
                 f"({fmt_relative(m.after / m.before - 1)})"
        if brief:
            change = fmt_relative(m.after / m.before - 1)
    else:
        change = f"{fmt_value(m.before, metric)} → {fmt_value(m.after, metric)}"
    return f"{_who(layer, metric)} {change}"


def describe(jumps: tuple[Jump, ...], loss: JumpDetector | None = None,
             exogenous: str | None = None, *, movers: tuple[Mover, ...] = (),
             context: tuple[tuple[str, float, float], ...] = (), kind: str | None = None,
             headline: str | None = None) -> str:
    """One sentence for a transition: its kind, the headline (the biggest mover: the layer
    whose series moved most against its own noise and scale; the top jump when no layer
    moved), the loss series over the same window (never said to be the cause), the other
    movers, the exogenous label. Without movers/context (older callers): the top jump, the
    loss from `loss` over the same window, the other jumps."""
    top = jumps[0]
    given = headline is not None
    if headline is None:
        headline = (f"{_mover_text(movers[0])} at step {top.onset}" if movers
                    else f"{describe_jump(top)} at step {top.onset}")
    parts = [f"{kind}: {headline}" if kind else headline]
    if context:
        quoted = ", ".join(f"{name} {fmt_relative(after / before - 1)}"
                           for name, before, after in context[:3])
        parts.append(f"{quoted} in the same window")
    elif top.key != LOSS_KEY and loss is not None:
        before = loss.level_between(*top.before_steps)
        after = loss.level_between(*top.after_steps)
        if before and after and before > 0:
            parts.append(f"loss {fmt_relative(after / before - 1)} in the same window")
    if given:  # a spike: the loss is the headline, the layers that moved are named after it
        shown_keys = {top.key}
        if movers:
            listed = ", ".join(_mover_text(m, brief=True) for m in movers[:3])
            more = f" and {len(movers) - 3} more" if len(movers) > 3 else ""
            parts.append(f"moved most: {listed}{more}")
        movers = ()
    shown_keys = {movers[0].key} if movers else {top.key}
    others = [_mover_text(m, brief=True) for m in movers[1:]]
    others += [_brief(j) for j in jumps if j.key not in shown_keys and not _is_loss(j.key)
               and all(m.key != j.key for m in movers)]
    others += [_brief(j) for j in jumps if _is_loss(j.key) and j.key not in shown_keys
               and not any(name == _name(j.key)[1] for name, _, _ in context)]
    if others:
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        parts.append(f"also {', '.join(others[:3])}{more}")
    text = "; ".join(parts)
    if exogenous:
        text += f" [exogenous: {exogenous}]"
    return text


# ---------------------------------------------------------------------------------------------
# Protocol EVENT payload.

def _wire_number(value: float | None) -> float | int | None:
    """Finite numbers only (JSON has no NaN); whole numbers as integers (ranks read 2, not 2.0)."""
    if value is None or not math.isfinite(value):
        return None
    if value == int(value) and abs(value) < 2**53:
        return int(value)
    return float(value)


def to_event_payload(transition: Transition) -> dict[str, Any]:
    """The payload of a protocol v1 EVENT message (severity "transition") for a transition:
    its top jump in the flat fields, every grouped jump in "jumps", the exogenous label (or
    null). Send it with the header step = `transition.step`."""
    top = transition.top
    layer, metric = _name(top.key)
    payload: dict[str, Any] = {
        "message": transition.message, "severity": "transition", "layer": layer,
        "metric": metric, "direction": top.direction, "before": _wire_number(top.before),
        "after": _wire_number(top.after), "score": _wire_number(round(top.score, 3))}
    payload["exogenous"] = transition.exogenous
    payload["onset"] = top.onset
    # Added (protocol v1 stays compatible: readers ignore unknown fields). `what`: what
    # happened in the paper's words; `headline`: the layer that moved most (the flat fields
    # stay the top jump's); `movers`: every layer series that moved, strongest first;
    # `in_window`: the loss series over the same window (context, not cause).
    payload["what"] = transition.kind
    head = transition.movers[0] if transition.movers else None
    payload["headline"] = ({"layer": _name(head.key)[0], "metric": _name(head.key)[1]}
                           if head else {"layer": layer, "metric": metric})
    payload["movers"] = [
        {"layer": _name(m.key)[0], "metric": _name(m.key)[1], "direction": m.direction,
         "before": _wire_number(m.before), "after": _wire_number(m.after),
         "effect": _wire_number(round(m.effect, 3)), "z": _wire_number(round(m.z, 3)),
         "strength": _wire_number(round(m.strength, 3))}
        for m in transition.movers[:16]]
    payload["in_window"] = [{"metric": name, "before": _wire_number(before),
                             "after": _wire_number(after)}
                            for name, before, after in transition.context]
    payload["jumps"] = [
        {"layer": _name(j.key)[0], "metric": _name(j.key)[1], "direction": j.direction,
         "before": _wire_number(j.before), "after": _wire_number(j.after),
         "score": _wire_number(round(j.score, 3)), "step": j.step, "onset": j.onset}
        for j in transition.jumps]
    return payload


__all__ = [
    "DEFAULT_SCALES",
    "LOSS_KEY",
    "RUN_BUDGET",
    "Jump",
    "JumpDetector",
    "Mover",
    "SeriesKey",
    "SpikeDetector",
    "Transition",
    "TransitionDetector",
    "calibrated_threshold",
    "default_transform",
    "describe",
    "describe_jump",
    "detected_scalar",
    "effect",
    "family",
    "fmt_relative",
    "fmt_value",
    "holds",
    "kind_of",
    "mad_sorted",
    "median_sorted",
    "to_event_payload",
]
