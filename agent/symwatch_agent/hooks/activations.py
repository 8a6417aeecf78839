"""Copy a few rows of the layers' activations, and the classifier's features and labels, from
the forward pass of a sampled step (docs/metrics.md, "Representations").

Nothing is registered between samples: the post-step hook of the step before a due one (and
watch(), for step 1, which always samples) *arms* the capture (forward hooks on the layers
whose turn it is, a forward pre-hook on a classifier among them, the `cross_entropy` label
listener of loss_capture.py); the forward pass fires each hook once (the hook removes
nothing itself: a hook that already copied returns at once), and the sample `take()`s what
was copied and disarms all of it. Its values join that sample's METRICS message. A step that
is not about to be sampled pays nothing in its forward (no hook is called) and one attribute
check plus one modulo in the post-step hook; a due step the budget then skips drops its
capture.

What a hook does (training thread, no device sync, never raises into training):
- picks at most ROW_CAP rows of the output (batch × positions flattened; channels-first
  outputs read as (N·H·W) × C), one at random in each of ROW_CAP equal strata, with a
  private generator (the user's RNG stream is untouched:
  a watched run draws the same random numbers as an unwatched one);
- gathers them into a fresh tensor on the current stream (an in-place op later in the
  forward, `ReLU(inplace=True)`, cannot change the copy), then on CUDA copies it to pinned
  host memory on a side stream that waits for the current one (`non_blocking`, an event for
  the publisher thread to wait on); on CPU the gathered tensor is the copy.

Probes (`Probe`): a function of one module's forward (its inputs or its output) that returns a
small device tensor computed there (the attention max-logit per head, measure/logits.py, a few
floats per module), copied like the rows; armed with the rows, every sample, outside the
ACT_BYTES window (what they copy is a few floats, what they compute is capped by their own
function).

The budget: rows of at most ACT_BYTES per sample (float32), the layers taken in turn, so at
LLM width (4096 units: 16 MiB a layer at 1024 rows) a sample copies one layer and the next
sample the next; a classifier's features are taken with its rows. The agent also caps the
number of layers (`most`) at as many as the full sample measures (its slice of the weights):
the publisher's eigendecompositions of every layer's rows (~0.3 ms a layer) cost a GPT-style
model ~11 ms per full sample, against ~1.6 ms for the one layer whose spectra its slice
computed, and starved the weights' full tier (docs/benchmarks.md, "Fifth pass").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from symwatch_agent.hooks import loss_capture

ROW_CAP = 1024  # rows per layer and sample (the estimates' error: docs/metrics.md)
# float32 activation rows copied per sample, all layers together (at least one layer). 4 MiB:
# the copy and the publisher's eigendecompositions are per-sample costs, and at 64 MiB they
# were most of a one-chunk sample's cost on a GPT-style model (docs/benchmarks.md)
ACT_BYTES = 4 << 20
MAX_CLASSES = 4096  # NC1–NC3 only for a classifier with at most this many outputs
# Fewer rows than this are not copied: a batch of 8 reads a rank of at most 7 whatever the
# layer, and a bulk needs MIN_BULK = 16 values to be fitted (measure/bulk.py).
MIN_ROWS = 32


@dataclass
class Target:
    """One layer whose output is captured: `unit_dim` is the output dim holding its `units`
    (-1, or 1 for channels-first outputs); `weight` (a classifier) returns its weight as a
    (classes × features) matrix, and its input features are captured for NC1–NC3."""

    name: str
    module: nn.Module
    unit_dim: int
    units: int
    weight: Callable[[], torch.Tensor] | None = None


@dataclass
class Probe:
    """A function of one forward call of `module`: `fn(args, kwargs, output)` (output None
    for a pre-hook) returns a device tensor, or None while it still waits for another probe of
    the same `key` (a q and a k projection). The first tensor returned for a key is kept.
    hooks/ may not import measure/: the function comes from the agent (measure/logits.py)."""

    key: str
    module: nn.Module
    fn: Callable[[tuple[Any, ...], dict[str, Any], Any], torch.Tensor | None]
    pre: bool = False  # a forward pre-hook (sees the keyword arguments) instead of a hook


@dataclass
class Capture:
    """What one armed forward copied; `read()` on the publisher thread."""

    step: int
    activations: dict[str, Any] = field(default_factory=dict)  # name -> pending copy
    # the classifier: name, pending features, their row index (None: all rows), the number
    # of rows the forward had, pending weight
    features: tuple[str, Any, torch.Tensor | None, int, Any] | None = None
    labels: Any = None  # pending copy of the flattened labels
    cost_s: float = 0.0  # time the hooks took on the training thread
    errors: list[str] = field(default_factory=list)
    probes: dict[str, Any] = field(default_factory=dict)  # key -> pending copy (Probe)

    def read(self) -> tuple[dict[str, torch.Tensor],
                            tuple[str, torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """Wait for the copies (publisher thread); the activations by layer, and the
        classifier's (name, features, labels aligned to them, weight) when labels came with
        as many rows as the features had."""
        acts = {name: _ready(pending) for name, pending in self.activations.items()}
        collapse = None
        if self.features is not None and self.labels is not None:
            name, pending, idx, rows, weight = self.features
            labels = _ready(self.labels).reshape(-1)
            if labels.numel() == rows:
                if idx is not None:
                    labels = labels[idx]
                collapse = (name, _ready(pending), labels, _ready(weight))
        return acts, collapse

    def read_probes(self) -> dict[str, torch.Tensor]:
        """Wait for the probes' copies (publisher thread): key -> host tensor."""
        return {key: _ready(pending) for key, pending in self.probes.items()}


class ActivationCapture:
    """The capture state of one agent (see the module docstring)."""

    def __init__(self, row_cap: int = ROW_CAP, act_bytes: int = ACT_BYTES,
                 seed: int = 0) -> None:
        self.row_cap, self.act_bytes = row_cap, act_bytes
        self.armed = False  # hooks are registered; the hot path reads only this
        self.fired = False  # at least one hook ran since arm()
        self._handles: list[Any] = []
        self._capture: Capture | None = None
        self._gen = torch.Generator().manual_seed(seed)
        self._streams: dict[torch.device, Any] = {}
        self._turn = 0  # where the next sample's window of layers starts

    def arm(self, targets: list[Target], step: int, probes: tuple[Probe, ...] = (),
            most: int | None = None) -> None:
        """Hook the next forward pass: this sample's window of layers (at most `most` of
        them when given), the features of a classifier among them, every probe."""
        if self.armed:
            return
        self._capture = Capture(step)
        self.fired = False
        layers = [t for t in targets if t.units >= 2]
        window = self._window(layers, most)
        for target in window:
            self._handles.append(target.module.register_forward_hook(
                self._output_hook(target)))
        # A classifier's features (NC1–NC3) with its own rows, when its turn comes: ~3 ms of
        # the publisher on a 256-class head, each full sample, was as much as a layer's rows.
        classifiers = [t for t in window if t.weight is not None]
        for target in classifiers:
            self._handles.append(target.module.register_forward_pre_hook(
                self._feature_hook(target)))
        for probe in probes:
            if probe.pre:
                self._handles.append(probe.module.register_forward_pre_hook(
                    self._probe_hook(probe), with_kwargs=True))
            else:
                self._handles.append(probe.module.register_forward_hook(
                    self._probe_hook(probe), with_kwargs=True))
        if classifiers:
            loss_capture.add_label_listener(self._on_cross_entropy)
        self.armed = True

    def take(self) -> Capture | None:
        """Disarm and hand over what was copied (None when nothing was armed)."""
        capture = self._capture
        self.disarm()
        return capture

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        loss_capture.remove_label_listener(self._on_cross_entropy)
        self._capture = None
        self.armed = self.fired = False

    def log_labels(self, labels: Any) -> None:
        """Labels given to `Agent.log(labels=…)`: they take precedence over cross_entropy's."""
        capture = self._capture
        if capture is None or not isinstance(labels, torch.Tensor):
            return
        began = time.perf_counter()
        try:
            capture.labels = self._copy(labels.detach().reshape(-1).clone())
        except Exception as exc:
            capture.errors.append(f"labels: {type(exc).__name__}: {exc}")
        capture.cost_s += time.perf_counter() - began

    # -- the hooks (training thread) -----------------------------------------------------------

    def _window(self, layers: list[Target], most: int | None = None) -> list[Target]:
        """The layers this sample captures: in turn from where the last window ended, up to
        act_bytes of rows and `most` layers (at least one layer)."""
        if not layers:
            return []
        chosen, used = [], 0
        for k in range(len(layers) if most is None else min(len(layers), max(1, most))):
            target = layers[(self._turn + k) % len(layers)]
            size = self.row_cap * target.units * 4
            if chosen and used + size > self.act_bytes:
                break
            chosen.append(target)
            used += size
        self._turn = (self._turn + len(chosen)) % len(layers)
        return chosen

    def _output_hook(self, target: Target) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            capture = self._capture
            if capture is None or target.name in capture.activations:
                return
            began = time.perf_counter()
            try:
                out = output[0] if isinstance(output, (tuple, list)) else output
                if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() >= 2:
                    dim = target.unit_dim if out.dim() > 2 else -1
                    if out.shape[dim] == target.units and out.numel() // target.units >= MIN_ROWS:
                        rows, _, _ = self._rows(out, dim)
                        capture.activations[target.name] = self._copy(rows)
                        self.fired = True
            except Exception as exc:  # a hook must never break the user's forward
                capture.errors.append(f"{target.name}: {type(exc).__name__}: {exc}")
            capture.cost_s += time.perf_counter() - began
        return hook

    def _probe_hook(self, probe: Probe) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any = None) -> None:
            capture = self._capture
            if capture is None or probe.key in capture.probes:
                return
            began = time.perf_counter()
            try:
                found = probe.fn(args, kwargs, output)
                if found is not None:
                    capture.probes[probe.key] = self._copy(found.detach())
                    self.fired = True
            except Exception as exc:  # noqa: BLE001 (a probe must never break the user's forward)
                capture.errors.append(f"{probe.key}: {type(exc).__name__}: {exc}")
            capture.cost_s += time.perf_counter() - began
        return hook

    def _feature_hook(self, target: Target) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            capture = self._capture
            if capture is None or capture.features is not None or target.weight is None:
                return
            began = time.perf_counter()
            try:
                x = args[0] if args else None
                weight = target.weight()
                if (isinstance(x, torch.Tensor) and x.is_floating_point()
                        and weight.shape[0] <= MAX_CLASSES and x.shape[-1] == weight.shape[1]
                        and x.numel() // max(1, x.shape[-1]) >= MIN_ROWS):
                    rows, idx, total = self._rows(x, -1)
                    copied = self._copy(weight.detach().to(torch.float32, copy=True))
                    capture.features = (target.name, self._copy(rows), idx, total, copied)
                    self.fired = True
            except Exception as exc:
                capture.errors.append(f"{target.name} features: {type(exc).__name__}: {exc}")
            capture.cost_s += time.perf_counter() - began
        return hook

    def _on_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        capture = self._capture
        if (capture is None or capture.labels is not None or capture.features is None
                or not isinstance(target, torch.Tensor) or target.is_floating_point()):
            return  # class probabilities as targets: no labels
        began = time.perf_counter()
        try:
            capture.labels = self._copy(target.detach().reshape(-1).clone())
        except Exception as exc:
            capture.errors.append(f"labels: {type(exc).__name__}: {exc}")
        capture.cost_s += time.perf_counter() - began

    def _rows(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """At most row_cap rows of x read as (rows × units), float32, in a fresh tensor on
        x's device; the row index used (CPU, None: all) and how many rows there were."""
        x = x.detach()
        if dim == -1 or dim == x.dim() - 1:
            flat = x.reshape(-1, x.shape[-1])  # a view when x is contiguous
            total = flat.shape[0]
            idx = self._pick(total)
            if idx is None:
                return flat.to(torch.float32, copy=True), None, total
            return flat.index_select(0, self._on(idx, x.device)).float(), idx, total
        # channels first (N, C, *spatial): the rows are the N·S positions
        cube = x.flatten(2)  # (N, C, S)
        n, c, s = cube.shape
        total = n * s
        idx = self._pick(total)
        if idx is None:
            return cube.transpose(1, 2).reshape(-1, c).to(torch.float32, copy=True), None, total
        where = self._on(idx, x.device)
        return cube[where // s, :, where % s].float(), idx, total

    def _pick(self, total: int) -> torch.Tensor | None:
        """row_cap distinct row numbers of `total` from the private generator, None when all
        of them fit: one uniformly random row in each of row_cap equal strata (every row
        equally likely, the batch covered evenly, O(row_cap) whatever the batch)."""
        cap = self.row_cap
        if total <= cap:
            return None
        start = torch.arange(cap + 1, dtype=torch.int64) * total // cap
        width = start[1:] - start[:-1]  # ≥ 1 each
        offset = (torch.rand(cap, generator=self._gen, dtype=torch.float64) * width).long()
        return start[:-1] + torch.minimum(offset, width - 1)

    @staticmethod
    def _on(idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cuda":  # pinned, so the copy does not wait for the device
            return idx.pin_memory().to(device, non_blocking=True)
        return idx

    def _copy(self, fresh: torch.Tensor) -> Any:
        """`fresh` (our own tensor) on its way to the host: on CUDA copied to pinned memory on
        a side stream that waits for the current one, with the event that says it is done;
        on CPU the tensor itself."""
        if fresh.device.type != "cuda":
            return fresh, None
        side = self._streams.get(fresh.device)
        if side is None:
            side = self._streams[fresh.device] = torch.cuda.Stream(fresh.device)
        side.wait_stream(torch.cuda.current_stream(fresh.device))
        with torch.cuda.stream(side):
            host = torch.empty(fresh.shape, dtype=fresh.dtype, pin_memory=True)
            host.copy_(fresh, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        fresh.record_stream(side)  # its memory is not reused before the copy has read it
        return host, done


def _ready(pending: Any) -> torch.Tensor:
    tensor, done = pending
    if done is not None:
        done.synchronize()  # publisher thread
    return tensor
