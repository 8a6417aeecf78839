"""CPU cost of an idle agent: watched, not sampling, training paused.

    .venv/bin/python benchmarks/idle.py [--seconds 20] [--rounds 3]

What the agent costs when it has nothing to publish: its publisher thread still sends a
heartbeat, re-sends the metadata and refreshes the registry entry, and waits for late-join
requests. Sampling is switched off (`budget=1e-6`, after the first step, which always samples)
and the main thread sleeps, so all the CPU time the process uses in the window is the agent's
(its publisher thread, ZeroMQ's I/O thread). Each round measures the same window without an
agent first (the interpreter's and torch's own background cost, normally zero) and reports the
difference, as a percentage of one core. Also printed: how often the publisher thread woke up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import machine
from torch import nn

from symwatch_agent import watch


def idle_window(seconds: float) -> float:
    """CPU seconds the whole process used while the main thread slept `seconds`."""
    cpu0 = time.process_time()
    time.sleep(seconds)
    return time.process_time() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each idle window")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (none, agent)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(16, 64)
    print(machine.describe())
    shares: list[float] = []
    for round_ in range(1, args.rounds + 1):
        baseline = idle_window(args.seconds)
        agent = watch(model, opt, budget=1e-6, name="idle-bench")
        for _ in range(3):  # the first step samples; the budget then stops sampling
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        time.sleep(1.0)  # let the start-up sample's decoding and sending finish
        wakeups0 = getattr(agent._publisher, "wakeups", None)
        used = idle_window(args.seconds)
        wakeups1 = getattr(agent._publisher, "wakeups", None)
        agent.close()
        share = 100 * (used - baseline) / args.seconds
        shares.append(share)
        rate = ("n/a" if wakeups0 is None
                else f"{(wakeups1 - wakeups0) / args.seconds:.1f}/s")
        print(f"round {round_}: no agent {1000 * baseline:.1f} ms, idle agent "
              f"{1000 * used:.1f} ms of CPU in {args.seconds:.0f} s -> {share:.3f} % of a core "
              f"(publisher wake-ups {rate})")
    print(f"idle agent: median {statistics.median(shares):.3f} % of a core "
          f"(min {min(shares):.3f}, max {max(shares):.3f}, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
