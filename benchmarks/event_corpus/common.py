"""What every corpus run shares: the ground-truth and event records, the agent recording its own
stream, and the measurements the truths are computed from (never symwatch's indicators)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from symwatch.core import protocol
from symwatch.core.recording import RecordingReader
from symwatch_agent.agent import Agent, watch
from torch import nn


@dataclass(frozen=True)
class Truth:
    """One ground-truth transition. `step` is where it happens (for delays); an event matches it
    when its onset lies in [lo − tol, hi + tol] (the transition's own extent, widened by the
    run's tolerance) and, when `layers` is not None, one of its jumps is on one of them, or is a
    run-level series (the loss) and `in_loss` says the transition shows in the loss."""
    step: int
    label: str
    lo: int | None = None
    hi: int | None = None
    layers: tuple[str, ...] | None = None
    in_loss: bool = True

    @property
    def start(self) -> int:
        return self.step if self.lo is None else self.lo

    @property
    def end(self) -> int:
        return self.step if self.hi is None else self.hi


@dataclass(frozen=True)
class Event:
    """A transition EVENT as the scorer sees it: its onset (the header step), the first step at
    which one of its jumps was detected, and the layers of its jumps (None: a run-level series)."""
    onset: int
    detected: int
    layers: tuple[str | None, ...]
    metrics: tuple[str, ...] = ()
    exogenous: str | None = None
    message: str = ""


@dataclass
class RunResult:
    name: str
    steps: int
    every: int
    tol: int  # steps added on each side of a truth's extent
    truths: list[Truth]
    events: list[Event]
    notices: int = 0  # non-transition events (warnings, notices): not scored
    seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)  # what the truth was computed from
    samples: int | None = None  # steps with indicators in the run's recording (run_one)
    # under a budget: the run-level detector's cadence in steps, its longest (run_one)
    loss_every: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "truths": [asdict(t) for t in self.truths],
                "events": [asdict(e) for e in self.events]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        data = dict(data)
        truths = [Truth(**{**t, "layers": tuple(t["layers"]) if t["layers"] is not None
                           else None}) for t in data.pop("truths")]
        events = [Event(**{**e, "layers": tuple(e["layers"]), "metrics": tuple(e["metrics"])})
                  for e in data.pop("events")]
        return cls(truths=truths, events=events, **data)


@dataclass
class Recorded:
    events: list[Event] = field(default_factory=list)
    notices: int = 0


# `event_corpus.py --defaults` sets it (its runs inherit it): each run's agent as
# `watch(model, opt)` leaves it, every 10 steps stretched by the 1 % time budget, instead of
# every `every` steps with no budget. The samples, and so the events, then depend on the
# machine's speed: what a user who changes nothing gets on it.
ENV_DEFAULTS = "SYMWATCH_CORPUS_DEFAULTS"

# The samples each recording made in this process holds (appended as it is read): run_one
# reports them beside the run's result (with --defaults they are the budget's doing).
SAMPLES: list[int] = []
# The same for the run-level detector's cadence (STATS `sampling.run_level_every`, the longest;
# none without a budget).
LOSS_EVERY: list[int] = []


def at_defaults() -> bool:
    return os.environ.get(ENV_DEFAULTS) == "1"


def count_samples(path: Path) -> int:
    """The steps a recording has indicators for (its METRICS messages' distinct steps)."""
    with RecordingReader(path) as reader:
        return len({msg.step for msg in reader.messages((protocol.METRICS,))})


def loss_every(path: Path) -> int | None:
    """The longest cadence of the run-level detector a recording's STATS published (None:
    the run had none, i.e. no budget)."""
    with RecordingReader(path) as reader:
        found = [msg.payload["sampling"]["run_level_every"]
                 for msg in reader.messages((protocol.STATS,))
                 if isinstance(msg.payload.get("sampling"), dict)
                 and isinstance(msg.payload["sampling"].get("run_level_every"), int)]
    return max(found, default=None)


@contextlib.contextmanager
def recorded(model: Any, optimizer: Any, *, every: int, name: str,
             **options: Any) -> Iterator[tuple[Agent, Recorded]]:
    """`watch(...)` recording its own stream to a temporary SQLite file: every event the agent
    published, whether or not a subscriber had joined yet (the most direct real path: the same
    messages a viewer gets, from the publisher thread, with none lost to a slow joiner). The
    budget is lifted so that the samples (and so the events) do not depend on the machine's
    speed (unless ENV_DEFAULTS says to keep the agent's defaults); the endpoint is a Unix socket in the runtime directory, as by default. The events
    are read once the agent has closed (its goodbye flushed the recorder) into the yielded
    `Recorded`."""
    out = Recorded()
    with tempfile.TemporaryDirectory(prefix="symwatch-corpus-") as tmp:
        path = Path(tmp) / "run.db"
        if at_defaults():  # the agent's own `every` and budget (ENV_DEFAULTS)
            options.pop("budget", None)
            agent = watch(model, optimizer, name=name, record=str(path), **options)
        else:
            options.setdefault("budget", 1.0)
            agent = watch(model, optimizer, every=every, name=name, record=str(path), **options)
        try:
            yield agent, out
        finally:
            agent.close()
        out.events, out.notices = read_events(path)
        SAMPLES.append(count_samples(path))
        stride = loss_every(path)
        if stride is not None:
            LOSS_EVERY.append(stride)


def read_events(path: Path) -> tuple[list[Event], int]:
    """The transition events of a recording, and how many other events (notices) it holds.
    Raises if the recording lacks the run's goodbye: events could be missing from its end."""
    events, notices, ended = [], 0, False
    with RecordingReader(path) as reader:
        for msg in reader.messages((protocol.EVENT, protocol.GOODBYE)):
            if msg.kind == protocol.GOODBYE:
                ended = True
                continue
            p = msg.payload
            if p.get("severity") != "transition":
                notices += 1
                continue
            jumps = p.get("jumps") or [{"layer": p.get("layer"), "metric": p.get("metric"),
                                        "step": msg.step}]
            detected = min((j.get("step", msg.step) for j in jumps), default=msg.step)
            events.append(Event(
                onset=int(p.get("onset", msg.step)), detected=int(detected),
                layers=tuple(dict.fromkeys(j.get("layer") for j in jumps)),
                metrics=tuple(dict.fromkeys(str(j.get("metric")) for j in jumps)),
                exogenous=p.get("exogenous"), message=str(p.get("message", ""))))
    if not ended:
        raise RuntimeError(f"{path}: the recording has no goodbye (not flushed or cut short)")
    return events, notices


# ---------------------------------------------------------------------------------------------
# Ground-truth measurements.

def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return q * torch.sign(torch.diagonal(r))


def linear_teacher(d: int, s: torch.Tensor, seed: int, init_std: float | None = None
                   ) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Generator]:
    """A two-layer linear student d → d → d (weights N(0, init_std²), or PyTorch's default
    init) and a teacher U·diag(s)·Vᵀ with random orthogonal U, V: (student, target, U, V,
    the data generator)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    u, v = random_orthogonal(d, gen)[:, :len(s)], random_orthogonal(d, gen)[:, :len(s)]
    net = nn.Sequential(nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False))
    if init_std is not None:
        for layer in net:
            nn.init.normal_(layer.weight, std=init_std)
    return net, u @ torch.diag(s) @ v.T, u, v, gen


def mode_truths(modes: Sequence[Sequence[float]], s: torch.Tensor, layers: tuple[str, ...],
                from_start: bool = False) -> list[Truth]:
    """One truth per teacher mode k: its strength a_k crosses half way from 0 (or from its
    first value, `from_start`) to s_k."""
    truths = []
    for k, sk in enumerate(s.tolist()):
        series = [(step, a[k]) for step, a in enumerate(modes)]
        start = series[0][1] if from_start else 0.0
        t = crossing_truth(series, start, sk, f"mode {k + 1} (s={sk:g}) learned", layers=layers)
        if t is not None:
            truths.append(t)
    return truths


def teacher_modes(end_to_end: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> list[float]:
    """a_k = u_kᵀ (W_L…W_1) v_k: the student's end-to-end map projected on the teacher's k-th
    singular directions (Saxe et al.'s mode strengths)."""
    return torch.einsum("ik,ij,jk->k", u, end_to_end, v).tolist()


def first_crossing(series: Sequence[tuple[int, float]], level: float, rising: bool = True,
                   after: int = -1) -> int | None:
    """The first step (after `after`) at which `series` reaches `level` from below (rising) or
    from above."""
    for step, value in series:
        if step > after and (value >= level if rising else value <= level):
            return step
    return None


def crossing_truth(series: Sequence[tuple[int, float]], start: float, end: float, label: str,
                   *, layers: tuple[str, ...] | None = None, after: int = -1,
                   in_loss: bool = True) -> Truth | None:
    """A transition of `series` from `start` to `end`: its step where it crosses half way, its
    extent from 10 % to 90 % of the way (None if it never gets half way)."""
    rising = end > start

    def at(fraction: float) -> int | None:
        return first_crossing(series, start + fraction * (end - start), rising, after)

    mid = at(0.5)
    if mid is None:
        return None
    lo = at(0.1)
    hi = at(0.9)
    return Truth(step=mid, label=label, lo=lo if lo is not None else mid,
                 hi=hi if hi is not None else mid, layers=layers, in_loss=in_loss)


def single_thread() -> None:
    """One core per run (the corpus's budget), and the same arithmetic on every machine."""
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
