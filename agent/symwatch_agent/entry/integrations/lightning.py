"""`SymwatchCallback` for PyTorch Lightning (`lightning.pytorch.Trainer`).

    from symwatch.integrations.lightning import SymwatchCallback
    trainer = lightning.pytorch.Trainer(max_epochs=10, callbacks=[SymwatchCallback(every=20)])

At `on_train_start` (optimizers exist by then) it starts the agent on the LightningModule and
the torch optimizers of `trainer.optimizers`, with the trainer's global rank, local rank, node
rank and world size; under a DDP strategy the ranks other than 0 publish their loss but leave
the replicated weights to rank 0. After each training batch the learning rate goes into the
stream (`lr`). The loss is the scalar Lightning calls `.backward()` on (automatic or manual
optimization alike); with `accumulate_grad_batches > 1` that scalar is divided by the
accumulation, so the batch's loss from the step's outputs is used instead, undivided.
`on_train_end` closes the agent (GOODBYE "finished"), `on_exception` with "exception", and
`teardown` closes whatever is still open.

The standalone `pytorch_lightning` package has its own `Callback` class: use
`symwatch.integrations.pytorch_lightning.SymwatchCallback` with it. Lightning is imported when
`SymwatchCallback` is first looked up, not when this module is.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch.nn.parallel import DistributedDataParallel

from symwatch_agent.entry.integrations.session import CallbackSession

__all__ = ["SymwatchCallback"]  # noqa: F822 - made on first use, by __getattr__


def build_callback(package: str) -> type:
    """The callback class for `package` ("lightning.pytorch" or "pytorch_lightning")."""
    try:
        base = importlib.import_module(package).Callback
    except ImportError as exc:
        extra = "lightning" if package.startswith("lightning") else "pytorch-lightning"
        raise ImportError(f"symwatch's Lightning callback needs {package}: pip install "
                          f"'symwatch[integrations]' (or pip install {extra})") from exc

    class SymwatchCallback(base):  # type: ignore[misc, valid-type]
        """Watch a Lightning run with symwatch. Keyword arguments are `watch()`'s options
        (`name`, `every`, `budget`, `endpoint`, `record`, `detect`, ...), passed through; the
        placement (`rank`, `world_size`, `local_rank`, `node_rank`, `replica`) comes from the
        trainer unless given. `callback.agent` is the running agent between `on_train_start`
        and the end of training (None otherwise)."""

        def __init__(self, **options: Any) -> None:
            super().__init__()
            self._session = CallbackSession(options)
            self._accumulate = 1  # > 1: the loss comes from the batch outputs, see module doc

        @property
        def agent(self) -> Any:
            return self._session.agent

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            automatic = getattr(pl_module, "automatic_optimization", True)
            accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
            self._accumulate = accumulate if automatic else 1
            self._session.start(
                pl_module, list(trainer.optimizers), capture_backward=self._accumulate == 1,
                rank=trainer.global_rank, local_rank=trainer.local_rank,
                node_rank=trainer.node_rank, world_size=trainer.world_size,
                replica=_ddp_replicas(trainer))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            self._session.log_lr()
            if self._accumulate > 1:
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                if loss is not None and hasattr(loss, "detach"):
                    self._session.log_loss(loss.detach() * self._accumulate)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._session.close("finished")

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self._session.close("exception")

        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            self._session.close("finished")

    # Picklable by reference (Lightning's ddp_spawn pickles its callbacks): the module
    # attribute this class is stored under.
    SymwatchCallback.__qualname__ = "SymwatchCallback"
    SymwatchCallback.__module__ = ("symwatch_agent.entry.integrations.lightning"
                                   if package == "lightning.pytorch"
                                   else "symwatch_agent.entry.integrations.pytorch_lightning")
    return SymwatchCallback


def _ddp_replicas(trainer: Any) -> bool:
    """Under a DDP strategy the ranks hold copies of the same weights (FSDP and DeepSpeed
    wrap the model in something else: shards, measured on every rank)."""
    model = getattr(getattr(trainer, "strategy", None), "model", None)
    return trainer.world_size > 1 and isinstance(model, DistributedDataParallel)


def __getattr__(name: str) -> Any:
    if name == "SymwatchCallback":
        cls = build_callback("lightning.pytorch")
        globals()[name] = cls  # built once; later lookups find it directly
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
