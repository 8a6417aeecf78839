"""The agent: hooks a training run, samples indicators on schedule, and hands messages to the
publisher. `Agent` is the handle `symwatch.watch()` returns.

The hot path is `_on_step` (an optimizer post-step hook). When it does not sample it does a
counter increment, one `perf_counter()`, a few comparisons and one list append (a reference to
this step's loss, for STATS `per_step`): no copy, no device sync, no lock. At the steps `every`
allows a sample it also reads the optimizers' settings (plain floats, a few µs per param group;
`_watch_settings`).
Everything that reads values back from tensors happens on the publisher thread.
Any failure inside the agent is reported once (stderr and the stream) and switches off the
part that failed; it never propagates into the training loop.
"""

from __future__ import annotations

import atexit
import collections
import inspect
import os
import socket
import sys
import threading
import time
import uuid
import weakref
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from symwatch.core import protocol, recording, runtime
from symwatch.core.history import History
from symwatch.core.version import __version__
from symwatch_agent.hooks import activations, distributed, loss_capture
from symwatch_agent.measure import logits, memory, representations, sharded
from symwatch_agent.measure.gpu import GpuSampler
from symwatch_agent.measure.indicators import INDICATORS, IndicatorEngine
from symwatch_agent.measure.layers import discover
from symwatch_agent.measure.schedule import CHEAP, FULL
from symwatch_agent.options import AgentOptions
from symwatch_agent.publish.curve import CurveError
from symwatch_agent.publish.curve import load_relay_client as load_relay_curve
from symwatch_agent.publish.curve import load_server as load_curve
from symwatch_agent.publish.hyperparameters import FOLLOW_SAMPLES, read_settings
from symwatch_agent.publish.hyperparameters import changes as setting_changes
from symwatch_agent.publish.hyperparameters import notice as setting_notice
from symwatch_agent.publish.hyperparameters import wire_groups as setting_groups
from symwatch_agent.publish.publisher import Publisher, PublisherError
from symwatch_agent.publish.transitions import (TransitionWatch, host_float,
                                                  read_hyperparameters)

# The share of the time budget the agent plans to use by its own measure (see
# Agent._set_up_budget): what it counts (the time inside its hook, its publisher's whole CPU)
# plus what it cannot count must stay within the budget. Bounded from above, part by part, in
# one run of the GPT-style benchmark each (docs/benchmarks.md, "The overhead bounded from its
# parts"; benchmarks/overhead_decomposed.py: the hook timed from outside, the publisher's
# CPU as if it all held the training up, the caches a sample evicts at the top of their
# interval, GIL handoffs): at 0.7 the bound read 1.000 % with torch on one core and 0.984 %
# on both, so 0.6 (then 0.782 % on one core). It was 0.4, from runs compared whole (+1.1 to
# +2.2 % at 0.8 in four runs), which this machine's noise (±5 % between runs) could not
# resolve: it halved the samples for a margin no measurement showed.
PLANNED_SHARE_OF_BUDGET = 0.6

# The full tier's share (schedule.TierScheduler's `full_share`, of the whole budget): a quarter
# of what the agent plans to spend. At 0.5 (before) its own ledger allowed more than the
# agent's whole plan, so on a GPT-style model nearly every sample was full and each layer was
# refreshed about every 360 steps; the cheap tier now has three quarters of the plan
# (docs/benchmarks.md, "Training overhead": per-layer refresh interval).
FULL_SHARE_OF_BUDGET = 0.25 * PLANNED_SHARE_OF_BUDGET

# The share of the plan the run-level detector may spend under a budget (its cadence is
# stretched beyond `every` where following the loss every `every` steps would cost more:
# symwatch.core.run_level): a quarter, ~1.5 ms a second at a 1 % budget, which at ~27 µs an
# update follows the loss every `every` steps up to ~55 updates a second (every 10 steps at
# 550 steps a second).
RUN_LEVEL_SHARE = 0.25
SKIPPED_NAMED = 6  # the modules not measured named in the start-up notice (META has them all)

# A sliced cheap sample waits until the cheap ledger holds this share of the whole model's
# expected cheap cost (Agent._least_slice_s), so that a sample's fixed cost is paid for many
# layers at once; never longer than the ledger takes to hold MAX_SLICE_WAIT_S (a very large
# model's whole pass would otherwise be one long pause of the training thread). The whole
# model, not a quarter (before): a sample's fixed cost (~1 ms of bookkeeping on the training
# thread, ~2 ms of decoding and detection on the publisher) paid four times a round made
# each layer's refresh on the GPT-style benchmark 305–335 steps, paid once 220–250
# (docs/benchmarks.md, "Fifth pass"); a model whose whole pass costs more than
# MAX_SLICE_WAIT_S is still measured in slices of about that cost.
MIN_SLICE_SHARE = 1.0
MAX_SLICE_WAIT_S = 0.025

# At most this many per-step values (loss and scalars) wait for a STATS message: a full buffer
# sends one before its interval is up (fast steps: ~60 kB of JSON each).
PER_STEP_MAX = 4096

# The run's registry entry (`symwatch ls`: steps, sampling, the last transition) is rewritten
# this often: ~0.6 ms of the publisher's CPU each (a file written and renamed), 0.12 ms a
# second at 5 s, charged to the budget; a run shows as idle only after 30 s without a new entry
# (tui/screens/runs.py), and META, every 5 s, shares its wake-up.
REGISTRY_INTERVAL_S = 5.0

WARM_UP_JOIN_S = 30.0  # how long close() waits for the warm-up thread (one table: < 1 s)

# Agents not yet closed in this process: an injector asks before adding a second one, and a
# test harness closes what a failed test left behind.
_open_agents: weakref.WeakSet[Agent] = weakref.WeakSet()


def open_agents() -> list[Agent]:
    """The agents in this process that are watching (started and not closed)."""
    return [agent for agent in list(_open_agents) if not agent._closed]


def _warn_if_already_watched(model_ids: set[int]) -> None:
    """A second watch() of a model an open agent watches: said once on stderr (it started a
    second agent without a word, doubling the hooks and the cost); the new one still starts."""
    for agent in open_agents():
        if getattr(agent, "_model_ids", set()) & model_ids:
            print(f"symwatch: this model is already watched (run {agent.name} on "
                  f"{agent.endpoint}); a second agent doubles the hooks and the cost: close the "
                  "first (its handle's close()) or keep using its handle", file=sys.stderr)
            return


class Agent:
    """A running agent. Also a context manager: leaving the block closes it."""

    def __init__(self, model: nn.Module | Mapping[str, nn.Module] | Iterable[nn.Module],
                 optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
                 **options: Any) -> None:
        # The keyword arguments are AgentOptions' fields (Agent's signature says so, for help()).
        AgentOptions.check_keywords(options, "Agent.__init__")
        models = _as_model_map(model)
        optimizers = _as_list(optimizer)  # once: an iterator given would be empty a second time
        self.options = opts = AgentOptions(**options)  # the environment read, values checked
        self._model_ids = {id(m) for m in models.values()}
        _warn_if_already_watched(self._model_ids)
        self._set_up_budget(opts)
        self._set_up_identity(opts)
        self._set_up_layers(models, optimizers, opts)
        self._set_up_state(models, opts)
        self._set_up_registry(opts)
        self._set_up_outputs(opts)
        if not self._start_publisher(opts):
            return
        self._hook_training(optimizers, opts)

    # -- set-up (each step in the order __init__ takes them) -----------------------------------

    def _set_up_budget(self, opts: AgentOptions) -> None:
        self.every = opts.every  # AgentOptions filled in a None: an int from here on
        # At most this fraction of training time goes to the agent (its work on the training
        # thread plus its publisher thread's CPU): a sample is skipped when its expected cost
        # would take the total over budget × training time. 1 or more means no limit.
        self.budget = opts.budget
        self._unlimited = opts.budget >= 1.0
        # What the agent plans to spend, measured: less than the budget, because what it can
        # measure (its own threads' time) undercounts what training loses (the caches a sample
        # evicts, the GIL's handoffs): PLANNED_SHARE_OF_BUDGET.
        self._planned = PLANNED_SHARE_OF_BUDGET * opts.budget

    def _set_up_identity(self, opts: AgentOptions) -> None:
        """Name, placement, run id, and the counters of the run."""
        self.name, self.rank, self.world_size = opts.name, opts.rank, opts.world_size
        self.local_rank, self.node_rank = opts.local_rank, opts.node_rank
        # The ranks of one job share a run id (docs/distributed.md), so one view through a
        # relay holds them all; the registry entry and default socket stay per process.
        self.job = opts.job
        self.run_id = self.job or uuid.uuid4().hex[:12]
        self._process_id = f"{self.run_id}-r{self.rank}" if self.job else self.run_id
        self.restart = opts.restart
        self.started = time.time()
        # Budget is earned by wall time spent training: the gap before the first step earns
        # nothing, and a pause longer than a few steps (evaluation, checkpointing, a debugger)
        # earns only a few steps' worth, so credit cannot pile up and be spent in a burst.
        self._training_s = 0.0
        self.steps = 0
        # The first step this agent sees (it always samples): 1, or the step after those the
        # optimizer took before the agent started (continue_from: `symwatch run` starts it at
        # the first step that finds it ready).
        self._first_step = 1
        self.samples = 0
        self.error: str | None = None  # why the agent is not publishing, if it is not

    def _set_up_layers(self, models: Mapping[str, nn.Module], optimizers: list[Any],
                       opts: AgentOptions) -> None:
        """The layers measured (and those skipped), and the indicator engine over them."""
        self.layers, self.skipped = discover(models)
        # FSDP shards: measured from the local shard only (additive figures the observer
        # combines); the indicator engine, which needs whole matrices, never sees them.
        self.sharded = sharded.find_sharded(models, self.layers)
        if self.sharded:
            taken = {id(item.layer) for item in self.sharded}
            self.layers = [layer for layer in self.layers if id(layer) not in taken]
            self.skipped = [s for s in self.skipped if "FullyShardedDataParallel" not in s
                            and "_flat_param" not in s]
        self.replica = self.rank != 0 and (opts.replica if opts.replica is not None else
                                           _replica_measured_on_rank_zero(models, self.rank))
        if self.replica:
            # DDP keeps identical weights on every rank: rank 0 measures them; the others
            # publish only what differs per rank (loss, step time, GPU), never a collective.
            self.skipped = [f"{layer.name} (DDP replica: measured on rank 0)"
                            for layer in self.layers]
            self.layers = []
        self.engine = IndicatorEngine(self.layers, rel_tol=opts.rel_tol, abs_tol=opts.abs_tol,
                                      dead_eps=opts.dead_eps, dup_eps=opts.dup_eps,
                                      max_svd_dim=opts.max_svd_dim, budget=opts.budget,
                                      full_share=FULL_SHARE_OF_BUDGET,
                                      full_every=opts.full_every,
                                      clock=lambda: self._training_s,
                                      optimizers=optimizers)
        if not self._unlimited:  # step 1 takes a cheap slice: no spectra at start-up
            self.engine.scheduler.first = CHEAP
        # Static pairing now; the first forward pass refines it (its hooks then remove
        # themselves). Bad `pairs`/`classifier` names raise here, before training starts.
        self.skipped += self.engine.attach(models, pairs=opts.pairs, classifier=opts.classifier,
                                           heads=opts.heads)

    def _set_up_state(self, models: Mapping[str, nn.Module], opts: AgentOptions) -> None:
        """Devices and side streams, and the state of the hot path and the periodic jobs."""
        self._device = self.layers[0].weight.device if self.layers else torch.device("cpu")
        self._models_device = _models_device(models)
        self._process_interval = opts.process_interval
        self._shard_stream = (torch.cuda.Stream(self._models_device)
                              if self.sharded and self._models_device.type == "cuda" else None)
        self._side_stream = (torch.cuda.Stream(self._device)
                             if self._device.type == "cuda" else None)
        self._stats_interval = opts.stats_interval
        self._reported: set[str] = set()
        self._loss: torch.Tensor | float | None = None
        self._loss_from_log = False
        self._scalars: dict[str, Any] = {}
        # Every step's loss and logged scalars since the last STATS message, as references (no
        # copy, no sync): name -> (steps, values); sent in STATS `per_step` (docs/protocol.md).
        self._per_step: dict[str, tuple[list[int], list[Any]]] = {}
        self._per_step_kept = 0  # entries in _per_step (a full buffer sends STATS early)
        self._loss_pending = False  # a loss captured from .backward() not yet given a step
        # The latest samples taken on schedule, as (step, budget skips so far): what STATS
        # `sampling` reports as the interval between samples and what limits it.
        self._sampled_at: collections.deque[tuple[int, int]] = collections.deque(maxlen=17)
        self._budget_skips = 0
        # The optimizers' settings (publish/hyperparameters.py), read at each step `every`
        # allows: STATS `optimizer`, and a notice at each change. After a change the next
        # FOLLOW_SAMPLES samples `every` allows are owed: taken even where the budget's ledger
        # would skip them, within an overdraft of that many samples (_overdraft_s), paid back
        # later.
        self._settings: Any = None
        self._owed_samples = 0
        self._last_step_at = time.perf_counter()
        self._step_time: float | None = None  # EMA of wall time per step
        self._sample_cost_s = 0.0  # EMA of one sample's cost on the training thread
        # EMA of a cheap sample's cost outside the engine's measuring (settings, STATS, the
        # hand-over to the publisher): paid per sample whatever its slice (_slice_target_s)
        self._sample_overhead_s = 0.0
        self._next_stats_at = 0.0
        self._cost_s = 0.0  # time the agent spent on the training thread
        self._budgeted_cost_s = 0.0  # the same, less the first sample: what the budget limits
        self._wrapper_seen = loss_capture.spent_s  # loss_capture's wrapper time, charged
        self._publisher_start_s = 0.0  # the publisher's CPU until step 1's sample: not charged
        self._failed_layers_reported = 0
        self._switched_off_reported = 0
        self._hooks: list[Any] = []
        # Representations: rows of a sampled step's forward pass, armed by the step before
        self._reps = activations.ActivationCapture()
        # The training thread's seconds for the current capture: arming it, and (once taken)
        # its hooks too; a full sample's are charged to the full tier's ledger (_sample).
        self._armed_s = 0.0
        self._capture_s = 0.0
        self._gpu: GpuSampler | None = None
        self._nvml = opts.nvml
        self._closed = False

    def _set_up_registry(self, opts: AgentOptions) -> None:
        """Whether `symwatch ls` lists the run, and where (fixed for the run's lifetime:
        entries always go to the registry the run started in)."""
        register = opts.register
        self._registry_root = None
        if register:
            try:
                self._registry_root = runtime.runtime_dir()
            except OSError as exc:  # `symwatch ls` will not list it; the stream still works
                register = False
                print(f"symwatch: this run will not be listed by `symwatch ls`: {exc}",
                      file=sys.stderr)
        self._register = register

    def _set_up_outputs(self, opts: AgentOptions) -> None:
        """Where the messages go: the endpoint (or relay), the recording, the history for late
        viewers; and the transition detector that adds events to them."""
        self._optimizers: list[torch.optim.Optimizer] = []
        # Transition detection runs on the publisher thread over every sample (on by default,
        # so alerts fire and recordings hold transitions with nobody watching).
        # Under a budget the run-level series (the loss, logged scalars) get a detector of
        # their own, fed every `every` steps from STATS `per_step` (publish/transitions.py).
        # It may spend RUN_LEVEL_SHARE of the plan (CPU seconds a second of training).
        self._transitions = (TransitionWatch(opts.threshold,
                                             every=None if self._unlimited else self.every,
                                             max_cost_s=RUN_LEVEL_SHARE * self._planned)
                             if opts.detect else None)
        # The optimizers' settings where they changed (step, settings), from the training
        # thread (_watch_settings) to the publisher's (_per_step_values): the run-level
        # detector's marks at the step of the change (deque: appends and pops are atomic).
        self._setting_changes: collections.deque[tuple[int, Any]] = collections.deque()
        self._marks: list[tuple[int, str]] = []  # from mark(); consumed on the publisher thread
        self._last_transition: dict[str, Any] | None = None  # in the registry entry's extra

        self._requested = opts.endpoint or runtime.default_ipc_endpoint(
            self._process_id) or "tcp://127.0.0.1:0"
        self.connect = opts.connect
        history = opts.history
        if self.connect:
            # The relay keeps the history for late viewers and is what `symwatch attach`
            # finds: this process binds nothing, keeps no history and is not listed itself.
            self._requested, history = self.connect, False
            self._register = False
        # Recording: the publisher thread hands each encoded message to the recorder, whose own
        # thread writes the file; the training thread never touches SQLite.
        self.recording = _record_path(opts.record, self.run_id, self.rank, shared=bool(self.job))
        self.recorder = (recording.Recorder(self.recording,
                                            warn=lambda text: self._report("recording", text))
                         if self.recording else None)
        # Late join: a bounded history of what was published, served to viewers that attach
        # later (docs/protocol.md, "Late join").
        self.history = (History(samples=opts.history_samples, events=opts.history_events,
                                max_bytes=opts.history_bytes) if history else None)

    def _start_publisher(self, opts: AgentOptions) -> bool:
        """Start the publisher thread (and the recorder). False when it cannot publish: that
        must not stop the training, so it says so once and the agent does nothing."""
        try:
            try:  # CurveZMQ keys (docs/security.md): needed for any non-loopback interface
                curve = load_curve(opts.curve_server_key, opts.curve_authorized)
            except CurveError as exc:
                raise PublisherError(str(exc)) from None
            if self.connect:  # the agent is the relay's client: its keys, if any
                try:
                    curve = load_relay_curve(opts.curve_relay_key, opts.curve_client_key)
                except CurveError as exc:
                    raise PublisherError(str(exc)) from None
            self._publisher = Publisher(self._requested, run=self.run_id, rank=self.rank,
                                        restart=self.restart, report=self._report,
                                        insecure=opts.insecure, recorder=self.recorder,
                                        history=self.history, curve=curve,
                                        connect=bool(self.connect), launcher=opts.launcher)
            self._publisher.add_periodic(opts.heartbeat_interval, self._heartbeat)
            self._publisher.add_periodic(opts.meta_interval, self._meta_message)
            self._publisher.add_periodic(opts.gpu_interval, self._gpu_message)
            if self._register:
                self._publisher.add_periodic(REGISTRY_INTERVAL_S, self._refresh_registry)
            self.endpoint = self._publisher.start()
            if self._publisher.exposed:  # insecure=True on a network interface: every start
                warning = (f"symwatch: WARNING: publishing on {self.endpoint} WITHOUT "
                           "encryption or authentication (insecure=True): anyone who can reach "
                           "this port can read the stream; use CurveZMQ keys (`symwatch "
                           "keygen`) or SSH instead (docs/security.md)")
                print(warning, file=sys.stderr)
                self._publisher.submit(protocol.EVENT, {"message": warning,
                                                        "severity": "warning"}, 0)
            if self.recorder is not None:
                self.recorder.start()
            self._announce_skipped()
        except PublisherError as exc:
            self.endpoint = ""
            self.error = str(exc)
            self._closed = True
            self.engine.close()
            print(f"symwatch: not watching this run: {exc}", file=sys.stderr)
            return False
        return True

    def _hook_training(self, optimizers: list[torch.optim.Optimizer],
                       opts: AgentOptions) -> None:
        """Hook the optimizers and `.backward()`, register the run, say what is not measured."""
        self._optimizers = optimizers
        if optimizers:
            # Steps are counted on the first optimizer; with several (GAN, teacher/student)
            # they step together, and counting each would double the step number.
            self._hooks.append(optimizers[0].register_step_post_hook(self._on_step))
            for opt in optimizers:  # a resume from a checkpoint explains what follows it
                self._hooks.append(opt.register_load_state_dict_post_hook(
                    lambda *_: self.mark("resumed from a checkpoint (optimizer state loaded)")))
        if opts.capture_backward:
            loss_capture.add_listener(self._on_backward)
        # The first step's forward is copied only for a full first sample (no budget): under
        # a budget step 1 is cheap, its capture was thrown away, and copying rows of every
        # layer cost 40–50 ms on the training thread at start-up (issue #15); the
        # representations then come with the first full sample (the second one, as a rule).
        if self.layers and self.engine.scheduler.choose() == FULL:
            self._arm_representations()
        atexit.register(self.close)
        _open_agents.add(self)
        self._warm_thread: threading.Thread | None = None
        if self.layers:  # the first full sample's one-off work, off the training thread
            self._warm_thread = threading.Thread(target=self.engine.warm_up,
                                                 name="symwatch-warm-up", daemon=True)
            self._warm_thread.start()
        if self._register:
            self._refresh_registry()  # now, so `symwatch ls` sees the run at once
        if self.sharded:
            self._report("sharded", f"{len(self.sharded)} layers are sharded by FSDP: their "
                         "whole-matrix indicators (spectra, ranks, units, balance) are not "
                         "computed; weight_norm is combined across ranks by the viewer "
                         "(docs/distributed.md)")
        elif not self.layers and not self.replica:
            self._report("layers", "no Linear or Conv layers found; only the loss is published")

    # -- public API ----------------------------------------------------------------------------

    def log(self, loss: Any = None, labels: Any = None, **scalars: Any) -> None:
        """Record the loss (a tensor or a number; no device sync) and other run-level scalars.
        An explicit loss takes precedence over the one captured from `.backward()`; `labels`
        (the batch's class labels, one per row of the classifier's input) over those taken
        from `cross_entropy`, for NC1–NC3 (docs/metrics.md, "Representations")."""
        if labels is not None and self._reps.armed:
            self._reps.log_labels(labels)
        if loss is not None:
            self._loss = loss.detach() if isinstance(loss, torch.Tensor) else loss
            self._loss_from_log = True
            self._keep("loss", self._loss)
        for key, value in scalars.items():
            self._scalars[key] = value.detach() if isinstance(value, torch.Tensor) else value
            self._keep(key, self._scalars[key])

    def _keep(self, name: str, value: Any) -> None:
        """Keep a value for this step's entry of `name` in the next STATS `per_step` (the last
        one logged in a step wins). A reference only: read on the publisher thread."""
        steps, values = self._per_step.setdefault(name, ([], []))
        if steps and steps[-1] == self.steps:
            values[-1] = value
        else:
            steps.append(self.steps)
            values.append(value)
            self._per_step_kept += 1

    def mark(self, reason: str) -> None:
        """Declare a known external change at the current step (a schedule boundary, a data
        switch, a resume): transitions it explains are labelled with `reason`, not reported
        as discoveries. Cheap; safe from the training thread."""
        self._marks.append((self.steps, str(reason)))  # list.append is atomic under the GIL

    def step(self) -> None:
        """Count one training step; only needed when no optimizer was given to `watch`."""
        self._on_step()

    def continue_from(self, steps: int) -> None:
        """The optimizer took `steps` steps before this agent started (before its first step):
        its step numbers go on from there, and its first step still samples. Call it before
        that first step."""
        if self.steps == 0 and steps > 0:
            self.steps, self._first_step = steps, steps + 1

    def sampling(self, layers: bool = True) -> dict[str, Any]:
        """What sets the interval between samples (STATS `sampling`, docs/protocol.md):
        `interval`, the median steps between the latest samples taken on schedule (or the
        steps since the last one, when that is longer: a budget that allows none for a long
        while); `limit`, "budget" when the time budget skipped samples `every` allowed among
        them, else "every"; with `every` and `budget` themselves; `layers`: also the per-layer
        refresh interval (_layer_intervals)."""
        taken = list(self._sampled_at.copy())  # copy(): atomic, also off the training thread
        gaps = sorted(b[0] - a[0] for a, b in zip(taken, taken[1:]))
        interval: float | None = float(gaps[len(gaps) // 2]) if gaps else None
        last = taken[-1][0] if taken else 0
        waiting = self.steps - last
        skips = self._budget_skips - (taken[0][1] if taken else 0)
        if waiting > self.every and (interval is None or waiting > interval) and (
                self._budget_skips > (taken[-1][1] if taken else 0)):
            interval = float(waiting)  # nothing sampled for longer than the usual gap
        budget_limited = not self._unlimited and skips > 0
        out: dict[str, Any] = {"interval": interval, "every": self.every, "budget": self.budget,
                               "limit": "budget" if budget_limited else "every"}
        return out | (self._layer_intervals() if layers else {})

    def _layer_intervals(self) -> dict[str, Any]:
        """STATS `sampling`'s per-layer refresh interval (schedule.LayerSlices): the median
        over layers of a layer's steps between refreshes, the largest gap, and the same
        median for the full tier. O(layers): computed on the publisher thread."""
        slices = self.engine.slices
        if slices is None or not slices.sliced:  # whole samples: `interval` says it all
            return {}
        try:
            median, largest = slices.interval()
            full, _ = slices.interval(full=True)
        except (RuntimeError, ValueError):  # the ledger changed under this thread: next time
            return {}
        if median is None:
            return {}
        return {"layer_interval": median, "layer_interval_max": largest,
                "full_interval": full}

    def cadence_text(self) -> str:
        """What sets the sampling interval, for the launch line on stderr."""
        if self._unlimited:
            return f"sampling every {self.every} steps (budget 1: no time limit)"
        return (f"sampling at most every {self.every} steps, stretched to stay within a "
                f"{self.budget * 100:.3g} % time budget (the viewer shows the interval); "
                f"--every N --budget 1 forces a cadence")

    @property
    def dropped(self) -> int:
        return self._publisher.dropped

    def close(self, reason: str = "closed") -> None:
        """Stop watching: remove every hook, say goodbye, stop the thread, unregister."""
        if self._closed:
            return
        self._closed = True
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self.engine.close()  # pairing-pass and dead-ReLU hooks, if still registered
        if self._warm_thread is not None:
            # A short run can end while the warm-up still runs torch kernels; the interpreter
            # must not finalise under it (torch aborts: "terminate called without an active
            # exception", exit −6). engine.close() told it to stop after its current table.
            self._warm_thread.join(WARM_UP_JOIN_S)
            self._warm_thread = None
        self._reps.disarm()
        loss_capture.remove_listener(self._on_backward)
        atexit.unregister(self.close)
        if self._per_step_kept:  # the last steps' values: one more STATS before the goodbye
            try:
                self._emit_per_step()
            except Exception as exc:
                self._report("stats", exc)
        # after every queued sample and the last per-step values, on the publisher thread
        if self._transitions is not None and not self._publisher.submit(
                protocol.EVENT, self._flush_transitions, self.steps):
            self._report("close", "the publisher's queue was full: the transitions still "
                                  "open at the end of the run were not published")
        self._publisher.close(goodbye={"reason": reason, "exit_code": None}, step=self.steps)
        if self.recorder is not None:
            self.recorder.close()  # writes what is queued (the goodbye too), at most ~2 s
        if self._gpu is not None:
            self._gpu.close()
        if self._register:
            runtime.remove_entry(self._process_id, self._registry_root)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("exception" if exc_type is not None else "finished")

    # -- the hot path --------------------------------------------------------------------------

    def _on_step(self, *_: Any) -> None:
        if self._closed:
            return
        try:
            self.steps += 1
            first = self.steps == self._first_step  # always samples
            now = time.perf_counter()
            if not first:  # the first interval includes the set-up before training
                dt = now - self._last_step_at
                step_time = self._step_time
                if step_time is None:
                    self._step_time = dt
                    self._training_s += dt
                else:
                    self._step_time = 0.8 * step_time + 0.2 * dt
                    cap = 4.0 * step_time + 0.05
                    self._training_s += dt if dt < cap else cap
            self._last_step_at = now
            if self._loss_pending:  # the loss .backward() was called on in this step
                self._loss_pending = False
                self._keep("loss", self._loss)
            due = self.steps % self.every == 0
            if (due or first) and self._optimizers:
                self._watch_settings()  # ~1.5 µs per param group, charged with the step's
            if (due and self._affords_sample(self._training_s)) or first:
                if due:  # for STATS `sampling`: which steps sampled, and skips before each
                    self._sampled_at.append((self.steps, self._budget_skips))
                    if self._owed_samples:  # one of those owed after a settings change
                        self._owed_samples -= 1
                self._sample()
                cost = time.perf_counter() - now + self._wrapper_spent()
                self._cost_s += cost
                if not first:  # the first sample pays one-off library warm-up
                    self._budgeted_cost_s += cost
                    # the estimate the cheap ledger checks: a full sample's cost is its own
                    # ledger's (schedule.TierScheduler), unless every sample is full
                    if self.engine.last_tier != FULL or not self.engine.scheduler.samples[CHEAP]:
                        self._sample_cost_s = 0.7 * self._sample_cost_s + 0.3 * cost
                        self._sample_overhead_s = (0.7 * self._sample_overhead_s + 0.3 * max(
                            0.0, cost - self.engine.last_seconds))
                else:
                    self._sample_cost_s = cost / 4  # a guess until a warmed-up one is measured
                self._emit_stats(now)
            else:
                self._budget_skips += due  # a sample `every` allowed and the budget did not
                # The step's bookkeeping (this hook so far, the settings read included) and
                # the loss capture's wrapper of backward: a few µs a step, nothing on a 50 ms
                # step, 0.3 % of a 1 ms one: charged, so the budget holds at any step time.
                spent = time.perf_counter() - now + self._wrapper_spent()
                self._cost_s += spent
                self._budgeted_cost_s += spent
                if due and self._reps.armed:  # armed for this step; the budget skipped it
                    self._take_representations()
                if now >= self._next_stats_at or self._per_step_kept >= PER_STEP_MAX:
                    self._emit_stats(now)
            if ((self.steps + 1) % self.every == 0 and self.layers and not self._reps.armed
                    and self._affords_sample(self._training_s + (self._step_time or 0.0))
                    # only for a full sample: their capture and decoding (~50 ms of the
                    # publisher on a GPT-style model) are the full tier's, on its ledger
                    and self.engine.scheduler.choose() == FULL):
                self._arm_representations()  # the next step is due: copy rows of its forward
            if self.sharded and self.steps % self.every == 0:
                # Every rank at the same steps, whatever its own budget says: the viewer needs
                # every shard of a step. One small reduction per layer.
                began = time.perf_counter()
                self._sample_sharded()
                self._cost_s += time.perf_counter() - began
        except Exception as exc:
            self._report("step", exc)

    def _wrapper_spent(self) -> float:
        """The loss capture's `backward` wrapper's time since the last call (its process-wide
        total, read by difference: two agents in one process would both charge it)."""
        total = loss_capture.spent_s
        spent, self._wrapper_seen = total - self._wrapper_seen, total
        return spent

    def _affords_sample(self, training_s: float) -> bool:
        """Whether one more sample fits the budget after `training_s` of training: what was
        spent (training thread and publisher) plus a sample's cost against the plan, with the
        overdraft owed after a settings change. The post-step hook asks it for this step, and
        one step ahead (training_s plus a step) when arming the representations' capture."""
        # An owed sample does not wait for the least slice: its point is to come now, and that
        # wait (up to 25 ms of ledger, more than the overdraft on a small model) let a loaded
        # machine skip the last owed sample after a weight-decay switch.
        least = 0.0 if self._owed_samples else self._least_slice_s()
        return self._unlimited or self._cheap_balance_s(training_s) >= max(
            self._sample_cost_s, least)

    def _least_slice_s(self) -> float:
        """What a sliced sample waits for the ledger to hold: MIN_SLICE_SHARE of the whole
        model's expected cheap cost (the slices' measured rate), at most MAX_SLICE_WAIT_S.
        A sample's fixed cost (the snapshot's pass over the layers, the order parameters, the
        publisher's wake-up, decoding and detection: ~1.5–2 ms on a GPT-style model) was paid
        for one or two layers at a time while the ledger only ever held what 10 steps earn;
        waiting for the whole model (MIN_SLICE_SHARE) pays it once a round."""
        slices = self.engine.slices
        rate = None if slices is None or not slices.sliced else slices.per_unit.get(CHEAP)
        if rate is None:
            return 0.0
        return min(MIN_SLICE_SHARE * rate * slices.total[CHEAP], MAX_SLICE_WAIT_S)

    def _cheap_balance_s(self, training_s: float) -> float:
        """The cheap tier's ledger: the plan less the full tier's share, earned over
        `training_s`, plus the overdraft owed after a settings change, less everything spent
        but the full tier's host seconds. The full tier keeps its own (TierScheduler.choose),
        so a costly full sample (spectra, representations: ~60 ms on a GPT-style model)
        delays the next full one, not every layer's cheap refresh for ~150 steps."""
        full = self.engine.scheduler
        return ((self._planned - full.full_share * full.budget) * training_s
                + self._overdraft_s()
                - (self._budgeted_cost_s + self._publisher_spent_s() - full.host_seconds()))

    def _slice_target_s(self, each: float) -> float:
        """What a cheap sample may spend measuring: the cheap ledger's balance (what the plan
        earned less what was spent, _affords_sample) less the sample's cost outside the
        engine, and never less than that cost nor than `each` (what `every` steps earn).

        A sample costs a fixed part (settings, STATS, the publisher's hand-over and decoding:
        several ms on a loaded machine) plus its slice. Sized by `every` steps alone, a
        one-chunk slice cost ~1 ms against ~5 ms of the rest, the ledger let one sample in
        ~30 steps through, and each layer waited hundreds of steps. Measuring what the ledger
        holds takes the layers the skipped samples would have, in one sample."""
        overhead = self._sample_overhead_s
        return max(self._cheap_balance_s(self._training_s) - overhead, overhead, each)

    def _publisher_spent_s(self) -> float:
        """The publisher thread's CPU time the budget counts: all of it but its start, up to
        the end of the first sample's message (the thread's start, the first META, the first
        sample's decoding: one-off, ~0.1 s on a loaded 2-core machine, like the first
        sample's warm-up on the training thread, which is not charged either). Charged, it
        left a GPT-style model unsampled for its first ~150 steps."""
        return self._publisher.cpu_s - self._publisher_start_s

    def _overdraft_s(self) -> float:
        """How far the budget's ledger may go into debt for this sample: while samples are
        owed after a hyperparameter change (`_watch_settings`), twice FOLLOW_SAMPLES + 1
        samples' cost (+ 1: a budget-limited ledger is about one sample in debt at any
        moment; twice: below). The
        samples skipped afterwards pay it back, and the debt never exceeds that, however
        often the settings change. A sample's cost here is the ledger's own, its whole spend
        per sample taken: `_sample_cost_s` (the training thread's part) leaves out the
        sample's work on the publisher thread and the representations' capture, and as the
        allowance it let only 3 of 5 owed samples through. Twice that: on a loaded machine
        one sample's cost spreads to twice the mean, and the last owed one was skipped
        (tests/agent/test_optimizer_settings.py under two busy processes). 0 when nothing is
        owed."""
        if self._owed_samples <= 0:
            return 0.0
        spent = self._budgeted_cost_s + self._publisher_spent_s()
        per_sample = max(self._sample_cost_s, spent / max(1, self.samples))
        return 2 * (FOLLOW_SAMPLES + 1) * per_sample

    def _watch_settings(self) -> None:
        """Read the optimizers' settings (a few attribute reads per param group); on a
        boundary change, owe the next FOLLOW_SAMPLES samples and publish a notice at this
        step. The first read sets the baseline."""
        current = read_settings(self._optimizers)
        previous, self._settings = self._settings, current
        if previous == current:
            return
        watch = self._transitions  # once: the publisher may drop it meanwhile (a failure)
        if watch is not None and watch.run_level is not None:
            self._setting_changes.append((self.steps, read_hyperparameters(self._optimizers)))
        if previous is None:
            return
        found = setting_changes(previous, current)
        if found:
            self._owed_samples = FOLLOW_SAMPLES
            self._publisher.submit(protocol.EVENT,
                                   setting_notice(self.steps, found, len(self._optimizers)),
                                   self.steps)

    def _on_backward(self, loss: torch.Tensor) -> None:
        if not self._loss_from_log:
            self._loss = loss
            self._loss_pending = True

    # -- sampling ------------------------------------------------------------------------------

    def _sample(self) -> None:
        if not self.layers:
            return
        self.samples += 1
        self.engine.step = self.steps  # for `modes`: weight decay since the layer's last sample
        # The slice of layers this sample measures (schedule.LayerSlices): at least what
        # `every` steps earn of the plan, more when the cheap ledger holds more
        # (_slice_target_s); the full tier's by what `every` steps earn. Before a step time is
        # known (the first step), one chunk, so start-up stays short. No limit: every layer,
        # every sample.
        each = self._each_s()
        self.engine.full_slice_target_s = None if self._unlimited else each
        self.engine.slice_target_s = (None if self._unlimited else
                                      0.0 if self._step_time is None else
                                      self._slice_target_s(each))
        if self._side_stream is not None:
            rows, ready = self._sample_cuda()
        else:
            rows, ready = self.engine.compute(), None
        detail = self.engine.last_detail  # full tier: device tensors, read in build()
        sliced = (len(self.engine.last_slice) if self.engine.last_slice is not None
                  else None)
        step, started = self.steps, time.perf_counter()
        first = step == self._first_step
        loss = _to_host_async(self._loss) if self._transitions is not None else None
        hyperparameters = (read_hyperparameters(self._optimizers)
                           if self._transitions is not None else ())
        # every scalar passed to `log` (each model's loss, an accuracy) is detected on its own
        logged = ({k: _to_host_async(v) for k, v in self._scalars.items()}
                  if self._transitions is not None else {})
        capture = self._take_representations()  # this step's forward, if it was copied
        capture_s = self._capture_s  # its training-thread seconds, arming included
        full = self.engine.last_tier == FULL
        if not full:  # armed for a full sample, the sample was cheap: not decoded
            capture = None

        def build() -> dict[str, Any]:
            began = time.thread_time()
            if ready is not None:
                ready.synchronize()  # waits on the side stream, on the publisher thread
            values, nonfinite = self.engine.decode(rows.tolist())
            self._report_failed_layers()
            self._report_switched_off()
            read_loss = host_float(loss)
            read_scalars = {k: host_float(v) for k, v in logged.items()}
            self._detect_transitions(step, values, read_loss, hyperparameters, read_scalars)
            if capture is not None:
                self._merge_representations(values, capture)
            payload = {"values": values, "nonfinite": nonfinite,
                       "cost_s": time.perf_counter() - started}
            if self._transitions is not None:
                # what the detector read with this sample, so that `symwatch detect` replays
                # it exactly (STATS' loss is a later one; per_step keys a loss captured from
                # .backward() and one logged before optimizer.step() a step apart)
                payload["loss"] = protocol.clean_number(read_loss)
                if read_scalars:
                    payload["scalars"] = {k: protocol.clean_number(v)
                                          for k, v in read_scalars.items()}
            if first:  # the publisher's one-off start ends here (_publisher_spent_s)
                self._publisher_start_s = time.thread_time()
            if sliced is not None:  # the layers left out keep their last values
                payload["slice"] = {"layers": sliced, "of": len(self.layers)}
            if detail:  # full tier only: spectra and unit facts (docs/protocol.md)
                try:
                    shown = self.engine.decode_detail(detail)
                    for name in nonfinite:
                        shown.pop(name, None)
                    if shown:
                        payload["detail"] = shown
                except Exception as exc:  # the indicators still go out without it
                    self._report("layer detail", exc)
            if full:  # the full tier's ledger counts its publisher work and its capture
                self.engine.scheduler.charge_extra(time.thread_time() - began + capture_s)
            return payload

        self._publisher.submit(protocol.METRICS, build, step)

    def _each_s(self) -> float:
        """What `every` steps earn of the plan: the full tier's slice target, and the least a
        cheap slice is given (0 before a step time is known)."""
        return 0.0 if self._step_time is None else self._planned * self.every * self._step_time

    def _arm_representations(self) -> None:
        """Copy rows of the next forward pass (hooks/activations.py): the next step is due,
        and its sample full. As many layers as that sample measures of the weights (in turn,
        on their own cursor): the rows' eigendecompositions are the full tier's cost too, and
        every layer's of them each full sample (~11 ms of the publisher on a GPT-style model)
        left the tier's budget one layer's spectra a sample (docs/benchmarks.md, "Fifth
        pass")."""
        began = time.perf_counter()
        slices = None if self._unlimited else self.engine.slices
        most = None if slices is None else slices.peek(FULL, self._each_s())
        try:
            self._reps.arm([activations.Target(*p) for p in representations.plan(self.layers)],
                           self.steps + 1,
                           # the attention max-logit per head (measure/logits.py)
                           tuple(activations.Probe(*p) for p in logits.plan(self.engine.heads)),
                           most=most)
        except Exception as exc:
            self._reps.disarm()
            self._report("representations", exc)
        # ~0.4 ms on a GPT-style model (the targets, the hooks' registration): it was charged
        # to nothing
        self._armed_s = time.perf_counter() - began
        self._cost_s += self._armed_s
        self._budgeted_cost_s += self._armed_s

    def _take_representations(self) -> activations.Capture | None:
        """Disarm; what this step's forward copied (None: nothing armed or nothing copied).
        The hooks' time counts against the budget; `_capture_s` is then the capture's whole
        training-thread time (arming and hooks; 0 when nothing was armed), which a full
        sample moves to the full tier's ledger (_sample)."""
        armed_s, self._armed_s, self._capture_s = self._armed_s, 0.0, 0.0
        if not self._reps.armed:
            return None
        fired = self._reps.fired
        capture = self._reps.take()
        if capture is None:
            return None
        if capture.errors:
            self._report("representations", capture.errors[0])
        self._cost_s += capture.cost_s
        self._budgeted_cost_s += capture.cost_s
        self._capture_s = armed_s + capture.cost_s
        return capture if fired else None

    def _merge_representations(self, values: dict[str, dict[str, Any]],
                               capture: activations.Capture) -> None:
        """Publisher thread: act_erank, act_modes and NC1–NC3 of the copied forward
        (measure/representations.py) join the sample's values."""
        try:
            acts, features = capture.read()  # waits for the copies
            for name, found in representations.measure(acts, features).items():
                values.setdefault(name, {}).update(found)
            for name, found in logits.decode(capture.read_probes()).items():
                values.setdefault(name, {}).update(found)
        except Exception as exc:  # the weights' indicators still go out
            self._report("representations", exc)

    def _sample_sharded(self) -> None:
        """The additive figures of this rank's shards (symwatch_agent/measure/sharded.py): on CUDA on
        a side stream, copied to pinned memory without blocking; read on the publisher
        thread."""
        items = self.sharded
        ready = None
        if self._shard_stream is not None:
            current = torch.cuda.current_stream(self._models_device)
            side = self._shard_stream
            side.wait_stream(current)  # read this step's weights
            with torch.cuda.stream(side):
                rows = sharded.measure(items)
                host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
                host.copy_(rows, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(side)
            current.wait_event(ready)  # the next step may not overwrite a shard being read
            rows = host
        else:
            rows = sharded.measure(items)
        step = self.steps

        def build() -> dict[str, Any] | None:
            if ready is not None:
                ready.synchronize()  # on the publisher thread, never the training thread
            # One message per shard group: normally one (a layer mix of FSDP set-ups, more).
            payloads = list(sharded.decode(items, rows.tolist()).values())
            for extra in payloads[1:]:
                self._publisher.submit(protocol.METRICS, extra, step)
            return payloads[0] if payloads else None

        self._publisher.submit(protocol.METRICS, build, step)

    def _detect_transitions(self, step: int, values: dict[str, dict[str, Any]],
                            loss: float | None, hyperparameters: Any,
                            scalars: dict[str, Any] | None = None) -> None:
        """Publisher thread: feed the sample to the detector, publish what it finds."""
        if self._transitions is None:
            return
        try:
            self._drain_marks()
            self._publish_events(self._transitions.update(step, values, loss, hyperparameters,
                                                          scalars=scalars))
        except Exception as exc:
            self._transitions = None  # a broken detector must not cost every later sample
            self._report("transition detection", exc)

    def _flush_transitions(self) -> None:
        """Publisher thread, at close: the detectors' open groups as events (a transition in
        the run's last few samples was never reported), before the goodbye (the publisher
        sends what a build queues ahead of it). Sends nothing itself (None)."""
        watch = self._transitions
        if watch is None:
            return None
        try:
            self._drain_marks()
            for change in self._take_setting_changes():  # read after the last per-step values
                watch.settings(*change)
            self._publish_events(watch.flush())
        except Exception as exc:  # noqa: BLE001 (the goodbye must still go out)
            self._report("transition detection", exc)
        return None

    def _take_setting_changes(self) -> list[tuple[int, Any]]:
        """Publisher thread: the settings changes the training thread handed over so far
        (_watch_settings), in step order; popped one by one, as the other thread appends."""
        changes = []
        while self._setting_changes:
            changes.append(self._setting_changes.popleft())
        return changes

    def _drain_marks(self) -> None:
        """Publisher thread: the user's `mark()`s so far, to the detector (before it is fed)."""
        assert self._transitions is not None
        while self._marks:
            mark_step, reason = self._marks.pop(0)
            self._transitions.mark(mark_step, reason)

    def _publish_events(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        """Publisher thread: the detector's events out; the latest transition kept for the
        registry (the Runs screen lists it)."""
        for event_step, payload in events:
            self._publisher.submit(protocol.EVENT, payload, event_step)
            if payload.get("severity") == "transition":
                self._last_transition = {"step": event_step, "time": time.time(),
                                         "message": str(payload.get("message", ""))[:200]}

    def _sample_cuda(self) -> tuple[torch.Tensor, Any]:
        """Measure on a side stream so the training stream is not serialised behind the
        spectra: the training stream waits only for the weight snapshot (a copy)."""
        assert self._side_stream is not None
        current = torch.cuda.current_stream(self._device)
        side = self._side_stream
        side.wait_stream(current)  # the snapshot must see this step's weights
        with torch.cuda.stream(side):
            groups = self.engine.snapshot()
            copied = torch.cuda.Event()
            copied.record(side)
            rows = self.engine.measure(groups)
            host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            host.copy_(rows, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(side)
        current.wait_event(copied)  # the next optimizer step may not overwrite the snapshot
        return host, ready

    def _emit_stats(self, now: float) -> None:
        began = time.thread_time()
        self._next_stats_at = now + self._stats_interval
        loss = _to_host_async(self._loss)
        scalars = {k: _to_host_async(v) for k, v in self._scalars.items()}
        per_step = {name: (steps, _batch_to_host_async(values))
                    for name, (steps, values) in self._per_step.items()}
        self._per_step, self._per_step_kept = {}, 0
        sampling = self.sampling(layers=False)  # the per-layer part: in build(), off this thread
        step_time = self._step_time
        settings = self._settings  # a tuple of floats: turned into wire objects in build()
        wall = max(time.time() - self.started, 1e-9)

        def build() -> dict[str, Any]:
            device = memory.rank_device(self._models_device)
            steps_values = self._per_step_values(per_step, step_time)
            latest = _host_float(loss)
            nonfinite = protocol.nonfinite_name(latest)  # null on the wire: say it was NaN
            return {"loss": protocol.clean_number(latest),
                    **({"loss_nonfinite": nonfinite} if nonfinite else {}),
                    # torch's allocator, this rank's device: null (N/A) without CUDA
                    "memory": memory.allocator_figures(device, uuid=True),
                    "step_time": step_time,
                    "steps_per_s": 1.0 / step_time if step_time else None,
                    "overhead": (self._cost_s + self._publisher.cpu_s) / wall,
                    "dropped": self._publisher.dropped,
                    "scalars": {k: _host_number(v) for k, v in scalars.items()},
                    "sampling": sampling | self._layer_intervals() | self._run_level_every(),
                    **({"optimizer": setting_groups(settings, self._optimizers)}
                       if settings else {}),
                    **({"per_step": steps_values} if steps_values else {})}

        self._publisher.submit(protocol.STATS, build, self.steps)
        # Charged (it was not): ~0.1 ms of the training thread's CPU each (0.2 ms a second at
        # 2 a second, a twentieth of the plan at a 1 % budget). Its CPU, not its wall time: the wall time adds the wait for the
        # GIL while the publisher builds and sends the message (up to ms on a loaded machine,
        # 25 ms a second measured at a load of 8), which is the publisher's CPU, charged as
        # such (_publisher_spent_s), plus the OS's scheduling of other processes.
        spent = time.thread_time() - began
        self._cost_s += spent
        self._budgeted_cost_s += spent

    def _run_level_every(self) -> dict[str, int]:
        """STATS `sampling.run_level_every`: the steps between the run-level detector's
        updates under a budget (none without one), for the viewer and for a replay."""
        stride = self._transitions.stride if self._transitions is not None else None
        return {} if stride is None else {"run_level_every": stride}

    def _emit_per_step(self) -> None:
        """A STATS with only the per-step values not yet sent (at close): its step may equal
        the last STATS's, and it leaves that one's latest loss and scalars as they were."""
        per_step = {name: (steps, _batch_to_host_async(values))
                    for name, (steps, values) in self._per_step.items()}
        self._per_step, self._per_step_kept = {}, 0

        def build() -> dict[str, Any]:
            # no step time: the run-level cadence stays the one the last STATS published
            return {"per_step": self._per_step_values(per_step)}

        self._publisher.submit(protocol.STATS, build, self.steps)

    def _per_step_values(self, per_step: dict[str, tuple[list[int], Any]],
                         step_time: float | None = None) -> dict[str, dict[str, Any]]:
        """Publisher thread: STATS `per_step` from the batches the training thread kept, and
        them to the detector (TransitionWatch.per_step): under a budget the run-level series
        at every `every`-th step; a non-finite loss at once in any case, so that a divergence
        is reported within a STATS interval, not at the next sample."""
        floats = {name: (steps, _host_floats(values))
                  for name, (steps, values) in per_step.items()}
        if self._transitions is not None:
            try:
                # what explains a change, as at a sample: the user's marks, and the
                # optimizer's settings (where they changed, at their steps; and now, read
                # here (attribute reads) for a divergence no sample read them for)
                self._drain_marks()
                self._publish_events(self._transitions.per_step(
                    floats, read_hyperparameters(self._optimizers), step_time,
                    self._take_setting_changes()))
            except Exception as exc:  # noqa: BLE001 (a broken detector must not cost STATS)
                self._transitions = None  # as in _detect_transitions: never again per sample
                self._report("transition detection", exc)
        return {name: {"steps": steps,
                       "values": [protocol.clean_number(v) for v in values]}
                for name, (steps, values) in floats.items()}

    # -- periodic jobs (publisher thread) ------------------------------------------------------

    def _heartbeat(self) -> tuple[str, dict[str, Any], int]:
        wall = max(time.time() - self.started, 1e-9)
        payload = {"dropped": self._publisher.dropped, "samples": self.samples,
                   "overhead": (self._cost_s + self._publisher.cpu_s) / wall}
        if self._publisher.history_endpoint:  # so a late viewer learns it within a second
            payload["history_endpoint"] = self._publisher.history_endpoint
        return protocol.HEARTBEAT, payload, self.steps

    def _meta_message(self) -> tuple[str, dict[str, Any], int]:
        # Re-sent periodically: a viewer that connects late still learns the layer table.
        return protocol.META, self.meta(), self.steps

    def meta(self) -> dict[str, Any]:
        extra = ({"history_endpoint": self._publisher.history_endpoint}
                 if self._publisher.history_endpoint else {})
        return {**extra,
            "name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
            "command": list(sys.argv), "started": self.started,
            "layers": (self.engine.describe()
                       + [item.describe() for item in self.sharded]),
            "indicators": list(INDICATORS), "every": self.every,
            "world_size": self.world_size,
            **({"local_rank": self.local_rank} if self.local_rank is not None else {}),
            **({"node_rank": self.node_rank} if self.node_rank is not None else {}),
            **({"job": self.run_id} if self.job else {}),
            # This rank polls the node's GPUs (one poller per node: local rank 0).
            "gpu_poller": distributed.node_leader(self.rank, self.local_rank),
            "endpoint": self._publisher.endpoint, "torch": torch.__version__,
            "device": str(self._device), "agent": __version__,
            "python": sys.version.split()[0], "skipped": self.skipped,
        }

    def _gpu_message(self) -> tuple[str, dict[str, Any], int] | None:
        # One poller per node (local rank 0): device-wide NVML statistics are the node's, and
        # N ranks polling them would cost N times as much for the same figures. The other
        # ranks publish their own allocator figures (stats.memory) only.
        if not distributed.node_leader(self.rank, self.local_rank):
            return None
        if self._gpu is None:  # nvmlInit can take a while: done here, never in watch()
            self._gpu = GpuSampler(self._nvml, process_interval=self._process_interval,
                                   visible_uuids=memory.visible_uuids())
        return protocol.GPU, self._gpu.sample(), self.steps

    def _refresh_registry(self) -> None:
        runtime.write_entry(runtime.RunEntry(
            run_id=self._process_id, name=self.name, pid=os.getpid(), command=list(sys.argv),
            endpoint=self._publisher.endpoint, started=self.started, host=socket.gethostname(),
            steps=self.steps, updated=time.time(),
            extra=({"history_endpoint": self._publisher.history_endpoint}
                   if self._publisher.history_endpoint else {})
            | ({"job": self.run_id, "rank": self.rank, "world_size": self.world_size}
               if self.job else {})
            | ({"last_transition": self._last_transition} if self._last_transition else {})
            | {"sampling": self.sampling()}
            | ({"optimizer": setting_groups(self._settings, self._optimizers)}
               if self._settings else {})),
            self._registry_root)
        return None

    # -- failures ------------------------------------------------------------------------------

    def _announce_skipped(self) -> None:
        """The modules that own parameters the agent does not measure, said once at the start
        as an info event (the events log, `attach --headless`, the recording), not only in
        META's `skipped`, which no view shows: a custom module's raw nn.Parameter was
        missing from every view without a word. A DDP replica's layers are measured on rank
        0: nothing is missing there."""
        if not self.skipped or self.replica:
            return
        shown = ", ".join(self.skipped[:SKIPPED_NAMED])
        if len(self.skipped) > SKIPPED_NAMED:
            shown += f" and {len(self.skipped) - SKIPPED_NAMED} more (META `skipped`)"
        self._publisher.submit(protocol.EVENT, {
            "message": f"not measured: {shown} (docs/metrics.md lists what is)",
            "severity": "info"}, 0)

    def _report(self, what: str, problem: BaseException | str) -> None:
        """Report a failure once (stderr and the stream); later ones of the same kind are
        silent. Never raises."""
        key = what.split(":")[0]
        if key in self._reported:
            return
        self._reported.add(key)
        text = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
        message = f"symwatch agent: {what}: {text} (training continues; reported once)"
        try:
            print(message, file=sys.stderr)
            self._publisher.submit(protocol.EVENT, {"message": message, "severity": "warning"},
                                   self.steps)
        except Exception:
            pass

    def _report_switched_off(self) -> None:
        off = getattr(self.engine, "switched_off", {})
        if len(off) > self._switched_off_reported:
            for name, error in list(off.items())[self._switched_off_reported:]:
                self._report(f"indicator {name}",
                             f"{error}; switched off, its values read N/A")
            self._switched_off_reported = len(off)

    def _report_failed_layers(self) -> None:
        failed = self.engine.failed
        if len(failed) > self._failed_layers_reported:
            for i, error in list(failed.items())[self._failed_layers_reported:]:
                self._report(f"layer {self.layers[i].name}",
                             f"cannot measure ({error}); its indicators read N/A")
            self._failed_layers_reported = len(failed)


# `Agent(model, optimizer, **options)` takes AgentOptions' fields as keywords: say so to help()
# and inspect, as a signature spelling them out would.
Agent.__init__.__signature__ = AgentOptions.signature(  # type: ignore[attr-defined]
    *list(inspect.signature(Agent.__init__).parameters.values())[:3])


# -- helpers -----------------------------------------------------------------------------------

def _models_device(models: Mapping[str, nn.Module]) -> torch.device:
    """The device of the first parameter of the models (cpu without any)."""
    for model in models.values():
        for param in model.parameters():
            return param.device
    return torch.device("cpu")


def _replica_measured_on_rank_zero(models: Mapping[str, nn.Module], rank: int) -> bool:
    """True on ranks other than 0 of a DistributedDataParallel run: their weights are
    replicas of rank 0's (FSDP shards are not replicas, and are measured per rank)."""
    if rank == 0 or not torch.distributed.is_available():
        return False
    return any(isinstance(m, DistributedDataParallel) for m in models.values())


WATCH_USAGE = ("watch(model, optimizer): model is an nn.Module, a dict of them or a list; "
               "optimizer a torch.optim.Optimizer, a list of them, or None")


def _as_model_map(model: Any) -> dict[str, nn.Module]:
    """{name: module} from what `watch` was given; a TypeError that says what to pass for
    anything else (a call's arguments swapped: the agent must not start on nonsense)."""
    if isinstance(model, nn.Module):
        return {"": model}
    if isinstance(model, Mapping):
        models = {str(k): v for k, v in model.items()}
    elif isinstance(model, Iterable) and not isinstance(model, (str, bytes)):
        models = {f"model{i}": m for i, m in enumerate(model)}
    else:
        raise TypeError(f"{WATCH_USAGE}; got {type(model).__name__} for model")
    wrong = {k: type(v).__name__ for k, v in models.items() if not isinstance(v, nn.Module)}
    if wrong:
        raise TypeError(f"{WATCH_USAGE}; got " + ", ".join(
            f"{t} for model {k!r}" for k, t in wrong.items()))
    return models


def _as_list(optimizer: Any) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    # (Lightning's and accelerate's wrappers are subclasses; one that is not has no step
    # hooks to watch: refused here, before anything starts)
    if isinstance(optimizer, nn.Module) or not isinstance(optimizer, Iterable):
        raise TypeError(f"{WATCH_USAGE}; got {type(optimizer).__name__} for optimizer")
    optimizers = list(optimizer)
    wrong = [type(o).__name__ for o in optimizers
             if not isinstance(o, torch.optim.Optimizer)]
    if wrong:
        raise TypeError(f"{WATCH_USAGE}; got {', '.join(wrong)} among the optimizers")
    return optimizers


def _record_path(record: Any, run_id: str, rank: int, shared: bool = False) -> str | None:
    """The recording's file (`record`, or $SYMWATCH_RECORD as AgentOptions found it), with
    `{run}` and `{rank}` expanded; None: no recording."""
    path = os.fspath(record) if record is not None else None
    if not path:
        return None
    if shared and "{rank}" not in path:
        # The ranks of a job share the run id: without {rank} they would all write one file.
        root, ext = os.path.splitext(path)
        path = f"{root}.rank{{rank}}{ext}"
    return path.replace("{run}", run_id).replace("{rank}", str(rank))


def _to_host_async(value: Any) -> Any:
    """Start copying a scalar tensor to the host without waiting; returns what `_host_number`
    turns into a float on the publisher thread."""
    if isinstance(value, torch.Tensor) and value.is_cuda:
        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done
    return value


def _batch_to_host_async(values: list[Any]) -> Any:
    """Start copying a list of scalars (CUDA tensors, CPU tensors, numbers) to the host without
    waiting: the CUDA ones stacked per device into one tensor and copied to pinned memory
    (one small kernel and one copy per device, however many steps). `_host_floats` reads it
    on the publisher thread."""
    on: dict[torch.device, list[int]] = {}
    for i, value in enumerate(values):
        if isinstance(value, torch.Tensor) and value.is_cuda and value.numel() == 1:
            on.setdefault(value.device, []).append(i)
    copies = []
    for idx in on.values():
        stacked = torch.stack([values[i].reshape(()).to(torch.float64) for i in idx])
        host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
        host.copy_(stacked, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        copies.append((idx, host, done))
    return values, copies


def _host_floats(batch: Any) -> list[float | None]:
    """A per-step batch (_batch_to_host_async) as host floats, NaN and ±inf kept."""
    values, copies = batch
    values = list(values)
    for idx, host, done in copies:
        done.synchronize()
        for i, number in zip(idx, host.tolist()):
            values[i] = number
    return [_host_float(value) for value in values]


def _host_number(value: Any) -> float | None:
    """One scalar's wire value: `_host_float`'s number, NaN and ±inf as None."""
    return protocol.clean_number(_host_float(value))  # type: ignore[return-value]


def _host_float(value: Any) -> float | None:
    """A scalar (number, tensor, or async copy) as a host float, NaN and ±inf kept; a bool
    as a number (1.0), which transitions.host_float leaves out."""
    return float(value) if isinstance(value, bool) else host_float(value)


def watch(model: Any, optimizer: Any = None, **options: Any) -> Agent:
    """Watch `model` (a module, a dict of named modules, or a list) trained by `optimizer`.

    Returns the running `Agent` (close it, or use it as a context manager). The options are
    the fields of `AgentOptions` (symwatch_agent/options.py, which also reads the environment
    variables that stand in for them): `name`,
    `every` (sample at most every N optimizer steps, default 10), `budget` (the largest
    fraction of wall time sampling may take, default 0.01: samples are skipped to stay under
    it), `full_every` (at most one full-tier sample, with exact spectra and duplicates, in
    every K samples, the others cheap; default: as often as the budget allows), `endpoint`
    (default: a Unix socket in the per-user runtime directory),
    `capture_backward` (take the loss from `.backward()`), `pairs` (override the automatic
    pairing of consecutive layers: `{"fc1": "fc2"}`, a list of consumers, or None to unpair),
    `detect` (run the transition detector on every sample; default True), `threshold` (its
    per-series |z| threshold; default: calibrated to the run's number of series),
    `heads` (attention modules measured per head, docs/metrics.md: `{"blocks.0.attn": 12}`
    or `(12, 4)` query/key-value heads where the module does not say, None to skip a module,
    False for none; default: every attention module whose head count is known),
    `classifier` (the Linear(s) before the loss for softmax_translation; default: the last
    Linear of each model; None: none), thresholds `rel_tol`, `abs_tol`, `dead_eps`, `dup_eps`
    (see docs/metrics.md), `record` (also `$SYMWATCH_RECORD`: record every message to this
    SQLite file, `{run}` and `{rank}` expanded; see docs/recording.md), `history` (keep a
    bounded history for viewers that attach late; default True; `history_samples`,
    `history_events`, `history_bytes` bound it), `curve_server_key` and `curve_authorized`
    (also `$SYMWATCH_CURVE_SERVER_KEY`/`$SYMWATCH_CURVE_AUTHORIZED`: CurveZMQ, required to
    publish on a network interface; see docs/security.md), `insecure` (also
    `$SYMWATCH_INSECURE=1`: publish on a network interface without keys: anyone who can reach
    it reads the stream; warned on every start),
    `rank`, `world_size`, `local_rank`, `node_rank` (where this process sits in a distributed
    run; default: `$RANK`, `$WORLD_SIZE`, `$LOCAL_RANK`, `$GROUP_RANK`/`$NODE_RANK`, else the
    initialised torch.distributed group, else 0 of 1), `replica` (True: this rank's weights
    are a data-parallel copy of rank 0's, so only rank 0 measures them; default: detected from
    a DistributedDataParallel wrapper). The trainer callbacks in `symwatch_agent.entry.integrations`
    pass these from their trainer.
    """
    return Agent(model, optimizer, **options)

