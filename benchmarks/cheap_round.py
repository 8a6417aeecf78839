"""Where a whole-model cheap sample's time goes on the GPT-style benchmark, and the publisher's
steady cost: the figures the per-layer refresh target is judged against (docs/benchmarks.md,
"Eighth pass").

    .venv/bin/python benchmarks/cheap_round.py [--rounds 30] [--gap 50] [--compare-least 4]
        [--write docs/benchmarks.md]

The GPT of benchmarks/overhead.py trains with AdamW (lr 1e-4, batch 4 × 32 tokens, torch on one
thread) under `watch()` with sampling switched off (`every` beyond the run), so that only this
script measures: after 200 steps, `rounds` whole-model cheap samples (`engine.compute(CHEAP)`),
each after `gap` training steps (the weights out of cache and moved on, as a real visit finds
them). Each part's `thread_time` is summed by wrapping the engine's methods; medians are not
taken per part (the parts of one round are not independent), the means are over the rounds.
σ₁ is split by shape group (Lanczos steps a visit, ms a visit). `--compare-least N` times as
many rounds again, interleaved one for one, with Lanczos' least steps N (the parts' figures
are the default's only).

The publisher's steady cost: a second run of 400 steps with no sample at all, its thread's CPU
per second of training (STATS with every step's loss, the heartbeat, META, the registry off,
the wake-ups): what the budget pays whatever the samples.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from doc_sections import write_section
from machine import describe as describe_machine
from overhead import make_gpt, run_block, watch
from symwatch_agent.measure import indicators, spectra
from symwatch_agent.measure.schedule import CHEAP

# The engine's methods whose time is reported (each a part of the round, some inside others).
PARTS = {
    "snapshot": "snapshot (stacked copies, each unit's outgoing norms, biases)",
    "_out2": "  of which the outgoing weights' norms",
    "measure": "measure (everything after the snapshot)",
    "_power_sigma1": "  of which σ₁ (Lanczos; exact from the Gram where narrow)",
    "_update_ratio": "  of which the update ratio",
    "_deltas": "  of which the order parameters' bookkeeping",
}


def _timed(spent: collections.Counter, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return method(*args, **kwargs)
        finally:
            spent[name] += time.thread_time() - start
    return wrapper


def _gpt() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    model = make_gpt(256, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (4, 32), generator=gen)
    target = torch.randint(0, 256, (4, 32), generator=gen)
    return model, opt, batch, target


def cheap_rounds(rounds: int, gap: int, progress: Progress,
                 compare_least: int | None = None) -> dict[str, Any]:
    """`rounds` timed cheap samples `gap` steps apart. With `compare_least`, as many again
    interleaved with them (one each, in turn) with Lanczos' least steps set to that: the
    medians of both, side by side in one run."""
    spent: collections.Counter = collections.Counter()
    lanczos: dict[tuple[int, ...], list[float]] = collections.defaultdict(lambda: [0, 0, 0.0])
    originals = {name: getattr(indicators.IndicatorEngine, name) for name in PARTS}
    tested, step, sigma1 = spectra._lanczos_tested, spectra._lanczos_step, spectra.lanczos_sigma1
    shape: list[tuple[int, ...]] = [()]
    least: list[int | None] = [None]  # None: the default

    def counted_step(*args: Any) -> Any:
        lanczos[shape[0]][1] += 1
        return step(*args)

    def timed_lanczos(w: torch.Tensor, *args: Any) -> Any:
        shape[0] = tuple(w.shape)
        start = time.thread_time()
        try:
            return tested(w, *args)
        finally:
            lanczos[shape[0]][0] += 1
            lanczos[shape[0]][2] += time.thread_time() - start

    def chosen_least(*args: Any, **kwargs: Any) -> Any:
        if least[0] is not None:
            kwargs["least"] = least[0]
        return sigma1(*args, **kwargs)

    try:
        for name, method in originals.items():
            setattr(indicators.IndicatorEngine, name, _timed(spent, name, method))
        spectra._lanczos_tested, spectra._lanczos_step = timed_lanczos, counted_step
        spectra.lanczos_sigma1 = chosen_least
        model, opt, batch, target = _gpt()
        agent = watch(model, opt, register=False, every=10**9)
        try:
            run_block(model, opt, 200, batch, target)
            for _ in range(3):  # every layer's first σ₁ (a cold Lanczos) out of the figures
                run_block(model, opt, gap, batch, target)
                agent.engine.compute(CHEAP)
            whole: list[float] = []
            other: list[float] = []
            task = progress.add_task(f"cheap rounds, {gap} steps apart",
                                     total=rounds * (2 if compare_least else 1))
            spent.clear()
            lanczos.clear()
            for k in range(rounds * (2 if compare_least else 1)):
                compared = compare_least is not None and k % 2 == 1
                least[0] = compare_least if compared else None
                run_block(model, opt, gap, batch, target)
                if compared:  # not in the parts' figures, which are the default's
                    saved = (collections.Counter(spent),
                             {key: list(v) for key, v in lanczos.items()})
                start = time.thread_time()
                agent.engine.compute(CHEAP)
                (other if compared else whole).append(time.thread_time() - start)
                if compared:
                    spent.clear()
                    spent.update(saved[0])
                    lanczos.clear()
                    lanczos.update(saved[1])
                progress.advance(task)
        finally:
            agent.close()
    finally:
        for name, method in originals.items():
            setattr(indicators.IndicatorEngine, name, method)
        spectra._lanczos_tested, spectra._lanczos_step = tested, step
        spectra.lanczos_sigma1 = sigma1
    whole.sort()
    other.sort()
    return {"round_ms": 1000 * whole[len(whole) // 2],
            "compared_ms": 1000 * other[len(other) // 2] if other else None,
            "parts_ms": {k: 1000 * spent[k] / rounds for k in PARTS},
            "lanczos": {k: (v[1] / v[0], 1000 * v[2] / v[0]) for k, v in lanczos.items() if v[0]}}


def publisher_steady(progress: Progress, steps: int = 400) -> float:
    """The publisher thread's CPU, ms per second of training, with no sample taken."""
    model, opt, batch, target = _gpt()
    run_block(model, opt, 5, batch, target)
    agent = watch(model, opt, register=False, every=10**9)
    try:
        task = progress.add_task("publisher, no samples", total=steps)
        run_block(model, opt, 20, batch, target)  # the thread's start and first META: one-off
        cpu, training = agent._publisher.cpu_s, agent._training_s
        for _ in range(steps // 20):
            run_block(model, opt, 20, batch, target)
            progress.advance(task, 20)
        return 1000 * (agent._publisher.cpu_s - cpu) / (agent._training_s - training)
    finally:
        agent.close()


def render(result: dict[str, Any], steady: float, args: argparse.Namespace) -> str:
    lines = [
        "```bash",
        f".venv/bin/python benchmarks/cheap_round.py --rounds {args.rounds} --gap {args.gap} "
        + (f"--compare-least {args.compare_least} " if args.compare_least else "")
        + "--write docs/benchmarks.md",
        "```", "",
        f"GPT-style benchmark model (4 blocks of width 256), AdamW 1e-4, batch 4 × 32 tokens, "
        f"torch on 1 thread; {args.rounds} whole-model cheap samples, each {args.gap} training "
        f"steps after the last. {describe_machine()}", "",
        f"- One whole-model cheap sample on the training thread: **{result['round_ms']:.1f} ms** "
        "(median)" + ("." if result["compared_ms"] is None else
                      f"; with Lanczos' least steps {args.compare_least}, interleaved with "
                      f"those in the same run: **{result['compared_ms']:.1f} ms**."),
        "- Its parts (mean a round, ms; `thread_time` of the engine's methods):",
    ]
    lines += [f"  - {label.strip()}: {result['parts_ms'][name]:.2f}"
              + ("" if not label.startswith("  ") else " (inside the line above)")
              for name, label in PARTS.items()]
    lines.append("- σ₁ by shape group (Lanczos steps a visit, ms a visit): " + "; ".join(
        f"{shape[0]} × {shape[1]} × {shape[2]}: {steps:.1f} steps, {ms:.2f} ms"
        for shape, (steps, ms) in sorted(result["lanczos"].items())))
    lines.append(f"- The publisher's steady cost with no sample: **{steady:.2f} ms** of its CPU "
                 "a second of training.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: .venv/bin/python benchmarks/cheap_round.py --rounds 10 --gap 20")
    parser.add_argument("--rounds", type=int, default=30, help="cheap samples timed (default 30)")
    parser.add_argument("--gap", type=int, default=50,
                        help="training steps between them (default 50: the target's refresh)")
    parser.add_argument("--compare-least", type=int, default=None, metavar="N",
                        help="also time as many rounds with Lanczos' least steps N, interleaved")
    parser.add_argument("--write", type=Path, help="replace the `cheap-round` section of this file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.gap < 1:
        parser.error("--rounds and --gap must be at least 1")
    if args.compare_least is not None and args.compare_least < 1:
        parser.error("--compare-least must be at least 1")
    torch.set_num_threads(1)
    with Progress(transient=True) as progress:
        result = cheap_rounds(args.rounds, args.gap, progress, args.compare_least)
        steady = publisher_steady(progress)
    text = render(result, steady, args)
    print(text)
    if args.write:
        write_section(args.write, "cheap-round", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
