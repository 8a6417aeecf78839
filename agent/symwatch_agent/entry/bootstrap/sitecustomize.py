"""symwatch's start-up hook for `symwatch run` (zero-code launch; see docs/launch.md).

`symwatch run` puts this directory first on PYTHONPATH, so every Python process of the launched
command imports this module at start-up (the interpreter's `site` imports `sitecustomize`). It
must stay cheap and harmless:

- it imports only the standard library at start-up, and runs the next `sitecustomize` on the
  path (the one this one shadows), so an existing customisation still runs;
- only when `$SYMWATCH_LAUNCH` is set, it waits for `torch` to be imported (a `sys.meta_path`
  finder that steps aside at once for every other name), then registers two global hooks:
  a one-shot module forward pre-hook (the first module with parameters that is called: the
  outermost module of a model; removed as soon as it has fired) and an optimizer step pre-hook
  that arms the agent at the first `optimizer.step()` of the process that finds it ready.
  DataLoader workers, compile workers and launchers such as torchrun never step an optimizer,
  so they never start an agent;
- the training thread never waits for the agent's preparation (issue #15: start-up on the
  training thread ≤ 100 ms): the agent's import runs on a thread from torch's import on, and
  the search for the models (a pass over the collector's objects, 40–80 ms, more with large
  libraries loaded) on another, as soon as the import ends (a script has built its model and
  optimizer by then, as a rule) and again from the first `.backward()` if that early pass
  found too little; until both are done the step hook only counts steps (the agent then
  starts with the optimizer's own step number), for at most ARM_WAIT_STEPS steps of the
  first optimizer, after which a step finishes the preparation itself (a short script is
  still watched);
- the models are that first module and the outermost modules owning the optimizers'
  parameters; the loss is the scalar `.backward()` is called on;
- any failure prints one `symwatch: ...` line to stderr and leaves the training alone. Nothing
  is ever printed to stdout.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

# Read here, at start-up (before symwatch_agent may be imported): whether to watch at all, and
# where the agent lives. The agent's own options are read by symwatch_agent.options, at arming.
_ENV_LAUNCH = "SYMWATCH_LAUNCH"
_ENV_AGENT_PATH = "SYMWATCH_AGENT_PATH"  # where symwatch_agent lives, if not importable here
_HERE = os.path.dirname(os.path.abspath(__file__))

_state: dict = {"armed": False, "first_module": None, "last_loss": None, "step_hook": None,
                "forward_hook": None, "agent": None, "first_optimizer": None, "stepped": 0,
                "imported": False, "live": None, "searching": None, "search_done": None,
                "early": False, "quiet": 0, "switch_interval": None}

# Steps of the first optimizer the step hook lets pass while the agent's import or the search
# for the models still runs on its thread; the next one finishes them on the training thread
# (as before this wait existed: the import lock, then the search), so that a short script is
# still watched. The import takes 0.3–1 s after torch's (a loaded 2-core VM), a real
# script's first steps come later than that, and a tiny model's 20 steps take about as long.
ARM_WAIT_STEPS = 20

# The interpreter's switch interval while the agent's import and the search for the models run
# on their threads (then the script's own again). A thread that wants the GIL back waits up to
# the interval (5 ms by default) for the holder to drop it; the training thread takes it back
# after each torch op, so during the import (~1 s of bytecode) step 1 waited ~75 ms in all
# while spending no more CPU (docs/benchmarks.md, start-up under `symwatch run`).
QUIET_SWITCH_INTERVAL_S = 0.0005
_quiet_lock = None  # a threading.Lock from the first _quiet_begin (threading: lazily)


def _say(text: str) -> None:
    try:
        print(f"symwatch: {text}", file=sys.stderr, flush=True)
    except Exception:
        pass


# -- chaining to the sitecustomize this one shadows ---------------------------------------------

def _chain() -> None:
    """Run the next `sitecustomize` on sys.path, as `site` would have (errors reported the way
    `site` reports them, then start-up continues)."""
    here = os.path.normcase(_HERE)
    path = [p for p in sys.path if os.path.normcase(os.path.abspath(p or os.curdir)) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    me = sys.modules.get("sitecustomize")
    if me is not None:
        sys.modules["_symwatch_bootstrap"] = me
    # It stays *the* sitecustomize, so code that imports it finds its own attributes.
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        if me is not None:
            sys.modules["sitecustomize"] = me
        if sys.flags.verbose:
            sys.excepthook(*sys.exc_info())
        else:
            print("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return
    globals()["chained"] = module


# -- waiting for torch ---------------------------------------------------------------------------

class _TorchImportWatcher:
    """A meta-path finder that notices the import of `torch` and runs `_on_torch` right after
    torch/__init__ has finished (which also imports torch.nn and torch.optim)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - the finder protocol
        if name != "torch":
            return None
        _remove_watcher()
        spec = importlib.util.find_spec(name)  # the rest of the path decides, as usual
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader

        class _Loader:
            def create_module(self, spec):  # noqa: ANN001
                return original.create_module(spec)

            def exec_module(self, module):  # noqa: ANN001
                spec.loader = original  # torch sees its own loader, as without symwatch
                try:
                    module.__loader__ = original
                except Exception:
                    pass
                original.exec_module(module)
                _on_torch()

            def __getattr__(self, attr):  # noqa: ANN001
                return getattr(original, attr)

        spec.loader = _Loader()
        return spec


_watcher = _TorchImportWatcher()


def _remove_watcher() -> None:
    try:
        sys.meta_path.remove(_watcher)
    except ValueError:
        pass


def _on_torch() -> None:
    """torch is imported: register the global hooks (each call is cheap; nothing else runs
    until a module is called or an optimizer steps)."""
    try:
        # The script imported torch (this runs right after it): never at start-up.
        import torch  # noqa: F401, PLC0415 (lazy: torch-free start-up)
        from torch.nn.modules.module import register_module_forward_pre_hook  # noqa: PLC0415 (lazy: torch-free start-up)
        from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: PLC0415 (lazy: torch-free start-up)

        _state["forward_hook"] = register_module_forward_pre_hook(_on_forward)
        _state["step_hook"] = register_optimizer_step_pre_hook(_on_step)
        import multiprocessing  # noqa: PLC0415 (lazy: torch-free start-up)

        if multiprocessing.parent_process() is None:  # not a DataLoader or compile worker
            _preload_agent()  # while the script builds its model and data
    except Exception as exc:
        _say(f"cannot watch this process: {type(exc).__name__}: {exc} (training continues)")


def _in_dataloader_worker() -> bool:
    try:
        from torch.utils.data import get_worker_info  # noqa: PLC0415 (lazy: torch-free start-up)

        return get_worker_info() is not None
    except Exception:
        return False


def _on_forward(module, args):  # noqa: ANN001 - torch's hook signature
    """One-shot: the first module with parameters called in this process is the outermost
    module of a model (its pre-hook fires before its children's). Removed once it has fired."""
    try:
        if _in_dataloader_worker():
            _remove_forward_hook()
            return None
        if next(module.parameters(), None) is None:
            return None  # a transform, a loss module: keep waiting for a model
        _remove_forward_hook()
        _state["first_module"] = module
        _preload_agent()  # and, once imported, the loss capture (_import_agent)
    except Exception:
        _remove_forward_hook()
    return None


def _preload_agent() -> None:
    """Import the agent (zmq, numpy, the measurement modules: about 0.3–1 s) on a daemon
    thread while the script builds its model and data and runs its first forward and
    backward (torch releases the GIL in them), so the first `optimizer.step()` finds it
    imported instead of importing it on the training thread. Started once: right after
    torch's import in a process that is no multiprocessing child (DataLoader and compile
    workers never train), else at the first forward of a model. Should the first step come
    before it is done, the step hook lets steps pass until it is (_ready)."""
    if _state.get("preloading"):
        return
    _state["preloading"] = True
    try:
        import threading  # noqa: PLC0415 (lazy: torch-free start-up)

        _ensure_agent_importable()
        _quiet_begin()
        threading.Thread(target=_import_agent, name="symwatch-preload", daemon=True).start()
    except Exception:  # noqa: BLE001, S110 (no preload: the first step imports it, as before)
        _quiet_end()


def _quiet_begin() -> None:
    """One more of the agent's start-up threads runs: a short switch interval while any does
    (QUIET_SWITCH_INTERVAL_S). First called on the thread that starts the preload, before
    any of them exists."""
    global _quiet_lock
    if _quiet_lock is None:
        import threading  # noqa: PLC0415 (lazy: torch-free start-up)

        _quiet_lock = threading.Lock()
    with _quiet_lock:
        if _state["quiet"] == 0 and sys.getswitchinterval() > QUIET_SWITCH_INTERVAL_S:
            _state["switch_interval"] = sys.getswitchinterval()
            sys.setswitchinterval(QUIET_SWITCH_INTERVAL_S)
        _state["quiet"] += 1


def _quiet_end() -> None:
    """One of them has ended: the last one gives the script its switch interval back (unless
    the script set one of its own meanwhile)."""
    if _quiet_lock is None:
        return  # none began
    with _quiet_lock:
        _state["quiet"] = max(0, _state["quiet"] - 1)
        saved = _state["switch_interval"]
        if _state["quiet"] == 0 and saved is not None:
            _state["switch_interval"] = None
            if sys.getswitchinterval() == QUIET_SWITCH_INTERVAL_S:
                sys.setswitchinterval(saved)


def _import_agent() -> None:
    """The preload thread: import the agent, then keep the loss of each `.backward()` (for
    the step that arms the agent, which comes later). Not at the first forward on the
    training thread: importing any symwatch_agent module runs the package's __init__, which
    imports the whole agent (or waits for this thread's import)."""
    try:
        importlib.import_module("symwatch_agent.agent")
        if not _state["armed"]:
            _start_loss_capture()
        _state["imported"] = True
        if not _state["armed"] and _state["searching"] is None:
            # An early search: a script that built its model and optimizer before loading
            # its data (as a rule) has them by now, and the pass then runs before training
            # does; checked at the first step against the model the forward hook caught.
            _search_models(early=True)
    except Exception:  # noqa: BLE001, S110 (the step's own import reports it)
        pass
    finally:
        _quiet_end()


def _remove_forward_hook() -> None:
    handle = _state.get("forward_hook")
    if handle is not None:
        _state["forward_hook"] = None
        handle.remove()


def _start_loss_capture() -> None:
    """Keep the scalar of the first `.backward()` (before the agent exists) so that step 1
    has its loss too. Imported here, not at start-up: this process runs a model."""
    try:
        _ensure_agent_importable()
        from symwatch_agent.hooks import loss_capture  # noqa: PLC0415 (lazy: torch-free start-up)

        def remember(loss):  # noqa: ANN001
            if _state["armed"]:  # added by the preload thread after the agent started
                return
            _state["last_loss"] = loss
            if _search_again(None):  # the optimizer exists by now, as a rule
                _search_models()

        _state["loss_listener"] = remember
        loss_capture.add_listener(remember)
    except Exception:
        pass


def _stop_loss_capture() -> None:
    listener = _state.pop("loss_listener", None)
    if listener is not None:
        try:
            from symwatch_agent.hooks import loss_capture  # noqa: PLC0415 (lazy: torch-free start-up)

            loss_capture.remove_listener(listener)
        except Exception:
            pass


def _ensure_agent_importable() -> None:
    if importlib.util.find_spec("symwatch_agent") is not None:
        return
    for entry in os.environ.get(_ENV_AGENT_PATH, "").split(os.pathsep):
        if entry and entry not in sys.path:
            sys.path.append(entry)  # last: never shadows the command's own packages


def _on_step(optimizer, args, kwargs):  # noqa: ANN001 - torch's hook signature
    """Global optimizer step pre-hook: start the agent at the first step of this process that
    finds it ready (_ready), without waiting for it. Afterwards a flag test (it cannot remove
    itself while torch iterates the hooks)."""
    if _state["armed"]:
        return None
    try:
        first = _state["first_optimizer"]
        if first is None:
            if _in_dataloader_worker():
                _state["armed"] = True
                return None
            _state["first_optimizer"] = first = optimizer
        if optimizer is first:  # the agent counts the first optimizer's steps
            _state["stepped"] += 1
        if not _ready():
            return None  # the preparation runs on its threads; the next step looks again
        _state["armed"] = True
        _remove_forward_hook()
        _stop_loss_capture()
        # Any optimizer's step may start it (the first may have stopped: a learning-rate
        # finder's); it counts the first one's, from the steps it took before.
        _arm(first, _state["stepped"] - (optimizer is first))
    except Exception as exc:
        _state["armed"] = True
        _say(f"not watching this run: {type(exc).__name__}: {exc} (training continues)")
    return None


def _ready() -> bool:
    """Whether this step may start the agent without waiting: the agent is imported and the
    search for the models has ended; else start that search if it can start, and say no,
    unless the first optimizer has waited ARM_WAIT_STEPS steps already (this step then
    finishes what is left: _arm imports and searches itself)."""
    if _state["stepped"] > ARM_WAIT_STEPS:
        return True
    if not _state["imported"]:
        _preload_agent()  # started already, as a rule (at torch's import or the first forward)
        return False
    if _search_again(_state["first_optimizer"]):
        _search_models()
        return False
    return _state["search_done"].is_set()


def _search_again(optimizer: object) -> bool:
    """Whether to start a search now: none has started, or only the early one, which ended
    without what the step needs (`optimizer`, None: any; a model the forward hook caught
    and no garbage to rule out: hooks/models.py, usable)."""
    searching = _state["searching"]
    if searching is None:
        return True
    if not _state["early"] or not _state["search_done"].is_set():
        return False
    from symwatch_agent.hooks.models import usable  # noqa: PLC0415 (lazy: torch-free start-up)

    return not usable(_live(), optimizer, _state.get("first_module"))


def _live() -> object:
    """The search's pass (hooks/models.py, Live: held by weak references, so what has gone
    since is left out), or None before one has ended."""
    held = _state["live"]
    return held() if held is not None else None


def _search_models(early: bool = False) -> None:
    """Start the pass over the live objects that finds the models (hooks/models.py,
    live_objects) on a thread: early, when the agent's import ends, then, if that one did not
    find what the step needs, at the first `.backward()` after it or at a step. Its parts
    release the GIL in between."""
    import threading  # noqa: PLC0415 (lazy: torch-free start-up)

    first_module = _state.get("first_module")
    _state["early"] = early

    def search() -> None:
        try:
            from symwatch_agent.hooks.models import live_objects  # noqa: PLC0415 (lazy: torch-free start-up)

            live = live_objects(first_module, yield_gil=True, collect=not early)
            if not _state["armed"]:  # else a step armed without it
                _state["live"] = live.weak()  # it keeps no model alive
        except Exception:  # noqa: BLE001, S110 (the arming step searches again and reports)
            pass
        finally:
            done.set()
            _quiet_end()

    done = threading.Event()  # set when it has ended (is_alive() is False before start too)
    thread = threading.Thread(target=search, name="symwatch-find-models", daemon=True)
    _state["search_done"] = done
    _state["searching"] = thread
    _quiet_begin()
    try:
        thread.start()
    except Exception:
        _quiet_end()
        raise


# -- arming --------------------------------------------------------------------------------------

def _arm(first_optimizer, stepped: int = 0) -> None:  # noqa: ANN001
    """Start the agent on the models found, counting `first_optimizer`'s steps from
    `stepped`, the steps it took before this one."""
    _ensure_agent_importable()
    from symwatch_agent.agent import Agent, watch  # noqa: PLC0415 (lazy: torch-free start-up)
    from symwatch_agent.options import launch_quiet  # noqa: PLC0415 (lazy: torch-free start-up)

    if any(isinstance(getattr(hook, "__self__", None), Agent)
           for hook in getattr(first_optimizer, "_optimizer_step_post_hooks", {}).values()):
        return  # the script calls symwatch.watch() itself: one agent is enough
    live = _live()
    _state["live"] = None
    models, optimizers = discover(first_optimizer, _state.pop("first_module", None), live)
    if not models:
        _say("no model found for the optimizer that stepped; not watching this process")
        return
    options = _options()
    agent = watch(models, optimizers, **options)
    agent.continue_from(stepped)
    _state["agent"] = agent
    loss = _state.pop("last_loss", None)
    if loss is not None:
        agent._on_backward(loss)  # the loss of the step that armed us
    if agent.error:
        return  # the agent said why, once
    if not launch_quiet():
        names = ", ".join(name for name in models if name) or "model"
        _say(f"watching {names} ({len(agent.layers)} layers) on {agent.endpoint} "
             f"(rank {agent.rank}); `symwatch attach` to view; {agent.cadence_text()}")


def _options() -> dict:
    """watch()'s keyword arguments from the variables `symwatch run` set (a malformed one is
    reported and ignored): symwatch_agent.options.launch_options."""
    _ensure_agent_importable()
    from symwatch_agent.options import launch_options  # noqa: PLC0415 (lazy: torch-free start-up)

    return launch_options(_say)


def rank_endpoint(endpoint: str, local_rank: int) -> str:
    """The endpoint local rank `local_rank` binds: symwatch_agent.options.rank_endpoint."""
    _ensure_agent_importable()
    from symwatch_agent.options import rank_endpoint as for_rank  # noqa: PLC0415 (lazy: torch-free start-up)

    return for_rank(endpoint, local_rank)


def discover(first_optimizer, first_module, live=None):  # noqa: ANN001
    """(named models, optimizers): the outermost modules owning the optimizers' parameters,
    plus the first module called (a frozen teacher, say); every live optimizer, the one that
    stepped first (the agent counts steps on it). `live`: the search's pass over the live
    objects, made on a thread (a new pass here without it). Shared with `symwatch inject`."""
    from symwatch_agent.hooks.models import find_models  # noqa: PLC0415 (lazy: torch-free start-up)

    return find_models(first_optimizer, first_module, live=live)


# -- start-up ------------------------------------------------------------------------------------

def _start() -> None:
    try:
        _chain()
    except Exception as exc:
        _say(f"could not run the next sitecustomize: {type(exc).__name__}: {exc}")
    try:
        # The bootstrap directory holds only this file; keep the command's sys.path its own.
        sys.path[:] = [p for p in sys.path
                       if os.path.normcase(os.path.abspath(p or os.curdir))
                       != os.path.normcase(_HERE)]
        if not os.environ.get(_ENV_LAUNCH):
            return
        if "torch" in sys.modules:
            _on_torch()
        else:
            sys.meta_path.insert(0, _watcher)
    except Exception as exc:
        _say(f"cannot watch this process: {type(exc).__name__}: {exc} (training continues)")


if __name__ == "sitecustomize":
    _start()
