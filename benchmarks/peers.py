"""Training overhead of symwatch next to the tools people use today, measured side by side.

    .venv/bin/python benchmarks/peers.py [--rounds 8] [--steps 60] [--write docs/benchmarks.md]

The peers (`pip install -e .[bench]` installs them; a missing one gets a "not installed" row):
- `wandb.watch(model, log="parameters", log_freq=N)`, offline (`WANDB_MODE=offline`, its files in
  a temporary directory, no login), with `wandb.log({"loss": …})` every N steps: watch's
  histograms are attached to the next `wandb.log` (`commit=False`), so that is how it is used;
- TensorBoard: `SummaryWriter.add_histogram` of every parameter every N steps (and
  `add_scalar("loss")` at the same cadence), the writer in a temporary directory;
- weightwatcher is not a per-step monitor (one `analyze()` of the model); its cost is given as
  the time of one call on the same model, in training steps.

The model: a small GPT-2-style language model (token + position embeddings, pre-norm blocks
with causal self-attention and a 4× MLP, all projections nn.Linear, an untied head), AdamW,
synthetic tokens, CPU. Each condition is one block of `--steps` optimizer steps; every round
runs every condition once (order rotated each round, so no condition always follows the same
one) and a condition's figure is the median over rounds of its block time divided by the
unmonitored block's time of the same round, with the min–max of that ratio. The monitor is
attached (and `wandb.init` / the writer created) before the block and closed after it, outside
the timing; as many untimed steps as the block follow the attach in every condition, then a
0.3 s pause, so a monitor's one-off start-up (its first sample or histograms, library warm-up,
work its threads still do for them) is not charged to the block, and symwatch has earned the
budget credit it has on a long run (its default rows sample at the budget's rate, as they
would an hour in; at a 1 % budget that is rarely within one block on this model).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from doc_sections import write_section  # noqa: E402
from machine import describe  # noqa: E402
from symwatch_agent import watch  # noqa: E402


# -- the model ---------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp_up = nn.Linear(d, 4 * d)
        self.mlp_down = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.attn_qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_down(F.gelu(self.mlp_up(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 512, d: int = 128, layers: int = 4, heads: int = 4,
                 seq: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln_f(self.blocks(self.tok(idx) + self.pos(pos))))


@dataclass
class Setup:
    vocab: int = 512
    d: int = 128
    layers: int = 4
    heads: int = 4
    seq: int = 64
    batch: int = 8

    def describe(self, model: nn.Module) -> str:
        params = sum(p.numel() for p in model.parameters())
        return (f"GPT-2-style model: {self.layers} blocks, d={self.d}, {self.heads} heads, "
                f"vocab {self.vocab}, sequence {self.seq}, batch {self.batch} ({params:,} "
                f"parameters, {sum(1 for _ in model.parameters())} tensors); AdamW, synthetic "
                "tokens, CPU")


class Trainer:
    def __init__(self, setup: Setup, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.setup = setup
        self.model = TinyGPT(setup.vocab, setup.d, setup.layers, setup.heads, setup.seq)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4, weight_decay=0.1)
        gen = torch.Generator().manual_seed(seed)
        # A pool of batches cycled through, so drawing tokens costs nothing in the loop.
        # Sequences with a learnable pattern (a noisy affine recurrence), not pure noise.
        pool = []
        for _ in range(16):
            start = torch.randint(0, setup.vocab, (setup.batch, 1), generator=gen)
            steps = torch.arange(setup.seq + 1) * 7
            seqs = (start + steps) % setup.vocab
            noise = torch.rand(seqs.shape, generator=gen) < 0.1
            seqs[noise] = torch.randint(0, setup.vocab, (int(noise.sum()),), generator=gen)
            pool.append(seqs)
        self.pool = pool
        self.i = 0

    def step(self) -> torch.Tensor:
        seqs = self.pool[self.i % len(self.pool)]
        self.i += 1
        logits = self.model(seqs[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seqs[:, 1:].reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


# -- the conditions ----------------------------------------------------------------------------

# A condition: attach() -> (per-step callback or None, detach()).
Attach = Callable[[Trainer, Path], tuple[Callable[[int, torch.Tensor], None] | None,
                                         Callable[[], None]]]


# After the warm-up, before the timed block: time for a monitor's threads to go idle.
SETTLE_S = 0.3


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def symwatch_condition(**kwargs: Any) -> Attach:
    def attach(trainer: Trainer, tmp: Path):
        agent = watch(trainer.model, trainer.opt, register=False, **kwargs)
        return None, agent.close
    return attach


def wandb_condition(log_freq: int) -> Attach:
    def attach(trainer: Trainer, tmp: Path):
        import wandb

        run = wandb.init(mode="offline", project="symwatch-bench", dir=str(tmp),
                         settings=wandb.Settings(silent=True, console="off"))
        wandb.watch(trainer.model, log="parameters", log_freq=log_freq)

        def each(step: int, loss: torch.Tensor) -> None:
            if step % log_freq == 0:
                wandb.log({"loss": loss.item()}, step=step)

        def detach() -> None:
            wandb.unwatch(trainer.model)
            run.finish()
        return each, detach
    return attach


def tensorboard_condition(every: int) -> Attach:
    def attach(trainer: Trainer, tmp: Path):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(tmp / f"tb-{time.monotonic_ns()}"))
        params = list(trainer.model.named_parameters())

        def each(step: int, loss: torch.Tensor) -> None:
            if step % every == 0:
                writer.add_scalar("loss", loss.item(), step)
                for name, p in params:
                    writer.add_histogram(name, p.detach(), step)
        return each, writer.close
    return attach


# The full tier's cadence in the "per-step monitor" rows: every 100 optimizer steps.
FULL_EVERY_STEPS = 100


def conditions() -> dict[str, tuple[Attach | None, str | None]]:
    """name -> (attach, or None for the baseline; the cadence group it is compared in)."""
    have_wandb, have_tb = installed("wandb"), installed("tensorboard")
    out: dict[str, tuple[Attach | None, str | None]] = {
        "none": (None, None),
        "symwatch default (every=10, budget 1 %)": (symwatch_condition(), "default"),
        "symwatch every=1 (budget 1 %)": (symwatch_condition(every=1), "1"),
        "symwatch every=1, budget=1.0": (symwatch_condition(every=1, budget=1.0), "1"),
        "symwatch every=10, budget=1.0": (symwatch_condition(every=10, budget=1.0), "10"),
        # the same cadences with the full tier every 100 steps, the cheap one at every sample
        f"symwatch every=1, budget=1.0, full_every={FULL_EVERY_STEPS}": (
            symwatch_condition(every=1, budget=1.0, full_every=FULL_EVERY_STEPS), "1"),
        f"symwatch every=10, budget=1.0, full_every={FULL_EVERY_STEPS // 10}": (
            symwatch_condition(every=10, budget=1.0, full_every=FULL_EVERY_STEPS // 10), "10"),
    }
    for n in (1, 10):
        out[f"wandb.watch log_freq={n}"] = (wandb_condition(n) if have_wandb else None, str(n))
    for n in (1, 10):
        out[f"TensorBoard add_histogram every {n}"] = (
            tensorboard_condition(n) if have_tb else None, str(n))
    return out


def missing(name: str) -> str | None:
    if name.startswith("wandb") and not installed("wandb"):
        return "wandb"
    if name.startswith("TensorBoard") and not installed("tensorboard"):
        return "tensorboard"
    return None


def run_block(trainer: Trainer, attach: Attach | None, steps: int, tmp: Path,
              warmup: int = 1) -> float:
    """Seconds for `steps` monitored steps, after `warmup` untimed ones and a pause in which
    the monitor's background threads finish what the warm-up gave them (symwatch's first
    sample, wandb's first histograms): the block measures the monitor running, not starting.
    A warm-up as long as the block also lets symwatch earn the budget credit it would have
    on a long run, so its default rows show it sampling at its budget's rate."""
    each, detach = attach(trainer, tmp) if attach is not None else (None, None)
    try:
        k = 0
        for k in range(1, warmup + 1):
            loss = trainer.step()
            if each is not None:
                each(k, loss)
        time.sleep(SETTLE_S)
        start = time.perf_counter()
        for k in range(k + 1, k + steps + 1):
            loss = trainer.step()
            if each is not None:
                each(k, loss)
        return time.perf_counter() - start
    finally:
        if detach is not None:
            detach()


def weightwatcher_cost(trainer: Trainer) -> float | None:
    if not installed("weightwatcher"):
        return None
    import logging

    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        watcher = weightwatcher.WeightWatcher(model=trainer.model)
        start = time.perf_counter()
        watcher.analyze()
        return time.perf_counter() - start


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    setup = Setup()
    trainer = Trainer(setup)
    conds = conditions()
    runnable = [name for name, (attach, _) in conds.items() if name == "none" or attach]
    ratios: dict[str, list[float]] = {name: [] for name in runnable if name != "none"}
    step_ms: dict[str, list[float]] = {name: [] for name in runnable}
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory(prefix="symwatch-peers-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ.setdefault("WANDB_DIR", str(tmp))
        with Progress(console=console, transient=True) as progress:
            warm = progress.add_task("warm-up (every condition once)", total=len(runnable))
            for name in runnable:  # imports, allocator, kernels, wandb's service process
                run_block(trainer, conds[name][0], max(5, args.steps // 4), tmp)
                progress.advance(warm)
            task = progress.add_task("interleaved rounds", total=args.rounds * len(runnable))
            for r in range(args.rounds):
                order = runnable[r % len(runnable):] + runnable[:r % len(runnable)]
                times = {}
                for name in order:
                    progress.update(task, description=f"round {r + 1}/{args.rounds}: {name}")
                    times[name] = run_block(trainer, conds[name][0], args.steps, tmp,
                                            warmup=args.steps)
                    progress.advance(task)
                for name, elapsed in times.items():
                    step_ms[name].append(1000 * elapsed / args.steps)
                    if name != "none":
                        ratios[name].append(elapsed / times["none"])
    ww = weightwatcher_cost(trainer) if not args.no_ww else None
    return {"setup": setup.describe(trainer.model), "ratios": ratios, "step_ms": step_ms,
            "conditions": conds, "ww_s": ww, "machine": describe()}


# -- report ------------------------------------------------------------------------------------

def pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f} %"


def targets(result: dict[str, Any]) -> list[str]:
    ratios, conds = result["ratios"], result["conditions"]
    med = {name: statistics.median(v) for name, v in ratios.items()}
    lines = []
    default = "symwatch default (every=10, budget 1 %)"
    if default in med:
        ok = med[default] <= 1.01
        lines.append(f"- Default overhead ≤ 1 % of training time: {pct(med[default])} "
                     f"(median; spread {pct(min(ratios[default]))} to {pct(max(ratios[default]))}) "
                     f"— **{'met' if ok else 'NOT met'}**.")
    for cadence in ("1", "10"):
        every = int(cadence)
        monitors = (
            (f"symwatch every={every}, budget=1.0, full_every={FULL_EVERY_STEPS // every}",
             f"symwatch (every sample, full tier every {FULL_EVERY_STEPS} steps)"),
            (f"symwatch every={every}, budget=1.0",
             "symwatch with the full tier at every sample"))
        peers = [n for n, (_, group) in conds.items()
                 if group == cadence and not n.startswith("symwatch")]
        for peer in peers:
            if peer not in med:
                lines.append(f"- Less than {peer}: not measured ({missing(peer)} not installed).")
                continue
            for sw, label in monitors:
                if sw not in med:
                    continue
                ok = med[sw] < med[peer]
                lines.append(f"- At every {cadence} step{'s' if cadence != '1' else ''}, less "
                             f"than {peer}: {label} {pct(med[sw])} vs. {pct(med[peer])} "
                             f"— **{'met' if ok else 'NOT met'}**.")
    return lines


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    ratios, step_ms = result["ratios"], result["step_ms"]
    lines = [
        "## Overhead next to wandb, TensorBoard and weightwatcher",
        "",
        "```bash",
        ".venv/bin/pip install -e '.[bench]'   # wandb, tensorboard, weightwatcher, matplotlib",
        f".venv/bin/python benchmarks/peers.py --rounds {args.rounds} --steps {args.steps} "
        "--write docs/benchmarks.md",
        "```",
        "",
        f"{result['setup']}; {args.rounds} interleaved rounds of {args.steps} timed steps per "
        f"condition (order rotated each round), each after {args.steps} untimed steps with the "
        "monitor attached and a 0.3 s pause (its start-up is not charged). At a 1 % budget "
        "symwatch samples this model about every 9 s, so most default blocks hold no sample: "
        "those rows show its per-step cost, the section above its cost with sampling. "
        f"Machine: {result['machine']}.",
        "wandb runs offline (no network, no login) and is given `wandb.log({\"loss\"})` at its "
        "log_freq, which is when watch's histograms are committed; TensorBoard writes every "
        "parameter's histogram and the loss at its cadence. symwatch publishes on its default "
        "Unix socket with no viewer attached (the encoding and sending are still done).",
        "",
        "| condition | median step (ms) | time vs. none (median) | overhead | spread (min–max ratio) |",
        "|---|---|---|---|---|",
        f"| none | {statistics.median(step_ms['none']):.2f} | 1.000 | – | – |",
    ]
    for name, (attach, _) in result["conditions"].items():
        if name == "none":
            continue
        if name not in ratios:
            lines.append(f"| {name} | not installed (`{missing(name)}`) | – | – | – |")
            continue
        v = ratios[name]
        m = statistics.median(v)
        lines.append(f"| {name} | {statistics.median(step_ms[name]):.2f} | {m:.3f} | {pct(m)} | "
                     f"{min(v):.3f}–{max(v):.3f} |")
    lines.append("")
    if result["ww_s"] is not None:
        steps = result["ww_s"] / (statistics.median(step_ms["none"]) / 1000)
        lines.append(f"weightwatcher `analyze()` of the same model once: {result['ww_s']:.2f} s, "
                     f"the time of {steps:,.0f} training steps (an offline analysis, not a "
                     "per-step monitor; called every 100 steps it would cost "
                     f"{steps:,.0f} % on top of training).")
    elif not args.no_ww:
        lines.append("weightwatcher: not installed (`pip install -e .[bench]`).")
    lines += ["", "Targets:", *targets(result)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per block")
    parser.add_argument("--no-ww", action="store_true", help="skip weightwatcher")
    parser.add_argument("--write", type=Path, default=None,
                        help="replace the peers section of this Markdown file")
    args = parser.parse_args(argv)
    console = Console()
    result = measure(args, console)
    table = Table(title="training overhead next to the peers")
    for column in ("condition", "median step ms", "ratio vs none", "spread"):
        table.add_column(column)
    table.add_row("none", f"{statistics.median(result['step_ms']['none']):.2f}", "1.000", "")
    for name in result["conditions"]:
        if name == "none":
            continue
        if name not in result["ratios"]:
            table.add_row(name, "not installed", "", "")
            continue
        v = result["ratios"][name]
        table.add_row(name, f"{statistics.median(result['step_ms'][name]):.2f}",
                      f"{statistics.median(v):.3f}", f"{min(v):.3f}–{max(v):.3f}")
    console.print(table)
    text = render(result, args)
    for line in targets(result):
        console.print(line)
    if result["ww_s"] is not None:
        console.print(f"weightwatcher analyze(): {result['ww_s']:.2f} s")
    if args.write:
        write_section(args.write, "peers", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
