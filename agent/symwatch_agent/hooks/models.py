"""Find the models and optimizers of a process that did not hand them to `watch()`.

Used by the two ways the agent gets into a script that never imported symwatch: the start-up
hook of `symwatch run` (bootstrap/sitecustomize.py) and injection into a running process
(`symwatch inject`, attach.py). One pass over `gc.get_objects()` finds every live
`torch.optim.Optimizer` and `nn.Module` (a full collection and a second pass only when it
found more than the one model and optimizer that started the run: see live_objects); the models are
the *outermost* modules owning the optimizers' parameters (a module that is a child of another
found module is not outermost), so `model.forward(x)` called directly, DDP or `torch.compile`
wrappers still give the whole model. Several models are named after the script's global
variables holding them (`G`, `D`), else their class names.
"""

from __future__ import annotations

import gc
import itertools
import sys
import time
import weakref
from typing import Any, Callable, Sequence

from torch import nn
from torch.optim import Optimizer


class Live:
    """What one pass over the collector's objects found: every live module and optimizer.
    `checked`: whether garbage was ruled out (a collection first, or `plain`); an early pass
    (`collect=False`) is checked later, against the module the forward hook caught."""

    def __init__(self, modules: list, optimizers: list, checked: bool = True) -> None:
        self.modules, self.optimizers, self.checked = modules, optimizers, checked

    def weak(self) -> Callable[[], Live | None]:
        """The same, held by weak references (a pass kept until the first step, which may be
        minutes away, must keep no model alive): call it for a Live again, of what is still
        alive (what has gone since is nobody's model any more)."""
        modules = [weakref.ref(m) for m in self.modules]
        optimizers = [weakref.ref(o) for o in self.optimizers]
        checked = self.checked

        def strong() -> Live:
            return Live([m for m in (r() for r in modules) if m is not None],
                        [o for o in (r() for r in optimizers) if o is not None], checked)
        return strong


def plain(live: Live, first_module: Any) -> bool:
    """One optimizer, and one model whose outermost module is `first_module`: garbage cannot
    change what find_models answers (both are live, held by the script and the start-up
    hook), so no collection is needed."""
    if first_module is None or len(live.optimizers) != 1:
        return False
    roots = outermost_owners(live.modules, live.optimizers)
    return len(roots) == 1 and roots[0] is first_module


def usable(live: Live | None, first_optimizer: Any, first_module: Any) -> bool:
    """Whether find_models can answer from `live` (made earlier, on a thread): it saw the
    optimizer (None: any) and garbage is ruled out."""
    if live is None or not live.optimizers:
        return False
    if first_optimizer is not None and all(first_optimizer is not o for o in live.optimizers):
        return False
    return live.checked or plain(live, first_module)


def live_objects(first_module: Any = None, yield_gil: bool = False,
                 collect: bool = True) -> Live:
    """Every live module and optimizer (`gc.get_objects()`, filtered by type).

    A model and optimizer replaced earlier (a notebook cell run twice) may linger in cyclic
    garbage until the collector runs, and the agent would then watch a model nobody trains
    any more. A full collection costs 0.2–0.3 s with torch loaded (a 2-core VM under load), so
    it runs only when the pass found something garbage could be part of: anything beyond one
    optimizer and one model whose outermost module is `first_module` (`symwatch run`'s usual
    case: both are live, held by the script and the start-up hook, and the collection could
    not change the answer: `plain`). `yield_gil`: on a thread, let the training thread in
    between the pass's parts (each holds the GIL while it runs). `collect=False`: one pass,
    not checked (an early pass, before the forward hook has caught a model)."""
    live = _scan(yield_gil)
    if plain(live, first_module):
        return live
    if not collect:
        live.checked = False
        return live
    del live
    gc.collect()
    return _scan(yield_gil)


def find_models(first_optimizer: Any, first_module: Any = None,
                optimizers: Sequence[Any] | None = None,
                live: Live | None = None) -> tuple[dict[str, Any], list[Any]]:
    """(named models, optimizers): the outermost modules owning the optimizers' parameters,
    plus `first_module`'s outermost module when given (a frozen teacher, say). `optimizers`:
    the ones to use; default: `first_optimizer` and every other live optimizer. The first
    optimizer of the result is `first_optimizer` (the agent counts steps on it). `live`: a
    pass over the live objects made earlier (`live_objects`, on a thread); used if it is
    `usable`, else a new pass is made here."""
    if not usable(live, first_optimizer, first_module):
        live = live_objects(first_module)
    modules = live.modules
    if optimizers is None:
        found = [first_optimizer] + [o for o in live.optimizers if o is not first_optimizer]
    else:
        found = list(optimizers)
        if first_optimizer is not None and all(first_optimizer is not o for o in found):
            found.insert(0, first_optimizer)
    roots = outermost_owners(modules, found)
    if first_module is not None:
        root = _outermost(first_module, _parents(modules))
        if all(root is not r for r in roots):
            roots.append(root)
    return name_models(roots), found


_CHUNK = 50_000  # objects per part of the pass when yielding the GIL (~3 ms each)


def _scan(yield_gil: bool) -> Live:
    """One pass over `gc.get_objects()` (~300,000 objects with torch imported), filtered by
    type at C speed: the types are looked up once each (a few hundred), then `compress`
    keeps the objects of a wanted type. A Python loop over the objects cost 0.2 s on a
    loaded 2-core VM; this 40–80 ms, on a thread in parts of ~3 ms (`gc.get_objects()`
    itself, ~35 ms, is one call that cannot yield)."""
    objects = gc.get_objects()
    step = _CHUNK if yield_gil else max(1, len(objects))
    kinds: list = []
    for i in range(0, len(objects), step):
        # type(), not isinstance: isinstance reads __class__, which a lazy proxy may trap
        kinds += map(type, objects[i:i + step])
        if yield_gil:
            time.sleep(0)  # releases the GIL: the training thread's turn
    module_kinds, optimizer_kinds = set(), set()
    for kind in set(kinds):
        if issubclass(kind, nn.Module):
            module_kinds.add(kind)
        elif issubclass(kind, Optimizer):
            optimizer_kinds.add(kind)
    wanted = (module_kinds | optimizer_kinds).__contains__
    picked: list = []
    for i in range(0, len(objects), step):
        picked += itertools.compress(objects[i:i + step], map(wanted, kinds[i:i + step]))
        if yield_gil:
            time.sleep(0)
    del objects, kinds
    return Live([obj for obj in picked if type(obj) in module_kinds],
                [obj for obj in picked if type(obj) in optimizer_kinds])


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
