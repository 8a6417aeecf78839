"""The trainer callbacks, run inside the real frameworks: a tiny GPT-2 built from a config under
`transformers.Trainer` (accelerate underneath), a tiny LightningModule under
`lightning.pytorch.Trainer` (and `pytorch_lightning.Trainer`), all on the CPU, with a real
subscriber on loopback or a real recording read back. Each framework's tests are skipped, with
the reason, when it is not installed (`pip install 'symwatch[integrations]'` installs them)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from torch import nn

from symwatch.core import protocol
from symwatch.core.recording import RecordingReader


def _stats_by_step(messages) -> dict[int, dict]:
    """STATS payloads by step, merged: at close the agent sends one more STATS with only the
    last steps' `per_step` values, at the step of the STATS before it."""
    out: dict[int, dict] = {}
    for m in messages:
        out.setdefault(m.step, {}).update(m.payload)
    return out


def _installed(*names: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in names)


needs_transformers = pytest.mark.skipif(
    not _installed("transformers", "accelerate"),
    reason="transformers/accelerate not installed (pip install 'symwatch[integrations]')")
needs_lightning = pytest.mark.skipif(
    not _installed("lightning"),
    reason="lightning not installed (pip install 'symwatch[integrations]')")
needs_pytorch_lightning = pytest.mark.skipif(
    not _installed("pytorch_lightning"),
    reason="pytorch_lightning not installed (pip install pytorch-lightning)")

# Sampling must not depend on the machine's speed: no time budget, sample every 5 steps, and a
# STATS message at every step (stats_interval=0) so each step's loss and lr can be checked.
DETERMINISTIC = {"every": 5, "budget": 1.0, "stats_interval": 0.0}


def _recorded(path: Any) -> list[protocol.Message]:
    with RecordingReader(path) as reader:
        return list(reader)


def _of_kind(messages: list[protocol.Message], kind: str) -> list[protocol.Message]:
    return [m for m in messages if m.kind == kind]


def _direct(weight: torch.Tensor) -> dict[str, float]:
    """weight_norm and stable_rank of an (out, in) matrix, the slow obvious way."""
    w = weight.detach().double()
    sv = torch.linalg.svdvals(w)
    return {"weight_norm": w.norm().item(), "stable_rank": (w.square().sum() / sv[0] ** 2).item()}


# -- transformers ----------------------------------------------------------------------------

def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


class _Tokens(torch.utils.data.Dataset):
    """Random token sequences; the labels are the inputs (causal LM)."""

    def __init__(self, n: int = 64, length: int = 16) -> None:
        self.ids = torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _hf_trainer(model: Any, tmp_path: Any, callbacks: list[Any], **args: Any) -> Any:
    from transformers import Trainer, TrainingArguments

    options = dict(output_dir=str(tmp_path / "out"), max_steps=20, report_to=[], use_cpu=True,
                   save_strategy="no", logging_steps=5, disable_tqdm=True,
                   per_device_train_batch_size=8, learning_rate=1e-5, seed=0)
    options.update(args)
    return Trainer(model=model, args=TrainingArguments(**options), train_dataset=_Tokens(),
                   callbacks=callbacks)


def _hf_spy(watcher: Any, collector: Any = None) -> Any:
    """A callback placed after ours: subscribes to the agent it just started (waiting out the
    slow-joiner window before the first step) and keeps what the Trainer logs."""
    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def __init__(self) -> None:
            self.sub: Any = None
            self.logs: dict[int, dict[str, float]] = {}
            self.optimizer: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                           **kwargs: Any) -> None:
            self.optimizer = optimizer
            if collector is not None:
                self.sub = collector(watcher.agent.endpoint)
                self.sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
                self.sub.wait_for(lambda m: m.kind == protocol.META)  # the next re-send

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.logs[state.global_step] = dict(logs)

    return Spy()


@needs_transformers
def test_transformers_trainer_streams_gpt2_conv1d_layers_loss_lr_and_goodbye(collector,
                                                                              tmp_path):
    from symwatch.integrations.transformers import SymwatchCallback

    model = _gpt2()
    c_fc = model.transformer.h[0].mlp.c_fc  # transformers Conv1D: weight stored (in, out)
    with torch.no_grad():  # three dead units of c_fc: their columns and biases
        c_fc.weight[:, :3] = 0
        c_fc.bias[:3] = 0
    watcher = SymwatchCallback(name="gpt2-tiny", endpoint="tcp://127.0.0.1:0",
                               heartbeat_interval=0.05, meta_interval=0.05, **DETERMINISTIC)
    spy = _hf_spy(watcher, collector)
    _hf_trainer(model, tmp_path, [watcher, spy]).train()

    sub = spy.sub
    goodbye = sub.wait_for(lambda m: m.kind == protocol.GOODBYE)
    assert goodbye.payload["reason"] == "finished" and goodbye.step == 20
    assert watcher.agent is None  # closed at on_train_end
    # The agent hooked the torch optimizer inside accelerate's wrapper: 20 real steps.
    assert type(spy.optimizer).__name__ == "AcceleratedOptimizer"
    assert [m.step for m in sub.of_kind(protocol.METRICS)] == [1, 5, 10, 15, 20]

    meta = sub.of_kind(protocol.META)[0]
    assert meta.payload["name"] == "gpt2-tiny" and meta.rank == 0
    assert meta.payload["world_size"] == 1 and meta.payload["local_rank"] == 0
    layers = {row["name"]: row for row in meta.payload["layers"]}
    assert layers["transformer.h.0.attn.c_attn"]["type"] == "Conv1D"
    assert layers["transformer.h.0.attn.c_attn"]["shape"] == [32, 96]  # as stored
    assert {"transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj", "lm_head",
            "transformer.wte"} <= set(layers)
    assert not any("Conv1D" in skipped for skipped in meta.payload["skipped"])

    first = sub.of_kind(protocol.METRICS)[0].payload["values"]
    # Units are c_fc's 128 outputs (columns of the stored weight), so 3 of them are dead; read
    # the other way round (32 rows, each mostly non-zero) none would be.
    assert first["transformer.h.0.mlp.c_fc"]["dead_fraction"] == pytest.approx(3 / 128)
    last = sub.of_kind(protocol.METRICS)[-1].payload["values"]  # the final weights
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
        weight = model.get_submodule(name).weight
        for key, value in _direct(weight.t()).items():
            assert last[name][key] == pytest.approx(value, rel=1e-4), (name, key)
        assert last[name]["numerical_rank"] <= min(weight.shape)

    stats = _stats_by_step(sub.of_kind(protocol.STATS))
    assert set(range(1, 21)) <= set(stats)
    # The loss is the scalar the Trainer called .backward() on, step by step: the Trainer's
    # logged loss is their mean over each logging window.
    for end in (5, 10, 15, 20):
        window = [stats[step]["loss"] for step in range(end - 4, end + 1)]
        assert sum(window) / 5 == pytest.approx(spy.logs[end]["loss"], rel=1e-5)
    # The scheduler's learning rate (linear decay): at each step, the lr that step ran with.
    for step in (5, 10, 15, 20):
        assert stats[step]["scalars"]["lr"] == pytest.approx(
            spy.logs[step]["learning_rate"], rel=1e-9)
    assert stats[1]["scalars"]["lr"] == pytest.approx(1e-5)


@needs_transformers
def test_transformers_with_gradient_accumulation_records_the_trainers_loss(tmp_path):
    from symwatch.integrations.transformers import SymwatchCallback

    path = tmp_path / "run.db"
    watcher = SymwatchCallback(record=path, endpoint="tcp://127.0.0.1:0", **DETERMINISTIC)
    spy = _hf_spy(watcher)
    _hf_trainer(_gpt2(), tmp_path, [watcher, spy], max_steps=10,
                gradient_accumulation_steps=2, per_device_train_batch_size=4).train()

    messages = _recorded(path)
    # Steps are optimizer steps (the inner optimizer's), not the 20 micro-batches.
    assert [m.step for m in _of_kind(messages, protocol.METRICS)] == [1, 5, 10]
    goodbye = _of_kind(messages, protocol.GOODBYE)
    assert len(goodbye) == 1 and goodbye[0].step == 10
    assert goodbye[0].payload["reason"] == "finished"
    stats = _stats_by_step(_of_kind(messages, protocol.STATS))
    # The backward scalar is a scaled share of a micro-batch here: it is not used; the
    # Trainer's logged loss (at step 5) is, from the next step on.
    assert all(stats[step]["loss"] is None for step in range(1, 6))
    assert stats[6]["loss"] == pytest.approx(spy.logs[5]["loss"], rel=1e-6)
    assert stats[5]["scalars"]["lr"] == pytest.approx(spy.logs[5]["learning_rate"], rel=1e-9)
    meta = _of_kind(messages, protocol.META)[0]
    assert meta.payload["world_size"] == 1 and meta.rank == 0


@needs_transformers
def test_transformers_callback_rejects_an_unknown_option_before_training():
    from symwatch.integrations.transformers import SymwatchCallback

    with pytest.raises(TypeError, match="evry"):
        SymwatchCallback(evry=5)


# -- Lightning ---------------------------------------------------------------------------------

def _lightning_module(package: str, fail_at: int | None = None, manual: bool = False) -> Any:
    import importlib

    pl = importlib.import_module(package)

    class Tiny(pl.LightningModule):
        """An MLP on a fixed random regression task; remembers each step's loss."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
            self.losses: list[float] = []
            self.automatic_optimization = not manual

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if fail_at is not None and len(self.losses) == fail_at:
                raise RuntimeError("the training step failed")
            x, y = batch
            loss = (self.net(x) - y).square().mean()
            self.losses.append(loss.item())
            if manual:  # the user's own backward and step, through Lightning's wrappers
                optimizer = self.optimizers()
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
                self.lr_schedulers().step()
            return loss

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Tiny()


def _regression_data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(128, 8, generator=g)
    y = x @ torch.randn(8, 4, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _lightning_trainer(package: str, callbacks: list[Any], **options: Any) -> Any:
    import importlib

    pl = importlib.import_module(package)
    settings = dict(max_steps=20, accelerator="cpu", devices=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
    settings.update(options)
    return pl.Trainer(callbacks=callbacks, **settings)


def _lightning_spy(package: str, watcher: Any, collector: Any) -> Any:
    import importlib

    pl = importlib.import_module(package)

    class Spy(pl.Callback):
        sub: Any = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.sub = collector(watcher.agent.endpoint)
            self.sub.wait_for(lambda m: m.kind == protocol.HEARTBEAT)
            self.sub.wait_for(lambda m: m.kind == protocol.META)  # the next re-send

    return Spy()


@needs_lightning
def test_lightning_trainer_streams_layers_each_steps_loss_lr_rank_and_goodbye(collector):
    from symwatch.integrations.lightning import SymwatchCallback

    module = _lightning_module("lightning.pytorch")
    watcher = SymwatchCallback(endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                               **DETERMINISTIC)
    spy = _lightning_spy("lightning.pytorch", watcher, collector)
    _lightning_trainer("lightning.pytorch", [watcher, spy]).fit(module, _regression_data())

    sub = spy.sub
    goodbye = sub.wait_for(lambda m: m.kind == protocol.GOODBYE)
    assert goodbye.payload["reason"] == "finished" and goodbye.step == 20
    assert watcher.agent is None
    assert [m.step for m in sub.of_kind(protocol.METRICS)] == [1, 5, 10, 15, 20]
    meta = sub.of_kind(protocol.META)[0]
    assert meta.rank == 0 and meta.payload["world_size"] == 1
    assert meta.payload["local_rank"] == 0 and meta.payload["node_rank"] == 0
    assert [row["name"] for row in meta.payload["layers"]] == ["net.0", "net.2"]
    last = sub.of_kind(protocol.METRICS)[-1].payload["values"]
    for name in ("net.0", "net.2"):
        for key, value in _direct(module.get_submodule(name).weight).items():
            assert last[name][key] == pytest.approx(value, rel=1e-4), (name, key)

    stats = _stats_by_step(sub.of_kind(protocol.STATS))
    assert len(module.losses) == 20
    for step in range(1, 21):  # the scalar Lightning called .backward() on, at its step
        assert stats[step]["loss"] == pytest.approx(module.losses[step - 1], rel=1e-6)
    # StepLR halves the lr every 10 steps: at each step, the lr that step ran with.
    assert [stats[step]["scalars"]["lr"] for step in (1, 10, 11, 20)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05])


@needs_lightning
def test_lightning_failure_says_goodbye_with_exception_in_the_recording(tmp_path):
    from symwatch.integrations.lightning import SymwatchCallback

    path = tmp_path / "run.db"
    watcher = SymwatchCallback(record=path, endpoint="tcp://127.0.0.1:0", **DETERMINISTIC)
    module = _lightning_module("lightning.pytorch", fail_at=7)
    with pytest.raises(RuntimeError, match="the training step failed"):
        _lightning_trainer("lightning.pytorch", [watcher]).fit(module, _regression_data())
    assert watcher.agent is None
    messages = _recorded(path)
    goodbye = _of_kind(messages, protocol.GOODBYE)
    assert len(goodbye) == 1 and goodbye[0].payload["reason"] == "exception"
    assert goodbye[0].step == 7
    assert [m.step for m in _of_kind(messages, protocol.METRICS)] == [1, 5]


@needs_lightning
def test_lightning_gradient_accumulation_reports_the_undivided_batch_loss(tmp_path):
    from symwatch.integrations.lightning import SymwatchCallback

    path = tmp_path / "run.db"
    watcher = SymwatchCallback(record=path, endpoint="tcp://127.0.0.1:0", **DETERMINISTIC)
    module = _lightning_module("lightning.pytorch")
    _lightning_trainer("lightning.pytorch", [watcher], max_steps=6,
                       accumulate_grad_batches=2).fit(module, _regression_data())
    messages = _recorded(path)
    assert _of_kind(messages, protocol.GOODBYE)[0].step == 6  # 12 batches, 6 updates
    stats = _stats_by_step(_of_kind(messages, protocol.STATS))
    # Update k runs batches 2k-2 and 2k-1 (from 0); the optimizer steps inside the second
    # one, before its batch-end hook: the latest loss known then is batch 2k-2's, undivided
    # (the backward scalar would be half of it).
    for step in range(1, 7):
        assert stats[step]["loss"] == pytest.approx(module.losses[2 * step - 2], rel=1e-6)


@needs_lightning
def test_lightning_manual_optimization_is_watched_through_its_wrappers(tmp_path):
    from symwatch.integrations.lightning import SymwatchCallback

    path = tmp_path / "run.db"
    watcher = SymwatchCallback(record=path, endpoint="tcp://127.0.0.1:0", **DETERMINISTIC)
    module = _lightning_module("lightning.pytorch", manual=True)
    _lightning_trainer("lightning.pytorch", [watcher], max_steps=12).fit(module,
                                                                         _regression_data())
    messages = _recorded(path)
    # `self.optimizers()` is a LightningOptimizer; the agent hooked the torch one inside it.
    assert [m.step for m in _of_kind(messages, protocol.METRICS)] == [1, 5, 10]
    stats = _stats_by_step(_of_kind(messages, protocol.STATS))
    for step in range(1, 13):  # manual_backward's scalar, at its step
        assert stats[step]["loss"] == pytest.approx(module.losses[step - 1], rel=1e-6)
    assert stats[11]["scalars"]["lr"] == pytest.approx(0.05)


@needs_pytorch_lightning
def test_pytorch_lightning_package_has_its_own_callback(tmp_path):
    from symwatch.integrations.pytorch_lightning import SymwatchCallback

    import pytorch_lightning

    path = tmp_path / "run.db"
    watcher = SymwatchCallback(record=path, endpoint="tcp://127.0.0.1:0", **DETERMINISTIC)
    assert isinstance(watcher, pytorch_lightning.Callback)
    module = _lightning_module("pytorch_lightning")
    _lightning_trainer("pytorch_lightning", [watcher], max_steps=10).fit(module,
                                                                         _regression_data())
    messages = _recorded(path)
    assert [m.step for m in _of_kind(messages, protocol.METRICS)] == [1, 5, 10]
    assert set(_of_kind(messages, protocol.METRICS)[-1].payload["values"]) == {"net.0", "net.2"}
    assert _of_kind(messages, protocol.GOODBYE)[0].payload["reason"] == "finished"


@needs_lightning
def test_lightning_ddp_ranks_send_their_placement_and_rank_1_leaves_the_replica_to_rank_0(
        tmp_path):
    """Two real processes (Lightning's `ddp` launcher re-runs the script for rank 1; gloo on the
    CPU). The slowest test here (two interpreters importing Lightning), and the only one that
    sees a rank other than 0 come from a trainer."""
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "lightning_ddp_train.py")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                        "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True,
                            text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {rank: _recorded(tmp_path / f"run-{rank}.db") for rank in (0, 1)}
    for rank, messages in runs.items():
        assert {m.rank for m in messages} == {rank}
        meta = _of_kind(messages, protocol.META)[0].payload
        assert (meta["world_size"], meta["local_rank"], meta["node_rank"]) == (2, rank, 0)
        assert _of_kind(messages, protocol.GOODBYE)[0].payload["reason"] == "finished"
        assert any(m.payload.get("loss") for m in _of_kind(messages, protocol.STATS))
    assert [m.step for m in _of_kind(runs[0], protocol.METRICS)] == [1, 5, 10]
    assert _of_kind(runs[1], protocol.METRICS) == []  # a DDP replica: measured on rank 0
    skipped = _of_kind(runs[1], protocol.META)[0].payload["skipped"]
    assert skipped and all("measured on rank 0" in s for s in skipped)


# -- placement and imports ---------------------------------------------------------------------

def test_watch_publishes_explicit_rank_world_size_local_and_node_rank(collector):
    import symwatch

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", heartbeat_interval=0.05,
                           meta_interval=0.05, rank=3, world_size=4, local_rank=1, node_rank=1,
                           replica=False)
    try:
        sub = collector(agent.endpoint)
        meta = sub.wait_for(lambda m: m.kind == protocol.META)
        assert meta.rank == 3
        assert (meta.payload["world_size"], meta.payload["local_rank"],
                meta.payload["node_rank"]) == (4, 1, 1)
        assert [row["name"] for row in meta.payload["layers"]] == ["0", "2"]  # not a replica
    finally:
        agent.close()
    replica = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", rank=1, world_size=2,
                             replica=True, register=False)
    try:  # a data-parallel copy: rank 0 measures the weights
        assert replica.replica and replica.layers == []
    finally:
        replica.close()


def test_watch_takes_placement_from_the_environment(monkeypatch):
    import symwatch

    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("GROUP_RANK", "1")
    model = nn.Linear(4, 4)
    agent = symwatch.watch(model, endpoint="tcp://127.0.0.1:0", register=False)
    try:
        meta = agent.meta()
        assert agent.rank == 2 and meta["world_size"] == 8
        assert meta["local_rank"] == 0 and meta["node_rank"] == 1
        protocol.encode(protocol.META, run="r", rank=agent.rank, restart=0, seq=0, time=0.0,
                        step=0, payload=meta)  # valid on the wire
    finally:
        agent.close()


@pytest.mark.parametrize("options, complaint", [
    ({"rank": 2, "world_size": 2}, "not below world_size"),
    ({"rank": -1}, "rank must be an integer >= 0"),
    ({"world_size": 0}, "world_size must be an integer >= 1"),
])
def test_watch_rejects_an_impossible_placement(options, complaint):
    import symwatch

    with pytest.raises(ValueError, match=complaint):
        symwatch.watch(nn.Linear(2, 2), endpoint="tcp://127.0.0.1:0", register=False,
                       **options)


IMPORT_CHECK = textwrap.dedent("""
    import importlib, importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {'transformers', 'accelerate', 'lightning',
                                      'pytorch_lightning'}:
                raise ImportError(name + ' is blocked in this test')
    sys.meta_path.insert(0, Block())
    for name in ('symwatch.integrations.transformers', 'symwatch.integrations.lightning',
                 'symwatch.integrations.pytorch_lightning',
                 'symwatch_agent.entry.integrations.session'):
        module = importlib.import_module(name)
    try:
        from symwatch.integrations.transformers import SymwatchCallback
    except ImportError as exc:
        print('NEEDS', exc)
    try:
        from symwatch.integrations.lightning import SymwatchCallback
    except ImportError as exc:
        print('NEEDS', exc)
    print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in
                           {'transformers', 'accelerate', 'lightning', 'pytorch_lightning'}))
""")


def test_integration_modules_import_without_the_frameworks_and_say_what_to_install():
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": ""})
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
    needs = [line for line in result.stdout.splitlines() if line.startswith("NEEDS")]
    assert len(needs) == 2
    assert all("pip install 'symwatch[integrations]'" in line for line in needs)


def test_a_smooth_lr_schedule_does_not_explain_every_transition_but_a_boundary_does():
    """The Trainer's default schedule decays the lr at every step: a small change between two
    samples is drift, not a boundary; a StepLR-like drop still labels what it explains."""
    from symwatch_agent.publish.transitions import TransitionWatch

    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1e-3)

    def run(lr_at: Any) -> dict[str, Any]:
        watch = TransitionWatch()
        for step in range(1, 200):
            opt.param_groups[0]["lr"] = lr_at(step)
            level = 1.0 if step < 150 else 5.0
            hyper = (("lr", 0, float(opt.param_groups[0]["lr"])),)
            # a continuous series (a count alone is no event without one moving with it)
            for _, payload in watch.update(step, {"fc": {"weight_norm": level}}, None, hyper):
                return payload
        raise AssertionError("the jump at step 150 was not reported")

    assert run(lambda step: 1e-3 * (1 - step / 400))["exogenous"] is None  # linear decay
    assert run(lambda step: 1e-3 if step < 150 else 1e-4)["exogenous"] == \
        "optimizer lr 0.001 → 0.0001"
