"""Step-to-screen latency, throughput, and a 1,000-layer stream at 10 Hz through the real TUI.

    .venv/bin/python benchmarks/latency.py [--latency-seconds 20] [--flood-seconds 4]
        [--scale-seconds 120] [--write docs/benchmarks.md] [--plot docs/img/scale.png]

Every viewer here is a separate process. For the latency and the scale run it is the real TUI,
headless (benchmarks/tui_viewer.py: `SymwatchApp` on a `symwatch.transport.subscriber.BackgroundFeed`, every
screen update rendered to terminal bytes); for the throughput flood the client and a
`symwatch.state.run_state.RunState` alone (a feed thread decoding, folding as messages arrive).

1. Latency. A small GPT-2-style model (benchmarks/peers.py) trains on the CPU with the real
   agent (`watch(model, opt, every=10, budget=1.0, endpoint=…)`: every 10th step sampled, the
   budget lifted only so that there are enough samples for a p99) on loopback TCP and on a Unix
   socket. An optimizer post-step hook registered before the agent's stamps each step's wall
   time (`time.time()`, the same clock in both processes); the viewer stamps each message when
   the feed thread has decoded it and again when the TUI composed the first screen update
   after folding it (it redraws on arrival, at most 60 times a second). Latency = stamp − the
   wall time of the step named in the message header. For METRICS it includes the sample itself
   (spectra on the training thread), the publisher thread's build (decode, transition
   detection), encoding, the socket, and decoding. STATS (loss, steps/s) are sent from the
   step hook every 0.25 s and right after each sample, so most of them here wait for a sample. The header's `time` (when the publisher encoded the
   message) splits agent-side from wire-and-decode time.
   Through SSH: the same over a real `sshd` on 127.0.0.1 (tests/sshd.py: its own keys and
   config), the viewer reading the run's Unix socket through `symwatch.transport.ssh.Tunnel` (an
   `ssh -N -L local.sock:remote.sock` child), as `symwatch attach ssh://…` does; skipped with a
   note when sshd is missing. `--ssh-only` measures just that and direct ipc, side by side,
   and rewrites only that part of the section.
2. Throughput. The real `Publisher` is flooded with `submit` (refused items are retried after
   0.5 ms) for a few seconds with METRICS of 12 and of 1,000 layers × 15 indicators; the viewer
   decodes and folds at once. Reported: messages/s the publisher sent, messages/s the viewer
   decoded, and the viewer's CPU time per message (its capacity per core).
3. Scale. The real `Publisher` sends a META of 1,000 layers and then METRICS of 1,000 layers ×
   15 indicators (the set a Linear layer gets) at 10 Hz for `--scale-seconds` into the TUI; it
   samples its own CPU time and RSS every second and presses a key (↓ ↑ [ ] L) every 0.5 s,
   timing each to the next screen update. Plot: docs/img/scale.png. Also the bytes one series
   of the TUI's history holds by run length (up to a million samples, in-process).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from doc_sections import write_section  # noqa: E402
from machine import describe  # noqa: E402
from symwatch.core import protocol  # noqa: E402

TICK_S = 0.2  # symwatch.tui.app.TICK_S: how often the TUI folds what the feed received
INDICATORS = ("weight_norm", "stable_rank", "effective_rank", "participation_ratio",
              "numerical_rank", "dead_fraction", "balance", "balance_norm", "duplicate_fraction",
              "distinct_units", "delta_perm", "delta_sign", "delta_rank", "delta_rescale",
              "broken")


# -- the viewer process ------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def viewer(endpoint: str, conn: Any, duration: float, mode: str, simulated: Any = None) -> None:
    """Runs in its own process. mode: 'latency' (record every message), 'flood' (fold in the
    feed thread at once, count only) or 'scale' (tick like the TUI, sample CPU and RSS)."""
    from symwatch.transport.subscriber import BackgroundFeed
    from symwatch.state.run_state import RunState

    state = RunState()
    arrived: deque[tuple[Any, float]] = deque()
    records: list[tuple[str, int, int, float, float, float]] = []
    counts = {"decoded": 0, "first": None, "last": None}
    done = threading.Event()

    def on_messages(batch: list[Any]) -> None:
        now = time.time()
        if counts["first"] is None:
            counts["first"] = now
        counts["last"] = now
        counts["decoded"] += len(batch)
        if mode == "flood":
            for msg in batch:
                state.fold(msg)
                if msg.kind == protocol.GOODBYE:
                    done.set()
        else:
            arrived.extend((msg, now) for msg in batch)

    feed = BackgroundFeed(endpoint, on_messages=on_messages, history=False)
    # Ready once the subscription is live: the sender waits for this before it starts.
    conn.send("ready")
    samples: list[tuple[float, float, int]] = []
    t0 = time.time()
    cpu0 = time.process_time()
    next_sample = t0
    deadline = t0 + duration
    while time.time() < deadline and not done.is_set():
        time.sleep(TICK_S)
        while arrived:
            msg, t_decoded = arrived.popleft()
            state.fold(msg)
            if mode == "latency":
                records.append((msg.kind, msg.step, msg.seq, msg.time, t_decoded, time.time()))
            if msg.kind == protocol.GOODBYE:
                done.set()
        now = time.time()
        if mode == "scale" and now >= next_sample:
            samples.append((now - t0, time.process_time() - cpu0, _rss_bytes()))
            next_sample += 1.0
        if conn.poll():
            if conn.recv() == "stop":
                break
    cpu = time.process_time() - cpu0
    wall = time.time() - t0
    feed.close()
    conn.send({"records": records, "samples": samples, "decoded": counts["decoded"],
               "first": counts["first"], "last": counts["last"], "cpu_s": cpu, "wall_s": wall,
               "gap_dropped": state.gap_dropped, "garbage": feed.garbage,
               "overflow": feed.overflow, "layers": len(state.layers)})


class Viewer:
    def __init__(self, endpoint: str, duration: float, mode: str, simulated: Any = None) -> None:
        from tui_viewer import tui_viewer

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # latency and scale: the real TUI, headless (benchmarks/tui_viewer.py); flood: the
        # client and RunState alone, to find the decoding capacity
        target = tui_viewer if mode in ("latency", "scale") else viewer
        self.proc = ctx.Process(target=target, args=(endpoint, child, duration, mode, simulated),
                                daemon=True)
        self.proc.start()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError("the viewer process did not start")

    def result(self, timeout: float) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            self.conn.send("stop")
            if not self.conn.poll(10):
                self.proc.kill()
                raise RuntimeError("the viewer process did not answer")
        out = self.conn.recv()
        self.proc.join(5)
        return out


# -- 1. step → viewer latency ------------------------------------------------------------------

def pctl(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def step_latency(transport: str, seconds: float) -> dict[str, Any]:
    import torch  # noqa: F401 - the training side only
    from peers import Setup, Trainer

    from symwatch_agent import watch

    trainer = Trainer(Setup())
    step_wall: dict[int, float] = {}
    counter = [0]

    def stamp(*_: Any) -> None:
        counter[0] += 1
        step_wall[counter[0]] = time.time()

    trainer.opt.register_step_post_hook(stamp)  # before the agent's: runs first
    endpoint = "tcp://127.0.0.1:0" if transport == "tcp" else None
    agent = watch(trainer.model, trainer.opt, every=10, budget=1.0, register=False,
                  endpoint=endpoint)
    tunnel = ssh_tunnel(agent) if transport == "ssh" else None
    try:
        return _step_latency(transport, seconds, trainer, agent, step_wall,
                             tunnel.endpoint if tunnel else agent.endpoint)
    finally:
        if tunnel is not None:
            tunnel.close()
            tunnel.server.close()


def ssh_tunnel(agent: Any) -> Any:
    """The agent's socket through a real sshd on loopback (tests/sshd.py) and a Tunnel."""
    sys.path.insert(0, str(ROOT / "tests"))
    from sshd import Sshd

    from symwatch.core.runtime import RunEntry
    from symwatch.transport.ssh import SshOptions, SshTarget, Tunnel

    server = Sshd.start()
    entry = RunEntry(run_id=agent.run_id, name="bench", pid=os.getpid(), command=[],
                     endpoint=agent.endpoint, started=time.time(), host="localhost")
    try:
        tunnel = Tunnel(SshTarget.parse(server.target), entry,
                        SshOptions(ssh_command=server.ssh_command.split())).start()
    except BaseException:
        server.close()
        raise
    tunnel.server = server  # type: ignore[attr-defined] - closed with it
    return tunnel


def ssh_unavailable() -> str | None:
    """Why the SSH measurement cannot run here, or None."""
    sys.path.insert(0, str(ROOT / "tests"))
    from sshd import missing_tools

    missing = missing_tools()
    return ("not installed: " + ", ".join(missing)) if missing else None


def _step_latency(transport: str, seconds: float, trainer: Any, agent: Any,
                  step_wall: dict[int, float], view_endpoint: str) -> dict[str, Any]:
    view = Viewer(view_endpoint, seconds + 30, "latency")
    time.sleep(0.6)  # the subscription reaches the publisher
    start = time.perf_counter()
    steps = 0
    while time.perf_counter() - start < seconds:
        trainer.step()
        steps += 1
    train_s = time.perf_counter() - start
    samples, dropped = agent.samples, agent.dropped
    agent.close()
    out = view.result(30)
    lat: dict[str, dict[str, list[float]]] = {}
    for kind, step, _seq, sent, decoded, shown in out["records"]:
        if kind not in (protocol.METRICS, protocol.STATS) or step not in step_wall:
            continue
        t = step_wall[step]
        d = lat.setdefault(kind, {"decoded": [], "shown": [], "agent": [], "wire": []})
        d["decoded"].append(1000 * (decoded - t))
        d["shown"].append(1000 * (shown - t))
        d["agent"].append(1000 * (sent - t))
        d["wire"].append(1000 * (decoded - sent))
    return {"transport": transport, "endpoint": agent.endpoint, "lat": lat, "steps": steps,
            "step_ms": 1000 * train_s / max(steps, 1), "samples": samples, "dropped": dropped,
            "gap_dropped": out["gap_dropped"]}


# -- 2. throughput -----------------------------------------------------------------------------

def layer_names(n: int) -> list[str]:
    parts = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.up", "mlp.down")
    return [f"model.layers.{i // len(parts)}.{parts[i % len(parts)]}" for i in range(n)]


def metrics_payload(names: list[str], rng: random.Random) -> dict[str, Any]:
    values = {}
    for name in names:
        row: dict[str, float | int] = {k: rng.uniform(0.0, 60.0) for k in INDICATORS}
        row["numerical_rank"] = rng.randint(1, 4096)
        values[name] = row
    return {"values": values, "nonfinite": [], "cost_s": 0.00123}


def meta_payload(names: list[str]) -> dict[str, Any]:
    return {"name": "bench-1000-layers", "pid": os.getpid(), "host": "localhost",
            "command": ["bench"], "started": time.time(), "every": 1,
            "layers": [{"name": n, "type": "Linear", "shape": [4096, 4096], "params": 4096 * 4096}
                       for n in names],
            "indicators": list(INDICATORS)}


def make_publisher() -> Any:
    from symwatch_agent.publish.publisher import Publisher

    errors: list[str] = []
    pub = Publisher("tcp://127.0.0.1:0", run=f"bench{os.getpid():06d}"[:12],
                    report=lambda what, exc: errors.append(f"{what}: {exc}"))
    pub.start()
    return pub


def flood(n_layers: int, seconds: float) -> dict[str, Any]:
    rng = random.Random(n_layers)
    payload = metrics_payload(layer_names(n_layers), rng)
    size = len(protocol.encode(protocol.METRICS, run="r", rank=0, restart=0, seq=0,
                               time=0.0, step=0, payload=payload)[1])
    pub = make_publisher()
    view = Viewer(pub.endpoint, seconds + 30, "flood")
    time.sleep(0.6)
    start = time.perf_counter()
    step = 0
    sent0 = pub.sent
    while time.perf_counter() - start < seconds:
        step += 1
        if not pub.submit(protocol.METRICS, payload, step):
            time.sleep(0.0005)
    elapsed = time.perf_counter() - start
    sent = pub.sent - sent0
    pub.close(goodbye={"reason": "finished", "exit_code": 0}, step=step)
    out = view.result(3)  # the goodbye may be dropped at the high-water mark: then stop it
    decoded = out["decoded"]
    span = (out["last"] - out["first"]) if out["first"] and out["last"] else elapsed
    return {"layers": n_layers, "bytes": size, "sent_per_s": sent / elapsed,
            "decoded_per_s": decoded / max(span, 1e-9), "decoded": decoded, "sent": sent,
            "cpu_ms_per_msg": 1000 * out["cpu_s"] / max(decoded, 1),
            "lost": out["gap_dropped"]}


# -- 3. 1,000 layers at 10 Hz ------------------------------------------------------------------

def scale(n_layers: int, hz: float, seconds: float, progress: Any = None,
          simulated_steps: int = 0) -> dict[str, Any]:
    """The stream into the TUI; with `simulated_steps`, after a run that long (folded into the
    viewer's state before the stream starts: its history tiers full, as on a long run)."""
    names = layer_names(n_layers)
    rng = random.Random(0)
    pub = make_publisher()
    simulated = (names, INDICATORS, simulated_steps) if simulated_steps else None
    view = Viewer(pub.endpoint, seconds + 60, "scale", simulated)
    time.sleep(0.6)
    pub.submit(protocol.META, meta_payload(names), 0)
    base = {n: {k: rng.uniform(1.0, 60.0) for k in INDICATORS} for n in names}
    start = time.perf_counter()
    sent = 0
    late = 0
    step = first_step = simulated_steps
    task = progress.add_task(f"{n_layers} layers at {hz:g} Hz", total=seconds) if progress else None
    while True:
        now = time.perf_counter() - start
        if now >= seconds:
            break
        step += 1
        values = {}
        for n, row in base.items():  # a random walk, so every value changes every message
            for k in row:
                row[k] *= 1.0 + 0.01 * (rng.random() - 0.5)
            values[n] = dict(row)
        if pub.submit(protocol.METRICS, {"values": values, "nonfinite": [], "cost_s": 0.01},
                      step):
            sent += 1
        if progress:
            progress.update(task, completed=min(now, seconds))
        wait = (step - first_step) / hz - (time.perf_counter() - start)
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
    elapsed = time.perf_counter() - start
    pub.close(goodbye={"reason": "finished", "exit_code": 0}, step=step)
    out = view.result(60)
    if progress:
        progress.remove_task(task)
    samples = out["samples"]
    return {"layers": n_layers, "hz": hz, "seconds": elapsed, "sent": sent,
            "simulated_steps": simulated_steps,
            "publisher_sent": pub.sent, "received_metrics": max(0, out["decoded"] - 2),
            "late_ticks": late, "samples": samples, "cpu_s": out["cpu_s"], "wall_s": out["wall_s"],
            "gap_dropped": out["gap_dropped"], "overflow": out["overflow"],
            "garbage": out["garbage"], "layers_seen": out["layers"], "keys": out.get("keys", [])}


def tui_size() -> str:
    from tui_viewer import SIZE

    return f"{SIZE[0]}×{SIZE[1]}"


def history_memory() -> list[tuple[int, int, int]]:
    """(samples, entries kept, bytes) of one series of the TUI's history by run length."""
    from symwatch.core.downsample import TieredSeries

    out = []
    store = TieredSeries()
    rng = random.Random(1)
    for n in (1_000, 10_000, 100_000, 1_000_000):
        while store.count < n:
            store.append(store.count + 1, rng.random())
        arrays = [store._steps, store._values, store._pending, *store._tiers]
        out.append((n, len(store), sum(sys.getsizeof(a) for a in arrays)))
    return out


def scale_summary(res: dict[str, Any]) -> dict[str, float]:
    s = res["samples"]
    cpu = []
    for (t0, c0, _), (t1, c1, _) in zip(s, s[1:]):
        if t1 > t0:
            cpu.append((c1 - c0) / (t1 - t0))
    rss = [(t, r / 2**20) for t, _, r in s]
    half = [x for x in rss if x[0] >= rss[-1][0] / 2] if rss else []
    slope = 0.0
    if len(half) >= 3:
        mt = statistics.mean(t for t, _ in half)
        mr = statistics.mean(r for _, r in half)
        var = sum((t - mt) ** 2 for t, _ in half)
        slope = 60 * sum((t - mt) * (r - mr) for t, r in half) / var if var else 0.0
    return {"cpu_mean": res["cpu_s"] / max(res["wall_s"], 1e-9),
            "cpu_p95": pctl(cpu, 0.95) if cpu else math.nan,
            "cpu_max": max(cpu) if cpu else math.nan,
            "rss_start": _rss_at(rss, 0.25),
            "rss_half": _rss_at(rss, 0.5),
            "rss_end": rss[-1][1] if rss else math.nan,
            "rss_max": max(r for _, r in rss) if rss else math.nan,
            "rss_slope_mb_per_min": slope}


def _rss_at(rss: list[tuple[float, float]], fraction: float) -> float:
    if not rss:
        return math.nan
    t = rss[-1][0] * fraction
    return next(r for s, r in rss if s >= t)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["samples"]
    t = [x[0] for x in s]
    cpu = [0.0] + [100 * (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
                   for (t0, c0, _), (t1, c1, _) in zip(s, s[1:])]
    rss = [x[2] / 2**20 for x in s]
    fig, ax1 = plt.subplots(figsize=(8, 3.2), dpi=110)
    ax1.plot(t, cpu, color="tab:blue", lw=1, label="viewer CPU (% of one core)")
    ax1.axhline(100, color="tab:blue", ls=":", lw=0.8)
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("CPU, % of one core", color="tab:blue")
    ax1.set_ylim(0, max(110, max(cpu) * 1.1))
    ax2 = ax1.twinx()
    ax2.plot(t, rss, color="tab:red", lw=1.5, label="viewer RSS (MiB)")
    ax2.set_ylabel("RSS (MiB)", color="tab:red")
    ax2.set_ylim(0, max(rss) * 1.3 if rss else 1)
    ax1.set_title(f"The TUI (headless) on {res['layers']:,} layers × {len(INDICATORS)} "
                  f"indicators at {res['hz']:g} Hz")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# -- report ------------------------------------------------------------------------------------

def render(lat: list[dict[str, Any]], fl: list[dict[str, Any]], sc: dict[str, Any],
           args: argparse.Namespace, plot_rel: str | None) -> tuple[str, list[str]]:
    cmd = (f".venv/bin/python benchmarks/latency.py --latency-seconds {args.latency_seconds:g} "
           f"--flood-seconds {args.flood_seconds:g} --scale-seconds {args.scale_seconds:g} "
           f"--scale-simulated-steps {args.scale_simulated_steps} --write docs/benchmarks.md")
    lines = ["## Latency, throughput and a 1,000-layer stream", "", "```bash", cmd, "```", "",
             f"Machine: {describe()}. The viewer is a separate process: for the latency and the "
             "1,000-layer stream the real TUI (`SymwatchApp` on a `BackgroundFeed`, headless at "
             f"{tui_size()}, every screen update rendered to terminal bytes; "
             "benchmarks/tui_viewer.py), for the flood the client and `RunState` alone. "
             f"Load average when it ended: {os.getloadavg()[0]:.1f} (1 min) on "
             f"{os.cpu_count()} cores: other work on a shared machine inflates wall-clock "
             "figures.", "",
             "### Step to viewer", "",
             f"A GPT-2-style model (benchmarks/peers.py) training for {args.latency_seconds:g} s "
             "per transport with `watch(model, opt, every=10, budget=1.0)` (the budget lifted only "
             "for enough samples). Milliseconds from the end of the optimizer step named in the "
             "message to the viewer: *decoded* (the client has the message), *on screen* (the "
             "TUI folded it and composed the screen update that shows it: it redraws when data "
             "arrives, at most 60 times a second). "
             "*agent* is the share before the publisher encoded it (the sample itself, then "
             "build and queueing on the publisher thread). STATS go out from the step hook "
             "every 0.25 s and right after each sample, so most of them here wait for one.", "",
             "| transport | message | n | decoded p50 | p95 | p99 | on screen p50 | p95 | p99 | "
             "agent p50 | wire+decode p50 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += latency_rows([r for r in lat if r["transport"] != "ssh"])
    lines.append("")
    lines.append("Training: " + "; ".join(
        f"{r['transport']} {r['steps']} steps at {r['step_ms']:.1f} ms/step, {r['samples']} "
        f"samples, {r['dropped']} dropped by the agent, {r['gap_dropped']} lost on the way"
        for r in lat if r["transport"] != "ssh") + ".")
    ssh = [r for r in lat if r["transport"] in ("ssh", "ipc")]
    lines += ["", "<!-- latency-ssh:begin -->",
              ssh_section(ssh, args, getattr(args, "ssh_note", None)),
              "<!-- latency-ssh:end -->"]
    lines += ["", "### Throughput", "",
              f"The real `Publisher` flooded for {args.flood_seconds:g} s per size (loopback TCP); "
              "the viewer decodes and folds each message as it arrives.", "",
              "| message | bytes | publisher sent/s | viewer decoded/s | viewer CPU per message | "
              "viewer capacity (1 core) | lost (sent, not received) |",
              "|---|---|---|---|---|---|---|"]
    for f in fl:
        lines.append(f"| METRICS, {f['layers']:,} layers × {len(INDICATORS)} | {f['bytes']:,} | "
                     f"{f['sent_per_s']:,.0f} | {f['decoded_per_s']:,.0f} | "
                     f"{f['cpu_ms_per_msg']:.2f} ms | {1000 / f['cpu_ms_per_msg']:,.0f}/s | "
                     f"{f['lost']:,} |")
    lines += ["", "Under a flood ZeroMQ drops what a slow subscriber cannot take (its high-water "
              "mark); the viewer counts those as lost from the sequence gaps, as the TUI shows "
              "them."]
    ss = scale_summary(sc)
    lines += ["", f"### {sc['layers']:,} layers at {sc['hz']:g} Hz", "",
              f"METRICS of {sc['layers']:,} layers × {len(INDICATORS)} indicators (about "
              f"{fl[-1]['bytes'] // 1024 if fl else 0:,} KiB each) at {sc['hz']:g} Hz for "
              f"{sc['seconds']:.0f} s through the real publisher and client into the TUI, "
              f"after a simulated run of {sc.get('simulated_steps', 0):,} steps folded into it "
              "first (its history tiers full, as on a long run).", ""]
    if plot_rel:
        lines += [f"![Viewer CPU and memory over the run]({plot_rel})", ""]
    mem = history_memory()
    moves = [ms for key, ms in sc.get("keys", []) if key in ("down", "up")]
    scrolls = [ms for key, ms in sc.get("keys", []) if key not in ("down", "up")]
    lines += ["| figure | value |", "|---|---|",
              f"| messages sent / received | {sc['sent']:,} / {sc['received_metrics']:,} |",
              f"| lost (sequence gaps) / viewer queue overflow / garbage | "
              f"{sc['gap_dropped']} / {sc['overflow']} / {sc['garbage']} |",
              f"| viewer CPU, mean (of one core) | {100 * ss['cpu_mean']:.1f} % |",
              f"| viewer CPU, p95 / max of 1 s windows | {100 * ss['cpu_p95']:.1f} % / "
              f"{100 * ss['cpu_max']:.1f} % |",
              f"| viewer RSS at ¼ / ½ / end of the run, max | {ss['rss_start']:.1f} / "
              f"{ss['rss_half']:.1f} / {ss['rss_end']:.1f} MiB, {ss['rss_max']:.1f} MiB |",
              f"| RSS trend over the second half | {ss['rss_slope_mb_per_min']:+.2f} MiB/min |",
              f"| key press to redraw, ↓ ↑ (table cursor), p50 / p95 / max | "
              f"{pctl(moves, .5):.0f} / {pctl(moves, .95):.0f} / "
              f"{max(moves) if moves else math.nan:.0f} ms (n = {len(moves)}) |",
              f"| key press to redraw, [ ] L (scroll back, back to live: every visible cell "
              f"redrawn), p50 / p95 / max | {pctl(scrolls, .5):.0f} / {pctl(scrolls, .95):.0f} / "
              f"{max(scrolls) if scrolls else math.nan:.0f} ms (n = {len(scrolls)}) |",
              f"| sender ticks late (could not keep 10 Hz) | {sc['late_ticks']} |",
              "", "The TUI keeps the whole run of each of the 15,000 series in bounded memory "
              "(symwatch/core/downsample.py: the newest 64 samples whole, older ones merged in "
              "tiers keeping min/max/last, at most 448 entries a series). RSS rises while "
              "the tiers fill, then moves in a bounded sawtooth: the oldest tier grows towards "
              "its cap, then merges pairwise (each cycle twice as long as the one before), so a "
              "short window can show a slope that a longer one does not. Each series of a run "
              "has its own phase in that schedule, so the 15,000 series' merges are spread over "
              "32 steps instead of all falling on one (in lockstep they cost the viewer about a "
              "second of CPU every 512 steps). The bound, per series, by the run's length "
              "(`sys.getsizeof` of its arrays):", "",
              "| samples in the run | entries kept | bytes |", "|---|---|---|",
              *[f"| {n:,} | {kept:,} | {size:,} |" for n, kept, size in mem]]
    # Targets
    tgt = []
    tcp = next((r for r in lat if r["transport"] == "tcp"), None)
    if tcp and tcp["lat"].get(protocol.METRICS):
        d = tcp["lat"][protocol.METRICS]
        p95 = pctl(d["shown"], .95)
        tgt.append(f"- p95 step-to-screen latency ≤ 100 ms on loopback (METRICS, on the TUI's "
                   f"screen): {p95:.1f} ms — **{'met' if p95 <= 100 else 'NOT met'}** "
                   f"(decoded by the client: p95 {pctl(d['decoded'], .95):.1f} ms).")
    kept = sc["received_metrics"] >= sc["sent"] and sc["gap_dropped"] == 0 and sc["overflow"] == 0
    tgt.append(f"- 1,000 layers at 10 Hz kept up with: {sc['received_metrics']:,} of "
               f"{sc['sent']:,} received, {sc['gap_dropped']} lost — "
               f"**{'met' if kept else 'NOT met'}**.")
    tgt.append(f"- … using less than one core: mean {100 * ss['cpu_mean']:.1f} %, p95 "
               f"{100 * ss['cpu_p95']:.1f} % of a core — "
               f"**{'met' if ss['cpu_mean'] < 1.0 and ss['cpu_p95'] < 1.0 else 'NOT met'}**.")
    flat = abs(ss["rss_slope_mb_per_min"]) < 1.0
    tgt.append(f"- … memory flat (|RSS trend| < 1 MiB/min over the second half): "
               f"{ss['rss_slope_mb_per_min']:+.2f} MiB/min, {ss['rss_start']:.1f} → "
               f"{ss['rss_end']:.1f} MiB — **{'met' if flat else 'NOT met'}**.")
    bounded = mem[-1][2] <= 1.25 * mem[1][2]
    tgt.append(f"- … memory bounded whatever the run's length (one series: {mem[1][2]:,} bytes "
               f"at {mem[1][0]:,} samples, {mem[-1][2]:,} at {mem[-1][0]:,}) — "
               f"**{'met' if bounded else 'NOT met'}**.")
    p95k, p95s = pctl(moves, .95), pctl(scrolls, .95)
    tgt.append(f"- … keys responsive while it streams (key press to redraw p95 ≤ 100 ms): "
               f"table cursor {p95k:.0f} ms — **{'met' if p95k <= 100 else 'NOT met'}**; "
               f"scrolling back {p95s:.0f} ms — **{'met' if p95s <= 100 else 'NOT met'}**.")
    lines += ["", "Targets:", *tgt]
    return "\n".join(lines), tgt


def latency_rows(results: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in results:
        for kind in (protocol.METRICS, protocol.STATS):
            d = r["lat"].get(kind)
            if not d:
                rows.append(f"| {r['transport']} | {kind} | 0 | – | – | – | – | – | – | – | – |")
                continue
            rows.append(
                f"| {r['transport']} | {kind} | {len(d['decoded'])} | "
                f"{pctl(d['decoded'], .5):.1f} | {pctl(d['decoded'], .95):.1f} | "
                f"{pctl(d['decoded'], .99):.1f} | {pctl(d['shown'], .5):.1f} | "
                f"{pctl(d['shown'], .95):.1f} | {pctl(d['shown'], .99):.1f} | "
                f"{pctl(d['agent'], .5):.1f} | {pctl(d['wire'], .5):.2f} |")
    return rows


def ssh_section(results: list[dict[str, Any]], args: argparse.Namespace,
                note: str | None) -> str:
    """The SSH sub-section: direct ipc and the same socket through an SSH tunnel."""
    cmd = (f".venv/bin/python benchmarks/latency.py --ssh-only --latency-seconds "
           f"{args.latency_seconds:g} --write docs/benchmarks.md")
    lines = ["### Step to viewer through an SSH tunnel", "", "```bash", cmd, "```", ""]
    if note or not any(r["transport"] == "ssh" for r in results):
        lines.append(f"Not measured on this machine: {note or 'no sshd'} (tests/setup.sh "
                     "installs openssh-server).")
        return "\n".join(lines)
    lines += [f"The same training run and viewer as above, {args.latency_seconds:g} s each: "
              "*ipc* reads the run's Unix socket directly, *ssh* reads it through "
              "`symwatch.transport.ssh.Tunnel` (an `ssh -N -L local.sock:run.sock` child) and a real "
              "`sshd` on 127.0.0.1 (tests/sshd.py), as `symwatch attach ssh://…` does. "
              f"Machine: {describe()}.", "",
              "| transport | message | n | decoded p50 | p95 | p99 | on screen p50 | p95 | p99 | "
              "agent p50 | wire+decode p50 |",
              "|---|---|---|---|---|---|---|---|---|---|---|", *latency_rows(results)]
    direct = next((r for r in results if r["transport"] == "ipc"), None)
    tunnelled = next((r for r in results if r["transport"] == "ssh"), None)
    if direct and tunnelled and direct["lat"].get(protocol.METRICS) \
            and tunnelled["lat"].get(protocol.METRICS):
        d = pctl(direct["lat"][protocol.METRICS]["wire"], .5)
        t = pctl(tunnelled["lat"][protocol.METRICS]["wire"], .5)
        stats = [pctl(r["lat"].get(protocol.STATS, {}).get("wire", []), .5)
                 for r in (direct, tunnelled)]
        lines += ["", f"Median wire-and-decode time: METRICS {d:.2f} ms direct, {t:.2f} ms "
                  f"through the tunnel; STATS {stats[0]:.2f} → {stats[1]:.2f} ms (encryption, "
                  "two more socket hops, ssh's buffering; a real network adds its round trip). "
                  "The rest of the step-to-screen time is the agent's and the TUI's, as above. "
                  f"{tunnelled['gap_dropped']} messages lost through the tunnel, "
                  f"{direct['gap_dropped']} directly. Load average when it started: "
                  f"{args.load_at_start:.1f} on {os.cpu_count()} cores"
                  + (" (a busy machine: read the medians, not the tails)."
                     if args.load_at_start >= 0.5 * (os.cpu_count() or 1) else ".")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import Progress

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-seconds", type=float, default=20.0,
                        help="training time per transport")
    parser.add_argument("--flood-seconds", type=float, default=4.0)
    parser.add_argument("--scale-seconds", type=float, default=120.0)
    parser.add_argument("--scale-layers", type=int, default=1000)
    parser.add_argument("--scale-hz", type=float, default=10.0)
    parser.add_argument("--scale-simulated-steps", type=int, default=5000,
                        help="steps of a run folded into the TUI before the stream (its history "
                             "full, as on a long run)")
    parser.add_argument("--write", type=Path, default=None,
                        help="replace the latency section of this Markdown file")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "scale.png")
    parser.add_argument("--ssh-only", action="store_true",
                        help="only the latency over ipc and through an SSH tunnel; rewrites "
                             "only that part of the section")
    args = parser.parse_args(argv)
    args.ssh_note = ssh_unavailable()
    args.load_at_start = os.getloadavg()[0]
    console = Console()
    if args.ssh_only:
        results = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("latency", total=2)
            for transport in ("ipc", "ssh"):
                if transport == "ssh" and args.ssh_note:
                    break
                progress.update(task, description=f"step → viewer latency over {transport}")
                results.append(step_latency(transport, args.latency_seconds))
                progress.advance(task)
        text = ssh_section(results, args, args.ssh_note)
        console.print(text)
        if args.write:
            write_section(args.write, "latency-ssh", text)
        return 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("latency: tcp", total=4)
        lat = []
        for transport in ("tcp", "ipc") + (() if args.ssh_note else ("ssh",)):
            progress.update(task, description=f"step → viewer latency over {transport}")
            lat.append(step_latency(transport, args.latency_seconds))
            progress.advance(task)
        fl = []
        for n in (12, 1000):
            progress.update(task, description=f"publisher flood, {n} layers")
            fl.append(flood(n, args.flood_seconds))
        progress.advance(task)
        progress.update(task, description="scale")
        sc = scale(args.scale_layers, args.scale_hz, args.scale_seconds, progress,
                   args.scale_simulated_steps)
        progress.advance(task)
    plot_rel = None
    if args.plot:
        plot(sc, args.plot)
        try:
            plot_rel = os.path.relpath(args.plot, (args.write or ROOT / "docs" / "x").parent)
        except ValueError:
            plot_rel = str(args.plot)
    text, tgt = render(lat, fl, sc, args, plot_rel)
    console.print(text)
    if args.write:
        write_section(args.write, "latency", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
