"""The agent's options: `watch()`'s keyword arguments and the environment, read in one place.

`AgentOptions` is every keyword argument `watch()` and `Agent()` accept, with its default. Built
(by `Agent.__init__`), it fills in what the caller left unset from the environment (the
launchers set these variables: `symwatch run`, torchrun, accelerate, Lightning) and checks the
values, raising `ValueError` before anything is hooked. After construction each field holds the
value in effect: `every` an int, `name` a string, `rank`/`world_size` numbers, `endpoint`,
`connect`, `record` and the CurveZMQ keys what was given or found in the environment (None:
neither). A few values that only the environment gives (the relay keys, the job id, the restart
count) are fields too, not accepted as keywords.

The variables:

- `$SYMWATCH_NAME`, `$SYMWATCH_EVERY`, `$SYMWATCH_ENDPOINT`, `$SYMWATCH_CONNECT`,
  `$SYMWATCH_RECORD`, `$SYMWATCH_CURVE_SERVER_KEY`, `$SYMWATCH_CURVE_AUTHORIZED`: what the
  keyword of the same name does, when it is not given;
- `$SYMWATCH_CURVE_RELAY_KEY`, `$SYMWATCH_CURVE_CLIENT_KEY`: CurveZMQ keys to publish to a relay;
- `$SYMWATCH_INSECURE` (1/true/yes/on): what `insecure=True` does, when `insecure` is not given;
- `$SYMWATCH_JOB_ID` (hooks/distributed.py), `$RANK`, `$WORLD_SIZE`, `$LOCAL_RANK`,
  `$GROUP_RANK`/`$NODE_RANK`, `$TORCHELASTIC_RESTART_COUNT`: where this process sits;
- `$SYMWATCH_BUDGET`, `$SYMWATCH_FULL_EVERY`, `$SYMWATCH_QUIET` and (leniently) `$SYMWATCH_EVERY`:
  read for `symwatch run` only (`launch_options`, `launch_quiet`), by its start-up hook.
  `$SYMWATCH_LAUNCH` and `$SYMWATCH_AGENT_PATH` are read by that hook itself, which must decide
  at interpreter start-up, before this package can be imported.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections import ChainMap
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Mapping

import torch

from symwatch.core import exposure
from symwatch_agent.hooks import distributed

ENV_NAME = "SYMWATCH_NAME"
ENV_EVERY = "SYMWATCH_EVERY"
ENV_ENDPOINT = "SYMWATCH_ENDPOINT"
ENV_CONNECT = "SYMWATCH_CONNECT"  # publish to a `symwatch relay` there instead of binding
ENV_RECORD = "SYMWATCH_RECORD"  # record every message to this SQLite file ({run}, {rank} expand)
ENV_CURVE_SERVER_KEY = "SYMWATCH_CURVE_SERVER_KEY"  # the server's secret certificate file
ENV_CURVE_AUTHORIZED = "SYMWATCH_CURVE_AUTHORIZED"  # a directory of authorised client public keys
# Publishing to a relay (`connect=`): the agent is the CURVE *client* of the relay.
ENV_CURVE_RELAY_KEY = "SYMWATCH_CURVE_RELAY_KEY"  # the relay's public key file
ENV_CURVE_CLIENT_KEY = "SYMWATCH_CURVE_CLIENT_KEY"  # this agent's secret key file
ENV_INSECURE = exposure.ENV_INSECURE  # "1": bind a network interface (or reach a relay) in clear
ENV_LAUNCH = "SYMWATCH_LAUNCH"  # set by `symwatch run` (its start-up hook reads it too)
# `symwatch run` only (its start-up hook passes them on as keyword arguments).
ENV_BUDGET = "SYMWATCH_BUDGET"
ENV_FULL_EVERY = "SYMWATCH_FULL_EVERY"
ENV_QUIET = "SYMWATCH_QUIET"

DEFAULT_EVERY = 10


@dataclass(kw_only=True)
class AgentOptions:
    """`watch()`'s keyword arguments (see `symwatch_agent.agent.watch` for what each does),
    completed from the environment and checked when built."""

    name: str | None = None  # None: $SYMWATCH_NAME, else the script's name
    every: int | None = None  # None: $SYMWATCH_EVERY, else 10
    budget: float = 0.01
    full_every: int | None = None
    endpoint: str | None = None  # None: $SYMWATCH_ENDPOINT, else the agent's default
    capture_backward: bool = True
    register: bool = True
    insecure: bool | None = None  # None: $SYMWATCH_INSECURE, else False
    rel_tol: float = 0.3
    abs_tol: float = 0.1
    dead_eps: float = 1e-2
    max_svd_dim: int = 1024
    dup_eps: float = 1e-3
    pairs: Mapping[str, Any] | None = None
    classifier: bool | str | list[str] | None = True
    heads: Mapping[str, Any] | bool | None = None
    # STATS (the loss, each step's values batched, sampling, memory) every second: each costs
    # ~0.1 ms of the training thread and ~0.6 ms of the publisher's CPU on a VM (its wake-up,
    # build, encode, send; the heartbeat's rides on it). At 2 a second they took 1.3 ms a
    # second of a 4 ms plan on a GPT-style model at a 1 % budget, time the cheap tier's
    # refresh then lacked (docs/benchmarks.md, "Per-layer refresh"); every step's loss still
    # reaches the viewer, in batches, as nvitop's and htop's screens refresh every 1–2 s.
    stats_interval: float = 1.0
    heartbeat_interval: float = 1.0
    meta_interval: float = 5.0
    gpu_interval: float = 2.0
    nvml: Any = None
    process_interval: float = 30.0
    connect: str | None = None  # None: $SYMWATCH_CONNECT, else publish on `endpoint`
    detect: bool = True
    threshold: float | None = None
    record: str | os.PathLike[str] | None = None  # None: $SYMWATCH_RECORD, else no recording
    history: bool = True
    history_samples: int = 256
    history_events: int = 1000
    history_bytes: int = 16 * 1024 * 1024
    curve_server_key: str | os.PathLike[str] | None = None  # None: $SYMWATCH_CURVE_SERVER_KEY
    curve_authorized: str | os.PathLike[str] | None = None  # None: $SYMWATCH_CURVE_AUTHORIZED
    rank: int | None = None  # None: $RANK, else torch.distributed's, else 0
    world_size: int | None = None  # None: $WORLD_SIZE, else torch.distributed's, else 1
    local_rank: int | None = None  # None: $LOCAL_RANK, else unknown (None)
    node_rank: int | None = None  # None: $GROUP_RANK or $NODE_RANK, else unknown (None)
    replica: bool | None = None  # None: detected by the agent (a DDP wrapper, rank > 0)

    # Only from the environment (not keywords).
    curve_relay_key: str | None = field(init=False, default=None)
    curve_client_key: str | None = field(init=False, default=None)
    job: str | None = field(init=False, default=None)  # the ranks' shared run id, if several
    restart: int = field(init=False, default=0)  # torchelastic's restart count
    # How the agent was started (symwatch.core.exposure: watch, run, inject), so that a
    # refusal to publish says what to type: a keyword, or the command's flags and variables.
    launcher: str = field(init=False, default=exposure.WATCH)

    def __post_init__(self) -> None:
        env: Mapping[str, str] = (ChainMap(dict(_injected), os.environ)  # type: ignore[arg-type]
                                  if _injected is not None else os.environ)
        self.launcher = (exposure.INJECT if _injected is not None
                         else exposure.RUN if env.get(ENV_LAUNCH) else exposure.WATCH)
        if self.insecure is None:
            self.insecure = exposure.truthy(env.get(ENV_INSECURE))
        if self.every is None:
            self.every = int(env.get(ENV_EVERY, str(DEFAULT_EVERY)))
        if self.every < 1:
            raise ValueError(f"every must be a positive number of steps, got {self.every}")
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget is a fraction of wall time in (0, 1], got {self.budget}")
        if self.full_every is not None and self.full_every < 1:
            raise ValueError("full_every must be a positive number of samples, got "
                             f"{self.full_every}")
        self.name = self.name or env.get(ENV_NAME) or default_name()
        self.rank, self.world_size, self.local_rank, self.node_rank = placement(
            self.rank, self.world_size, self.local_rank, self.node_rank)
        # The ranks of one job share a run id (docs/distributed.md).
        self.job = distributed.job_id(env) if self.world_size > 1 else None
        self.restart = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.endpoint = self.endpoint or env.get(ENV_ENDPOINT) or None
        self.connect = self.connect or env.get(ENV_CONNECT) or None
        if self.record is None:
            self.record = env.get(ENV_RECORD) or None
        if self.curve_server_key is None:
            self.curve_server_key = env.get(ENV_CURVE_SERVER_KEY) or None
        if self.curve_authorized is None:
            self.curve_authorized = env.get(ENV_CURVE_AUTHORIZED) or None
        self.curve_relay_key = env.get(ENV_CURVE_RELAY_KEY) or None
        self.curve_client_key = env.get(ENV_CURVE_CLIENT_KEY) or None

    @classmethod
    def keywords(cls) -> tuple[str, ...]:
        """The keyword arguments `watch()` and `Agent()` accept, in order."""
        return tuple(f.name for f in fields(cls) if f.init)

    @classmethod
    def check_keywords(cls, options: Mapping[str, Any], caller: str) -> None:
        """Raise the TypeError Python raises for an unexpected keyword argument of `caller`
        (a function taking these keywords), for the first one in `options` it does not take."""
        accepted = set(cls.keywords())
        for key in options:
            if key not in accepted:
                raise TypeError(f"{caller}() got an unexpected keyword argument {key!r}")

    @classmethod
    def signature(cls, *leading: inspect.Parameter) -> inspect.Signature:
        """The signature of a function taking `leading` then these keywords (for `help()` and
        `inspect` on a function declared with `**options`)."""
        keywords = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                      annotation=f.type)
                    for f in fields(cls) if f.init]
        return inspect.Signature([*leading, *keywords], return_annotation="None")


_injected: Mapping[str, str] | None = None  # see `injected`


@contextmanager
def injected(variables: Mapping[str, str]) -> Iterator[None]:
    """`symwatch inject`: an agent built in this block reads `variables` (the `SYMWATCH_*`
    variables `symwatch run` would set: keys, insecure) over the process's own environment,
    which stays untouched, and says `symwatch inject` in its refusals."""
    global _injected
    previous, _injected = _injected, dict(variables)
    try:
        yield
    finally:
        _injected = previous


def default_name() -> str:
    """The run's name when none is given: the script's file name."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return script or "python"


def placement(rank: int | None, world_size: int | None, local_rank: int | None,
              node_rank: int | None) -> tuple[int, int, int | None, int | None]:
    """(rank, world size, local rank, node rank) of this process. Explicit values win (the
    trainer integrations pass their trainer's) and are checked; else the launcher's environment
    (torchrun, accelerate, Lightning: RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK/NODE_RANK), where
    a malformed value is ignored rather than allowed to stop the training; else an initialised
    torch.distributed group; else a single process. An unknown local/node rank stays None (not
    sent) rather than a guess."""
    explicit = {"rank": rank, "world_size": world_size, "local_rank": local_rank,
                "node_rank": node_rank}
    for what, value in explicit.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < (1 if what == "world_size" else 0)):
            raise ValueError(f"{what} must be an integer >= {1 if what == 'world_size' else 0}, "
                             f"got {value!r}")
    if rank is not None and world_size is not None and rank >= world_size:
        raise ValueError(f"rank {rank} is not below world_size {world_size}")

    def env(*names: str) -> int | None:
        for name in names:
            try:
                value = int(os.environ.get(name, ""))
            except ValueError:
                continue
            if value >= 0:
                return value
        return None

    group = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = env("RANK")
        if rank is None:
            rank = torch.distributed.get_rank() if group else 0
    if world_size is None:
        world_size = env("WORLD_SIZE") or (torch.distributed.get_world_size() if group else 1)
    local_rank = local_rank if local_rank is not None else env("LOCAL_RANK")
    node_rank = node_rank if node_rank is not None else env("GROUP_RANK", "NODE_RANK")
    return rank, world_size, local_rank, node_rank


# -- `symwatch run` ------------------------------------------------------------------------------

def launch_options(say: Callable[[str], None]) -> dict[str, Any]:
    """The keyword arguments `symwatch run`'s start-up hook passes to `watch()`, from the
    variables the launcher set. Lenient where `watch()` is strict: a malformed value is
    reported through `say` and ignored, never allowed to stop the training. Several ranks on
    one machine get endpoints (and, with $SYMWATCH_RECORD, files) that do not collide."""
    options: dict[str, Any] = {}
    budget = os.environ.get(ENV_BUDGET)
    if budget:
        try:
            value = float(budget)
            if not 0 < value <= 1:
                raise ValueError
            options["budget"] = value
        except ValueError:
            say(f"ignoring ${ENV_BUDGET}={budget!r}: expected a fraction in (0, 1]")
    every = os.environ.get(ENV_EVERY)
    if every:
        try:
            options["every"] = max(1, int(every))
        except ValueError:
            say(f"ignoring ${ENV_EVERY}={every!r}: expected a whole number of steps")
            options["every"] = DEFAULT_EVERY
    full_every = os.environ.get(ENV_FULL_EVERY, "").strip()
    if full_every:
        try:
            value = int(full_every)
            if value < 1:
                raise ValueError
            options["full_every"] = value
        except ValueError:
            say(f"ignoring ${ENV_FULL_EVERY}={full_every!r}: expected a whole number of "
                f"samples")
    local_rank = _int_env("LOCAL_RANK")
    endpoint = os.environ.get(ENV_ENDPOINT)
    if endpoint and local_rank:
        options["endpoint"] = rank_endpoint(endpoint, local_rank)
    record = os.environ.get(ENV_RECORD)
    if record and _int_env("WORLD_SIZE") > 1 and "{rank}" not in record:
        root, ext = os.path.splitext(record)
        options["record"] = f"{root}.rank{{rank}}{ext}"
    return options


def launch_quiet() -> bool:
    """`symwatch run --quiet`: no `symwatch: watching ...` line on stderr."""
    return bool(os.environ.get(ENV_QUIET))


def rank_endpoint(endpoint: str, local_rank: int) -> str:
    """Several ranks on one machine cannot bind one endpoint: local rank r binds the TCP port
    + r, or the ipc path with `.r` appended. `{rank}` in the endpoint is replaced instead."""
    if "{rank}" in endpoint:
        return endpoint.replace("{rank}", str(local_rank))
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint.rpartition(":")
        if port.isdigit() and int(port) != 0:
            return f"{host}:{int(port) + local_rank}"
        return endpoint
    return f"{endpoint}.{local_rank}"


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or 0)
    except ValueError:
        return 0
