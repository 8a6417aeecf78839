"""The part of `symwatch inject` that runs inside the target process (see docs/launch.md,
"Attach to a run already going").

The observer (symwatch/launch/inject/) gets a few lines of Python run in the target's main thread
at a safe point (between two bytecodes, with the GIL held: a pending call reached through
gdb, or `sys.remote_exec` on Python 3.14+). Those lines import this module and call
`inject(request)`, which must be quick and never raise: it only checks, evaluates the user's
`--model`/`--optimizer` expressions, and registers one global optimizer step post-hook. The
agent itself starts in that hook, after the next `optimizer.step()` of the process returns,
with the debugger long gone: the models are found as `symwatch run` finds them
(models.find_models) unless named. The hook then withdraws itself at the next forward call
(a hook cannot leave torch's hook table while torch iterates it; forward pre-hooks are
iterated over a copy, so one can remove both).

The target reports to the observer through a small JSON result file, replaced atomically at
each change: `armed` (waiting for a step), `running` (endpoint, run id, name, layers),
`already` (an agent is open in the process, or an earlier injection is still waiting),
`expired` (the step came after the observer's deadline: nothing was started), `error`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook

from symwatch_agent.agent import open_agents, watch
from symwatch_agent.hooks.models import find_models, name_models
from symwatch_agent.options import injected as injected_environment

_pending: _Arming | None = None  # an injection whose hook waits for its first step


def inject(request_json: str) -> None:
    """Arm the agent in this process as `request_json` asks. Never raises; any problem goes
    to the result file, and leaves nothing registered."""
    request: dict[str, Any] = {}
    try:
        request = json.loads(request_json)
        _inject(request)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape into the training loop
        write_result(request.get("result"), {"state": "error",
                                             "error": f"{type(exc).__name__}: {exc}"})


def _inject(request: dict[str, Any]) -> None:
    global _pending
    result = request["result"]
    waiting = request.get("waiting")
    if (time.time() > float(request.get("arm_deadline") or float("inf"))
            or (waiting is not None and not os.path.exists(waiting))):
        write_result(result, {"state": "expired"})  # the observer gave up waiting for us
        return
    agents = open_agents()
    if agents:
        write_result(result, _already(agents[0]))
        return
    if _pending is not None and not _pending.expired():
        write_result(result, {"state": "already", "pending": True,
                              "error": "an earlier injection is waiting for the next "
                                       "optimizer.step() of this process"})
        return
    models = _evaluate(request.get("model"), "model")
    optimizers = _evaluate(request.get("optimizer"), "optimizer")
    arming = _Arming(request, _as_models(models), _as_optimizers(optimizers))
    arming.register()
    _pending = arming
    write_result(result, {"state": "armed", "pid": os.getpid()})


def _already(agent: Any) -> dict[str, Any]:
    return {"state": "already", "endpoint": agent.endpoint, "run_id": agent.run_id,
            "name": agent.name, "pid": os.getpid()}


class _Arming:
    """One injection: the global step post-hook, and what it starts."""

    def __init__(self, request: dict[str, Any], models: Any, optimizers: Any) -> None:
        self.request = request
        self.result = request["result"]
        self.deadline = float(request.get("deadline") or 0) or None
        self.models = models
        self.optimizers = optimizers
        self.fired = False
        self.step_handle: Any = None
        self.forward_handle: Any = None

    def expired(self) -> bool:
        """The observer gave up (its `waiting` file is gone) or its deadline passed."""
        waiting = self.request.get("waiting")
        return ((waiting is not None and not os.path.exists(waiting))
                or (self.deadline is not None and time.time() > self.deadline))

    def register(self) -> None:
        if _inside_optimizer_step():
            # Adding to torch's hook table while it iterates it would raise in the training
            # loop: register at the next forward call instead (forward hooks are iterated
            # over a copy).
            def later(module: Any, args: Any) -> None:
                self.forward_handle.remove()
                self.forward_handle = None
                if self.step_handle is None and not self.fired:
                    self.step_handle = register_optimizer_step_post_hook(self.on_step)

            self.forward_handle = register_module_forward_pre_hook(later)
            return
        self.step_handle = register_optimizer_step_post_hook(self.on_step)

    def on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Global optimizer step post-hook: start the agent once; afterwards a flag test
        until the next forward call removes the hook."""
        global _pending
        if self.fired:
            return
        self.fired = True
        if _pending is self:
            _pending = None
        try:
            self._withdraw_at_next_forward()
            if self.expired():
                write_result(self.result, {"state": "expired"})
                return
            self._start(optimizer)
        except BaseException as exc:  # noqa: BLE001 - never into the training loop
            message = f"{type(exc).__name__}: {exc}"
            write_result(self.result, {"state": "error", "error": message})
            _say(f"not watching this run: {message} (training continues)")

    def _withdraw_at_next_forward(self) -> None:
        def withdraw(module: Any, args: Any) -> None:
            for handle in (self.step_handle, self.forward_handle):
                if handle is not None:
                    handle.remove()
            self.step_handle = self.forward_handle = None

        self.forward_handle = register_module_forward_pre_hook(withdraw)

    def _start(self, stepped: Any) -> None:
        agents = open_agents()  # the script may have called watch() since the injection
        if agents:
            write_result(self.result, _already(agents[0]))
            return
        optimizers = self.optimizers
        if self.models is None:
            first = stepped if optimizers is None or any(stepped is o for o in optimizers) \
                else optimizers[0]
            models, optimizers = find_models(first, None, optimizers)
        else:
            models = self.models
            if optimizers is None:
                optimizers = [stepped]
        if not models:
            raise RuntimeError("no model owns the parameters of the optimizer that stepped; "
                               "name it with --model EXPR")
        if isinstance(models, list):
            models = name_models(models)
        options = {k: v for k, v in (self.request.get("options") or {}).items()
                   if v is not None}
        # The keys and `insecure`, as the SYMWATCH_* variables `symwatch run` would set: read
        # by this agent only, the process's environment untouched (symwatch_agent.options).
        with injected_environment(self.request.get("environment") or {}):
            agent = watch(models,
                          optimizers, **options)
        if agent.error:
            write_result(self.result, {"state": "error", "error": agent.error})
            return
        write_result(self.result, {"state": "running", "endpoint": agent.endpoint,
                                   "run_id": agent.run_id, "name": agent.name,
                                   "layers": len(agent.layers), "pid": os.getpid()})
        if not self.request.get("quiet"):
            names = ", ".join(name for name in models if name) or "model"
            _say(f"injected: watching {names} ({len(agent.layers)} layers) on "
                 f"{agent.endpoint}; `symwatch attach` to view")


def _inside_optimizer_step() -> bool:
    """True when this runs inside torch's optimizer-step wrapper (from a Python hook)."""
    frame = sys._getframe(1)
    suffix = os.path.join("torch", "optim", "optimizer.py")
    while frame is not None:
        if frame.f_code.co_filename.endswith(suffix) and frame.f_code.co_name == "wrapper":
            return True
        frame = frame.f_back
    return False


def _evaluate(expression: str | None, what: str) -> Any:
    """`expression` evaluated where the training loop is: in each frame of this thread from
    the innermost outwards (the loop may live in `main()`), then in `__main__`."""
    if not expression:
        return None
    frame = sys._getframe(1)
    here = os.path.abspath(__file__)
    namespaces = []
    while frame is not None:
        code = frame.f_code
        # Not our own frames: this module's, the injected lines' (<symwatch inject>), and
        # PyRun_SimpleString's (<string>).
        if (os.path.abspath(code.co_filename) != here
                and not code.co_filename.startswith(("<symwatch", "<string>"))):
            namespaces.append((frame.f_globals, frame.f_locals))
        frame = frame.f_back
    main = sys.modules.get("__main__")
    if main is not None:
        namespaces.append((main.__dict__, main.__dict__))
    first_error: BaseException | None = None
    for globals_, locals_ in namespaces:
        try:
            return eval(expression, globals_, locals_)  # noqa: S307 - the user's own expression
        except (NameError, AttributeError, KeyError) as exc:
            first_error = first_error or exc
    raise ValueError(f"--{what} {expression!r}: {type(first_error).__name__}: {first_error} "
                     "(evaluated in the frames of the main thread and in __main__)")


def _as_models(value: Any) -> Any:
    """None (find them), a {name: module} dict, or a list of modules to name."""
    if value is None:
        return None
    if isinstance(value, nn.Module):
        return {"": value}
    if isinstance(value, dict):
        if value and all(isinstance(v, nn.Module) for v in value.values()):
            return {str(k): v for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(v, nn.Module) for v in value):
            return list(value)
    raise ValueError(f"--model must give an nn.Module, a dict or a list of them, not "
                     f"{type(value).__name__}")


def _as_optimizers(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Optimizer):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Optimizer)
                                                          for v in value):
        return list(value)
    raise ValueError(f"--optimizer must give a torch.optim.Optimizer or a list of them, not "
                     f"{type(value).__name__}")


def write_result(path: str | None, payload: dict[str, Any]) -> None:
    """Replace the result file atomically (the observer polls it). Never raises."""
    if not path:
        return
    try:
        payload = {**payload, "time": time.time()}
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
        os.replace(tmp, path)
    except BaseException:  # noqa: BLE001 - the observer then reports a timeout instead
        pass


def _say(text: str) -> None:
    try:
        print(f"symwatch: {text}", file=sys.stderr, flush=True)
    except Exception:
        pass
