"""How the agent finds the models of a script that never handed them to `watch()`
(`symwatch run`, `symwatch inject`): every live optimizer's outermost owning module."""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")
from symwatch_agent.hooks.models import find_models  # noqa: E402


def _trained(width: int):
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_outermost_module_of_the_stepped_optimizer_is_the_model():
    model, opt = _trained(8)
    models, optimizers = find_models(opt, None, [opt])
    assert list(models.values()) == [model] and optimizers == [opt]


def test_model_replaced_but_left_in_cyclic_garbage_is_not_watched():
    # A notebook cell run twice: the first model and optimizer are unreachable but held by a
    # reference cycle until the collector runs.
    gc.collect()
    gc.disable()
    try:
        stale, stale_opt = _trained(16)
        stale.cycle = stale  # noqa: the cycle keeps it alive past its last reference
        stale_opt.cycle = stale_opt
        del stale, stale_opt
        model, opt = _trained(8)
        models, optimizers = find_models(opt)
    finally:
        gc.enable()
    assert list(models.values()) == [model] and optimizers == [opt]


def test_two_live_optimizers_give_two_models_named_apart():
    generator, g_opt = _trained(8)
    critic, c_opt = _trained(4)
    models, optimizers = find_models(g_opt)
    assert {id(m) for m in models.values()} >= {id(generator), id(critic)}
    assert optimizers[0] is g_opt and any(o is c_opt for o in optimizers)
    assert len(set(models)) == len(models)


def test_one_model_and_its_optimizer_need_no_collection(monkeypatch):
    # `symwatch run`'s usual case: the model the forward hook caught owns the one live
    # optimizer's parameters; garbage could not change that answer, and a full collection
    # costs 0.2–0.3 s with torch loaded, so none is made.
    gc.collect()
    model, opt = _trained(8)
    if any(issubclass(type(o), torch.optim.Optimizer) and o is not opt
           for o in gc.get_objects()):
        pytest.skip("this process holds other optimizers (a fixture's)")
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or 0)
    models, optimizers = find_models(opt, model)
    assert list(models.values()) == [model] and optimizers == [opt]
    assert collections == []
    # a second optimizer, live or garbage, is a reason to collect first
    _, other = _trained(4)
    models, optimizers = find_models(opt, model)
    assert len(collections) == 1 and any(o is other for o in optimizers)
