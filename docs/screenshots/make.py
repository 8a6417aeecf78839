"""Regenerate the SVG screenshots in this folder from a real demo run.

    .venv/bin/python docs/screenshots/make.py

Records the demo (700 steps, the agent inside, real sockets), replays the recording at full
speed into the real app (Textual's test driver, 120×40, the dark theme), and saves each screen
as SVG: the dashboard, its column views, a layer's detail (its spectrum and units), the events,
help, the command palette, a sorted and filtered table, the light theme, and the dashboard at
80×24 and 250×50. Then runs.svg: the Runs screen over two live demo runs registered in a
private runtime directory; ranks.svg: the ranks and GPUs screen (`g`) of a real two-rank job
publishing through a relay, its GPUs read by the agent's real NVML sampler over the fake NVML of
tests/fake_nvml.py (the seam the tests use; this machine has no GPU), one GPU held down by its
power cap; and web.png: `symwatch attach --web` on a live demo run, in headless Chromium.

    .venv/bin/python docs/screenshots/make.py ranks runs   # only these (names as in SHOTS)
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from symwatch.sources.replay import ReplaySource
from symwatch.tui.app import SymwatchApp
from symwatch.tui.themes import DARK, LIGHT
from symwatch.tui.widgets.layer_table import LayerTable


def record_demo(path: str, steps: int) -> None:
    env = {**os.environ, "SYMWATCH_RECORD": path}
    # at the demo's own pace (--delay's default), so the header's steps/s and overhead read
    # what `symwatch demo` shows; unpaced, the tiny model's steps are as short as a sample
    subprocess.run([sys.executable, "-m", "symwatch_agent.entry.demo", "--steps", str(steps),
                    "--every", "1", "--endpoint", "tcp://127.0.0.1:0"],
                   env=env, check=True, capture_output=True, timeout=600)


async def shoot(path: str) -> None:
    source = ReplaySource.open(path, speed=float("inf"))
    app = SymwatchApp(source, title="symwatch — demo", owns_source=True, tick_s=0.05,
                      theme=DARK)

    async def save(name: str, settle: float = 0.3) -> None:
        await pilot.pause(settle)
        app.clear_notifications()  # a toast ("columns: rank") would cover the table
        await pilot.pause(0.1)
        app.save_screenshot(str(HERE / f"{name}.svg"))

    async with app.run_test(size=(120, 40)) as pilot:
        while app.state.goodbye_reason is None:
            await pilot.pause(0.1)
        await pilot.pause(0.3)
        app.save_screenshot(str(HERE / "dashboard.svg"))
        await pilot.press("v")
        await pilot.pause(0.3)
        app.save_screenshot(str(HERE / "rank-view.svg"))
        table = app.query_one(LayerTable)
        # the layer with the most dead and duplicated units in its latest detail (ties: the
        # first), so the unit strip has something to show
        layers = list(app.state.layers.values())
        shown = max(layers, key=lambda layer: _unit_findings(layer.detail))
        table.move_cursor(row=table.get_row_index(shown.name))
        await pilot.press("enter")
        await pilot.pause(0.8)
        app.save_screenshot(str(HERE / "layer-detail.svg"))
        await pilot.press("escape")
        await pilot.press("e")
        await pilot.pause(0.5)
        app.save_screenshot(str(HERE / "events.svg"))
        await pilot.press("escape")
        await pilot.pause(0.3)
        table.view = "overview"
        await pilot.press("question_mark")
        await save("help")
        await pilot.press("escape", "slash", *"mlp", "enter")
        app.sort_by("ind:broken")  # largest first
        await save("sorted-filtered")
        await pilot.press("slash", "escape")
        app.sort_by(None)
        await pilot.press("ctrl+p", *"sort")
        await save("palette", settle=0.8)
        await pilot.press("escape")
        app.theme = LIGHT
        await save("dashboard-light")
        app.theme = DARK
        await pilot.resize_terminal(80, 24)
        await save("dashboard-80x24")
        await pilot.resize_terminal(250, 50)
        await save("dashboard-250x50")


def _unit_findings(detail: dict | None) -> int:
    detail = detail or {}
    return int(detail.get("dead_count", 0)) + int(detail.get("duplicate_count", 0))


def _start_demos(env: dict[str, str], names: tuple[str, ...]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-m", "symwatch_agent.entry.demo", "--steps", "0",
                              "--delay", "0.03", "--name", name, "--seed", str(seed),
                              "--endpoint", "tcp://127.0.0.1:0"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for seed, name in enumerate(names)]


async def shoot_runs(tmp: str) -> None:
    """runs.svg: the Runs screen listing two live demo runs. They register in a runtime
    directory of their own (SYMWATCH_RUNTIME_DIR), so the picture holds no other run here."""
    from symwatch.core import runtime
    from symwatch.sources.memory import ListSource
    from symwatch.tui.screens.runs import RunsConfig, RunsScreen, open_runs_screen

    env = {**os.environ, runtime.ENV_RUNTIME_DIR: str(Path(tmp) / "runtime")}
    os.environ[runtime.ENV_RUNTIME_DIR] = env[runtime.ENV_RUNTIME_DIR]
    demos = _start_demos(env, ("demo-seed-0", "demo-seed-1"))
    try:
        for _ in range(300):  # each registers once its agent is up
            if len(runtime.registered_runs()) >= len(demos):
                break
            await asyncio.sleep(0.1)
        app = SymwatchApp(ListSource(endpoint="(no run chosen)"), title="symwatch — runs",
                          owns_source=True, tick_s=0.05, theme=DARK)
        app.runs_config = RunsConfig(hosts_path=Path(tmp) / "hosts")
        async with app.run_test(size=(120, 30)) as pilot:
            open_runs_screen(app)
            while not isinstance(app.screen, RunsScreen):
                await pilot.pause(0.1)
            await pilot.pause(5.0)  # two scans: the step counts have moved (running)
            app.save_screenshot(str(HERE / "runs.svg"))
    finally:
        for demo in demos:
            demo.terminate()
            demo.wait(10)
        os.environ.pop(runtime.ENV_RUNTIME_DIR, None)


# One rank of the job behind ranks.svg: a real training loop with the agent, publishing to the
# relay (SYMWATCH_CONNECT). Local rank 0 polls the node's GPUs, through the fake NVML: device 0
# is held at 1410 of 1980 MHz by its power cap and a software thermal slowdown, device 1 runs
# at full clock. Rank 1 sleeps longer per step, so it falls behind: a straggler.
RANK_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    from torch import nn
    import symwatch
    sys.path.insert(0, sys.argv[2])
    from fake_nvml import FakeNVML, fake_device

    stop, rank, other = sys.argv[1], int(os.environ["RANK"]), int(sys.argv[3])
    # each rank's process on its GPU, as NVML lists them (rank 1's pid comes from make.py)
    nvml = FakeNVML([fake_device(0, util=97, used=71 * 2**30, temp=83, power_mw=698_000,
                                 sm_clock=1410, throttle_mask=0x4 | 0x20,
                                 processes=[(os.getpid(), 69 * 2**30)]),
                     fake_device(1, util=64, used=52 * 2**30, temp=58, power_mw=402_000,
                                 processes=[(other, 50 * 2**30)])])
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with symwatch.watch(model, opt, name="ddp-job", every=5, gpu_interval=0.5,
                        nvml=nvml) as agent:
        assert agent.error is None, agent.error
        deadline = time.monotonic() + 120
        while not os.path.exists(stop) and time.monotonic() < deadline:
            loss = model(torch.randn(16, 32)).square().mean()
            opt.zero_grad(); loss.backward(); opt.step()
            time.sleep(0.01 if rank == 0 else 0.1)
""")


def _start_ranks(tmp: str, relay_bind: str) -> tuple[list[subprocess.Popen[str]], Path]:
    """The two ranks of ranks.svg (rank 1 first: rank 0 lists its pid on GPU 1), their stderr
    in files in `tmp` (not a pipe nobody reads while the shot waits: a full pipe would stop a
    rank in write())."""
    from symwatch.core import runtime

    env = {**os.environ, runtime.ENV_RUNTIME_DIR: str(Path(tmp) / "runtime-ranks"),
           "SYMWATCH_JOB_ID": "ddp-job", "WORLD_SIZE": "2", "SYMWATCH_CONNECT": relay_bind}
    stop = Path(tmp) / "stop-ranks"
    ranks: list[subprocess.Popen[str]] = []
    for rank in (1, 0):
        with open(Path(tmp) / f"rank{rank}.log", "w") as log:
            ranks.insert(0, subprocess.Popen(
                [sys.executable, "-c", RANK_SCRIPT, str(stop), str(HERE.parents[1] / "tests"),
                 str(ranks[0].pid if ranks else 0)],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.DEVNULL, stderr=log, text=True))
    return ranks, stop


def _stop_ranks(ranks: list[subprocess.Popen[str]], stop: Path) -> None:
    stop.write_text("stop")  # each rank leaves its loop and says goodbye
    for rank in ranks:
        try:
            rank.wait(30)
        except subprocess.TimeoutExpired:
            rank.kill()
            rank.wait(10)


async def shoot_ranks(tmp: str) -> None:
    """ranks.svg: the ranks and GPUs screen (`g`) of a two-rank job on one node (RANK,
    LOCAL_RANK, WORLD_SIZE and one SYMWATCH_JOB_ID, as torchrun sets them), through a relay."""
    from symwatch.transport.relay import Relay
    from symwatch.transport.subscriber import BackgroundFeed
    from symwatch.tui.widgets.ranks_panel import RanksScreen

    with Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", register=False) as relay:
        ranks, stop = _start_ranks(tmp, relay.bind_endpoint)
        try:
            app = SymwatchApp(BackgroundFeed(relay.publish_endpoint), title="symwatch — ddp-job",
                              owns_source=True, tick_s=0.05, theme=DARK)
            async with app.run_test(size=(150, 24)) as pilot:  # a GPU's line fits
                deadline = time.monotonic() + 120
                # both ranks, the GPU report, and rank 1 well behind (the straggler)
                while not (len(app.state.ranks) == 2 and app.state.ranks.gpu_reports()
                           and app.state.ranks.stragglers()):
                    if time.monotonic() > deadline or any(r.poll() is not None for r in ranks):
                        raise RuntimeError("the two-rank job did not show up: " + " | ".join(
                            (Path(tmp) / f"rank{rank}.log").read_text()[-500:]
                            for rank in (0, 1)))
                    await pilot.pause(0.2)
                await pilot.press("g")
                while not isinstance(app.screen, RanksScreen):
                    await pilot.pause(0.1)
                await pilot.pause(0.5)
                app.save_screenshot(str(HERE / "ranks.svg"))
        finally:
            _stop_ranks(ranks, stop)


CHROMIUM = "/usr/bin/chromium"


def shoot_web(seconds: float = 20.0) -> None:
    """web.png: `symwatch attach --web` on a live demo run, in headless Chromium (playwright
    drives the system's browser; skipped, with a message, where either is missing)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("web.png skipped: playwright is not installed")
        return
    if not os.access(CHROMIUM, os.X_OK):
        print(f"web.png skipped: no {CHROMIUM}")
        return
    demo = subprocess.Popen([sys.executable, "-m", "symwatch_agent.entry.demo", "--steps", "0",
                             "--delay", "0.03", "--endpoint", "tcp://127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    server = None
    try:
        line = demo.stdout.readline()  # "symwatch demo: publishing on tcp://…"
        endpoint = re.search(r"(tcp://\S+)", line)[1]  # type: ignore[index]
        server = subprocess.Popen([sys.executable, "-m", "symwatch", "attach", endpoint, "--web",
                                   "--theme", "dark", "--title", "symwatch — demo"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = None
        while url is None:
            line = server.stderr.readline()
            if not line:
                raise RuntimeError("symwatch attach --web exited without serving")
            found = re.search(r"at (http://\S+)", line)
            url = found[1] if found else None
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route("**/*", lambda route: route.continue_()
                       if route.request.url.startswith(url) else route.abort())
            page.goto(url)
            page.wait_for_selector("body.-first-byte", timeout=60_000)
            page.wait_for_timeout(seconds * 1000)  # let the demo run climb a few ranks
            page.screenshot(path=str(HERE / "web.png"))
            browser.close()
    finally:
        for proc in (server, demo):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)


SHOTS = ("dashboard", "runs", "ranks", "web")  # "dashboard": every view of the recorded demo


def main(argv: list[str] | None = None) -> int:
    wanted = set(sys.argv[1:] if argv is None else argv) or set(SHOTS)
    unknown = wanted - set(SHOTS)
    if unknown:
        print(f"unknown screenshots {sorted(unknown)}; choose from {', '.join(SHOTS)}")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        if "dashboard" in wanted:
            recording = str(Path(tmp) / "demo.db")
            record_demo(recording, 700)
            asyncio.run(shoot(recording))
        if "runs" in wanted:
            asyncio.run(shoot_runs(tmp))
        if "ranks" in wanted:
            asyncio.run(shoot_ranks(tmp))
    if "web" in wanted:
        shoot_web()
    print("wrote", ", ".join(sorted(p.name for p in HERE.glob("*.svg"))
                             + [p.name for p in HERE.glob("*.png")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
