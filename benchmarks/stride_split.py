"""What a run-level cadence stretched in the middle of a run does to its events.

    .venv/bin/python benchmarks/stride_split.py [--replays 200] [--write docs/benchmarks.md]

Under a time budget the loss and the logged scalars are fed to their own detector at every
`every`-th step, a multiple of it where that would cost more than its share of the budget
(symwatch.core.run_level.RunLevelFeed): the cadence is stretched when the measured step time
or update cost asks for it, never shortened. The detector's windows count updates, not steps,
so a series fed twice as sparse from some step on looks steeper from there.

One real run is recorded with no stretch (tests/linear_teacher.py's rank-2 staircase, budget 1,
every 2: the loss falls at steps ~74 and ~178, weight decay from step 500 makes it rise), then
replayed through the agent's own TransitionWatch, each replay with the layers' samples thinned
at random (as a budget thins them: 10-70 % kept) and:
- `constant`: the cadence left at every 2 (the control);
- `stretched`: from a random step between 60 and 240 (the falls' span), every 4, 6, 8 or 10;
- `from the start`: every 4, 6, 8 or 10 from the first update.
Counted: replays with an event besides the two falls and the rise ("extra"), and replays
missing one of the three ("missed").
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import torch
from rich.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))
sys.path.insert(0, str(ROOT / "tests"))

from doc_sections import write_section  # noqa: E402
from linear_teacher import linear_teacher  # noqa: E402
from symwatch_agent.publish.transitions import TransitionWatch  # noqa: E402

import symwatch  # noqa: E402
from symwatch.core import protocol  # noqa: E402
from symwatch.core.recording import RecordingReader  # noqa: E402

EVERY = 2
DECAY_FROM = 500
# where the run's three changes are (their events' steps: the falls' onsets, the rise)
EXPECTED = ((60, 100), (160, 200), (DECAY_FROM, DECAY_FROM + 20))


def record(path: str, steps: int = 700) -> list[protocol.Message]:
    model, target = linear_teacher([4.0, 1.5], 1e-3)
    d = target.shape[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    with symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=EVERY, budget=1.0,
                        record=path, register=False, stats_interval=0.05):
        for step in range(steps):
            opt.param_groups[0]["weight_decay"] = 2.0 if step >= DECAY_FROM else 0.0
            loss = 0.5 * (model(torch.eye(d)).T - target).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with RecordingReader(path) as reader:
        return list(reader)


def _settings(step: int) -> tuple[tuple[str, int, float], ...]:
    return (("lr", 0, 0.02), ("weight_decay", 0, 2.0 if step > DECAY_FROM else 0.0))


def replay(messages: list[protocol.Message], rnd: random.Random, stride: int,
           stretch_at: int | None) -> list[int]:
    """The transitions' steps of one replay: the layers' samples kept with a random
    probability, the run-level cadence `stride` from `stretch_at` on (None: never)."""
    keep = rnd.choice([0.1, 0.2, 0.3, 0.5, 0.7])
    watch = TransitionWatch(every=EVERY)
    losses: dict[int, float] = {}
    found: list[tuple[int, dict]] = []
    first = True
    for m in messages:
        if m.kind == protocol.STATS and "per_step" in m.payload:
            per_step = m.payload["per_step"]
            entry = per_step.get("loss") or {}
            steps = entry.get("steps") or []
            losses.update(zip(steps, entry.get("values") or []))
            if not steps:
                continue
            if stretch_at is not None and steps[0] >= stretch_at:
                watch._feed.stride = max(watch._feed.stride, stride)  # as _size() stretches it
            changes = [(steps[0], _settings(steps[0]))] if first else []
            if steps[0] <= DECAY_FROM + 1 <= steps[-1]:
                changes.append((DECAY_FROM + 1, _settings(DECAY_FROM + 1)))
            first = False
            floats = {name: (e["steps"], [float("nan") if v is None else v for v in e["values"]])
                      for name, e in per_step.items()}
            found += watch.per_step(floats, _settings(steps[-1]), None, changes)
        elif m.kind == protocol.METRICS and (m.step <= 1 or rnd.random() < keep):
            found += watch.update(m.step, m.payload["values"], losses.get(m.step),
                                  _settings(m.step))
    found += watch.flush()
    return [step for step, payload in found if payload.get("severity") == "transition"]


def score(steps: list[int]) -> tuple[bool, bool]:
    """(an extra event, a change missed)."""
    hit = [any(lo <= s <= hi for s in steps) for lo, hi in EXPECTED]
    extra = [s for s in steps if not any(lo <= s <= hi for lo, hi in EXPECTED)]
    return bool(extra), not all(hit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replays", type=int, default=200, help="replays per setting")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        messages = record(str(Path(tmp) / "staircase.db"))
    settings = {"constant": lambda rnd: (EVERY, None),
                "stretched": lambda rnd: (rnd.choice([4, 6, 8, 10]), rnd.randrange(60, 240, 10)),
                "from the start": lambda rnd: (rnd.choice([4, 6, 8, 10]), 0)}
    rows = []
    with Progress() as progress:
        for name, draw in settings.items():
            task = progress.add_task(name, total=args.replays)
            extra = missed = 0
            for seed in range(args.replays):
                rnd = random.Random(seed)
                stride, at = draw(rnd)
                e, m = score(replay(messages, rnd, stride, at))
                extra, missed = extra + e, missed + m
                progress.advance(task)
            rows.append((name, extra, missed))
    lines = ["| run-level cadence | replays | with an extra event | missing a change |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {args.replays} | {extra} ({100 * extra / args.replays:.0f} %) | "
              f"{missed} ({100 * missed / args.replays:.0f} %) |" for name, extra, missed in rows]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(args.write, "stride-split",
                      "Reproduce: `.venv/bin/python benchmarks/stride_split.py --replays "
                      f"{args.replays} --write docs/benchmarks.md`\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
