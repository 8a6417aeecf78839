"""What every trainer callback does the same way: start one agent per training run with the
trainer's model, optimizers and placement (rank, world size, ...), keep the learning rate in
the stream, and close the agent when the run ends.

The framework-specific modules (transformers.py, lightning.py) only translate their trainer's
hooks into these calls.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

import torch

from symwatch_agent.agent import Agent, watch
from symwatch_agent.options import AgentOptions

# Options the callbacks set from the trainer; a user who passes one explicitly wins.
PLACEMENT = ("rank", "world_size", "local_rank", "node_rank", "replica")


def torch_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside framework wrappers (accelerate's `AcceleratedOptimizer`,
    Lightning's `LightningOptimizer`, both keeping it as `.optimizer`). The agent hooks the
    inner one: its `step()` is the real update (a wrapper's step may be skipped under gradient
    accumulation or an fp16 overflow, or bypass the hooks of the wrapper itself)."""
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer


class CallbackSession:
    """One callback's agent: started by `start`, fed by `log_lr`/`log_loss`, ended by `close`.

    `options` are `watch()`'s keyword arguments, passed through unchanged (checked when the
    callback is made, so a typo fails before training rather than at its start)."""

    def __init__(self, options: dict[str, Any]) -> None:
        _check_options(options)
        self.options = dict(options)
        self.agent: Agent | None = None
        self._optimizers: list[torch.optim.Optimizer] = []

    def start(self, model: torch.nn.Module, optimizers: Iterable[Any], *,
              capture_backward: bool, **placement: Any) -> Agent | None:
        """Start watching (closing an agent a previous run of this callback left open).
        Bad options raise (the user's to fix, before any step runs); anything else the agent
        cannot cope with is reported once and training goes on unwatched."""
        self.close("restarted")
        self._optimizers = [torch_optimizer(o) for o in optimizers if o is not None]
        options = {**{k: v for k, v in placement.items() if v is not None}, **self.options}
        options.setdefault("capture_backward", capture_backward)
        try:
            agent = watch(model, self._optimizers or None, **options)
        except (TypeError, ValueError):
            raise
        except Exception as exc:  # never stop the training for the agent's sake
            print(f"symwatch: not watching this run: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return None
        self.agent = agent if agent.error is None else None
        self.log_lr()  # the first step's lr, before any step runs
        return self.agent

    def log_lr(self) -> None:
        """Put the first optimizer's learning rate(s) into the stream as scalars: `lr` for its
        first param group, `lr/1`, `lr/2`, ... for the others when they differ. Called after a
        step and its scheduler step, so the STATS of the next step carry the lr that step runs
        with. A few attribute reads, no device sync (a tensor lr is copied off the training
        thread)."""
        agent = self.agent
        if agent is None or not self._optimizers:
            return
        try:
            groups = self._optimizers[0].param_groups
            scalars = {"lr": groups[0]["lr"]}
            for g, group in enumerate(groups[1:], start=1):
                if group["lr"] is not scalars["lr"] and group["lr"] != scalars["lr"]:
                    scalars[f"lr/{g}"] = group["lr"]
            agent.log(**scalars)
        except Exception as exc:  # an exotic param group must not cost the training
            agent._report("integration lr", exc)

    def log_loss(self, loss: Any) -> None:
        if self.agent is not None and loss is not None:
            self.agent.log(loss=loss)

    def close(self, reason: str) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.close(reason)


def _check_options(options: dict[str, Any]) -> None:
    accepted = {"self", "model", "optimizer", *AgentOptions.keywords()}  # Agent's parameters
    unknown = sorted(set(options) - accepted)
    if unknown or "model" in options or "optimizer" in options:
        bad = unknown or [k for k in ("model", "optimizer") if k in options]
        raise TypeError(f"SymwatchCallback: unknown option(s) {', '.join(bad)}; it takes "
                        "watch()'s options (name, every, budget, endpoint, record, ...: see "
                        "docs/integrations.md); the model and optimizer come from the trainer")
