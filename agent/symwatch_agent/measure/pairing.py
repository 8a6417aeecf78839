"""Who reads whose units: the pairing of consecutive layers that the unit-level indicators need.

Several symmetries act on a *pair* of layers: a hidden unit's incoming weights (a row of the
producer, its bias) and its outgoing weights (a column of each consumer):

- dead units and duplicated units need the outgoing weights (a unit is dead only if it is off
  on both sides; two units are interchangeable only if they match on both sides); duplicates
  only mean something where a nonlinearity lies in between (`permutes`): with only linear
  maps the pair's symmetry is a rotation, not a permutation;
- positive rescaling `(w_in·a, b·a, w_out/a)` holds when only positively homogeneous maps
  (ReLU, LeakyReLU, dropout, pooling, a positive constant) lie in between: `balance`;
- rotation `W₁ → RW₁, W₂ → W₂Rᵀ` holds when *nothing* lies in between: `mirror_rank`;
- scale invariance holds for a Linear/Conv whose output goes straight into a norm.

Pairings come from three sources, later ones overriding earlier ones:

1. **Static** (`static_edges`): children of an `nn.Sequential`, in order (Linear, ReLU,
   Linear, …), and PEFT-style LoRA adapters (`lora_A[k]` → `lora_B[k]`, nothing in between).
   This is all `symwatch inspect` has, since it runs no forward pass.
2. **One observed forward pass** (`ForwardObserver`): a forward pre-hook on each model enters a
   `TorchFunctionMode` for that model's first forward, and the matching forward hook leaves it
   and removes both hooks at once. The mode sees every torch call and follows each measured
   layer's output tensor (by identity) through elementwise functions, scalar scaling, dropout,
   pooling and shape changes that keep the unit dimension, to the next layer that reads it with
   a weight (F.linear, conv, embedding, a norm, attention). Any other use of the tensor (a
   residual add, a concatenation, slicing) marks the producer as escaping: its units are then
   not paired, because no symmetry of the pair alone holds. It costs one forward pass of Python
   overhead, once. Compiled models (`torch.compile`) are not traced; they keep the static pairing.
3. **The user**: `watch(..., pairs={"fc1": "fc2"})` (a name or a list of names; None unpairs).
   A user pair is taken as a rescaling pair (balance and dead/duplicate outgoing weights).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from symwatch_agent.measure.layers import ATTENTION, EMBEDDING, LINEAR, NORM, Layer, unwrap

# Between a producer and its consumer these keep the pair's symmetries:
IDENTITY_OPS = frozenset({"contiguous", "clone", "to", "float", "half", "bfloat16", "double",
                          "type", "type_as", "detach", "cuda", "cpu"})
# positively homogeneous, f(a·x) = a·f(x) for a > 0: rescaling holds
HOMOGENEOUS_OPS = frozenset({"relu", "leaky_relu", "dropout", "dropout1d", "dropout2d",
                             "dropout3d", "max_pool", "avg_pool", "scale"})
# unit-wise but not homogeneous: permutation and dead units hold, rescaling does not
ELEMENTWISE_OPS = frozenset({"gelu", "silu", "tanh", "sigmoid", "elu", "selu", "celu",
                             "softplus", "mish", "hardtanh", "relu6", "hardswish",
                             "hardsigmoid", "logsigmoid", "softsign", "shift", "negscale"})
RELU_FAMILY = frozenset({"relu", "relu6"})  # outputs exactly 0 when the unit is off
# linear maps of each unit's output that commute with mixing the units (up to a bias the
# consumer absorbs): with only these in between, the pair's symmetry is a rotation, not a
# permutation (no duplicate units to count)
LINEAR_OPS = IDENTITY_OPS | frozenset({"scale", "negscale", "shift", "avg_pool"})
SHAPE_OPS = frozenset({"transpose", "swapaxes", "t", "permute", "view", "reshape", "flatten",
                       "unsqueeze", "squeeze", "unflatten"})

_MODULE_OPS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.LeakyReLU, "leaky_relu"), (nn.GELU, "gelu"),
    (nn.SiLU, "silu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"), (nn.ELU, "elu"),
    (nn.SELU, "selu"), (nn.Softplus, "softplus"), (nn.Mish, "mish"), (nn.Hardtanh, "hardtanh"),
    (nn.Hardswish, "hardswish"), (nn.Dropout, "dropout"), (nn.Dropout1d, "dropout"),
    (nn.Dropout2d, "dropout"), (nn.Dropout3d, "dropout"),
    (nn.MaxPool1d, "max_pool"), (nn.MaxPool2d, "max_pool"), (nn.MaxPool3d, "max_pool"),
    (nn.AvgPool1d, "avg_pool"), (nn.AvgPool2d, "avg_pool"), (nn.AvgPool3d, "avg_pool"))


@dataclass(frozen=True)
class Edge:
    """`producer`'s units are read by `consumer` after `ops`; `aligned`: the consumer reads
    them one input column per unit (so the columns are the units' outgoing weights)."""

    producer: str
    consumer: str
    ops: tuple[str, ...]
    aligned: bool = True


@dataclass
class Observed:
    """What one source of pairing found."""

    edges: list[Edge] = field(default_factory=list)
    escaped: set[str] = field(default_factory=set)
    relu: set[str] = field(default_factory=set)


# -- static pairing ------------------------------------------------------------------------------

def static_edges(models: Mapping[str, nn.Module], layers: list[Layer]) -> Observed:
    """Pairs visible without running the model: nn.Sequential children and LoRA adapters."""
    by_module: dict[int, Layer] = {}
    for layer in layers:
        if layer.kind != ATTENTION:
            by_module.setdefault(id(layer.module), layer)
    found = Observed()
    for model in models.values():
        for module in unwrap(model).modules():
            if isinstance(module, nn.Sequential):
                _sequential_edges(module, by_module, found)
            lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
            if isinstance(lora_a, nn.ModuleDict) and isinstance(lora_b, nn.ModuleDict):
                for key in lora_a.keys():
                    a, b = by_module.get(id(lora_a[key])), by_module.get(id(lora_b[key]))
                    if a is not None and b is not None and key in lora_b:
                        found.edges.append(Edge(a.name, b.name, ()))
            elif isinstance(lora_a, nn.Linear) and isinstance(lora_b, nn.Linear):
                a, b = by_module.get(id(lora_a)), by_module.get(id(lora_b))
                if a is not None and b is not None:
                    found.edges.append(Edge(a.name, b.name, ()))
    return found


def _sequential_edges(seq: nn.Sequential, by_module: dict[int, Layer], found: Observed) -> None:
    producer: Layer | None = None
    ops: list[str] = []
    for child in seq.children():
        layer = by_module.get(id(child))
        if layer is not None:
            if producer is not None:
                aligned = layer.input_weight is not None and layer.kind != NORM
                if layer.kind == NORM:  # a norm reads the units too (normed_by), unaligned
                    aligned = False
                found.edges.append(Edge(producer.name, layer.name, tuple(ops), aligned))
            producer, ops = layer, []
            continue
        op = next((name for cls, name in _MODULE_OPS if isinstance(child, cls)), None)
        if isinstance(child, nn.Identity):
            continue
        if op is None or producer is None:
            producer, ops = None, []  # an unknown module: we cannot follow the units through
            continue
        if op in RELU_FAMILY and all(o in IDENTITY_OPS for o in ops):
            found.relu.add(producer.name)
        ops.append(op)


# -- one observed forward pass -------------------------------------------------------------------

@dataclass(frozen=True)
class _Tag:
    producer: str
    ops: tuple[str, ...]
    udim: int  # which dim of the tensor holds the producer's units (non-negative)


def _canonical(name: str) -> str:
    name = name.strip("_")
    if name.startswith("r") and name[1:] in ("mul", "add", "sub", "truediv", "div"):
        name = name[1:]
    for prefix in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool"):
        if name.startswith(prefix):
            return "avg_pool" if "avg" in prefix else "max_pool"
    return name


class _Tracer(TorchFunctionMode):
    """Follows measured layers' outputs through one forward pass (see the module docstring).
    Never raises into the model: a failure only ends the tracing."""

    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.reader: dict[int, Layer] = {}  # id(weight passed to a torch function) -> reader
        self.source: dict[int, Layer] = {}  # id(that weight) -> the layer that produces output
        for layer in layers:
            if layer.kind == ATTENTION:
                if layer.input_weight is not None:  # the q slot reads with in_proj_weight
                    self.reader[id(layer.input_weight)] = layer
                continue
            self.reader.setdefault(id(layer.weight), layer)
            self.source.setdefault(id(layer.weight), layer)
        for layer in layers:  # attention's output units are out_proj's rows
            if layer.kind == ATTENTION and layer.input_weight is not None:
                out_proj = getattr(layer.module, "out_proj", None)
                out = self.source.get(id(getattr(out_proj, "weight", None)))
                if out is not None:
                    self.source[id(layer.input_weight)] = out
        self.tags: dict[int, _Tag] = {}
        self.keep: list[torch.Tensor] = []  # holds tagged tensors so their ids stay unique
        self.found = Observed()
        self.failed = False

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self.failed:
            try:
                self._observe(_canonical(getattr(func, "__name__", "")), args, kwargs, result)
            except Exception:  # tracing is best effort; the model's forward is untouched
                self.failed = True
        return result

    def _tag(self, tensor: Any, tag: _Tag) -> None:
        if isinstance(tensor, torch.Tensor):
            self.tags[id(tensor)] = tag
            self.keep.append(tensor)

    def _observe(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        flat = list(args) + list(kwargs.values())
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        weights = [t for t in tensors if id(t) in self.reader]
        tagged = [(t, self.tags[id(t)]) for t in tensors if id(t) in self.tags]
        if weights:  # a layer reads its input with a weight: F.linear, conv, norm, attention
            reader = self.reader[id(weights[0])]
            for t, tag in tagged:
                if id(t) in self.reader:
                    continue
                self.found.edges.append(Edge(tag.producer, reader.name, tag.ops,
                                             _aligned(reader, t, tag)))
            out = result[0] if isinstance(result, tuple) else result
            source = self.source.get(id(weights[0]))
            if source is not None and isinstance(out, torch.Tensor) and out.dim() >= 1:
                udim = out.dim() - 1 if source.reads_dim == -1 or out.dim() < 2 else 1
                if source.kind == NORM:
                    udim = out.dim() - 1 if source.norm_scope == "layer" else min(1, out.dim() - 1)
                self._tag(out, _Tag(source.name, (), udim))
            return
        if not tagged:
            return
        produced = result if isinstance(result, torch.Tensor) else None
        if produced is None and not (isinstance(result, (tuple, list)) and
                                     any(isinstance(r, torch.Tensor) for r in result)):
            return  # .shape, .size(), .dim(), …: reading metadata is not a use
        t, tag = tagged[0]
        data_first = len(tagged) == 1 and args and args[0] is t
        others = [a for a in flat[1:] if isinstance(a, torch.Tensor)] if data_first else [None]
        if produced is not None and data_first and not others:
            op = _unary_op(name, args)
            if op is not None:
                if op in RELU_FAMILY and all(o in IDENTITY_OPS for o in tag.ops):
                    self.found.relu.add(tag.producer)
                ops = tag.ops if op in IDENTITY_OPS else tag.ops + (op,)
                self._tag(produced, _Tag(tag.producer, ops, tag.udim))
                return
            if name in SHAPE_OPS:
                udim = _moved_unit_dim(name, args, kwargs, t, produced, tag.udim)
                if udim is not None:
                    self._tag(produced, _Tag(tag.producer, tag.ops, udim))
                    return
        for _, other in tagged:
            self.found.escaped.add(other.producer)


def _unary_op(name: str, args: tuple) -> str | None:
    """The canonical op name when `name(x, ...)` acts on each unit on its own, else None."""
    if name in IDENTITY_OPS or name in HOMOGENEOUS_OPS or name in ELEMENTWISE_OPS:
        return name
    if name in ("mul", "div", "truediv", "add", "sub") and len(args) >= 2 and \
            isinstance(args[1], (int, float)) and not isinstance(args[1], bool):
        if name in ("add", "sub"):
            return "shift"
        return "scale" if args[1] > 0 else "negscale"
    return None


def _moved_unit_dim(name: str, args: tuple, kwargs: dict, before: torch.Tensor,
                    after: torch.Tensor, udim: int) -> int | None:
    """Where the unit dim is after a shape op, or None when the op mixes it with others."""
    if name in ("transpose", "swapaxes", "t"):
        dims = [a for a in args[1:3] if isinstance(a, int)] if name != "t" else [0, 1]
        if len(dims) == 2:
            a, b = (d % before.dim() for d in dims)
            return b if udim == a else a if udim == b else udim
        return None
    if name == "permute":
        perm = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
        perm = [p % before.dim() for p in perm]
        return perm.index(udim) if udim in perm else None
    n = before.shape[udim]
    if udim == before.dim() - 1 and after.dim() >= 1 and after.shape[-1] == n:
        return after.dim() - 1  # reshapes that keep the last (unit) dim whole
    if udim < after.dim() and before.shape[:udim + 1] == after.shape[:udim + 1]:
        return udim  # e.g. (N, C, H, W) -> (N, C, H·W)
    return None


def _aligned(reader: Layer, tensor: torch.Tensor, tag: _Tag) -> bool:
    """Does `reader` read the producer's units one input column each?"""
    if tensor.dim() == 0:
        return False
    want = tensor.dim() - 1 if reader.reads_dim == -1 or tensor.dim() < 2 else 1
    if reader.kind == NORM:
        return False  # a norm mixes the units (or is scale-invariant per unit): see normed_by
    return reader.input_weight is not None and tag.udim == want and \
        reader.input_weight.shape[1] == tensor.shape[tag.udim]


class ForwardObserver:
    """Traces the first forward pass of each model, then removes its hooks at once.

    `on_done(observed)` is called once per model with what that pass found. Costs nothing
    after that pass: no hook stays registered.
    """

    def __init__(self, models: Mapping[str, nn.Module], layers: list[Layer],
                 on_done: Callable[[Observed], None]) -> None:
        self._handles: list[Any] = []
        self._layers = layers
        self._on_done = on_done
        for model in models.values():
            if hasattr(model, "_orig_mod"):  # torch.compile: tracing would force recompiles
                continue
            root = unwrap(model)
            state: dict[str, Any] = {}
            pre = root.register_forward_pre_hook(self._make_pre(state))
            post = root.register_forward_hook(self._make_post(state), always_call=True)
            state["handles"] = (pre, post)
            self._handles += [pre, post]

    def _make_pre(self, state: dict[str, Any]) -> Callable[..., None]:
        def pre(module: nn.Module, args: Any) -> None:
            if "tracer" in state or state.get("done"):
                return  # a re-entrant call of the same model: the outer pass traces it
            try:
                tracer = _Tracer(self._layers)
                tracer.__enter__()
                state["tracer"] = tracer
            except Exception:
                state["done"] = True
        return pre

    def _make_post(self, state: dict[str, Any]) -> Callable[..., None]:
        def post(module: nn.Module, args: Any, output: Any) -> None:
            tracer = state.pop("tracer", None)
            if tracer is None:
                return
            state["done"] = True
            try:
                tracer.__exit__(None, None, None)
            finally:
                for handle in state["handles"]:
                    handle.remove()
                tracer.keep.clear()
                tracer.tags.clear()
                if not tracer.failed:
                    self._on_done(tracer.found)
        return post

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# -- applying a pairing --------------------------------------------------------------------------

def apply(layers: list[Layer], sources: Iterable[Observed],
          overrides: Mapping[str, str | list[str] | None] | None = None,
          classifier: bool | str | list[str] | None = True,
          models: Iterable[str] = ()) -> None:
    """Set every layer's pairing fields from the sources (later ones win per producer), the
    user's overrides, and the classifier choice (True: the last Linear of each model)."""
    by_name = {layer.name: layer for layer in layers}
    for layer in layers:
        layer.consumers, layer.ops = [], ()
        layer.rescale = layer.mirror = layer.relu = layer.user_paired = False
        layer.normed_by = None
        layer.classifier = False
    edges: dict[str, list[Edge]] = {}
    escaped: set[str] = set()
    relu: set[str] = set()
    for source in sources:
        grouped: dict[str, list[Edge]] = defaultdict(list)
        for edge in source.edges:
            grouped[edge.producer].append(edge)
        for producer, es in grouped.items():
            edges[producer] = es
            escaped.discard(producer)
        escaped |= source.escaped
        relu |= source.relu
    for producer, es in edges.items():
        p = by_name.get(producer)
        if p is None or producer in escaped:
            continue
        es = list(dict.fromkeys(es))
        consumers = [by_name[e.consumer] for e in es if e.consumer in by_name]
        ops = tuple(dict.fromkeys(op for e in es for op in e.ops))
        if len(consumers) != len(es):
            continue
        if not all(e.aligned for e in es):
            c = consumers[0]
            # Scale invariance survives positively homogeneous maps: LN(relu(a·x)) = LN(relu(x))
            if len(es) == 1 and c.kind == NORM and p.kind != NORM and \
                    all(o in IDENTITY_OPS or o in HOMOGENEOUS_OPS for o in ops):
                p.normed_by = c.norm_scope
            continue
        p.consumers = list(dict.fromkeys(consumers))
        p.ops = ops
        p.rescale = all(o in HOMOGENEOUS_OPS or o in IDENTITY_OPS for o in ops)
        p.mirror = (len(p.consumers) == 1 and p.kind in (LINEAR, EMBEDDING) and
                    p.consumers[0].kind == LINEAR and all(o in IDENTITY_OPS for o in ops))
    for name in relu:
        if name in by_name:
            by_name[name].relu = True
    for producer, consumer in (overrides or {}).items():
        p = by_name.get(producer)
        if p is None:
            raise ValueError(f"pairs: no measured layer named {producer!r}; "
                             f"layers are {sorted(by_name)}")
        names = [] if consumer is None else [consumer] if isinstance(consumer, str) else list(consumer)
        cs = []
        for name in names:
            c = by_name.get(name)
            if c is None or c.input_weight is None or c.input_weight.shape[1] != p.units:
                raise ValueError(f"pairs: {producer!r} -> {name!r}: {name!r} is not a layer "
                                 f"that reads {p.units} input units")
            cs.append(c)
        observed_mirror = p.mirror and [c.name for c in p.consumers] == names
        p.consumers, p.user_paired = cs, True
        p.rescale = bool(cs)
        p.mirror = observed_mirror
        p.ops = p.ops if observed_mirror else ()
    _choose_classifier(layers, classifier, by_name, list(models))


def permutes(layer: Layer) -> bool:
    """Whether `layer`'s units have the permutation symmetry and no larger rotation one: it
    has consumers, and something other than a linear map lies in between (an elementwise
    nonlinearity, dropout, max pooling; a user pair counts as a ReLU pair unless it is an
    observed factor pair). Only such layers have duplicate units to count: two units of a
    Linear → Linear pair that are parallel are one direction of a low-rank product, which the
    rank and mirror family measure."""
    if not layer.consumers:
        return False
    if layer.user_paired and not layer.mirror:
        return True
    return any(op not in LINEAR_OPS for op in layer.ops)


def _choose_classifier(layers: list[Layer], classifier: bool | str | list[str] | None,
                       by_name: dict[str, Layer], models: list[str]) -> None:
    if classifier is None or classifier is False:
        return
    if classifier is True:
        last: dict[str, Layer] = {}
        for layer in layers:
            if layer.kind == LINEAR and not layer.consumers and not layer.normed_by:
                model = next((m for m in models if m and layer.name.startswith(m + ".")), "")
                last[model] = layer
        for layer in last.values():
            layer.classifier = True
        return
    for name in [classifier] if isinstance(classifier, str) else classifier:
        if name not in by_name:
            raise ValueError(f"classifier: no measured layer named {name!r}")
        by_name[name].classifier = True
