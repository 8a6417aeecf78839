"""Every benchmark in one command, each writing its section of docs/benchmarks.md.

    .venv/bin/pip install -e '.[bench]'        # the peers: wandb, tensorboard, weightwatcher
    .venv/bin/python benchmarks/run_all.py [--write docs/benchmarks.md] [--tcpd DIR]
        [--only NAME ...] [--skip NAME ...]

Runs, in sequence and each in its own process (so one's threads and memory do not disturb the
next): overhead.py, idle.py (prints its figure, quoted in the overhead section), sweep.py,
detection.py, staircase.py, encoding.py (prints its table; it is kept in docs/protocol.md by
hand), peers.py, latency.py. Sizes are chosen to finish within
about 20 minutes on a 2-core CPU machine. detection.py gets `--tcpd` when given, or
/work/shared/data/tcpd when that folder exists (without it the TCPD table is left out of its
section). A failing benchmark is reported and the rest still run; the exit status is 1 if any
failed. The per-benchmark times are written to the `run_all` section.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from doc_sections import write_section  # noqa: E402
from machine import describe  # noqa: E402

DEFAULT_TCPD = Path("/work/shared/data/tcpd")


def plan(args: argparse.Namespace) -> list[tuple[str, list[str], bool]]:
    """(name, argv after the script, whether it takes --write)."""
    tcpd = args.tcpd or (DEFAULT_TCPD if DEFAULT_TCPD.is_dir() else None)
    return [
        ("overhead", ["--trials", "11", "--steps", "1500"], True),
        ("idle", ["--seconds", "10", "--rounds", "3"], False),
        ("sweep", ["--repeats", "3"], True),
        ("detection", ["--tcpd", str(tcpd)] if tcpd else [], True),
        ("staircase", ["--steps", "1000", "--seeds", "0", "1", "2"], True),
        ("encoding", ["--repeat", "5"], False),
        ("peers", ["--rounds", "6", "--steps", "60"], True),
        ("latency", ["--latency-seconds", "20", "--flood-seconds", "4",
                     "--scale-seconds", "120", "--scale-simulated-steps", "5000"], True),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="the Markdown file whose sections are replaced")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--tcpd", type=Path, default=None, help="TCPD folder for detection.py")
    parser.add_argument("--only", nargs="+", default=None, help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], help="leave these out")
    args = parser.parse_args(argv)
    steps = [s for s in plan(args)
             if (args.only is None or s[0] in args.only) and s[0] not in args.skip]
    results: list[tuple[str, str, float, int]] = []
    started = time.perf_counter()
    for name, extra, writes in steps:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
        if writes and not args.no_write:
            cmd += ["--write", str(args.write)]
        shown = " ".join([".venv/bin/python", f"benchmarks/{name}.py", *extra]
                         + (["--write", "docs/benchmarks.md"] if writes else []))
        print(f"\n=== {name}: {shown}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        elapsed = time.perf_counter() - t0
        results.append((name, shown, elapsed, rc))
        print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {elapsed:.0f} s",
              flush=True)
    total = time.perf_counter() - started
    lines = ["## Running them all", "", "```bash",
             ".venv/bin/pip install -e '.[bench]'",
             ".venv/bin/python benchmarks/run_all.py   # --tcpd DIR for the TCPD table",
             "```", "",
             f"Last full run: {total / 60:.1f} min on {describe()}.", "",
             "| benchmark | command | time (s) | result |", "|---|---|---|---|"]
    for name, shown, elapsed, rc in results:
        lines.append(f"| {name} | `{shown}` | {elapsed:.0f} | "
                     f"{'ok' if rc == 0 else f'failed (exit {rc})'} |")
    print("\n" + "\n".join(lines[7:]))
    print(f"\ntotal {total / 60:.1f} min")
    full = args.only is None and not args.skip
    if full and not args.no_write:
        write_section(args.write, "run_all", "\n".join(lines))
    return 0 if all(rc == 0 for *_, rc in results) else 1


if __name__ == "__main__":
    sys.exit(main())
