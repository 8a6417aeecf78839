"""Training overhead of the agent, measured side by side: the same loop with and without it.

    .venv/bin/python benchmarks/overhead.py [--trials 15] [--steps 100] [--write docs/benchmarks.md]
    .venv/bin/python benchmarks/overhead.py --model gpt [--width 256 --depth 4] [--threads 1] …

`--model gpt`: a GPT-style decoder (token and position embeddings, `depth` pre-LN blocks of
causal attention with q/k/v/o projections and `n_head` 4, a 4× GELU MLP, untied LM head),
trained on random tokens; it also reports each layer's refresh interval (steps between two
samples that measured the layer, from the agent's slice ledger, schedule.LayerSlices) and the
start-up on the training thread (watch() and the first step, less a plain step).

Conditions run interleaved (none, default, every=1, none, default, …) so that a noisy, shared
machine slows them all alike; each trial is one block of `--steps` optimizer steps and the
figure reported is the median over trials of the block's time relative to the unmonitored
block of the same round. The agent is attached before a block, outside its timing, followed by
200 untimed steps (every condition gets them): what a block measures is the steady state
of a long run; the one-off start-up is reported on its own. Also measured: the hot path alone (the post-step hook when it does
not sample) and one full indicator sample of the model.

    .venv/bin/python benchmarks/overhead.py --launch 5 --threads 1 [--before /tmp/before/agent] [--pause 3]

`--launch N`: start-up under `symwatch run` (issue #15). N interleaved rounds of child
processes training the GPT: without symwatch, under the bootstrap of `--before` (an agent
tree, e.g. `git archive HEAD agent | tar -x -C /tmp/before`) and under this tree's
bootstrap, each with `SYMWATCH_LAUNCH=1` and the bootstrap first on PYTHONPATH as `symwatch
run` sets them. Each child times its steps; the excess of a step is its time less the median
of the child's steps 31–60. Reported, median over rounds: step 1's excess, the largest
excess of steps 1–20, and their summed excess (what the start-up cost the training thread in
all, wherever it fell); wall and the training thread's CPU time.

    .venv/bin/python benchmarks/overhead.py --refresh-scan 4,16,64 [--refresh-seconds 100] --threads 1

`--refresh-scan`: each layer's refresh interval against the length of a step: the GPT at the
defaults, one run of about `--refresh-seconds` per batch size (sequences of 32 tokens).

    .venv/bin/python benchmarks/overhead.py --paired 9 --steps 300 --threads 1 [--control] [--write docs/benchmarks.md]
    .venv/bin/python benchmarks/overhead.py --paired 40 --steps 1200 --threads 1 --control --raw rounds.json
    .venv/bin/python benchmarks/overhead.py --paired 1 --from-raw rounds.json [--write docs/benchmarks.md]

`--paired N`: the GPT's steady-state overhead, two processes at the same time. Each round
starts two children, one without the agent and one with it at the defaults, each pinned to a
core of its own (the agent's threads share its training's core: all the agent's CPU is
charged to the training), the cores swapped every round; both warm up (the agent attached
before, so its start-up is not counted), wait for a common start time and train the same
`--steps` steps. What a shared machine's other jobs do to one core they do, on average, to
the other in the same seconds: the ratio within a round is far steadier than that of blocks
run one after the other (the interleaved trials above). Reported: the median ratio over
rounds of wall time, and of each child's CPU time; `--control` adds an A/A round (both children
without the agent) beside each, whose ratio shows what the method cannot resolve. From 10
rounds on, the mean ratio with a 95 % bootstrap interval too. A round of 1,200 steps takes
~2–4 minutes on a 2-core machine (the children's start, 150 warm-up steps, the margin to the
common start), so `--raw` saves the rounds as they come and `--from-raw` reports them: leave
a long run in the background and report what it has.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import machine
import torch
from doc_sections import write_section
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

WARM_STEPS = 200  # untimed steps before every block, in every condition


def watch(*args: Any, **kwargs: Any) -> Any:
    """symwatch_agent.watch, imported at first use. A --launch child must not import the agent
    on its main thread: under `symwatch run` that import runs on the agent's preload thread
    beside the script's model building and first steps, and the start-up figures must hold
    what it costs there (until 2026-12-06 evening this module imported it at the top, so the
    children had it imported before their first step)."""
    from symwatch_agent import watch as agent_watch  # noqa: PLC0415 (see above)

    return agent_watch(*args, **kwargs)


def make_model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


class Attention(nn.Module):
    """Causal self-attention with separate q/k/v/o projections and `n_head` (the agent finds
    its heads by these names and this attribute, measure/heads.py)."""

    def __init__(self, width: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, width: int, n_head: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, n_head)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A GPT-style decoder: token and position embeddings, pre-LN blocks, untied LM head."""

    def __init__(self, vocab: int, width: int, depth: int, n_head: int, context: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, n_head) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def make_gpt(width: int, depth: int, n_head: int = 4, vocab: int = 256,
             context: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return GPT(vocab, width, depth, n_head, context)


def run_block(model: nn.Module, opt: torch.optim.Optimizer, steps: int, batch: torch.Tensor,
              target: torch.Tensor) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        out = model(batch)
        loss = nn.functional.cross_entropy(out.flatten(0, -2), target.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def measure(trials: int, steps: int, width: int, depth: int, model_kind: str = "mlp",
            warm_steps: int = WARM_STEPS) -> dict[str, object]:
    if model_kind == "gpt":
        model = make_gpt(width, depth)
        batch = torch.randint(0, 256, (4, 32))
        target = torch.randint(0, 256, (4, 32))
        conditions = {"none": None, "symwatch default (every=10)": 10}
    else:
        model = make_model(width, depth)
        batch = torch.randn(64, width)
        target = torch.randint(0, 10, (64,))
        conditions = {"none": None, "symwatch default (every=10)": 10, "symwatch every=1": 1}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    refresh: list[tuple[str, list[int]]] = []  # (layer, steps between its refreshes) per run
    refresh_full: list[tuple[str, list[int]]] = []
    plain_ms: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in conditions if name != "none"}
    step_ms: dict[str, list[float]] = {name: [] for name in conditions}
    # The process's CPU time per block, all its threads (the agent's publisher and ZeroMQ's
    # I/O thread included): on a shared machine far steadier than the wall clock, and what
    # the agent costs a CPU-bound job on one core. Beside it, what the agent counted against
    # its budget in the same block (training-thread cost + its publisher's CPU).
    cpu_ratios: dict[str, list[float]] = {name: [] for name in conditions if name != "none"}
    counted: dict[str, list[float]] = {name: [] for name in conditions if name != "none"}
    startup_ms: list[float] = []
    run_block(model, opt, steps, batch, target)  # warm-up: allocator, kernels, LAPACK
    with Progress(transient=True) as progress:
        task = progress.add_task("interleaved trials", total=trials)
        for _ in range(trials):
            base = None
            for name, every in conditions.items():
                agent = None
                if every:
                    # Attached outside the timing, then untimed steps: the one-off start-up
                    # (thread, pairing pass, the first full sample's library warm-up and its
                    # decoding on the publisher thread) is paid once per run; it is measured
                    # separately below, not smeared over a block.
                    plain_ms.append(1000 * run_block(model, opt, 1, batch, target))
                    t0 = time.perf_counter()
                    agent = watch(model, opt, every=every, register=False)
                    run_block(model, opt, 1, batch, target)
                    startup_ms.append(1000 * (time.perf_counter() - t0))
                    run_block(model, opt, warm_steps - 2, batch, target)
                else:
                    run_block(model, opt, warm_steps, batch, target)  # the same untimed steps
                cpu0 = time.process_time()
                own0 = 0.0 if agent is None else agent._cost_s + agent._publisher.cpu_s
                elapsed = run_block(model, opt, steps, batch, target)
                cpu = time.process_time() - cpu0
                if agent is not None:
                    counted[name].append(
                        (agent._cost_s + agent._publisher.cpu_s - own0) / elapsed)
                    slices = getattr(agent.engine, "slices", None)
                    if every == 10 and slices is not None:
                        names = [layer.name for layer in agent.layers]
                        refresh += [(names[i], list(g)) for i, g in slices.gaps.items()]
                        refresh_full += [(names[i], list(g)) for i, g in slices.gaps_full.items()]
                    elif every == 10:  # an agent without slices (before): every layer, every sample
                        taken = [step for step, _ in agent._sampled_at]
                        gaps = [b - a for a, b in itertools.pairwise(taken)]
                        refresh += [(layer.name, gaps) for layer in agent.layers]
                    agent.close()
                step_ms[name].append(1000 * elapsed / steps)
                if every is None:
                    base, base_cpu = elapsed, cpu
                else:
                    ratios[name].append(elapsed / base)
                    cpu_ratios[name].append(cpu / base_cpu)
            progress.advance(task)

    # The hot path alone: the hook when it does not sample (stats every 0.25 s included).
    agent = watch(model, opt, every=10**9, register=False, capture_backward=False)
    agent._on_step()  # step 1 always samples; the rest do not
    calls = 200_000
    start = time.perf_counter()
    for _ in range(calls):
        agent._on_step()
    hot_us = 1e6 * (time.perf_counter() - start) / calls
    sample_ms = []
    for _ in range(20 if model_kind == "mlp" else 5):
        t0 = time.perf_counter()
        agent.engine.compute("full")  # the whole model (a planned sample measures a slice)
        sample_ms.append(1000 * (time.perf_counter() - t0))
    agent.close()
    layers = len(agent.layers)
    never = layers - len({name for name, gaps in refresh if gaps})
    return {"ratios": ratios, "step_ms": step_ms, "hot_us": hot_us,
            "cpu_ratios": cpu_ratios, "counted": counted,
            "startup_ms": statistics.median(startup_ms),
            "startup_excess_ms": statistics.median(
                s - p for s, p in zip(startup_ms, plain_ms)),
            "refresh": _intervals(refresh), "refresh_full": _intervals(refresh_full),
            "never_twice": never, "measured_layers": layers,
            "sample_ms": statistics.median(sample_ms),
            "params": sum(p.numel() for p in model.parameters()),
            "layers": depth + 1 if model_kind == "mlp" else layers}


def refresh_run(steps: int, width: int, depth: int, sequences: int = 4) -> dict[str, Any]:
    """One long run of the GPT at the defaults (`watch(model, opt)`, nothing else): each
    layer's refresh interval from the agent's slice ledger, cheap (any sample) and full tier
    apart, and where the agent's time went, per second of training: its training-thread cost
    and its publisher thread's CPU (both charged to the budget), against the plan.
    `sequences`: the batch, of 32 tokens each (the overhead blocks' 4 unless scanned)."""
    model = make_gpt(width, depth)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, 256, (sequences, 32))
    target = torch.randint(0, 256, (sequences, 32))
    run_block(model, opt, 5, batch, target)
    agent = watch(model, opt, register=False)
    run_block(model, opt, steps, batch, target)
    slices = agent.engine.slices
    names = [layer.name for layer in agent.layers]
    training = agent._training_s
    out = {
        "steps": steps, "training_s": training, "step_ms": 1000 * training / steps,
        "samples": dict(agent.engine.scheduler.samples),
        "cost_ms_per_s": 1000 * agent._cost_s / training,
        "publisher_ms_per_s": 1000 * agent._publisher.cpu_s / training,
        "plan_ms_per_s": 1000 * agent._planned,
        "refresh": _intervals([(names[i], list(g)) for i, g in slices.gaps.items()]),
        "refresh_full": _intervals([(names[i], list(g)) for i, g in slices.gaps_full.items()]),
        "refreshed": len({i for i in slices.last}), "layers": len(agent.layers),
        "twice": sum(1 for g in slices.gaps.values() if g), "sequences": sequences,
        # layers the full tier measured (spectra, modes, duplicates, heads), all visits
        "full_visits": sum(1 + len(slices.gaps_full.get(i, ())) for i in slices.last_full),
    }
    agent.close()
    return out


def _intervals(runs: list[tuple[str, list[int]]]) -> dict[str, float] | None:
    """Per layer the median of its steps between refreshes (over all runs), then the median
    and the largest of those over layers, and the largest single gap."""
    per_layer: dict[str, list[int]] = {}
    for name, gaps in runs:
        per_layer.setdefault(name, []).extend(gaps)
    medians = [statistics.median(g) for g in per_layer.values() if g]
    if not medians:
        return None
    return {"median": statistics.median(medians), "max_median": max(medians),
            "max": max(max(g) for g in per_layer.values() if g), "layers": len(medians)}


def render(result: dict[str, object], args: argparse.Namespace) -> str:
    ratios = result["ratios"]
    step_ms = result["step_ms"]
    if args.model == "gpt":
        return render_gpt(result, args)
    lines = [
        (f"Model: MLP, {result['layers']} Linear layers of width {args.width} "
        f"({result['params']:,} parameters), AdamW, batch 64, CPU; {args.trials} interleaved "
        f"trials of {args.steps} steps. Machine: {machine.describe()}."),
        "",
        "| condition | median step (ms) | median time vs. none | spread (min–max ratio) |",
        "|---|---|---|---|",
        f"| none | {statistics.median(step_ms['none']):.3f} | 1.000 | – |",
    ]
    for name, values in ratios.items():
        lines.append(f"| {name} | {statistics.median(step_ms[name]):.3f} | "
                     f"{statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} |")
    lines += [
        "",
        f"- Hot path (post-step hook, not sampling): **{result['hot_us']:.2f} µs** per step.",
        (f"- One-off start-up (`watch()` and the first step, which always samples): "
        f"**{result['startup_ms']:.0f} ms** (median), paid once per run, outside the blocks."),
        (f"- One indicator sample of all {result['layers']} layers (full spectra): "
        f"**{result['sample_ms']:.2f} ms** (median of 20)."),
    ]
    return "\n".join(lines)


def render_gpt(result: dict[str, Any], args: argparse.Namespace) -> str:
    ratios, step_ms = result["ratios"], result["step_ms"]
    lines = [
        (f"Model: GPT-style decoder, {args.depth} blocks of width {args.width} (4 heads, q/k/v/o "
        f"projections, LayerNorm, 4× GELU MLP, untied LM head; {result['measured_layers']} "
        f"measured layers, {result['params']:,} parameters), AdamW, batch 4 × 32 random tokens, "
        f"CPU, torch {args.threads} thread(s); {args.trials} interleaved trials of {args.steps} "
        f"steps after {args.warm} untimed ones. Machine: {machine.describe()}; load average "
        f"{os.getloadavg()[0]:.1f} at the end (other jobs on its 2 cores)."),
        "",
        ("| condition | median step (ms) | median time vs. none | spread (min–max ratio) | "
         "process CPU vs. none (spread) | counted by the agent |"),
        "|---|---|---|---|---|---|",
        f"| none | {statistics.median(step_ms['none']):.1f} | 1.000 | – | 1.000 | – |",
    ]
    for name, values in ratios.items():
        cpu, own = result["cpu_ratios"][name], result["counted"][name]
        lines.append(f"| {name} | {statistics.median(step_ms[name]):.1f} | "
                     f"{statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} | "
                     f"{statistics.median(cpu):.4f} ({min(cpu):.4f}–{max(cpu):.4f}) | "
                     f"{100 * statistics.median(own):.2f} % |")

    def interval(found: dict[str, float] | None) -> str:
        if not found:
            return "no layer was refreshed twice"
        return (f"median over layers **{found['median']:.0f}** steps, slowest layer's median "
                f"{found['max_median']:.0f}, longest gap {found['max']:.0f} "
                f"({found['layers']} layers refreshed at least twice)")

    lines += [
        "",
        (f"- Per-layer refresh interval at the defaults (any tier): {interval(result['refresh'])}; "
        f"layers never refreshed twice in a run: {result['never_twice']}."),
        f"- The full tier (spectra, duplicates, heads) per layer: {interval(result['refresh_full'])}.",
        f"- Hot path (post-step hook, not sampling): **{result['hot_us']:.2f} µs** per step.",
        *(_refresh_lines(result["long"]) if result.get("long") else []),
        (f"- Start-up on the training thread (`watch()` and the first step, less a plain step "
        f"just before): **{result['startup_excess_ms']:.0f} ms** (median; "
        f"{result['startup_ms']:.0f} ms in all)."),
        f"- One whole-model sample, full tier: **{result['sample_ms']:.1f} ms** (median of 5).",
    ]
    return "\n".join(lines)


LAUNCH_STEPS = 60  # per child: steps 31–60 are its plain step
FIRST_STEPS = 20  # the start-up's excess is summed over these


def launch_child(args: argparse.Namespace) -> int:
    """One child of --launch: the GPT trained LAUNCH_STEPS steps; its step times as JSON."""
    model = make_gpt(args.width, args.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, target = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    time.sleep(args.pause)
    wall, cpu = [], []
    for _ in range(LAUNCH_STEPS):
        t0, c0 = time.perf_counter(), time.thread_time()
        run_block(model, opt, 1, batch, target)
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.thread_time() - c0))
    print(json.dumps({"wall": wall, "cpu": cpu}))
    return 0


PAIRED_WARM = 150  # untimed steps before the common start (the agent's first samples fall here)


def paired_child(args: argparse.Namespace) -> int:
    """One child of --paired: pinned to `--core`, warmed up, the agent attached or not; waits
    for `--start` (time.time()) and trains `--steps` steps; its times as JSON."""
    os.sched_setaffinity(0, {args.core})
    model = make_gpt(args.width, args.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, target = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    agent = watch(model, opt, register=False) if args.with_agent else None
    run_block(model, opt, PAIRED_WARM, batch, target)
    waited = args.start - time.time()  # < 0: this child was late, the round is not paired
    time.sleep(max(0.0, waited))
    cpu0 = time.process_time()
    own0 = 0.0 if agent is None else agent._cost_s + agent._publisher.cpu_s
    wall = run_block(model, opt, args.steps, batch, target)
    cpu = time.process_time() - cpu0
    counted = 0.0 if agent is None else agent._cost_s + agent._publisher.cpu_s - own0
    samples = None if agent is None else dict(agent.engine.scheduler.samples)
    if agent is not None:
        agent.close()
    print(json.dumps({"wall": wall, "cpu": cpu, "counted": counted, "samples": samples,
                      "waited": waited}))
    return 0


def paired(args: argparse.Namespace) -> dict[str, Any]:
    """--paired: the rounds; per round the agent child's time over the plain child's, and
    with --control an A/A round (both plain) beside each, whose ratio is the method's noise."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        raise SystemExit("--paired needs two cores (this process may use only "
                         f"{len(cores)}): run it on a machine with at least two")
    ratios: dict[str, list[float]] = {"wall": [], "cpu": [], "counted": [], "control": []}
    step_ms, samples = [], []
    kinds = [(0, 1)] + ([(0, 0)] if args.control else [])
    with Progress(transient=True) as progress:
        task = progress.add_task("paired rounds", total=args.paired * len(kinds))
        k = 0
        while len(step_ms) < args.paired:
            for kind in kinds:
                found = None
                while found is None:  # a round with a late child runs again, with more margin
                    found = _pair(args, kind, (cores[k % 2], cores[1 - k % 2]))
                k += 1
                a, b = found
                if kind == (0, 0):
                    ratios["control"].append(b["wall"] / a["wall"])
                else:
                    ratios["wall"].append(b["wall"] / a["wall"])
                    ratios["cpu"].append(b["cpu"] / a["cpu"])
                    ratios["counted"].append(b["counted"] / b["wall"])
                    step_ms.append(1000 * a["wall"] / args.steps)
                    samples.append(b["samples"])
                progress.advance(task)
                if args.raw:  # after every round: a run stopped early keeps what it measured
                    args.raw.write_text(json.dumps({"ratios": ratios, "step_ms": step_ms,
                                                    "samples": samples, "cores": cores}))
    return {"ratios": ratios, "step_ms": step_ms, "samples": samples, "cores": cores}


def _pair(args: argparse.Namespace, kind: tuple[int, int], cores: tuple[int, int]
          ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Two children at once, `kind` saying which has the agent, on `cores`; None when one of
    them was not ready at the common start (args.margin is lengthened)."""
    start = time.time() + args.margin
    env = {key: v for key, v in os.environ.items() if not key.startswith("SYMWATCH_")}
    children = [subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--paired-child",
         "--with-agent", str(with_agent), "--core", str(core), "--start", repr(start),
         "--steps", str(args.steps), "--threads", str(args.threads),
         "--width", str(args.width), "--depth", str(args.depth)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for with_agent, core in zip(kind, cores)]
    found = []
    for child in children:
        out, err = child.communicate()  # each child's pipes read to the end
        if child.returncode != 0:
            raise SystemExit(f"a --paired child failed:\n{err}")
        found.append(json.loads(out.strip().splitlines()[-1]))
    ready = max(args.margin - child["waited"] for child in found)  # seconds to get ready
    if min(child["waited"] for child in found) < 0:
        args.margin = 1.5 * ready + 2
        return None
    args.margin = min(args.margin, 1.3 * ready + 2)
    return found[0], found[1]


def mean_interval(values: list[float], level: float = 0.95, resamples: int = 10_000,
                  seed: int = 0) -> tuple[float, float, float]:
    """The mean of `values` and its percentile-bootstrap interval at `level` (a fixed seed, so
    that the same rounds give the same figures). The rounds' ratios are skewed (a loaded
    second slows one child far more than it speeds the other), which the bootstrap does not
    need to assume away, unlike a t interval."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return sum(values) / n, lo, hi


def render_paired(result: dict[str, Any], args: argparse.Namespace) -> str:
    def cell(values: list[float], digits: int = 3) -> str:
        return (f"**{statistics.median(values):.{digits}f}** "
                f"({min(values):.{digits}f}–{max(values):.{digits}f})")

    def interval(values: list[float]) -> str:
        mean, lo, hi = mean_interval(values)
        return f"**{mean:.4f}** ({lo:.4f}–{hi:.4f})"

    r = result["ratios"]
    counts = [sum(s.values()) for s in result["samples"]]
    means = [
        "",
        "| mean over rounds, 95 % bootstrap interval | |",
        "|---|---|",
        f"| wall time, agent at the defaults vs. none | {interval(r['wall'])} |",
        f"| process CPU time, agent vs. none | {interval(r['cpu'])} |",
        *([f"| A/A control, wall time | {interval(r['control'])} |"] if r["control"] else []),
    ] if len(r["wall"]) >= 10 else []  # fewer rounds: an interval would mean little
    return "\n".join([
        f"Model: the GPT-style decoder above (width {args.width}, {args.depth} blocks), AdamW, "
        f"torch {args.threads} thread(s). {args.paired} rounds, each two children at the same "
        f"time pinned to cores {result['cores'][0]} and {result['cores'][1]} (swapped every "
        f"round), {PAIRED_WARM} untimed steps then {args.steps} timed ones; a plain step took "
        f"{statistics.median(result['step_ms']):.1f} ms (median; "
        f"{min(result['step_ms']):.1f}–{max(result['step_ms']):.1f}). {machine.describe()}; "
        f"load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| | median over rounds (min–max) |",
        "|---|---|",
        f"| wall time, agent at the defaults vs. none | {cell(r['wall'])} |",
        f"| process CPU time (every thread), agent vs. none | {cell(r['cpu'])} |",
        f"| counted by the agent (training thread + publisher CPU) / wall | "
        f"{cell([100 * x for x in r['counted']], 2)} % |",
        *([f"| A/A control: two children without the agent, one over the other | "
           f"{cell(r['control'])} |"] if r["control"] else []),
        f"| samples taken in the timed steps (cheap + full) | {statistics.median(counts):.0f} "
        f"({min(counts)}–{max(counts)}) |",
        *means,
    ])


def _excess(times: list[float]) -> dict[str, float]:
    base = statistics.median(times[30:LAUNCH_STEPS])
    first = [t - base for t in times[:FIRST_STEPS]]
    return {"step1": first[0], "max": max(first), "sum": sum(first), "base": base}


def launch(args: argparse.Namespace) -> int:
    """--launch: the children interleaved, round by round; a table of medians."""
    here = Path(__file__).resolve().parent
    trees: dict[str, Path | None] = {"no agent": None}
    if args.before:
        trees["bootstrap before"] = args.before.resolve()
    trees["bootstrap now"] = here.parent / "agent"
    found: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
    for _ in range(args.launch):
        for name, tree in trees.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("SYMWATCH_")}
            if tree is not None:
                env |= {"SYMWATCH_LAUNCH": "1", "SYMWATCH_QUIET": "1",
                        "PYTHONPATH": os.pathsep.join(
                            [str(tree / "symwatch_agent/entry/bootstrap"), str(tree)])}
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--launch-child",
                 "--threads", str(args.threads), "--pause", str(args.pause),
                 "--width", str(args.width), "--depth", str(args.depth)],
                env=env, capture_output=True, text=True, check=True)
            times = json.loads(out.stdout.strip().splitlines()[-1])
            found[name].append({"wall": _excess(times["wall"]), "cpu": _excess(times["cpu"])})
    print(f"GPT width {args.width}, depth {args.depth}, torch {args.threads} thread(s), "
          f"{args.launch} rounds, {args.pause:g} s between the model and step 1; load average "
          f"{os.getloadavg()[0]:.1f} at the end. Excess over the child's steps 31–60, ms, "
          "median over rounds (min–max):")
    print("| | step 1 | largest of steps 1–20 | sum of steps 1–20 | "
          "step 1, CPU | sum of steps 1–20, CPU | plain step |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in found.items():
        def cell(kind: str, key: str, runs: list = runs) -> str:
            values = [run[kind][key] for run in runs]
            return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"
        print(f"| {name} | {cell('wall', 'step1')} | {cell('wall', 'max')} | "
              f"{cell('wall', 'sum')} | {cell('cpu', 'step1')} | {cell('cpu', 'sum')} | "
              f"{cell('wall', 'base')} |")
    return 0


def refresh_scan(batches: list[int], seconds: float, width: int, depth: int) -> str:
    """Freshness against the step's length: the same GPT at the defaults, one run per batch
    size, each about `seconds` of training (steps from a timed plain step). The agent earns a
    share of the training time and a cheap pass of the whole model costs the same whatever
    the batch, so the interval in steps falls as the step grows."""
    rows = ["| batch (sequences of 32 tokens) | ms a step | steps | cheap and full samples | "
            "cheap-tier interval, median over layers (slowest layer) | full tier | "
            "agent ms a second: training thread + publisher (plan) |",
            "|---|---|---|---|---|---|---|"]
    with Progress(transient=True) as progress:
        task = progress.add_task("freshness runs", total=len(batches))
        for sequences in batches:
            model = make_gpt(width, depth)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            batch = torch.randint(0, 256, (sequences, 32))
            run_block(model, opt, 2, batch, batch)
            step_s = run_block(model, opt, 3, batch, batch) / 3
            long = refresh_run(max(100, round(seconds / step_s)), width, depth, sequences)

            def interval(found: dict[str, float] | None) -> str:
                if not found:
                    return "no layer twice"
                return f"**{found['median']:.0f}** ({found['max_median']:.0f})"

            samples = long["samples"]
            rows.append(
                f"| {sequences} | {long['step_ms']:.0f} | {long['steps']} | "
                f"{samples.get('cheap', 0)} + {samples.get('full', 0)} | "
                f"{interval(long['refresh'])} | {interval(long['refresh_full'])}, "
                f"{long['full_visits']} layers measured | "
                f"{long['cost_ms_per_s']:.2f} + {long['publisher_ms_per_s']:.2f} "
                f"({long['plan_ms_per_s']:.1f}) |")
            progress.advance(task)
    return ("```bash\n.venv/bin/python benchmarks/overhead.py --refresh-scan "
            f"{','.join(map(str, batches))} --refresh-seconds {seconds:g} --threads 1"
            "\n```\n\n" + "\n".join(rows))


def _refresh_lines(long: dict[str, Any]) -> list[str]:
    def interval(found: dict[str, float] | None) -> str:
        if not found:
            return "no layer was refreshed twice"
        return (f"median over layers **{found['median']:.0f}** steps, slowest layer's median "
                f"{found['max_median']:.0f}, longest gap {found['max']:.0f}")

    samples = long["samples"]
    return [
        (f"- One run of {long['steps']} steps at the defaults ({long['step_ms']:.0f} ms a step "
         f"measured by the agent; {samples.get('cheap', 0)} cheap and {samples.get('full', 0)} "
         f"full samples): {long['refreshed']} of {long['layers']} layers measured, "
         f"{long['twice']} at least twice."),
        f"  - cheap tier (every sample refreshes it): {interval(long['refresh'])}.",
        (f"  - full tier: {interval(long['refresh_full'])}; {long['full_visits']} layers "
         f"measured by it in the run (one layer every "
         f"{long['steps'] / max(1, long['full_visits']):.0f} steps; each layer about every "
         f"{long['steps'] * long['layers'] / max(1, long['full_visits']):,.0f})."),
        (f"  - the agent's time per second of training: {long['cost_ms_per_s']:.2f} ms on the "
         f"training thread, {long['publisher_ms_per_s']:.2f} ms of its publisher's CPU "
         f"(plan {long['plan_ms_per_s']:.1f} ms)."),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=None,
                        help="layers (MLP, default 6) or blocks (GPT, default 4)")
    parser.add_argument("--model", choices=("mlp", "gpt"), default="mlp")
    parser.add_argument("--warm", type=int, default=WARM_STEPS,
                        help="untimed steps before each block")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own)")
    parser.add_argument("--refresh-steps", type=int, default=0,
                        help="GPT: also one run of this many steps at the defaults, for each "
                             "layer's refresh interval (cheap and full tier)")
    parser.add_argument("--refresh-scan", default=None, metavar="B1,B2,…",
                        help="GPT: one run at the defaults per batch size (sequences), each "
                             "layer's refresh interval against the step's length")
    parser.add_argument("--refresh-seconds", type=float, default=100.0,
                        help="--refresh-scan: seconds of training per run")
    parser.add_argument("--write", type=Path, default=None,
                        help="replace the overhead section of this Markdown file")
    parser.add_argument("--launch", type=int, default=None, metavar="ROUNDS",
                        help="start-up under `symwatch run` (see above), ROUNDS rounds")
    parser.add_argument("--before", type=Path, default=None,
                        help="--launch: an agent tree to compare with (its bootstrap)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="--launch: seconds between building the model and step 1")
    parser.add_argument("--launch-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paired", type=int, default=None, metavar="ROUNDS",
                        help="steady-state overhead, two children at once on two cores (see above)")
    parser.add_argument("--control", action="store_true",
                        help="--paired: an A/A round (both children plain) beside each round")
    parser.add_argument("--raw", type=Path, default=None,
                        help="--paired: also write every round's ratios to this JSON file, "
                             "after each round (a run stopped early keeps its rounds)")
    parser.add_argument("--from-raw", type=Path, default=None,
                        help="--paired: report the rounds of an earlier run's --raw file "
                             "instead of running any")
    parser.add_argument("--margin", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--paired-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--with-agent", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launch or args.launch_child or args.paired or args.paired_child or args.refresh_scan:
        args.model = "gpt"  # the GPT of the section "A GPT-style model (issue #15)"
    if args.depth is None:
        args.depth = 4 if args.model == "gpt" else 6
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    if args.launch_child:
        return launch_child(args)
    if args.launch:
        return launch(args)
    if args.paired_child:
        return paired_child(args)
    if args.refresh_scan:
        batches = [int(b) for b in args.refresh_scan.split(",")]
        text = refresh_scan(batches, args.refresh_seconds, args.width, args.depth)
        Console().print(text)
        if args.write:
            write_section(args.write, "refresh-scan", text)
        return 0
    if args.paired:
        if args.from_raw:  # the rounds an earlier run wrote (--raw), stopped early or not
            result = json.loads(args.from_raw.read_text())
            args.paired = len(result["step_ms"])
        else:
            result = paired(args)
        text = render_paired(result, args)
        Console().print(text)
        if args.write:
            write_section(args.write, "overhead-paired", text)
        return 0
    result = measure(args.trials, args.steps, args.width, args.depth, args.model, args.warm)
    if args.model == "gpt" and args.refresh_steps:
        result["long"] = refresh_run(args.refresh_steps, args.width, args.depth)
    text = render(result, args)
    console = Console()
    table = Table(title="symwatch agent overhead")
    for column in ("condition", "median step ms", "ratio vs none"):
        table.add_column(column)
    table.add_row("none", f"{statistics.median(result['step_ms']['none']):.3f}", "1.000")
    for name, values in result["ratios"].items():
        table.add_row(name, f"{statistics.median(result['step_ms'][name]):.3f}",
                      f"{statistics.median(values):.3f}")
    console.print(table)
    console.print(f"hot path {result['hot_us']:.2f} µs/step; one sample {result['sample_ms']:.2f} ms")
    if args.model == "gpt":
        console.print(text)
    if args.write:
        write_section(args.write, "overhead-gpt" if args.model == "gpt" else "overhead", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
