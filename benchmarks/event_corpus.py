"""Score the agent's transition events on a labelled corpus of real training runs.

    .venv/bin/python benchmarks/event_corpus.py [--only NAME ...] [--steps N] [--seed 0] \
        [--jobs 1] [--write docs/benchmarks.md] [--json out.json]

Each run of benchmarks/event_corpus/ (one CPU core, in a subprocess of its own so that one
run's threads and allocations do not bleed into the next) trains a small model with
`watch(...)` inside, the agent recording its own stream; the run's ground truth is computed
from the training itself (teacher modes, held-out losses, unit counts, the optimizer's
schedule), never from symwatch's indicators. The transition EVENTs are matched to the truths
(event_corpus/scoring.py) and scored per run and overall: precision, recall, median delay.
--write replaces the section between `<!-- event-corpus:begin -->` and
`<!-- event-corpus:end -->` of the file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from doc_sections import write_section
from event_corpus import RUNS, common, tape
from event_corpus.common import RunResult
from event_corpus.scoring import Score, score_run
from machine import describe
from symwatch_agent.options import DEFAULT_EVERY

SECTION = "event-corpus"


def run_one(name: str, steps: int | None, seed: int) -> RunResult:
    """One run in this process (what the subprocess does)."""
    if os.environ.get(tape.ENV_TAPE):
        tape.install()
    module = importlib.import_module(f"event_corpus.{name}")
    result = module.run(steps=steps, seed=seed)
    tape.save(name)
    result.samples = sum(common.SAMPLES)
    result.loss_every = max(common.LOSS_EVERY, default=None)
    if common.at_defaults():
        result.every = DEFAULT_EVERY
    return result


def run_in_subprocess(name: str, steps: int | None, seed: int, timeout: float = 600) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="symwatch-corpus-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--seed", str(seed),
               "--json", str(out)]
        if steps:
            cmd += ["--steps", str(steps)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return RunResult.from_json(json.loads(out.read_text()))


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:+.0f}"


def rows(results: list[RunResult]) -> tuple[list[tuple[RunResult, Score]], Score]:
    scored = [(r, score_run(r)) for r in results]
    total = Score()
    for _, s in scored:
        total.add(s)
    return scored, total


HEADER = ("run", "steps (every)", "samples", "truths", "events", "matched", "exog.", "precision", "recall",
          "median delay", "median onset err.", "false / 1k steps", "seconds")


def _cells(name: str, r: RunResult | None, s: Score) -> tuple[str, ...]:
    samples = "" if r is None or r.samples is None else str(r.samples)
    every = "" if r is None else (f"{r.steps} ({r.every})" if r.loss_every is None else
                                  f"{r.steps} ({r.every}; loss {r.loss_every})")
    return (name, every, samples, str(s.truths), str(s.events),
            str(s.matched_events), str(s.exogenous), _pct(s.precision), _pct(s.recall),
            _num(s.median_delay), _num(s.median_onset_error),
            "–" if s.false_per_1000 is None else f"{s.false_per_1000:.1f}",
            f"{r.seconds:.0f}" if r else "")


def _table(scored: list[tuple[RunResult, Score]], total: Score) -> list[str]:
    """The Markdown table: a row per run, then all runs together."""
    return ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
            *("| " + " | ".join(_cells(r.name, r, s)) + " |" for r, s in scored),
            "| " + " | ".join(_cells("**all**", None, total)) + " |"]


def markdown(results: list[RunResult], command: str) -> str:
    scored, total = rows(results)
    lines = [
        "## Events on real training runs",
        "",
        ("The agent's transition events on a labelled corpus of short real training runs "
         "(benchmarks/event_corpus/, one CPU core each, every run with `watch(...)` inside and "
         "recording its own stream), against ground truth computed from the training itself, "
         "never from symwatch's indicators:"),
        "",
        "```bash",
        command,
        "```",
        "",
        ("Matching (benchmarks/event_corpus/scoring.py): an event matches a truth when its onset "
         "lies in the truth's extent widened by the run's tolerance (`tol` steps each side) and, "
         "when the truth names layers, one of its jumps is on one of them (or on the loss, where "
         "the transition shows in the loss). Each matching event is assigned to the truth whose "
         "step is nearest its onset. Precision = matched events / events; recall = truths with "
         "an assigned event / truths; delay = the first assigned event's detection step minus "
         "the truth's step (negative: flagged before the midpoint of the transition), onset "
         "error the same with the event's onset. Several events on one truth all count as "
         "matched. `exog.`: events labelled exogenous (an optimizer change). The agent samples "
         "every `every` steps with no time budget (`budget=1.0`), so the samples do not depend "
         "on the machine; the detector warms up over its first ~30–50 samples. Truths are "
         "what the training shows, not what an indicator could foresee: an event long before "
         "a transition's 10 % point (a mode leaving a tiny init's random bulk while its "
         "strength is still ~10⁻⁵ of its final value) counts as unmatched. Seed 0 only."),
        "",
        ("To iterate on the detector without re-training: `--tape DIR --json DIR/results.json` "
         "saves what the agent's detector was fed in each run, and "
         "`.venv/bin/python benchmarks/event_corpus_replay.py DIR [-v]` scores the detector as "
         "it is now on those samples in seconds (the same events as the real path for the "
         "same code; the figures here always come from the real path)."),
        "",
        *_table(scored, total),
    ]
    lines += ["", "Ground truth per run (tol in steps):", ""]
    for r, s in scored:
        module = importlib.import_module(f"event_corpus.{r.name}")
        doc = " ".join((module.__doc__ or "").split())
        lines.append(f"- **{r.name}** (tol {r.tol}). {doc} *Truth:* {module.TRUTH}.")
        if r.truths:
            lines.append("  Truths: " + "; ".join(
                f"{t.label} at {t.step} [{t.start}–{t.end}]" for t in r.truths) + ".")
        facts = {k: v for k, v in r.facts.items() if not isinstance(v, list) or len(v) <= 6}
        if facts:  # what the truth was computed from, where it fits on a line
            lines.append("  Measured: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".")
        if r.notices:
            lines.append(f"  Other (non-transition) events: {r.notices}.")
        if s.missed:
            lines.append("  Missed: " + "; ".join(s.missed) + ".")
        if s.false_alarms:
            shown = s.false_alarms[:4]
            more = f" and {len(s.false_alarms) - len(shown)} more" if len(shown) < len(
                s.false_alarms) else ""
            lines.append("  Unmatched events: " + "; ".join(
                f"`{f[:110]}`" for f in shown) + more + ".")
    seconds = sum(r.seconds for r in results)
    lines += ["", (f"Machine: {describe(torch_threads=False)}; one torch thread per run, "
                   f"{seconds:.0f} s of training in all (seconds: each run's loop with the agent "
                   f"inside, on a shared machine); {time.strftime('%Y-%m-%d', time.gmtime())}.")]
    return "\n".join(lines)


def markdown_defaults(results: list[RunResult], command: str) -> str:
    """The section of a --defaults run: the same table, the agent as a user leaves it."""
    scored, total = rows(results)
    lines = [
        "### The same runs at the agent's defaults",
        "",
        "```bash",
        command,
        "```",
        "",
        ("Each run's agent as `watch(model, opt)` leaves it: every "
         f"{DEFAULT_EVERY} steps, stretched by the 1 % time budget, rather than every `every` "
         "steps with no budget as above. The samples (the `samples` column: steps with "
         "indicators) and so the layers' events depend on this machine's speed: this is what "
         "a user who changes nothing gets on it, scored against the same truths in the same "
         "way. The loss and the logged scalars are followed from every step's values at "
         f"every {DEFAULT_EVERY}th step whatever the budget (docs/alerts.md, \"The loss under a "
         "time budget\"), or every `loss` steps (in the `steps (every)` column) where that "
         "would cost more than its share of the budget: these runs take 300–3,000 steps a "
         "second. The detector warms up over its first ~30–50 samples of each series (for the "
         "loss, its first ~30 × `loss` steps)."),
        "",
        *_table(scored, total),
    ]
    missed = [f"{r.name}: " + "; ".join(s.missed) for r, s in scored if s.missed]
    if missed:
        lines += ["", "Missed: " + " · ".join(missed) + "."]
    seconds = sum(r.seconds for r in results)
    lines += ["", (f"Machine: {describe(torch_threads=False)}; one torch thread per run, "
                   f"{seconds:.0f} s of training in all; "
                   f"{time.strftime('%Y-%m-%d', time.gmtime())}.")]
    return "\n".join(lines)


def console_table(results: list[RunResult]) -> Table:
    scored, total = rows(results)
    table = Table(title="Events on real training runs")
    for h in HEADER:
        table.add_column(h)
    for r, s in scored:
        table.add_row(*_cells(r.name, r, s))
    table.add_row(*_cells("all", None, total))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=RUNS, help="runs to score (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: each "
                        "run's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=None, help="Markdown file to update")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1: each run "
                        "has a core to itself, as its seconds column assumes)")
    parser.add_argument("--tape", type=Path, default=None, help="save what the detector was "
                        "fed here, per run (benchmarks/event_corpus_replay.py scores it again)")
    parser.add_argument("--defaults", action="store_true", help="each run's agent at its "
                        "defaults (every 10 steps, the 1 %% time budget) instead of every "
                        "`every` steps with no budget: what a user who changes nothing gets on "
                        "this machine (its own section, event-corpus-defaults)")
    parser.add_argument("--one", choices=RUNS, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args(argv)
    if args.tape:
        os.environ[tape.ENV_TAPE] = str(args.tape.resolve())
    if args.defaults:  # inherited by the runs' subprocesses
        os.environ[common.ENV_DEFAULTS] = "1"
    if args.one:
        result = run_one(args.one, args.steps, args.seed)
        if args.json:
            args.json.write_text(json.dumps(result.to_json()))
        return 0
    names = args.only or list(RUNS)
    console = Console(width=None if sys.stdout.isatty() else 200)
    with Progress(console=console) as progress, ThreadPoolExecutor(args.jobs) as pool:
        task = progress.add_task("corpus", total=len(names))
        futures = {pool.submit(run_in_subprocess, name, args.steps, args.seed): name
                   for name in names}
        done: dict[str, RunResult] = {}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            progress.update(task, description=f"{futures[future]} done")
            progress.advance(task)
    results = [done[name] for name in names]
    console.print(console_table(results))
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=1))
    if args.write:
        command = ".venv/bin/python benchmarks/event_corpus.py --write docs/benchmarks.md"
        if args.defaults:
            command += " --defaults"
        if args.only:
            command += " --only " + " ".join(args.only)
        if args.defaults:
            write_section(args.write, SECTION + "-defaults", markdown_defaults(results, command))
        else:
            write_section(args.write, SECTION, markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
