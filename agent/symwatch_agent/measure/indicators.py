"""Per-layer symmetry indicators, computed for all layers at once without per-layer host syncs.

`IndicatorEngine.compute()` (= `measure(snapshot())`) returns one (layers × columns) float32
tensor on the weights' device; the caller moves it to the host in a single transfer (on CUDA,
asynchronously from a side stream) and `decode()` turns the host rows into wire values.

Formulas live with the code that computes them: spectra.py (rank family, mirror spectrum),
units.py (dead, balance, duplicates, softmax translation, scale invariance), activity.py (dead
ReLU units); pairing.py says which layers read whose units; schedule.py which tier a sample
computes. docs/metrics.md has them all in one table. This module orchestrates: it snapshots
the weights grouped by shape, runs each group's batched computations, and keeps the state
indicators need between samples (largest σ₁ seen, warm power-iteration vectors, the previous
weights of norm-fed layers, the last Δ_G of each family).

Thresholds: `modes` counts the σ_k above the layer's random bulk (bulk.py: the bulk's
Marchenko–Pastur edge fit to the spectrum, or a reference carried from earlier samples and
shrunk by the optimizer's weight decay where the spectrum shows no bulk; hysteresis against
flicker): the number of learned modes, right at any init scale. numerical_rank is the
linear-algebra rank, numpy.linalg.matrix_rank's tolerance relative to the current σ₁:
σ_k > σ₁ · max(m, n) · eps(float32). mirror_rank counts √(λ_k/2) > τ_m, λ_k the mirror
eigenvalues (for a balanced pair √(λ_k/2) is each factor's σ_k), τ_m = max(rel_tol · largest
√(λ₁/2) seen so far, abs_tol); the heads' ranks likewise, each head against its own
largest √σ₁ (heads.py).

Wire encoding of the columns: NaN means "not computed this sample" (the key is left out of the
METRICS message, so the observer keeps the last value); ±inf means "computed but undefined",
or "does not apply to this layer" (published as null, N/A; e.g. duplicate_fraction of a
Linear → Linear pair, whose symmetry is a rotation, not a permutation). Never a fake 0.

Δ_G (units.py, formulas there): the distance from each symmetry's fixed set, normalised into
[0, 1], reading 0 at that set *and at θ = 0* (the most symmetric point, which every fixed set
contains), rising as the symmetry breaks. Units and modes are weighed by soft(x²) =
x²/(x² + κ²) with the absolute scale κ = abs_tol (numerical_rank's floor): a tiny
initialisation (all strengths ≪ κ) reads ≈ 0, strong generic weights ≈ 1. u_i = [w_in,i; b_i;
w_out,i], C_i = ‖w_in,i‖² + b_i² − ‖w_out,i‖², m units, k = min(m, n):
  delta_sign     = (1/m) Σ_i soft(‖u_i‖²)                      (fixed set: dead units, u_i = 0)
  delta_perm     = Σ_i ρ_i²(1 − c_i) / Σ_i (ρ_i² + κ²)         (fixed set: merged units)
                   c_i = similarity to the nearest other unit (cosine of the per-side unit
                   directions through ReLU-like maps, ρ_i² = 2‖[w_in,i; b_i]‖‖w_out,i‖; the
                   exact-match similarity otherwise, ρ_i² = ‖u_i‖²); N/A without the symmetry
  delta_rescale  = Σ_i |C_i| / Σ_i (‖u_i‖² + κ²)                (fixed set: balanced, C = 0)
  delta_rank     = (1/k) Σ_{σ_j above the bulk} soft(σ_j²)     (fixed set: rank deficient;
                   the count is the `modes` column where there is one, else bulk.py's edge)
  delta_rotation = the same on √(λ/2) of the mirror spectrum, bulk of [W₁ | W₂ᵀ]; attention
                   rows: mean per-head (qk + vo rank) / (2d)
  delta_softmax  = ‖1ᵀW‖ / √(C (‖W‖²_F + C κ²))                (fixed set: rows sum to zero)
  broken         = mean of the layer's latest Δ of each family that applies to it (a Δ
                   published N/A drops out); tests/agent/test_order_parameters.py checks it
                   rises along the small-init staircase and falls under weight decay.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from symwatch_agent.measure import heads as attention
from symwatch_agent.measure import detail as layer_detail
from symwatch_agent.measure import pairing, spectra, units, updates, wide
from symwatch_agent.measure import bulk as bulk_edges
from symwatch_agent.measure.activity import ActivityProbe
from symwatch_agent.measure.layers import EMBEDDING, NORM, Layer, unwrap
from symwatch_agent.measure.schedule import CHEAP, FULL, LayerSlices, TierScheduler

INDICATORS = (
    "weight_norm", "stable_rank", "effective_rank", "participation_ratio", "numerical_rank",
    "modes", "dead_fraction", "relu_dead", "balance", "balance_norm", "duplicate_fraction",
    "distinct_units", "mirror_rank", "qk_rank", "vo_rank", "qk_rank_min", "vo_rank_min",
    "dead_heads", "softmax_translation", "angular_update", "effective_lr", "update_ratio",
    "delta_perm", "delta_sign", "delta_rank", "delta_rotation", "delta_rescale",
    "delta_softmax", "broken")
COL = {name: k for k, name in enumerate(INDICATORS)}
INTEGER_INDICATORS = frozenset({"numerical_rank", "modes", "distinct_units", "mirror_rank",
                                "qk_rank_min", "vo_rank_min"})
DELTAS = ("delta_perm", "delta_sign", "delta_rank", "delta_rotation", "delta_rescale",
          "delta_softmax")
_COLUMNS = len(INDICATORS) + 1
_FINITE = len(INDICATORS)  # last column: 1 when the layer's weights are finite
# The cheap tier's σ₁ (stable rank) on the CPU: Lanczos stops once σ₁² is within this,
# relatively, by its residual estimate (spectra.lanczos_sigma1). 1e-4, not 1e-3, because the
# estimate can be optimistic when the start vector barely touches the top direction: on the
# GPT-style benchmark's 25 matrices revisited every 50 or 300 steps the worst σ₁² was 0.4 % off,
# 95 % of visits within 0.025 % (benchmarks/sigma1_visits.py, at least 3 steps; 0.015 % with at
# least 4); at 1e-3 one visit was 18 % off.
SIGMA1_TOL = 1e-4

# A matrix whose short side is at most this gets its cheap-tier σ₁ exactly, from its k × k
# Gram matrix (_narrow_sigma1), not by Lanczos: for k this small the Gram's product costs less
# than Lanczos' steps (each two passes over the matrix and a few dozen small tensor
# operations), and is exact. Measured, one thread (median of 30; Lanczos warm-started, its
# residual test): 256 × 32 0.07 against 0.35 ms (the GPT-style benchmark's position
# embedding), 4 × 4096 × 32 0.55 against 0.81, 8 × 16 × 4096 0.41 against 2.26 (LoRA-like
# adapters); at k = 64 the Gram lost (4 × 4096 × 64: 2.0 against 1.1 ms).
EXACT_SIGMA1_DIM = 32

# The warm-up thread rests this many times as long as each of its tables took (warm_up).
WARM_UP_REST = 4.0


@dataclass
class Group:
    """A snapshot of same-shaped layers' weights, measured together in one batched call."""

    idxs: list[int]
    weights: torch.Tensor  # (B, m, n) float32 copy (a view of the live weight: see `owned`)
    bias: torch.Tensor  # (B, m), zeros where a layer has no bias
    out2: torch.Tensor  # (B, m): Σ outgoing weight² per unit (0 without consumers)
    finite: torch.Tensor  # (B,) bool: bias and outgoing weights finite (weights: see measure)
    owned: bool = True  # False: `weights` is a view of the live parameter, never written to
    unit2: torch.Tensor | None = None  # (B, m) ‖w_in,i‖²+b_i²+‖w_out,i‖², set by measure
    in2: torch.Tensor | None = None  # (B, m) ‖w_in,i‖²+b_i², set by measure


@dataclass
class Snapshot:
    """Everything one sample measures, copied at one instant."""

    tier: str
    started: float
    groups: list[Group] = field(default_factory=list)
    where: dict[int, tuple[int, int]] = field(default_factory=dict)  # layer -> (group, row)
    outgoing: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # full: [(m, k_c)]
    second: dict[int, torch.Tensor] = field(default_factory=dict)  # mirror pairs: W₂ (o, h)
    activity: dict[int, torch.Tensor] = field(default_factory=dict)  # relu: (m,) ever active
    lrs: dict[int, Any] = field(default_factory=dict)  # norm-fed layers: (η, power of ‖w‖)
    event: Any = None  # CUDA event recorded before the snapshot (for the scheduler)
    layers: list[int] | None = None  # the slice measured (schedule.LayerSlices); None: all
    # full tier: spectra and unit facts kept for METRICS `detail` (detail.py), device tensors
    detail: list[layer_detail.GroupDetail] = field(default_factory=list)
    # full tier: (layer indices, σ descending (B, k), m, n) per group, for delta_rank
    spectra: list[tuple[list[int], torch.Tensor, int, int]] = field(default_factory=list)


def _sigma1_start(n: int, device: torch.device) -> torch.Tensor:
    """The fixed start of a layer's first σ₁ Lanczos (the same for every layer of width n,
    so a sample and the warm-up thread find the same vector)."""
    return torch.randn(n, generator=torch.Generator().manual_seed(n)).to(device)


class IndicatorEngine:
    """Holds the per-layer state between samples and computes one sample for every layer."""

    def __init__(self, layers: Sequence[Layer], *, rel_tol: float = 0.3, abs_tol: float = 0.1,
                 dead_eps: float = 1e-2, dup_eps: float = 1e-3, max_svd_dim: int = 1024,
                 warm_lanczos_steps: int = 12, cold_power_iters: int = 30,
                 sigma1_tol: float = SIGMA1_TOL,
                 budget: float = 1.0,
                 full_share: float = 0.5, full_every: int | None = None, spectra_refresh: int = 0, warm_tol: float = 0.05,
                 warm_min_dim: int = 128,
                 optimizers: Sequence[torch.optim.Optimizer] = (),
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.layers = list(layers)
        self.rel_tol, self.abs_tol = rel_tol, abs_tol
        self.dead_eps, self.dup_eps = dead_eps, dup_eps
        # Above this min(m, n) an exact spectrum costs more than an estimate: the full tier
        # estimates it (wide.py: exact top σ by block Krylov, the rest by SLQ); the cheap
        # tier's σ₁ comes from warm-started Lanczos at every width.
        self.max_svd_dim = max_svd_dim
        self._closing = False  # set by close(): a warm-up still running stops early
        # CPU weights of at least this many elements (2 MB) are measured in place, not copied;
        # smaller ones are stacked by shape, at most `stack_elements` (16 MB) to a batch
        # (snapshot)
        self.view_elements = 1 << 19
        self.stack_elements = 1 << 22
        self.warm_lanczos_steps, self.cold_power_iters = warm_lanczos_steps, cold_power_iters
        self.sigma1_tol = sigma1_tol
        # `clock` measures the time that earns budget (the agent passes its training time).
        self.scheduler = TierScheduler(budget, full_share=full_share, full_every=full_every,
                                       clock=clock)
        self.probe = ActivityProbe(self.layers)
        self.failed: dict[int, str] = {}  # layer index -> first error; such layers publish N/A
        # Indicator jobs that raised (name -> first error): switched off for the rest of the
        # run, their columns read N/A, every other indicator carries on; the agent reports once.
        self.switched_off: dict[str, str] = {}
        self._optimizers = list(optimizers)
        self._observer: pairing.ForwardObserver | None = None
        self._sources: list[pairing.Observed] = []
        self._pair_options: dict[str, Any] = {}
        device = self.layers[0].weight.device if self.layers else torch.device("cpu")
        self._device = device
        n = len(self.layers)
        self._max_s1 = torch.zeros(n, device=device)  # largest σ₁ seen, per layer
        # `modes` (bulk.py): per layer the last count (hysteresis) and the carried reference
        # bulk top, NaN before the first full sample; the step each reference was taken at,
        # for the weight decay that shrinks it until the next one.
        self._modes = torch.full((n,), float("nan"), device=device)
        self._bulk_ref = torch.full((n,), float("nan"), device=device)
        self._bulk_step: dict[int, int] = {}
        self.step: int | None = None  # the optimizer step being sampled (set by the agent)
        self._max_mirror = torch.zeros(n, device=device)  # largest √(λ₁/2) seen
        self._delta = torch.full((n, len(DELTAS)), float("nan"), device=device)
        # Attention modules measured per head (heads.py): one extra row each, after the layers,
        # with each head's qk/vo rank in the columns after _FINITE (see decode()).
        self.heads: list[attention.HeadSet] = []
        self._columns = _COLUMNS
        self.find_heads(None, False)  # none until attach() looks for them
        self._power_vec: dict[int, torch.Tensor] = {}
        self._wide_vec: dict[int, torch.Tensor] = {}  # wide layers: top singular vectors (wide.py)
        # Warm-started full-tier spectra (see _spectrum): per shape group, the eigenvectors of
        # the last exact decomposition and each layer's samples since it; counts for reports.
        # Off by default (spectra_refresh=0): on GPT-2-like weights the 0.3·σ₁ threshold falls
        # inside the bulk, the count is ambiguous there nearly every sample, and the fallback
        # (eigh) costs more than the cold eigvalsh (docs/benchmarks.md, sweep section).
        self.spectra_refresh, self.warm_tol, self.warm_min_dim = (
            spectra_refresh, warm_tol, warm_min_dim)
        self._eigvecs: dict[tuple[int, ...], tuple[torch.Tensor, list[int]]] = {}
        self.spectra_counts = {"exact": 0, "warm": 0, "inertia": 0}
        self._prev: dict[int, torch.Tensor] = {}  # norm-fed layers: previous [W | b]
        self._updates = updates.UpdateTracker()  # update_ratio: sampled entries (updates.py)
        self.last_tier: str | None = None
        self.last_detail: list[layer_detail.GroupDetail] | None = None
        # Slices (schedule.LayerSlices): a sample the scheduler plans (snapshot() without a
        # tier) measures the layers whose expected cost fits `slice_target_s` (set by the agent
        # before each sample; None: every layer). Built on first use, after attach() found the
        # attention modules whose layers must stay together.
        self.slices: LayerSlices | None = None
        self.slice_target_s: float | None = None
        # the full tier's own target (None: `slice_target_s`): the agent sizes cheap slices
        # by what its cheap ledger holds, full ones by what `every` steps earn
        self.full_slice_target_s: float | None = None
        self.last_slice: list[int] | None = None
        self.last_seconds = 0.0  # the latest sample's time in snapshot() + measure()
        self._cold = False  # this sample started a layer's σ₁ cold (_power_sigma1)

    # -- pairing -------------------------------------------------------------------------------

    def attach(self, models: Mapping[str, nn.Module], *,
               pairs: Mapping[str, Any] | None = None,
               classifier: bool | str | list[str] | None = True, observe: bool = True,
               heads: Mapping[str, Any] | bool | None = None,
               heads_default: int | tuple[int, int] | None = None) -> list[str]:
        """Pair the layers: statically now, then from the models' first forward pass (hooks
        removed right after it), with the user's `pairs` and `classifier` on top; find the
        attention modules to measure per head (`heads`: see heads.discover). Returns notes
        on attention modules found but not measured (for META's skipped list)."""
        self._pair_options = {"overrides": pairs, "classifier": classifier,
                              "models": list(models)}
        self._sources = [pairing.static_edges(models, self.layers)]
        pairing.apply(self.layers, self._sources, **self._pair_options)
        modules: dict[str, nn.Module] = {}  # full name -> module; a model's root: its name
        for model_name, model in models.items():
            for name, module in unwrap(model).named_modules():
                modules.setdefault(f"{model_name}.{name}" if model_name and name
                                   else name or model_name, module)
        skipped = self.find_heads(modules, heads, heads_default)
        if observe and self.layers:
            self._observer = pairing.ForwardObserver(models, self.layers, self._observed)
        return skipped

    def find_heads(self, modules: Mapping[str, nn.Module] | None,
                   heads: Mapping[str, Any] | bool | None = None,
                   default: int | tuple[int, int] | None = None) -> list[str]:
        """Find the attention modules to measure per head (heads.py); returns "name (why)"
        notes for those found but not measured. Bad `heads` names raise ValueError."""
        self.heads, skipped = attention.discover(self.layers, modules, heads, default)
        self.slices = None  # its chunks follow the attention modules: rebuilt on next use
        n = len(self.layers) + len(self.heads)
        widest = max((hs.heads for hs in self.heads), default=0)
        self._columns = _COLUMNS + len(attention.PER_HEAD) * widest
        self._delta = torch.full((n, len(DELTAS)), float("nan"), device=self._device)
        self._rows_dims = torch.tensor(
            [min(layer.matrix_shape) for layer in self.layers] + [1] * len(self.heads),
            device=self._device, dtype=torch.float32)
        self._rows_units = torch.tensor(
            [layer.units for layer in self.layers] + [1] * len(self.heads),
            device=self._device, dtype=torch.float32)
        return skipped

    def describe(self) -> list[dict[str, object]]:
        """The META layer table: every layer, each attention module's row just before its
        first layer."""
        first: dict[int, list[attention.HeadSet]] = defaultdict(list)
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        for hs in self.heads:
            first[min(index[id(layer)] for layer in hs.layers())].append(hs)
        rows: list[dict[str, object]] = []
        for i, layer in enumerate(self.layers):
            rows += [hs.describe() for hs in first.get(i, [])]
            rows.append(layer.describe())
        return rows

    def _observed(self, found: pairing.Observed) -> None:
        self._sources.append(found)
        pairing.apply(self.layers, self._sources, **self._pair_options)

    def close(self) -> None:
        """Remove every hook the engine registered (pairing pass, activity probe), and stop
        a warm-up still running after its current table."""
        self._closing = True
        if self._observer is not None:
            self._observer.close()
        self.probe.close()

    # -- one sample ----------------------------------------------------------------------------

    @torch.no_grad()
    def compute(self, tier: str | None = None) -> torch.Tensor:
        """One sample: a (len(layers), columns) float32 tensor. Nothing here reads a value
        back to the host."""
        return self.measure(self.snapshot(tier))

    @torch.no_grad()
    def snapshot(self, tier: str | None = None) -> Snapshot:
        """Copy what this sample measures (float32, grouped by matrix shape and device). Once
        the copy is queued the optimizer may update the live parameters: on CUDA the training
        stream waits for this part only, not for the spectra computed from it.

        On the CPU the sample runs on the training thread from start to end (compute()), so
        large float32 weights (`view_elements`) are not copied: each gets a group of its own
        holding a view (`Group.owned` False); measure() must then run before the next
        optimizer step, as compute() does. Smaller ones are stacked, at most `stack_elements`
        to a group: a group's arithmetic is a few dozen small tensor operations per Lanczos
        step whatever its batch (~0.7 ms a visit), more than copying a matrix of up to 2 MB.
        Measured: on the GPT-style benchmark its eight 1024 × 256 weights one by one cost ~3 ms
        of a ~16 ms cheap pass more than stacked; on the GPT-2-small-shaped stack stacking its
        768 × 768 and 2304 × 768 weights too (an 8 MB limit) made the cheap pass 188 → 303 ms
        (large fresh copies page-fault, and a large matrix's products dwarf the overhead)."""
        planned = tier is None  # an explicit tier (tests, benchmarks) measures every layer
        tier = tier or self.scheduler.choose()
        snap = Snapshot(tier, time.perf_counter())
        if planned:
            target = (self.full_slice_target_s if tier == FULL
                      and self.full_slice_target_s is not None else self.slice_target_s)
            snap.layers = self._slices().take(tier, target)
        chosen = None if snap.layers is None else set(snap.layers)
        if self._device.type == "cuda":
            snap.event = torch.cuda.Event(enable_timing=True)
            snap.event.record()
        snap.activity = self.probe.take()
        by_key: dict[tuple, list[int]] = defaultdict(list)
        for i, layer in enumerate(self.layers):
            if i not in self.failed and (chosen is None or i in chosen):
                by_key[(layer.matrix_shape, layer.weight.device)].append(i)
        chunks: list[tuple[int, int, list[int], bool]] = []
        for ((m, n), device), idxs in by_key.items():
            if device.type == "cpu" and m * n >= self.view_elements:
                views = [i for i in idxs if self.layers[i].weight.dtype == torch.float32]
                chunks += [(m, n, [i], True) for i in views]
                idxs = [i for i in idxs if i not in set(views)]
            # CUDA: one batch (the snapshot copies every weight there anyway)
            per = (max(1, self.stack_elements // (m * n)) if device.type == "cpu"
                   else max(1, len(idxs)))
            chunks += [(m, n, idxs[k:k + per], False) for k in range(0, len(idxs), per)]
        for m, n, idxs, view in chunks:
            try:
                if view:
                    w = self.layers[idxs[0]].matrix().reshape(m, n).unsqueeze(0)
                else:
                    w = torch.stack([self.layers[i].matrix().reshape(m, n) for i in idxs]).float()
                bias = torch.stack([self._bias(i, m, w.device) for i in idxs])
                out2 = torch.stack([self._out2(i, m, w.device) for i in idxs])
                # Any NaN/inf weight makes its row norm non-finite: measure() reads the flag
                # from the norms it computes anyway, rather than another pass here.
                finite = torch.isfinite(bias).all(1) & torch.isfinite(out2).all(1)
                for j, i in enumerate(idxs):
                    layer = self.layers[i]
                    if tier == FULL and layer.consumers and layer.kind != NORM:
                        snap.outgoing[i] = self._outgoing(layer, copy=not view)
                    if tier == FULL and layer.mirror:
                        second = layer.consumers[0].matrix()
                        snap.second[i] = second.float() if view else second.to(
                            torch.float32, copy=True)
                    if layer.normed_by:
                        snap.lrs[i] = self._lr(layer)
            except Exception as exc:  # weights we cannot read (e.g. sharded): switch them off
                self._fail(idxs, exc)
                continue
            for j, i in enumerate(idxs):
                snap.where[i] = (len(snap.groups), j)
            snap.groups.append(Group(idxs, w, bias, out2, finite, owned=not view))
        return snap

    @staticmethod
    def _outgoing(layer: Layer, copy: bool) -> list[torch.Tensor]:
        """Each consumer's input columns as (m, k_c): a transposed view of a Linear's weight
        (no copy) unless `copy` (the CUDA snapshot, which the optimizer may overwrite)."""
        parts = []
        for consumer in layer.consumers:
            w = consumer.input_weight.detach()  # type: ignore[union-attr]  # (o, m, *k)
            part = w.t() if w.dim() == 2 else w.transpose(0, 1).reshape(layer.units, -1)
            parts.append(part.to(torch.float32, copy=copy))
        return parts

    @torch.no_grad()
    def measure(self, snap: Snapshot) -> torch.Tensor:
        out = torch.full((len(self.layers) + len(self.heads), self._columns), float("nan"),
                         device=self._device)
        for group in snap.groups:
            try:
                self._measure_group(group, snap, out)
            except Exception as exc:
                self._fail(group.idxs, exc)
                out[group.idxs] = float("nan")
        if snap.tier == FULL:
            self._guarded("duplicates", self._duplicates, snap, out)
            self._guarded("mirrors", self._mirrors, snap, out)
            if self.heads:
                self._guarded("heads", self._heads, snap, out)
        for i, active in snap.activity.items():
            if i not in self.failed and (snap.layers is None or i in snap.where):
                self._put(out, [i], "relu_dead", 1 - active.float().mean().reshape(1))
        self._guarded("update_ratio", self._update_ratio, snap, out)
        self._guarded("deltas", self._deltas, snap, out)
        # Layers whose weights hold NaN/inf: every computed value becomes null (N/A).
        bad = out[:, _FINITE] == 0
        flag = out[:, _FINITE].clone()
        computed = ~torch.isnan(out)
        out.copy_(torch.where(bad[:, None] & computed, float("-inf"), out))
        out[:, _FINITE] = flag
        self.probe.arm()  # dead-ReLU hooks for the next forward pass
        self.last_tier = snap.tier
        self.last_slice = snap.layers
        # read by the agent right after measure() and decoded on the publisher thread
        self.last_detail = snap.detail if snap.tier == FULL else None
        end = None
        if snap.event is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        seconds = time.perf_counter() - snap.started
        self.last_seconds = seconds
        self.scheduler.record(snap.tier, seconds,
                              (snap.event, end) if end is not None else None)
        # the first full sample pays the libraries' warm-up: no guide to the steady cost
        warm_up = snap.tier == FULL and self.scheduler.samples[FULL] == 1
        # A cheap sample with a layer's first σ₁ (Lanczos, ~6× a warm power iteration) is an
        # upper bound of the steady rate: taken as that rate only until a warm sample
        # measures it, else every layer's first visit (the whole first round) kept the
        # slices at one chunk.
        cold, self._cold = self._cold, False
        self._slices().record(snap.tier, snap.layers, seconds, self.step,
                              charge=not warm_up, provisional=cold)
        return out

    def warm_up(self) -> None:
        """One-off work that the first full sample would otherwise do on the training
        thread: the bulk tables of each measured shape (bulk.py, cached per shape: ~0.1 s each
        at width 768) and the eigensolver's first call. The agent runs it on a thread of its
        own at start (torch releases the GIL in it). Never raises: a failure here only means
        the first full sample pays it, as before.

        Paced (issue #15): after each table it rests WARM_UP_REST times as long as the table
        took, so it takes at most a fifth of a core's time and of the GIL's. Unpaced, on a
        2-core VM under load, it made the 4 training steps after `watch()` 100–150 ms slower
        each (a 45 ms step of a GPT-style model); the first full sample comes later than it
        ends, as a rule (the budget's plan), and pays what is left itself otherwise."""

        def rest(began: float) -> bool:  # False: the agent is closing (its exit waits)
            until = time.perf_counter() + WARM_UP_REST * (time.perf_counter() - began)
            while not self._closing and time.perf_counter() < until:
                time.sleep(min(0.02, max(0.0, until - time.perf_counter())))
            return not self._closing

        try:
            began = time.perf_counter()
            spectra.gram_eigvals(torch.eye(2).unsqueeze(0))
            shapes = {layer.matrix_shape for layer in self.layers if layer.has_rank}
            for m, n in sorted(shapes):  # wide layers too: `modes` fits their estimate
                if not rest(began):
                    return
                began = time.perf_counter()
                bulk_edges.edges_by_count(torch.zeros(1, min(m, n)), m, n)
            for hs in self.heads:  # the heads' `modes`: the product law's tables
                if not rest(began):
                    return
                began = time.perf_counter()
                attention.warm_tables(hs)
            # Then each CPU layer's first σ₁ vector (Lanczos, ~5 ms at 256 × 256: 30 products
            # and their reorthogonalisation), so that the cheap tier's first visit is a warm
            # start (12 steps, not 30). Done in the first sample's slice, it was most of the
            # cheap tier's cost for the whole first round (a GPT-style model's first ~800
            # steps at a 1 % budget: docs/benchmarks.md, "Per-layer refresh"). After the
            # tables, not before: at once it made `symwatch run`'s step 1 ~30 ms slower (the
            # samples that come first visit the first layers themselves). Only under a
            # budget: without one the samples do not depend on the machine (the demo, the
            # event corpus, the tests), and a start vector that raced the first sample would.
            for i, layer in enumerate(self.layers if not self.scheduler.unlimited else ()):
                if i in self._power_vec or not layer.has_rank or \
                        layer.weight.device.type != "cpu" or _exact_sigma1(*layer.matrix_shape):
                    continue
                if not rest(began):
                    return
                began = time.perf_counter()
                self._first_power_vec(i, layer)
        except Exception:
            pass

    @torch.no_grad()
    def _first_power_vec(self, i: int, layer: Layer) -> None:
        """A layer's σ₁ start vector for the cheap tier (warm_up's thread): Lanczos from
        the fixed start `_power_sigma1` would use, on a float32 copy of the weight as it is
        now. A read torn by an optimizer step only moves the start: each sample's Lanczos
        converges from it on that sample's own weights."""
        m, n = layer.matrix_shape
        w = layer.matrix().detach().reshape(m, n).to(torch.float32, copy=True)
        if not bool(torch.isfinite(w).all()):
            return  # left to the sample, which reports such a layer
        _, v = spectra.lanczos_sigma1(w.unsqueeze(0), _sigma1_start(n, w.device).unsqueeze(0),
                                      self.cold_power_iters, tol=self.sigma1_tol)
        self._power_vec.setdefault(i, v[0])  # a sample may have set it meanwhile

    def _slices(self) -> LayerSlices:
        """The layer slices: each attention module's layers (and their adapters) one chunk,
        every other layer a chunk of its own; same-shaped chunks next to each other (by their
        shapes, then layer order), so that a slice's layers stack into few groups (snapshot:
        a group costs the same few dozen operations a Lanczos step whatever its batch). In
        layer order a GPT's slice held one MLP weight of each shape, and the stacking of
        same-shaped weights saved whole-model passes only."""
        if self.slices is None:
            index = {id(layer): i for i, layer in enumerate(self.layers)}
            owner = list(range(len(self.layers)))  # layer -> the chunk's first layer
            for hs in self.heads:
                # layers() holds the projections and their LoRA factors: _heads reads them all
                members = [index[id(layer)] for layer in hs.layers() if id(layer) in index]
                root = min((owner[i] for i in members), default=None)
                for i in members:
                    owner[i] = root
            chunks: dict[int, list[int]] = defaultdict(list)
            for i, root in enumerate(owner):
                chunks[root].append(i)
            ordered = sorted((chunks[k] for k in sorted(chunks)), key=lambda c: (
                sorted({self.layers[i].matrix_shape for i in c}), c[0]))

            def weight(i: int, full: bool) -> float:
                # spectra: O(m·n·k); one pass: O(m·n); plus a fixed cost per layer (the calls
                # themselves: tens of µs, worth ~2¹⁵ elements of a pass, ~2²⁰ of a spectrum)
                m, n = self.layers[i].matrix_shape
                k = min(m, n, self.max_svd_dim)
                return float(m * n * k + (1 << 20) if full else m * n + (1 << 15))

            self.slices = LayerSlices(ordered, {
                CHEAP: [sum(weight(i, False) for i in c) for c in ordered],
                FULL: [sum(weight(i, True) for i in c) for c in ordered]})
        return self.slices

    def _guarded(self, name: str, job: Any, *args: Any) -> None:
        if name in self.switched_off:
            return
        try:
            job(*args)
        except Exception as exc:  # one indicator failing must not take the others down:
            self.switched_off[name] = f"{type(exc).__name__}: {exc}"

    def _fail(self, idxs: list[int], exc: BaseException) -> None:
        for i in idxs:
            self.failed.setdefault(i, f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _put(out: torch.Tensor, idxs: list[int] | torch.Tensor, name: str,
             values: torch.Tensor) -> None:
        """Store computed values; an undefined one (NaN/inf) is stored as −inf → null."""
        inf = float("-inf")
        out[idxs, COL[name]] = torch.nan_to_num(values.float(), nan=inf, posinf=inf, neginf=inf)

    # -- the cheap tier (and the spectra of the full one), per shape group ---------------------

    def _measure_group(self, g: Group, snap: Snapshot, out: torch.Tensor) -> None:
        idxs, layers = g.idxs, [self.layers[i] for i in g.idxs]
        row2 = torch.linalg.vector_norm(g.weights, dim=2).square()  # (B, m), no temporary
        g.finite = g.finite & torch.isfinite(row2).all(1)  # NaN/inf anywhere → non-finite norm
        # In place: the snapshot is our own copy, and a second copy of every weight would
        # double this pass's memory traffic. Non-finite entries read as 0; such layers publish
        # null for everything anyway. A view of a live weight is never written to: it is
        # copied first, and only when it holds NaN/inf (on the CPU, where reading is free).
        if g.owned and (g.weights.device.type != "cpu" or not bool(g.finite.all())):
            # (on the CPU reading the flag is free and a finite copy needs no pass)
            w = torch.nan_to_num_(g.weights, nan=0.0, posinf=0.0, neginf=0.0)
        elif g.owned:
            w = g.weights
        elif not bool(g.finite.all()):
            w = g.weights = torch.nan_to_num(g.weights, nan=0.0, posinf=0.0, neginf=0.0)
            g.owned = True
        else:
            w = g.weights
        row2 = torch.nan_to_num(row2, nan=0.0, posinf=0.0, neginf=0.0)
        bias = torch.nan_to_num(g.bias, nan=0.0, posinf=0.0, neginf=0.0)
        out2 = torch.nan_to_num(g.out2, nan=0.0, posinf=0.0, neginf=0.0)
        m, n = w.shape[1:]
        out[idxs, _FINITE] = g.finite.float().to(out.device)
        fro2 = row2.sum(1)
        self._put(out, idxs, "weight_norm", fro2.sqrt())

        if layers[0].has_rank:
            if snap.tier == FULL and min(m, n) <= self.max_svd_dim:
                eig, count = self._spectrum(w, idxs)
                # the rank family from float64 σ (cold path), the rest from float32 ones
                for name, values in spectra.rank_family(eig.double().sqrt()).items():
                    self._put(out, idxs, name, values)
                sv = eig.float().sqrt()
                s1 = sv[:, 0]
                snap.spectra.append((idxs, sv, m, n))  # for delta_rank (_deltas)
            elif snap.tier == FULL:  # wider: estimated spectra (wide.py), the same columns
                sv, count = self._wide_spectrum(w, idxs, out), None
                s1 = sv[:, 0]
                snap.spectra.append((idxs, sv, m, n))
            else:
                sv = None
                s1 = self._power_sigma1(w, idxs)
                self._put(out, idxs, "stable_rank", fro2 / s1.square())
            idx = torch.tensor(idxs, device=self._max_s1.device)
            seen = torch.maximum(self._max_s1[idx], torch.where(g.finite, s1, 0.0))
            self._max_s1[idx] = seen
            if sv is not None:
                tau = _rank_tol(s1, m, n)
                if count is None:
                    count = spectra.count_above(sv, tau)
                self._put(out, idxs, "numerical_rank", count)
                self._put(out, idxs, "modes", self._count_modes(sv, m, n, idxs, g.finite))
                snap.detail.append(layer_detail.GroupDetail(
                    idxs, spectrum=layer_detail.cap_spectrum(sv), count=sv.shape[1], tau=tau))

        in2 = row2 + bias.square()
        g.unit2 = in2 + out2  # ‖u_i‖², reused by the duplicate search
        g.in2 = in2
        self._put(out, idxs, "dead_fraction", units.dead_fraction(in2 + out2, self.dead_eps))
        self._put(out, idxs, "delta_sign", units.delta_sign(g.unit2, self.abs_tol))
        if snap.tier == FULL:  # which units are dead, as dead_fraction counts them
            rms = g.unit2.mean(1, keepdim=True).sqrt()
            snap.detail.append(layer_detail.GroupDetail(
                idxs, dead=g.unit2.sqrt() <= self.dead_eps * rms))

        sel = [j for j, layer in enumerate(layers) if layer.rescale and layer.consumers]
        if sel:
            total, norm = units.balance(in2[sel], out2[sel])
            self._put(out, [idxs[j] for j in sel], "balance", total)
            self._put(out, [idxs[j] for j in sel], "balance_norm", norm)
            self._put(out, [idxs[j] for j in sel], "delta_rescale",
                      units.delta_rescale(in2[sel], out2[sel], self.abs_tol))
        sel = [j for j, layer in enumerate(layers) if layer.classifier]
        if sel:
            self._put(out, [idxs[j] for j in sel], "softmax_translation",
                      units.softmax_translation(w[sel]))
            self._put(out, [idxs[j] for j in sel], "delta_softmax",
                      units.delta_softmax(w[sel], self.abs_tol))
        for j, layer in enumerate(layers):
            if layer.normed_by:
                # kept until the next sample: our own copy, never a view of the live weight
                now = w[j] if g.owned else w[j].clone()
                self._scale_invariance(idxs[j], layer, now, bias[j], snap, out)

    def _spectrum(self, w: torch.Tensor, idxs: list[int]
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """σ² of each matrix in the group, descending, for the full tier; and the numerical
        rank when it had to be counted apart from them (else None: count σ > τ).

        Cold (warm starts off, the default, or matrices below `warm_min_dim`): Gram +
        eigvalsh. With warm starts on, the first sample decomposes exactly with eigh and keeps
        each layer's eigenvectors; later samples take the spectrum from the Gram matrix in that
        old basis (spectra.warm_eigvals: one GEMM instead of the eigensolver). A layer falls
        back to an exact eigh (and keeps the new vectors) when its basis has drifted
        (off-diagonal mass above `warm_tol`) or every `spectra_refresh` samples anyway. Where
        an estimate lies within its error band of the numerical-rank threshold, the count there
        would be a guess: that layer's count comes from the inertia of G − τ²I instead (exact,
        a third of eigvalsh's cost). The fallback decision reads one small tensor per group
        back to the host."""
        k = min(w.shape[1:])
        if self.spectra_refresh <= 0 or k < self.warm_min_dim:
            return spectra.gram_eigvals(w), None
        g = spectra.gram(w.double())  # float64: a float32 Gram loses the tail (gram_eigvals)
        key = tuple(idxs)
        kept = self._eigvecs.get(key)
        if kept is None or kept[0].shape != g.shape:
            eig, vec = spectra.gram_eigh(g)
            self._eigvecs[key] = (vec, [0] * len(idxs))
            self.spectra_counts["exact"] += len(idxs)
            return eig, None
        vec, ages = kept
        eig, band, drift = spectra.warm_eigvals(g, vec)
        old = torch.tensor([a + 1 >= self.spectra_refresh for a in ages], device=eig.device)
        redo = old | (drift > self.warm_tol) | ~torch.isfinite(drift)
        # the threshold numerical_rank will use (as _measure_group computes it), and how far
        # σ₁'s own error may move it
        m, n = w.shape[1:]
        tau2 = _rank_tol(eig[:, 0].clamp_min(0).sqrt(), m, n).square()
        slack = band + (max(m, n) * torch.finfo(torch.float32).eps) ** 2 * band[:, :1]
        ambiguous = ((eig - tau2[:, None]).abs() <= slack).any(1) & ~redo
        flags = torch.stack([redo, ambiguous]).tolist()  # the one host read of the warm path
        rows = [j for j, r in enumerate(flags[0]) if r]
        unsure = [j for j, a in enumerate(flags[1]) if a]
        for j in range(len(ages)):
            ages[j] = 0 if j in rows else ages[j] + 1
        self.spectra_counts["warm"] += len(idxs) - len(rows)
        self.spectra_counts["exact"] += len(rows)
        self.spectra_counts["inertia"] += len(unsure)
        if rows:
            exact, fresh = spectra.gram_eigh(g[rows])
            eig[rows] = exact.to(eig.dtype)
            vec[rows] = fresh
        if not unsure:
            return eig, None
        # τ again after the exact rows replaced their σ₁, exactly as _measure_group computes it
        tau = _rank_tol(eig[:, 0].clamp_min(0).sqrt(), m, n)
        count = spectra.count_above(eig.sqrt(), tau)
        count[unsure] = spectra.count_eigvals_above(
            g[unsure], tau[unsure].square().to(g.dtype)).to(count.dtype)
        return eig, count

    def _wide_spectrum(self, w: torch.Tensor, idxs: list[int], out: torch.Tensor
                       ) -> torch.Tensor:
        """Layers with min(m, n) > max_svd_dim (wide.py): the rank family into `out`; returns
        the descending spectrum (B, k) whose top is exact and the rest SLQ quantiles, for
        numerical_rank, `modes` and delta_rank as an exact one. Warm-started from each
        layer's top singular vectors of its last full sample (kept in `_wide_vec`)."""
        k = min(w.shape[1:])
        kept = [self._wide_vec.get(i) for i in idxs]
        start = None
        if all(v is not None and v.shape == (k, min(wide.TOP, k)) for v in kept):
            start = torch.stack(kept)  # type: ignore[arg-type]
        found = wide.spectrum(w, start)
        for j, i in enumerate(idxs):
            self._wide_vec[i] = found.vectors[j]
        for name, values in found.ranks.items():
            self._put(out, idxs, name, values)
        return found.sv

    def _count_modes(self, sv: torch.Tensor, m: int, n: int, idxs: list[int],
                     finite: torch.Tensor) -> torch.Tensor:
        """`modes`: #{σ above the layer's random bulk} (bulk.py), with hysteresis against the
        layer's last count, and its reference bulk top carried from the last sample, shrunk by
        the weight decay its optimizer applied since, (1 − lr·wd) per step. A non-finite
        layer keeps its state (it publishes null)."""
        idx = torch.tensor(idxs, device=self._modes.device)
        step = self.step
        decay, decaying = [], []
        for i in idxs:
            lr, wd = self._lr_wd(self.layers[i])
            decaying.append(bool(lr and wd))
            last = self._bulk_step.get(i)
            steps = step - last if step is not None and last is not None else 0
            decay.append(bulk_edges.decay_factor(lr, wd, steps))
            if step is not None:
                self._bulk_step[i] = step
        carried = self._bulk_ref[idx] * torch.tensor(decay, device=sv.device)
        previous = self._modes[idx]
        enter, stay, ref = bulk_edges.bulk_edge(sv, m, n, previous, carried)
        enter, stay = bulk_edges.under_decay(sv, enter, stay,
                                             torch.tensor(decaying, device=sv.device))
        count = bulk_edges.hysteresis(sv, enter, stay, previous)
        self._modes[idx] = torch.where(finite, count, previous)
        self._bulk_ref[idx] = torch.where(finite, ref, self._bulk_ref[idx])
        return count

    def _lr_wd(self, layer: Layer) -> tuple[Any, Any]:
        """(lr, weight_decay) of the optimizer param group holding the layer's weight."""
        for opt in self._optimizers:
            for group in opt.param_groups:
                if any(p is layer.weight for p in group["params"]):
                    return group.get("lr"), group.get("weight_decay")
        return None, None

    def _power_sigma1(self, w: torch.Tensor, idxs: list[int]) -> torch.Tensor:
        """σ₁ by Lanczos from the layer's previous vector (the first time: from a fixed random
        start). On the CPU it stops once every σ₁² of the group is within `sigma1_tol`
        (at most `cold_power_iters` steps); on a GPU, where that test would wait for the
        device, it takes `warm_lanczos_steps` (`cold_power_iters` the first time).

        Not power iteration from the previous vector: a layer sliced into every ~200th
        sample has moved on by then, and on a random initialisation (no gap below σ₁) 2 power
        iterations from its old vector read σ₁ up to 30 % low (stable rank up to 1.4× high),
        12 still 3 % (default-init MLPs, widths 64–1024, 20–1000 steps of AdamW or SGD).
        A fixed 12 Lanczos steps from it were within 0.1 % there (tests/agent/
        test_first_sigma1.py), but on the GPT-style benchmark's layers some needed 20–29 and
        read up to 3 % low with 12; with the test most take the least 3 once training has
        shaped the top of the spectrum (benchmarks/sigma1_visits.py)."""
        m, n = w.shape[1:]
        if _exact_sigma1(m, n):
            return _narrow_sigma1(w)
        cold = any(i not in self._power_vec for i in idxs)
        if cold:
            start = _sigma1_start(n, w.device)
        v = torch.stack([self._power_vec[i] if i in self._power_vec else start for i in idxs])
        if cold:  # no vector to start from: the whole search, whose cost is no guide
            self._cold = True  # to a warm one's (measure)
        steps = self.cold_power_iters if cold or w.device.type == "cpu" \
            else self.warm_lanczos_steps
        s1, v = spectra.lanczos_sigma1(w, v, steps, tol=self.sigma1_tol)
        for j, i in enumerate(idxs):
            self._power_vec[i] = v[j]
        return s1

    def _update_ratio(self, snap: Snapshot, out: torch.Tensor) -> None:
        """‖ΔW‖/‖W‖ per step since each layer's last sample (updates.py), every tier."""
        for g in snap.groups:
            found = self._updates.measure(g.idxs, g.weights, self.step)
            if found is not None:
                self._put(out, found[0], "update_ratio", found[1])

    def _scale_invariance(self, i: int, layer: Layer, w: torch.Tensor, b: torch.Tensor,
                          snap: Snapshot, out: torch.Tensor) -> None:
        per_channel = layer.normed_by == "channel"
        # Per-channel norms (BatchNorm) cancel the bias and each channel's scale; per-layer
        # norms (LayerNorm, RMSNorm, GroupNorm) the scale of W and b together.
        now = w if per_channel else torch.cat([w.flatten(), b]).unsqueeze(0)
        prev = self._prev.get(i)
        if prev is not None and prev.shape == now.shape:
            self._put(out, [i], "angular_update", units.angle(prev, now, dim=1).mean().reshape(1))
        self._prev[i] = now
        found = snap.lrs.get(i)
        if found is not None:
            lr, power = found  # SGD: η/‖w‖², Adam family: η/‖w‖ (units.lr_power)
            norm2 = now.square().sum(1)
            scale = norm2 if power == 2 else norm2.sqrt()
            eff = torch.where(norm2 > 0, lr / scale.clamp_min(1e-38), float("nan"))
            self._put(out, [i], "effective_lr", eff.mean().reshape(1))

    # -- the full tier across groups ----------------------------------------------------------

    def _duplicates(self, snap: Snapshot, out: torch.Tensor) -> None:
        """Unit vectors [w_in; b; w_out] as parts (never concatenated: units.duplicates
        projects each part on its own), batched by the parts' shapes; a large layer alone.

        Only where the units have the permutation symmetry and no rotation one
        (pairing.permutes: an elementwise nonlinearity, dropout or max pooling between the
        layer and its consumers). Through a positively homogeneous map (ReLU, LeakyReLU, …)
        units are compared up to a positive scale of each side (the rescaling symmetry:
        `w_in·a, b·a, w_out/a` is the same unit), through any other one exactly. Every other
        matrix layer (Linear → Linear, whose symmetry is a rotation, measured by the rank and
        mirror family; unpaired layers) publishes N/A for them and delta_perm, never 0."""
        by_shape: dict[tuple, list[tuple[int, list[torch.Tensor]]]] = defaultdict(list)
        absent: list[int] = []
        for i, (gi, j) in snap.where.items():
            layer = self.layers[i]
            if layer.kind == NORM or (not layer.has_rank and layer.kind != EMBEDDING):
                continue
            g = snap.groups[gi]
            if g.unit2 is None or g.in2 is None:
                continue  # its group failed: the layer publishes N/A
            if not pairing.permutes(layer):
                absent.append(i)
                continue
            parts = [g.weights[j], g.bias[j].unsqueeze(1), *snap.outgoing.get(i, ())]
            # NaN/inf outgoing weights only make this layer's cosines NaN: it is null anyway
            shapes = (tuple(tuple(p.shape) for p in parts), layer.rescale)
            size = sum(p.numel() for p in parts)
            key = (shapes, i) if size >= self.view_elements else (shapes, -1)
            by_shape[key].append((i, parts + [g.unit2[j], g.in2[j]]))
        if absent:
            none = torch.full((len(absent),), float("-inf"), device=out.device)
            for name in ("duplicate_fraction", "distinct_units", "delta_perm"):
                self._put(out, absent, name, none)
        for ((_, homogeneous), _), rows in by_shape.items():
            idxs = [i for i, _ in rows]
            if len(rows) == 1:
                parts = [p.unsqueeze(0) for p in rows[0][1]]
            else:
                parts = [torch.stack([r[1][k] for r in rows]) for k in range(len(rows[0][1]))]
            in2 = parts.pop()  # both computed by _measure_group from the same weights
            unit2 = parts.pop()
            live = unit2.sqrt() > self.dead_eps * unit2.mean(1, keepdim=True).sqrt()
            scales = None
            rho2 = unit2
            if homogeneous:  # each side to unit norm: directions up to a positive scale
                r_in, r_out = in2.sqrt(), (unit2 - in2).clamp_min(0).sqrt()
                inv_in = torch.where(r_in > 0, 1 / r_in.clamp_min(1e-30), 0.0)
                inv_out = torch.where(r_out > 0, 1 / r_out.clamp_min(1e-30), 0.0)
                scales = [inv_in, inv_in] + [inv_out] * (len(parts) - 2)
                rho2 = 2 * r_in * r_out  # ‖u‖² of the balanced representative: rescaling-free
            fraction, distinct, near, links = units.duplicates(
                parts, self.dup_eps, live, links=True, scales=scales,
                exact=not homogeneous, nearest=True)
            snap.detail.append(layer_detail.GroupDetail(idxs, links=links))
            self._put(out, idxs, "duplicate_fraction", fraction)
            self._put(out, idxs, "distinct_units", distinct)
            self._put(out, idxs, "delta_perm",
                      units.delta_perm(rho2[:, :near.shape[1]], near, self.abs_tol))

    def _mirrors(self, snap: Snapshot, out: torch.Tensor) -> None:
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i in snap.second:
            if i in snap.where:
                gi, j = snap.where[i]
                by_shape[(tuple(snap.groups[gi].weights.shape[1:]),
                          tuple(snap.second[i].shape))].append(i)
        for idxs in by_shape.values():
            w1 = torch.stack([snap.groups[snap.where[i][0]].weights[snap.where[i][1]]
                              for i in idxs])
            w2 = torch.nan_to_num(torch.stack([snap.second[i] for i in idxs]))
            root = (spectra.mirror_eigvals(torch.nan_to_num(w1), w2) / 2).sqrt()
            idx = torch.tensor(idxs, device=self._max_mirror.device)
            seen = torch.maximum(self._max_mirror[idx], root[:, 0])
            self._max_mirror[idx] = seen
            tau = torch.clamp(self.rel_tol * seen, min=self.abs_tol)
            self._put(out, idxs, "mirror_rank", spectra.count_above(root, tau))
            # Δ_rotation: the mirror modes above their bulk, weighed by strength.
            self._put(out, idxs, "delta_rotation", units.delta_modes(
                root, self._mirror_modes(snap, idxs, root, w1, w2), self.abs_tol))

    def _mirror_modes(self, snap: Snapshot, idxs: list[int], root: torch.Tensor,
                      w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """#{√(λ_j/2) above the bulk} per pair. M = W₁W₁ᵀ + W₂ᵀW₂ is the sum of the two
        factors' Grams, whose random bulks have different scales (torch's init: variance
        1/fan_in each), so no single Marchenko–Pastur law fits it: the edge is
        √((e₁² + e₂²)/2), e_f the entry threshold above factor f's own bulk (its spectrum from
        this sample, bulk.py; above max_svd_dim wide.py's estimate), which bounds λ_max of
        the two bulks' sum. Where a factor's spectrum was not computed (its group failed),
        the bulk of [W₁ | W₂ᵀ] as one matrix (√λ are its singular values)."""
        found = {i: (sv[j:j + 1], m, n) for rows, sv, m, n in snap.spectra
                 for j, i in enumerate(rows)}
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        h, width = w1.shape[1], w1.shape[2] + w2.shape[1]
        k = min(h, width)
        counts = _modes_above(root[:, :k], h, width)
        for j, i in enumerate(idxs):
            first = found.get(i)
            second = found.get(index.get(id(self.layers[i].consumers[0]), -1))
            if first is None or second is None:
                continue
            e1, e2 = (bulk_edges.bulk_edge(sv, m, n)[0] for sv, m, n in (first, second))
            edge = ((e1.square() + e2.square()) / 2).sqrt()
            counts[j] = (root[j] > edge).sum().to(counts.dtype)
        return counts

    def _heads(self, snap: Snapshot, out: torch.Tensor) -> None:
        """Per-head QK/VO product ranks of each attention module (heads.py), from the rows of
        its layers in this snapshot, on the module's own row."""
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        base = len(self.layers)

        def weight(layer: Layer, hs: attention.HeadSet) -> torch.Tensor:
            """The layer's matrix in this snapshot, plus its PEFT LoRA adapters' s·B·A."""
            gi, j = snap.where[index[id(layer)]]
            w = snap.groups[gi].weights[j]
            for a, b, key, wrapper in hs.adapters.get(id(layer), ()):
                scale = attention.adapter_scaling(wrapper, key)
                if scale is None:
                    continue
                ga, ja = snap.where[index[id(a)]]
                gb, jb = snap.where[index[id(b)]]
                w = w + scale * (snap.groups[gb].weights[jb] @ snap.groups[ga].weights[ja])
            return w

        for r, hs in enumerate(self.heads):
            row = base + r
            try:
                parts = [weight(layer, hs)[start:start + count] for layer, start, count in (
                    (hs.q[0], hs.q[1], hs.heads * hs.head_dim),
                    (hs.k[0], hs.k[1], hs.kv_heads * hs.head_dim),
                    (hs.v[0], hs.v[1], hs.kv_heads * hs.head_dim))]
                o = weight(hs.o, hs) if hs.o is not None else None
            except KeyError:
                continue  # one of its layers failed or is not measured: nothing to publish
            finite = torch.stack([out[index[id(layer)], _FINITE] for layer in hs.layers()])
            out[row, _FINITE] = finite.min()
            qk, vo = attention.head_spectra(hs, *parts, o)
            # weight decay since the last sample shrinks each product by both its factors'
            steps = (self.step - hs.bulk_step if self.step is not None
                     and hs.bulk_step is not None else 0)
            if self.step is not None:
                hs.bulk_step = self.step
            decay = {layer: bulk_edges.decay_factor(*self._lr_wd(layer), steps)
                     for layer in hs.layers()}
            n_in = parts[0].shape[1]
            self._head_ranks(hs, row, "qk", qk, out, (n_in, n_in),
                             decay[hs.q[0]] * decay[hs.k[0]])
            if vo is not None and hs.o is not None:
                self._head_ranks(hs, row, "vo", vo, out, (hs.o.matrix_shape[0], n_in),
                                 decay[hs.o] * decay[hs.v[0]])
                ranks = torch.cat([out[row, COL["qk_rank"]:COL["qk_rank"] + 1],
                                   out[row, COL["vo_rank"]:COL["vo_rank"] + 1]])
            else:
                ranks = out[row, COL["qk_rank"]:COL["qk_rank"] + 1]
            out[row, COL["delta_rotation"]] = ranks.mean() / hs.head_dim

    def _head_ranks(self, hs: attention.HeadSet, row: int, pair: str, sv: torch.Tensor,
                    out: torch.Tensor, sizes: tuple[int, int], decay: float) -> None:
        """Per head, from the σ of its `pair` product (H, d): the rank #{√σ > τ_h},
        τ_h = max(rel_tol · the largest √σ₁ seen so far *of this head*, abs_tol) (relative to
        its own σ₁: a head whose scores are merely cooler keeps its rank); σ₁, stable and
        effective rank of the product (N/A for a zero product: undefined); `modes` above the
        head's own bulk (heads.product_modes; `sizes`: the two factors' lengths). On the
        module's row: the rank's mean and min (and, for VO, the dead-head fraction)."""
        good = out[row, _FINITE] == 1
        root = sv.sqrt().to(out.dtype)  # in the units of one factor: a balanced pair's own σ
        top = torch.where(good, root[:, 0], 0.0)
        seen = torch.maximum(hs.seen[pair], top) if pair in hs.seen else top
        hs.seen[pair] = seen  # stays on the device: no host sync
        tau = torch.clamp(self.rel_tol * seen, min=self.abs_tol)
        ranks = (root > tau[:, None]).sum(1).to(out.dtype)
        out[row, COL[f"{pair}_rank"]] = ranks.mean()
        out[row, COL[f"{pair}_rank_min"]] = ranks.min()
        family = spectra.rank_family(sv)
        undefined = torch.tensor(float("-inf"), dtype=sv.dtype, device=sv.device)
        series = {
            "rank": ranks,
            "sigma1": sv[:, 0],
            "stable_rank": torch.nan_to_num(family["stable_rank"], nan=float("-inf")),
            "erank": torch.where(sv[:, 0] > 0, family["effective_rank"], undefined),
            "modes": attention.product_modes(hs, pair, sv, *sizes, decay, good),
        }
        widest = (self._columns - _COLUMNS) // len(attention.PER_HEAD)
        for name, values in series.items():
            start = _COLUMNS + attention.PER_HEAD.index(f"{pair}_{name}") * widest
            out[row, start:start + hs.heads] = values.to(out.dtype)
        if pair == "vo":
            out[row, COL["dead_heads"]] = (ranks == 0).to(out.dtype).mean()

    def _deltas(self, snap: Snapshot, out: torch.Tensor) -> None:
        """delta_rank from this sample's spectra, and `broken` from each family's latest Δ.
        The other Δ were computed with the indicators they derive from (units.delta_*:
        _measure_group, _duplicates, _mirrors; attention rows: _heads). A Δ published as N/A
        (−inf: the symmetry does not hold for this layer, e.g. delta_perm of Linear → Linear)
        drops out of `broken`."""
        for idxs, sv, m, n in snap.spectra:
            idx = torch.tensor(idxs, device=out.device)
            count = out[idx, COL["modes"]] if "modes" in COL else torch.full(
                (len(idxs),), float("nan"), device=out.device)
            count = torch.where(torch.isfinite(count), count.to(sv.dtype),
                                _modes_above(sv, m, n).to(out.device))
            self._put(out, idxs, "delta_rank", units.delta_modes(sv, count, self.abs_tol))
        good = out[:, _FINITE] == 1
        for k, name in enumerate(DELTAS):
            value = out[:, COL[name]]
            ok = torch.isfinite(value) & good
            absent = (value == float("-inf")) & good
            self._delta[:, k] = torch.where(
                ok, value, torch.where(absent, float("nan"), self._delta[:, k]))
        known = ~torch.isnan(self._delta)
        broken = self._delta.nan_to_num(0).sum(1) / known.sum(1).clamp_min(1)
        out[:, COL["broken"]] = torch.where(known.any(1) & good, broken, out[:, COL["broken"]])

    # -- snapshot helpers ----------------------------------------------------------------------

    def _bias(self, i: int, m: int, device: torch.device) -> torch.Tensor:
        bias = self.layers[i].bias
        if bias is None:
            return torch.zeros(m, device=device)
        return bias.detach().float().reshape(m).to(device)

    def _out2(self, i: int, m: int, device: torch.device) -> torch.Tensor:
        """Σ over consumers of each unit's outgoing weight², accumulated in float32."""
        total = torch.zeros(m, device=device)
        for consumer in self.layers[i].consumers:
            w = consumer.input_weight.detach()  # type: ignore[union-attr]  # (o, m, *k)
            dims = [0] + list(range(2, w.dim()))
            # Σ of squares over the leading dim, not vector_norm(w, dim=0)²: CPU vector_norm
            # over a non-innermost dim is 8–15× slower (0.87 against 0.06 ms for 256 × 1024),
            # and this was half the cheap tier's time; the two differ by float rounding.
            total = total + w.float().square().sum(dim=dims)
        return total

    def _lr(self, layer: Layer) -> Any:
        """(η, power) for the layer's param group: effective_lr = η/‖w‖^power, by the
        optimizer's family (units.lr_power); None when no optimizer holds the weight or its
        family's scaling is not known."""
        for opt in self._optimizers:
            for group in opt.param_groups:
                if any(p is layer.weight for p in group["params"]):
                    power = units.lr_power(opt)
                    lr = group.get("lr")
                    if power is None or lr is None:
                        return None
                    return float(lr), power
        return None

    # -- decoding (publisher thread) -----------------------------------------------------------

    def decode_detail(self, groups: list[layer_detail.GroupDetail] | None
                      ) -> dict[str, dict[str, Any]]:
        """A full-tier sample's `last_detail` → METRICS `detail` (after the sample's ready
        event on CUDA: the tensors are read here, never on the training thread)."""
        if not groups:
            return {}
        wire = layer_detail.to_wire(groups, [layer.name for layer in self.layers])
        for i in self.failed:  # a layer whose measurement failed publishes N/A, no detail
            wire.pop(self.layers[i].name, None)
        return wire

    def decode(self, rows: list[list[float]]) -> tuple[dict[str, dict[str, float | None]], list[str]]:
        """Host rows from compute() → (`values` for a METRICS message, names of layers whose
        weights hold NaN/inf). Not computed (NaN) → left out; undefined (±inf) → None."""
        values: dict[str, dict[str, float | None]] = {}
        nonfinite: list[str] = []
        for i, (layer, row) in enumerate(zip(self.layers, rows)):
            if i in self.failed:
                values[layer.name] = {"weight_norm": None}
                continue
            if row[_FINITE] == 0.0:
                nonfinite.append(layer.name)
            found = _row_values(row, enumerate(INDICATORS))
            if found:  # nothing computed: not in this sample's slice, left out (kept as was)
                values[layer.name] = found
        widest = (self._columns - _COLUMNS) // len(attention.PER_HEAD)
        for hs, row in zip(self.heads, rows[len(self.layers):]):
            # per head: `qk_rank.h0`, … (integers), after the module's aggregates
            per_head = [(_COLUMNS + k * widest + h, f"{name}.h{h}")
                        for k, name in enumerate(attention.PER_HEAD) for h in range(hs.heads)]
            head_values = _row_values(row, [*enumerate(INDICATORS), *per_head])
            if head_values and row[_FINITE] == 0.0:
                nonfinite.append(hs.name)
            if head_values:
                values[hs.name] = head_values
        return values, nonfinite


def _exact_sigma1(m: int, n: int) -> bool:
    """Whether an m × n matrix's cheap-tier σ₁ is the exact one from its Gram (no Lanczos, no
    start vector): its short side is at most EXACT_SIGMA1_DIM."""
    return min(m, n) <= EXACT_SIGMA1_DIM


def _narrow_sigma1(w: torch.Tensor) -> torch.Tensor:
    """σ₁ of each matrix with a short side of at most EXACT_SIGMA1_DIM, exactly: the largest
    eigenvalue of its k × k Gram matrix (float32 product of the matrix scaled by its largest
    entry, float64 eigvalsh: measured within 1e-5 of σ₁² for long sides up to 10⁶, far inside
    SIGMA1_TOL). The scaling keeps a finite but huge weight (entries ~1e19) from overflowing
    the float32 Gram, which made eigvalsh raise and switched the whole shape group off. On
    CUDA eigvalsh synchronises with the host once per group, as the Lanczos path's final
    eigh does."""
    scale = w.abs().amax(dim=(1, 2)).clamp_min(torch.finfo(w.dtype).tiny)  # (B,)
    g = spectra.gram(w / scale[:, None, None]).double()
    top = torch.linalg.eigvalsh(g)[:, -1].clamp_min(0).sqrt()
    return (top * scale.double()).to(w.dtype)


def _modes_above(sv: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """#{σ above the random bulk's edge} per matrix (B,) for descending σ (B, k) of m × n
    matrices (bulk.py's self-consistent edge, entry threshold, no state between samples):
    the fallback count for Δ_rank / Δ_rotation where no `modes` column gives it."""
    enter = bulk_edges.bulk_edge(sv, m, n)[0]
    return (sv > enter[:, None]).sum(1).to(sv.dtype)


def _rank_tol(s1: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """numerical_rank's tolerance, numpy.linalg.matrix_rank's: σ₁·max(m, n)·eps(float32)
    (the weights' own float32 rounding), relative to the current σ₁ (B,)."""
    return s1 * max(m, n) * torch.finfo(torch.float32).eps


def _row_values(row: list[float], columns: Any) -> dict[str, float | None]:
    """One row's wire values: NaN (not computed) left out, ±inf (undefined) → None."""
    out: dict[str, float | None] = {}
    for k, name in columns:
        x = row[k]
        if x != x:
            continue
        if x in (float("inf"), float("-inf")):
            out[name] = None
        elif name in INTEGER_INDICATORS or (
                ".h" in name and name.partition(".h")[0] in attention.INTEGER_PER_HEAD):
            out[name] = int(round(x))
        else:
            out[name] = x
    return out
