"""`SymwatchCallback` for the Hugging Face `transformers.Trainer`.

    from symwatch.integrations.transformers import SymwatchCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[SymwatchCallback(every=20, name="gpt2-ft")])

At `on_train_begin` it starts the agent on the trainer's model (the unwrapped one the
Trainer hands its callbacks) and the torch optimizer inside accelerate's wrapper, with the
rank, local rank and world size from `TrainingArguments` (the node rank from `$GROUP_RANK`
or `$NODE_RANK` when a launcher sets it); DDP ranks other than 0 publish their loss but
leave the replicated weights to rank 0. Each optimizer step the learning rate goes into the
stream (`lr`), so a schedule is visible; its boundaries (not a smooth decay's drift) label the
transitions they explain exogenous.
The loss is the scalar the Trainer calls `.backward()` on; with gradient accumulation that is
a scaled share of a micro-batch, so the Trainer's own logged `loss` is used instead.
`on_train_end` closes the agent (GOODBYE "finished"). The Trainer calls no callback when
training raises: the agent then closes at interpreter exit, or when this callback's next
`on_train_begin` starts a new one.

transformers is imported when `SymwatchCallback` is first looked up, not when this module is.
"""

from __future__ import annotations

from typing import Any

from symwatch_agent.entry.integrations.session import CallbackSession

__all__ = ["SymwatchCallback"]  # noqa: F822 - made on first use, by __getattr__


def _data_parallel_replicas(args: Any) -> bool:
    """Are the ranks' weights copies of each other (DDP), rather than shards (FSDP, DeepSpeed
    ZeRO-3) or a single process? Asked of accelerate, which the Trainer set up."""
    if getattr(args, "world_size", 1) <= 1 or getattr(args, "fsdp", None) or \
            getattr(args, "deepspeed", None):
        return False
    try:
        from accelerate.state import AcceleratorState  # noqa: PLC0415 (lazy: optional extra)

        kind = AcceleratorState().distributed_type
    except Exception:
        return False
    return str(getattr(kind, "value", kind)).upper().startswith("MULTI_")


def _build() -> type:
    try:
        from transformers import TrainerCallback  # noqa: PLC0415 (lazy: optional extra)
    except ImportError as exc:
        raise ImportError("symwatch's transformers callback needs transformers: "
                          "pip install 'symwatch[integrations]'") from exc

    class SymwatchCallback(TrainerCallback):
        """Watch a `transformers.Trainer` run with symwatch. Keyword arguments are `watch()`'s
        options (`name`, `every`, `budget`, `endpoint`, `record`, `detect`, ...), passed
        through; the placement (`rank`, `world_size`, `local_rank`, `replica`) comes from the
        trainer unless given. `callback.agent` is the running agent between
        `on_train_begin` and `on_train_end` (None otherwise)."""

        def __init__(self, **options: Any) -> None:
            self._session = CallbackSession(options)
            self._loss_from_logs = False

        @property
        def agent(self) -> Any:
            return self._session.agent

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                           optimizer: Any = None, **kwargs: Any) -> None:
            if model is None:
                return
            # Under gradient accumulation the backward scalar is loss / steps of one
            # micro-batch (or a token-weighted share): use the Trainer's logged loss then.
            self._loss_from_logs = getattr(args, "gradient_accumulation_steps", 1) > 1
            self._session.start(
                model, [optimizer], capture_backward=not self._loss_from_logs,
                rank=getattr(args, "process_index", None),
                local_rank=getattr(args, "local_process_index", None),
                world_size=getattr(args, "world_size", None),
                replica=_data_parallel_replicas(args))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._session.log_lr()  # after the scheduler stepped: the lr of the next step

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if self._loss_from_logs and logs and "loss" in logs:
                self._session.log_loss(logs["loss"])

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._session.close("finished")

    # Picklable by reference (Lightning's ddp_spawn pickles its callbacks): the module
    # attribute this class is stored under.
    SymwatchCallback.__qualname__ = "SymwatchCallback"
    SymwatchCallback.__module__ = __name__
    return SymwatchCallback


def __getattr__(name: str) -> Any:
    if name == "SymwatchCallback":
        cls = _build()
        globals()[name] = cls  # built once; later lookups find it directly
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
