"""Score the detector as it is now on the tapes of earlier corpus runs (no training: seconds).

    .venv/bin/python benchmarks/event_corpus.py --tape /tmp/tape --json /tmp/tape/results.json
    .venv/bin/python benchmarks/event_corpus_replay.py /tmp/tape [--only NAME ...] [-v]

The tape (event_corpus/tape.py) holds what the agent's TransitionWatch was fed at every sample;
a fresh TransitionWatch is fed the same, and its events are scored against the run's truths
(from results.json) exactly as benchmarks/event_corpus.py scores the recorded ones. The
figures for the doc always come from event_corpus.py (the real path: the agent, the
publisher, the recording); this is for iterating on the detector.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from event_corpus import RUNS, tape
from event_corpus.common import Event, RunResult
from event_corpus.scoring import Score, score_run
from symwatch_agent.publish.transitions import TransitionWatch


def replay(records: list[tuple], threshold: float | None = None) -> list[Event]:
    watch = TransitionWatch(threshold)
    events = []
    for record in records:
        if record[0] == "m":
            watch.detector.mark_exogenous(record[1], record[2])
            continue
        _, step, values, loss, hyperparameters, scalars = record
        for _, p in watch.update(step, values, loss, hyperparameters, scalars=scalars):
            jumps = p.get("jumps") or [{"layer": p.get("layer"), "metric": p.get("metric"),
                                        "step": step}]
            events.append(Event(
                onset=int(p["onset"]), detected=min(int(j["step"]) for j in jumps),
                layers=tuple(dict.fromkeys(j.get("layer") for j in jumps)),
                metrics=tuple(dict.fromkeys(str(j.get("metric")) for j in jumps)),
                exogenous=p.get("exogenous"), message=str(p.get("message", ""))))
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--only", nargs="*", choices=RUNS)
    parser.add_argument("-v", "--verbose", action="store_true", help="list every event")
    args = parser.parse_args(argv)
    results = {r["name"]: RunResult.from_json(r)
               for r in json.loads((args.folder / "results.json").read_text())}
    total = Score()
    for name in args.only or [n for n in RUNS if n in results]:
        result = results[name]
        result.events = replay(tape.load(args.folder, name))
        s = score_run(result)
        total.add(s)
        print(f"{name:20s} truths {s.truths:2d} events {s.events:3d} matched "
              f"{s.matched_events:3d} P {s.precision if s.precision is not None else -1:.2f} "
              f"R {s.recall if s.recall is not None else -1:.2f}")
        if args.verbose:
            for e in result.events:
                print(f"    {e.onset:5d} (det {e.detected}) {e.message[:170]}")
            for m in s.missed:
                print(f"    MISSED {m}")
    print(f"{'all':20s} truths {total.truths:2d} events {total.events:3d} matched "
          f"{total.matched_events:3d} P {total.precision or 0:.2f} R {total.recall or 0:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
