"""Every rank of a run as the observer sees it: host, step, loss, speed, memory, GPUs (stdlib only).

In a distributed job every rank's agent publishes its own loss, step time, allocator figures
and (the node's local rank 0 only) the node's GPU statistics, all under the job's shared run
id and tagged with the rank in the header (docs/distributed.md). `RankTable` folds them per
rank so that the TUI's ranks view can show stragglers and diverging ranks side by side.
`RunState` (state.py) owns one and keeps its run-level figures from the *primary* rank (the
lowest rank seen, normally 0).

- A **straggler** is a rank whose step is behind the leading rank's by more than a second's
  worth of steps (at least `min_lag` steps), or whose step time is more than `slow_factor`
  times the median of the ranks' step times.
- A **diverging** rank's loss (smoothed) is above the median of the other ranks' by more than
  `diverge_factor` times that median's magnitude: a rank whose loss runs away while the others
  train normally (a bad shard of data, a corrupted replica). One-sided on purpose: with two
  ranks, only the higher loss can be told apart from the other.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from symwatch.core import protocol
from symwatch.core.protocol import Message

LOSS_SMOOTHING = 0.3  # weight of the newest loss in a rank's smoothed loss


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class RankView:
    rank: int
    host: str | None = None
    pid: int | None = None
    local_rank: int | None = None
    node_rank: int | None = None
    world_size: int | None = None
    restart: int = 0
    gpu_poller: bool | None = None
    step: int | None = None
    loss: float | None = None
    loss_smooth: float | None = None
    steps_per_s: float | None = None
    step_time: float | None = None
    overhead: float | None = None
    memory: dict[str, Any] | None = None  # the allocator figures (stats.memory); None: N/A
    memory_seen: bool = False  # a stats message said something about memory (even null)
    gpu: dict[str, Any] | None = None  # the latest GPU payload this rank polled (its node's)
    last_time: float | None = None  # the agent's clock on the latest message (epoch s)
    last_rx: float | None = None  # our monotonic clock when it arrived
    finished: bool = False
    goodbye_restart: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class RankTable:
    def __init__(self, *, min_lag: int = 5, slow_factor: float = 1.5,
                 diverge_factor: float = 1.0) -> None:
        self.ranks: dict[int, RankView] = {}
        self.min_lag = min_lag
        self.slow_factor = slow_factor
        self.diverge_factor = diverge_factor

    def __len__(self) -> int:
        return len(self.ranks)

    @property
    def primary(self) -> int | None:
        return min(self.ranks) if self.ranks else None

    def is_primary(self, rank: int) -> bool:
        primary = self.primary
        return primary is None or rank <= primary

    def views(self) -> list[RankView]:
        return [self.ranks[r] for r in sorted(self.ranks)]

    def restarted_after_goodbye(self, msg: Message) -> bool:
        """A message of a newer restart of a rank that had said goodbye (torchrun restarted
        the workers): that rank is live again."""
        view = self.ranks.get(msg.rank)
        return (view is not None and view.goodbye_restart is not None
                and msg.restart > view.goodbye_restart)

    # -- folding -------------------------------------------------------------------------------

    def fold(self, msg: Message, now: float) -> None:
        view = self.ranks.get(msg.rank)
        if view is None:
            view = self.ranks[msg.rank] = RankView(msg.rank)
        if msg.restart < view.restart:
            return  # a late message of a restart already replaced
        if msg.restart > view.restart:
            view.restart, view.finished, view.goodbye_restart = msg.restart, False, None
        view.last_rx = now
        view.last_time = msg.time
        if view.step is None or msg.step > view.step:
            view.step = msg.step
        p = msg.payload
        if msg.kind == protocol.META:
            view.host, view.pid = p.get("host"), p.get("pid")
            for name in ("local_rank", "node_rank", "world_size", "gpu_poller"):
                if name in p:
                    setattr(view, name, p[name])
        elif msg.kind == protocol.STATS:
            if "loss" in p:
                view.loss = _number(p["loss"])
                if view.loss is not None:
                    view.loss_smooth = (view.loss if view.loss_smooth is None else
                                        LOSS_SMOOTHING * view.loss
                                        + (1 - LOSS_SMOOTHING) * view.loss_smooth)
            if "steps_per_s" in p:
                view.steps_per_s = _number(p["steps_per_s"])
            if "step_time" in p:
                view.step_time = _number(p["step_time"])
            if "overhead" in p:
                view.overhead = _number(p["overhead"])
            if "memory" in p:
                view.memory_seen = True
                view.memory = p["memory"] if isinstance(p["memory"], dict) else None
        elif msg.kind == protocol.GPU:
            view.gpu = dict(p)
            view.gpu_poller = True
        elif msg.kind == protocol.GOODBYE:
            view.finished = True
            view.goodbye_restart = msg.restart

    # -- what the ranks view highlights --------------------------------------------------------

    def stragglers(self) -> dict[int, str]:
        """rank → why it is a straggler (see the module docstring)."""
        live = [v for v in self.views() if not v.finished]
        if len(live) < 2:
            return {}
        out: dict[int, str] = {}
        steps = [v.step for v in live if v.step is not None]
        rates = [v.steps_per_s for v in live if v.steps_per_s]
        lead = max(steps) if steps else None
        allowed = max(self.min_lag, statistics.median(rates) if rates else 0.0)
        times = [v.step_time for v in live if v.step_time]
        median_time = statistics.median(times) if len(times) >= 2 else None
        for v in live:
            if lead is not None and v.step is not None and lead - v.step > allowed:
                out[v.rank] = f"{lead - v.step:,} steps behind"
            elif (median_time and v.step_time
                  and v.step_time > self.slow_factor * median_time):
                out[v.rank] = f"step time {v.step_time / median_time:.1f}× the median"
        return out

    def diverging(self) -> dict[int, str]:
        """rank → why its loss looks diverging (see the module docstring)."""
        losses = {v.rank: v.loss_smooth for v in self.views() if v.loss_smooth is not None}
        if len(losses) < 2:
            return {}
        out: dict[int, str] = {}
        for rank, loss in losses.items():
            others = [x for r, x in losses.items() if r != rank]
            reference = statistics.median(others)
            if loss - reference > self.diverge_factor * max(abs(reference), 1e-12):
                out[rank] = (f"loss {loss:.4g} vs {reference:.4g} on the other ranks"
                             if len(others) > 1 else f"loss {loss:.4g} vs {reference:.4g}")
        return out

    def gpu_reports(self) -> list[RankView]:
        """The ranks that polled their node's GPUs (one per node), by rank."""
        return [v for v in self.views() if v.gpu is not None]

    def ranks_on_device(self, uuid: str | None, host: str | None = None) -> list[RankView]:
        """The ranks (on `host`, when given) whose allocator figures name the device `uuid`."""
        if not uuid:
            return []
        return [v for v in self.views()
                if isinstance(v.memory, dict) and v.memory.get("uuid") == uuid
                and (host is None or v.host in (None, host))]
