"""Find the models and optimizers of a process that did not hand them to `watch()`.

Used by the two ways the agent gets into a script that never imported symwatch: the start-up
hook of `symwatch run` (bootstrap/sitecustomize.py) and injection into a running process
(`symwatch inject`, attach.py). One pass over `gc.get_objects()` finds every live
`torch.optim.Optimizer` and `nn.Module`; the models are the *outermost* modules owning the
optimizers' parameters (a module that is a child of another found module is not outermost),
so `model.forward(x)` called directly, DDP or `torch.compile` wrappers still give the whole
model. Several models are named after the script's global variables holding them (`G`, `D`),
else their class names.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, Sequence

from torch import nn
from torch.optim import Optimizer


def find_models(first_optimizer: Any, first_module: Any = None,
                optimizers: Sequence[Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """(named models, optimizers): the outermost modules owning the optimizers' parameters,
    plus `first_module`'s outermost module when given (a frozen teacher, say). `optimizers`:
    the ones to use; default: `first_optimizer` and every other live optimizer. The first
    optimizer of the result is `first_optimizer` (the agent counts steps on it)."""
    modules: list = []
    found = [first_optimizer] if first_optimizer is not None else []
    # A model and optimizer replaced earlier (a notebook cell run twice) may linger in cyclic
    # garbage: collect it first, or the agent would watch a model nobody trains any more.
    # Once per start; the pass over gc.get_objects() below costs as much.
    gc.collect()
    for obj in gc.get_objects():
        kind = type(obj)  # not isinstance: that reads __class__, which a lazy proxy may trap
        if issubclass(kind, nn.Module):
            modules.append(obj)
        elif (optimizers is None and issubclass(kind, Optimizer)
              and obj is not first_optimizer):
            found.append(obj)
    if optimizers is not None:
        found = list(optimizers)
        if first_optimizer is not None and all(first_optimizer is not o for o in found):
            found.insert(0, first_optimizer)
    roots = outermost_owners(modules, found)
    if first_module is not None:
        root = _outermost(first_module, _parents(modules))
        if all(root is not r for r in roots):
            roots.append(root)
    return name_models(roots), found


def outermost_owners(modules: Sequence[Any], optimizers: Sequence[Any]) -> list[Any]:
    """The outermost modules (among `modules`) owning any of the optimizers' parameters."""
    parent = _parents(modules)
    wanted: set[int] = set()
    for opt in optimizers:
        try:
            wanted.update(id(p) for group in opt.param_groups for p in group["params"])
        except Exception:
            continue
    roots: list = []
    for module in modules:
        try:
            owns = any(id(p) in wanted for p in module.parameters(recurse=False))
        except Exception:
            continue
        if owns:
            root = _outermost(module, parent)
            if all(root is not r for r in roots):
                roots.append(root)
    return roots


def _parents(modules: Sequence[Any]) -> dict[int, Any]:
    parent: dict[int, Any] = {}
    for module in modules:
        try:
            for child in module.children():
                parent.setdefault(id(child), module)
        except Exception:
            continue
    return parent


def _outermost(module: Any, parent: dict[int, Any]) -> Any:
    seen = set()
    while id(module) in parent and id(module) not in seen:
        seen.add(id(module))
        module = parent[id(module)]
    return module


def name_models(roots: Sequence[Any]) -> dict[str, Any]:
    """Names for the models found: the script's global variable when there is one (`G`,
    `teacher`), else the class name in lower case; made unique. One model is named too, so
    that a zero-code run's layers read `model.0`, `net.fc1` (the model's name in front), not
    a bare `0`, `2`, `4`."""
    main = sys.modules.get("__main__")
    by_id = {}
    for key, value in list(getattr(main, "__dict__", {}).items()):
        if not key.startswith("_"):
            by_id.setdefault(id(value), key)
    named: dict = {}
    for root in roots:
        base = by_id.get(id(root)) or type(root).__name__.lower()
        name, i = base, 2
        while name in named:
            name, i = f"{base}{i}", i + 1
        named[name] = root
    return named
