"""The stepwise rank growth of SCIENCE.md, run for real through the agent: is every step of the
staircase reported as a transition, and is no rank transition invented?

    .venv/bin/python benchmarks/staircase.py [--steps 1000] [--seeds 0 1 2] [--write docs/benchmarks.md]

Runs the demo's two-layer linear network (small init, gradient descent; weight decay switched
on and off again, so ranks also fall and climb back) with the agent publishing on loopback,
collects the METRICS and EVENT messages with a real subscriber, and compares the steps where
`linear.0`'s published numerical_rank changes (the truth) with the onsets of the transitions
that name it. Also shows whether each transition was labelled exogenous (weight decay
switched by the optimizer).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import zmq
from rich.console import Console
from rich.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doc_sections import write_section  # noqa: E402
from symwatch.core import protocol  # noqa: E402
from symwatch_agent.entry import demo  # noqa: E402
from symwatch_agent.publish.publisher import Publisher  # noqa: E402

LAYER, METRIC = "linear.0", "numerical_rank"
MATCH = 8  # a transition matches a rank change when its onset is within this many steps


def run_once(seed: int, steps: int) -> tuple[list[tuple[int, int, int]], list[dict]]:
    probe = Publisher("tcp://127.0.0.1:0", run="probe", report=lambda *_: None)
    endpoint = probe.start()
    probe.close()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    thread = threading.Thread(target=demo.run, kwargs=dict(
        steps=steps, delay=0.002, every=1, budget=1.0, endpoint=endpoint, name="staircase",
        seed=seed), daemon=True)
    time.sleep(0.2)  # let the subscription reach the socket before the first step
    thread.start()
    messages = []
    while thread.is_alive() or sub.poll(500):
        if sub.poll(100):
            messages.append(protocol.decode(sub.recv_multipart()))
    sub.close(0)
    ctx.term()
    ranks = [(m.step, m.payload["values"][LAYER][METRIC]) for m in messages
             if m.kind == protocol.METRICS and METRIC in m.payload["values"].get(LAYER, {})]
    changes = [(step, before, after) for (_, before), (step, after) in zip(ranks, ranks[1:])
               if after != before]
    found = []
    for m in messages:
        if m.kind == protocol.EVENT and m.payload.get("severity") == "transition":
            for jump in m.payload.get("jumps", []):
                if (jump.get("layer"), jump.get("metric")) == (LAYER, METRIC):
                    found.append({"onset": jump["onset"], "detected": jump["step"],
                                  "before": jump["before"], "after": jump["after"],
                                  "exogenous": m.payload.get("exogenous")})
    return changes, found


def score(changes: list[tuple[int, int, int]], found: list[dict]) -> dict:
    matched, unmatched = [], list(found)
    missed = []
    for step, before, after in changes:
        hit = next((f for f in unmatched if abs(f["onset"] - step) <= MATCH), None)
        if hit is None:
            missed.append((step, before, after))
        else:
            unmatched.remove(hit)
            matched.append((step, before, after, hit))
    return {"matched": matched, "missed": missed, "invented": unmatched}


def render(results: dict[int, dict], steps: int) -> str:
    lines = [f"The demo's linear network, {steps} steps per seed (grow 400 steps, weight decay "
             "200, grow again), sampled every step, through the agent and a real subscriber. "
             f"A transition matches a change of `{LAYER}` {METRIC} when its onset is within "
             f"{MATCH} steps.", "",
             "| seed | rank changes | found | missed | invented | median delay (samples) | "
             "labelled exogenous |", "|---|---|---|---|---|---|---|"]
    for seed, r in results.items():
        delays = sorted(hit["detected"] - step for step, _, _, hit in r["matched"])
        median = delays[len(delays) // 2] if delays else None
        exo = sum(1 for *_, hit in r["matched"] if hit["exogenous"])
        n = len(r["matched"]) + len(r["missed"])
        lines.append(f"| {seed} | {n} | {len(r['matched'])} | {len(r['missed'])} | "
                     f"{len(r['invented'])} | {median if median is not None else '–'} | {exo} |")
    seed0 = next(iter(results.values()))
    lines += ["", "Seed " + str(next(iter(results))) + ", step by step:", "",
              "| rank change at step | before → after | transition onset | detected at | "
              "exogenous |", "|---|---|---|---|---|"]
    for step, before, after, hit in seed0["matched"]:
        lines.append(f"| {step} | {before} → {after} | {hit['onset']} | {hit['detected']} | "
                     f"{hit['exogenous'] or '–'} |")
    for step, before, after in seed0["missed"]:
        lines.append(f"| {step} | {before} → {after} | **missed** | – | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    console = Console()
    results = {}
    with Progress(console=console) as progress:
        task = progress.add_task("demo runs through the agent", total=len(args.seeds))
        for seed in args.seeds:
            results[seed] = score(*run_once(seed, args.steps))
            progress.advance(task)
    text = render(results, args.steps)
    console.print(text)
    if args.write:
        write_section(args.write, "staircase", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
