"""Check the CUDA paths on a machine with an NVIDIA GPU, and print figures for docs/benchmarks.md.

    .venv/bin/python benchmarks/gpu_check.py [--steps 200] [--trials 5] [--quick]

What it checks (each line says PASS or FAIL and why; the exit status is 1 if any failed):

1. NVML on a real device: the sampler opens NVML, every field of the rank's device reads a
   number (or N/A where the device does not support it, which is reported, never 0), the
   device's UUID is torch's, and the process list (timed: the call the agent keeps rare) finds
   this process's own memory (inside a container NVML reports host pids: then it says so; the
   allocator figures cover that case).
2. The allocator figures: after allocating 256 MiB, `allocated`, `reserved` and `peak` match
   torch.cuda's own counters and cover the tensor.
3. The agent on a CUDA model: sampling runs on the side stream (weights snapshot, measurement,
   a pinned non-blocking copy back, read on the publisher thread); the published weight_norm of
   each layer equals the norm torch computes of the same step's weights; `stats.memory` names
   the device the `gpu` report lists; no NaN, no host sync on the training thread (the hook's
   time is measured).
4. Overhead: the same training loop with and without the agent (default settings), interleaved
   trials, median time per step; printed as a Markdown table row.

Without CUDA it prints why it cannot check anything and exits 0 (so it can run anywhere).
Needs only this repository's venv (torch with CUDA, pynvml for NVML).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, bool(ok), detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""), flush=True)
    return bool(ok)


def check_nvml(torch, device: int) -> dict | None:
    from symwatch_agent.measure.gpu import GpuSampler
    from symwatch_agent.measure.memory import device_uuid, visible_uuids

    torch.empty(1, device=f"cuda:{device}")  # CUDA initialised: torch can name the devices
    uuid = device_uuid(device)
    sampler = GpuSampler(visible_uuids=visible_uuids(), process_interval=0.0)
    if not check("NVML opens and sees this process's GPUs", sampler.available, sampler.reason):
        return None
    started = time.perf_counter()
    payload = sampler.sample()  # process_interval 0: includes the process list
    sample_ms = (time.perf_counter() - started) * 1000
    mine = [d for d in payload["devices"] if d.get("uuid") == uuid]
    check("the rank's device is found by torch's UUID", len(mine) == 1,
          f"torch says {uuid}; NVML lists {[d.get('uuid') for d in payload['devices']]}")
    if not mine:
        return payload
    dev = mine[0]
    missing = [k for k in ("util", "mem_used", "mem_total", "temp", "power", "power_limit")
               if dev.get(k) is None]
    check("every NVML field reads a number or is reported N/A",
          all(dev.get(k) is None or isinstance(dev.get(k), (int, float))
              for k in ("util", "mem_used", "mem_total", "temp", "power", "power_limit")),
          f"{dev['name']}: util {dev.get('util')} %, mem {dev.get('mem_used')}/"
          f"{dev.get('mem_total')} B, {dev.get('temp')} °C, {dev.get('power')}/"
          f"{dev.get('power_limit')} W" + (f"; N/A on this device: {missing}" if missing else ""))
    lib = sampler._nvml
    handle = dict(sampler._handles)[dev["index"]]
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        lib.nvmlDeviceGetComputeRunningProcesses(handle)
        times.append((time.perf_counter() - t0) * 1000)
    processes = dev.get("processes")
    import os

    found = [p for p in processes or [] if p["pid"] == os.getpid()]
    check("the process list holds this process (host pid namespace)", bool(found),
          f"{len(processes or [])} job process(es) listed"
          + ("" if found else " — inside a container NVML reports host pids; the allocator "
                              "figures cover this case"))
    print(f"      one full GPU sample {sample_ms:.2f} ms; the process list alone "
          f"{statistics.median(times):.2f} ms median per call (kept to every 30 s)")
    sampler.close()
    return payload


def check_allocator(torch, device: int) -> None:
    from symwatch_agent.measure.memory import allocator_figures

    torch.cuda.reset_peak_memory_stats(device)
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device=f"cuda:{device}")
    figures = allocator_figures(device, uuid=True)
    ok = (figures is not None
          and figures["allocated"] == torch.cuda.memory_allocated(device)
          and figures["reserved"] == torch.cuda.memory_reserved(device)
          and figures["peak"] == torch.cuda.max_memory_allocated(device)
          and figures["allocated"] >= 256 * 2**20 and figures["reserved"] >= figures["allocated"])
    check("allocator figures match torch.cuda and cover a 256 MiB tensor", ok, str(figures))
    del block


def _model(torch, width: int, depth: int):
    from torch import nn

    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def check_agent(torch, device: int, steps: int) -> None:
    import symwatch
    from symwatch.core import protocol
    from symwatch.transport.subscriber import Subscriber

    torch.manual_seed(0)
    dev = torch.device(f"cuda:{device}")
    model = _model(torch, 512, 4).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(256, 512, device=dev), torch.randint(0, 10, (256,), device=dev)
    expected: dict[int, dict[str, float]] = {}
    with symwatch.watch(model, opt, every=10, budget=1.0, endpoint="tcp://127.0.0.1:0",
                        gpu_interval=0.2, stats_interval=0.05) as agent:
        sub = Subscriber(agent.endpoint)
        check("the agent samples on a CUDA side stream", agent._side_stream is not None,
              f"device {agent._device}")
        got: list = []
        hook_s: list[float] = []
        for step in range(1, steps + 1):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            t0 = time.perf_counter()
            opt.step()  # the agent's hook runs in here
            hook_s.append(time.perf_counter() - t0)
            if step % 10 == 0:  # the same step's weights, on the training stream
                expected[step] = {name: m.weight.detach().norm().item()
                                  for name, m in model.named_modules()
                                  if isinstance(m, torch.nn.Linear)}
            got.extend(sub.poll(0))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                m.kind == protocol.GPU for m in got):
            got.extend(sub.poll(100))
        got.extend(sub.poll(500))
        sub.close()
    samples = [m for m in got if m.kind == protocol.METRICS and m.step in expected]
    worst = 0.0
    for m in samples:
        for name, norm in expected[m.step].items():
            published = m.payload["values"].get(name, {}).get("weight_norm")
            if published is not None:
                worst = max(worst, abs(published - norm) / max(norm, 1e-12))
    check("published weight_norm equals torch's norm of the same step's weights",
          bool(samples) and worst < 1e-4,
          f"{len(samples)} samples compared, worst relative error {worst:.2e}")
    stats = [m for m in got if m.kind == protocol.STATS and m.payload.get("memory")]
    gpus = [m for m in got if m.kind == protocol.GPU and m.payload.get("available")]
    uuids = {d.get("uuid") for m in gpus for d in m.payload["devices"]}
    check("stats.memory names a device the GPU report lists",
          bool(stats) and stats[-1].payload["memory"].get("uuid") in uuids,
          f"memory {stats[-1].payload['memory'] if stats else None}; devices {sorted(uuids)}")
    print(f"      optimizer.step() incl. the agent's hook: median "
          f"{statistics.median(hook_s) * 1e6:.0f} µs, max {max(hook_s) * 1e3:.2f} ms")


def overhead(torch, device: int, steps: int, trials: int) -> tuple[float, float, float]:
    import symwatch

    dev = torch.device(f"cuda:{device}")
    torch.manual_seed(0)
    model = _model(torch, 2048, 8).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(512, 2048, device=dev), torch.randint(0, 10, (512,), device=dev)

    def block() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    block()  # warm-up: cuBLAS, the allocator
    without, with_agent = [], []
    for _ in range(trials):
        without.append(block())
        agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0")  # defaults
        block()  # the first sample pays one-off warm-up; steady state below
        with_agent.append(block())
        agent.close()
    base, watched = statistics.median(without), statistics.median(with_agent)
    return base, watched, (watched / base - 1) * 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer steps and trials")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed; nothing to check")
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible here (torch.cuda.is_available() is False): the "
              "CUDA paths cannot be checked on this machine. Run it on a machine with an "
              "NVIDIA GPU and torch built with CUDA.")
        return 0
    import machine

    steps, trials = (50, 2) if args.quick else (args.steps, args.trials)
    device = torch.cuda.current_device()
    print(f"gpu_check on {torch.cuda.get_device_name(device)}; {machine.describe()}")
    check_nvml(torch, device)
    check_allocator(torch, device)
    check_agent(torch, device, steps)
    base, watched, percent = overhead(torch, device, max(20, steps // 2), trials)
    print("\n| GPU | model | without agent | with agent (defaults) | overhead |")
    print("|---|---|---:|---:|---:|")
    print(f"| {torch.cuda.get_device_name(device)} | MLP 8×2048, batch 512, AdamW | "
          f"{base * 1e3:.2f} ms/step | {watched * 1e3:.2f} ms/step | {percent:+.1f} % |")
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed"
          + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
