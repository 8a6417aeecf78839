"""Loss-spike rules compared on the same recorded loss series, against labelled spikes.

    .venv/bin/python benchmarks/loss_spikes.py --write docs/benchmarks.md

The series are real training runs (CPU, a few seconds each): a ReLU MLP (16-64-64-4, PyTorch's
default init) learning the arg-max of a random ReLU teacher from fresh minibatches of 64, with
SGD (lr 0.05) or Adam (lr 1e-3). Spikes are injected into the training itself, at steps drawn
at random (at least 120 apart, from step 150 on), and labelled where they were injected:

- `lr×50`: the learning rate multiplied by 50 for 3 steps (a bad schedule, a too-large step);
- `corrupt`: one corrupted batch (inputs ×10, labels shuffled), a bad shard.

Calm runs (no injection) count false alarms only. Every loss value of every step is kept and
fed, step by step, to each rule:

- symwatch (`symwatch.core.jumps.SpikeDetector`, the agent's rule, defaults): log-loss ≥ median
  of the last 50 + max(6 robust σ, log 1.5); a spike once it comes back within 10 samples (or
  has fallen a third of the way back by then), a divergence if non-finite or still rising
  above the untrained level;
- Lightning `SpikeDetection` (lightning.fabric.utilities.spike, defaults window 10, warmup 1,
  rtol 2, atol None): non-finite, or worse than the previous value and |loss − mean of the last
  10 non-spike values| ≥ 2 × that mean;
- LLM Foundry `KillLossSpike` (defaults as we read them: window 100, outlier multiplier 2,
  patience 4): an outlier is a loss ≥ 2 × the mean of the last 100; it kills the run after more
  than 4 consecutive outliers. Both columns: its first outlier of an episode, and its kill;
- OLMo 2's spike score (the fraction of values at least 7 standard deviations above the rolling
  mean of the last 1,000): as an alarm, each such value (from 50 values of history on).

An alarm detects a labelled spike when it comes 0-20 steps after the injection; alarms of one
rule within 5 steps of each other count once. Other alarms are false.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections import deque
from pathlib import Path
from collections.abc import Callable
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from doc_sections import write_section  # noqa: E402

from symwatch.core.jumps import SpikeDetector  # noqa: E402

STEPS = 500
HIT_WINDOW = 20
MERGE = 5


# -- training runs --------------------------------------------------------------------------

def train(seed: int, optimizer: str, injections: list[tuple[int, str]]) -> list[float]:
    """One real training run; the loss of every step (the injected spikes included)."""
    import torch  # noqa: PLC0415 (lazy: only the benchmark's runs need torch)
    from torch import nn  # noqa: PLC0415 (lazy: as above)

    torch.set_num_threads(1)  # tiny matrices: threads only contend (a shared machine)
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    base_lr = 0.05 if optimizer == "sgd" else 1e-3
    opt = (torch.optim.SGD(model.parameters(), lr=base_lr) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=base_lr))
    hot = {s + k for s, kind in injections if kind == "lr×50" for k in range(3)}
    corrupt = {s for s, kind in injections if kind == "corrupt"}
    losses = []
    for step in range(STEPS):
        opt.param_groups[0]["lr"] = base_lr * (50.0 if step in hot else 1.0)
        x = torch.randn(64, 16)
        y = teacher(x).argmax(1)
        if step in corrupt:
            x, y = 10 * x, y[torch.randperm(len(y))]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def runs(n_spiky: int, n_calm: int, progress: Callable[[], None]) -> list[dict[str, Any]]:
    rng = random.Random(0)
    out = []
    for i in range(n_spiky + n_calm):
        optimizer = "sgd" if i % 2 == 0 else "adam"
        injections: list[tuple[int, str]] = []
        if i < n_spiky:
            step = 150 + rng.randrange(60)
            while step < STEPS - 60:
                injections.append((step, "lr×50" if rng.random() < 0.5 else "corrupt"))
                step += 120 + rng.randrange(120)
        out.append({"seed": i, "optimizer": optimizer, "injections": injections,
                    "loss": train(i, optimizer, injections)})
        progress()
    return out


# -- the rules: each maps a loss series to alarm steps ----------------------------------------

def symwatch_rule(losses: list[float]) -> list[int]:
    det = SpikeDetector("loss")
    return [s.detected for i, v in enumerate(losses) if (s := det.update(i, v)) is not None]


def lightning_rule(losses: list[float], window: int = 10, warmup: int = 1,
                   rtol: float = 2.0) -> list[int]:
    recent: deque[float] = deque(maxlen=window)
    last, alarms = 0.0, []
    for i, v in enumerate(losses):
        spike = False
        if i >= warmup:
            if not math.isfinite(v):
                spike = True
            elif v - last > 0 and recent:
                mean = statistics.fmean(recent)
                spike = abs(v - mean) >= abs(rtol * mean)
        if spike:
            alarms.append(i)  # Lightning raises here; the run would be restarted
        elif math.isfinite(v):
            recent.append(v)
            last = v
    return alarms


def foundry_rule(losses: list[float], window: int = 100, multiplier: float = 2.0,
                 patience: int = 4) -> tuple[list[int], list[int]]:
    recent: deque[float] = deque(maxlen=window)
    outliers, kills, streak = [], [], 0
    for i, v in enumerate(losses):
        if len(recent) == window:
            if v >= multiplier * statistics.fmean(recent):
                outliers.append(i)
                streak += 1
                if streak > patience:
                    kills.append(i)
                    streak = 0
            else:
                streak = 0
        recent.append(v)
    return outliers, kills


def olmo_rule(losses: list[float], window: int = 1000, sigmas: float = 7.0,
              min_history: int = 50) -> list[int]:
    recent: deque[float] = deque(maxlen=window)
    alarms = []
    for i, v in enumerate(losses):
        if len(recent) >= min_history:
            mean, sd = statistics.fmean(recent), statistics.pstdev(recent)
            if sd > 0 and v - mean >= sigmas * sd:
                alarms.append(i)
        recent.append(v)
    return alarms


def merged(alarms: list[int]) -> list[int]:
    out: list[int] = []
    for a in alarms:
        if not out or a - out[-1] > MERGE:
            out.append(a)
    return out


def score(all_runs: list[dict[str, Any]], rule: Callable[[list[float]], list[int]]
          ) -> dict[str, Any]:
    found = missed = false = 0
    delays: list[int] = []
    steps = 0
    for run in all_runs:
        alarms = merged(rule(run["loss"]))
        steps += len(run["loss"])
        used = set()
        for step, _ in run["injections"]:
            hit = next((a for a in alarms if 0 <= a - step <= HIT_WINDOW and a not in used), None)
            if hit is None:
                missed += 1
            else:
                found += 1
                used.add(hit)
                delays.append(hit - step)
        false += sum(1 for a in alarms if a not in used)
    labelled = found + missed
    return {"found": found, "labelled": labelled, "false": false, "steps": steps,
            "precision": found / (found + false) if found + false else float("nan"),
            "recall": found / labelled if labelled else float("nan"),
            "delay": statistics.median(delays) if delays else float("nan")}


RULES: dict[str, Callable[[list[float]], list[int]]] = {
    "symwatch `SpikeDetector`": symwatch_rule,
    "Lightning `SpikeDetection`": lightning_rule,
    "LLM Foundry `KillLossSpike` (outlier)": lambda s: foundry_rule(s)[0],
    "LLM Foundry `KillLossSpike` (kill)": lambda s: foundry_rule(s)[1],
    "OLMo 2 spike score (≥ 7σ)": olmo_rule,
}


def render(all_runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    spiky = [r for r in all_runs if r["injections"]]
    calm = [r for r in all_runs if not r["injections"]]
    kinds = sorted({k for r in spiky for _, k in r["injections"]})
    lines = ["```bash", ".venv/bin/python benchmarks/loss_spikes.py --write docs/benchmarks.md",
             "```", "",
             f"{len(spiky)} training runs with injected spikes ("
             + ", ".join(f"{sum(k == kind for r in spiky for _, k in r['injections'])} {kind}"
                         for kind in kinds)
             + f") and {len(calm)} calm runs, {STEPS} steps each, half SGD and half Adam "
             "(`benchmarks/loss_spikes.py` has the set-up and each rule as implemented here). "
             f"An alarm 0-{HIT_WINDOW} steps after an injection detects it; alarms within "
             f"{MERGE} steps count once; false alarms are per 1,000 steps over all runs.", "",
             ("| rule | spikes found | precision | recall | false alarms / 1000 steps | "
              "false alarms in calm runs | median delay (steps) |"),
             "|---|---|---|---|---|---|---|"]
    for name, rule in RULES.items():
        s = score(all_runs, rule)
        c = score(calm, rule)
        lines.append(f"| {name} | {s['found']}/{s['labelled']} | {s['precision']:.2f} | "
                     f"{s['recall']:.2f} | {1000 * s['false'] / s['steps']:.2f} | "
                     f"{c['false']} | {s['delay']:g} |")
    lines += ["", (
              "symwatch reports a spike when it has come back (or at 10 samples if it has fallen a "
              "third of the way back), so its delay is the spike's length; the others fire on the "
              "first high value. The labelled spikes every rule misses are Adam runs' lr×50 "
              "injections (lr 0.05 for 3 steps), after which the minibatch loss rises 2-3× at "
              "most over a loss that itself varies by 2× (0.36 → 0.69 in one run): below symwatch's 6 robust σ of that noisy loss, "
              "below Lightning's 3× the mean, mostly below LLM Foundry's 2×. LLM Foundry's kill "
              "needs more than 4 consecutive outliers, which a 1-3 step spike does not give. The "
              "agent publishes symwatch's rule as `a loss spike` / `divergence` events on every "
              "loss series (docs/alerts.md)."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spiky", type=int, default=6, help="runs with injected spikes")
    parser.add_argument("--calm", type=int, default=2, help="runs without")
    parser.add_argument("--write", type=Path, default=None, help="Markdown file to update")
    args = parser.parse_args(argv)
    from rich.progress import Progress  # noqa: PLC0415 (lazy: only the command line draws it)

    with Progress(transient=True) as bar:
        task = bar.add_task("training runs", total=args.spiky + args.calm)
        all_runs = runs(args.spiky, args.calm, lambda: bar.advance(task))
    text = render(all_runs, args)
    print(text)
    if args.write:
        write_section(args.write, "loss-spikes", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
