"""Regenerate the SVG screenshots in this folder from a real demo run.

    .venv/bin/python docs/screenshots/make.py

Records the demo (700 steps, the agent inside, real sockets), replays the recording at full
speed into the real app (Textual's test driver, 120×40), and saves each screen as SVG.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from symwatch.replay import ReplaySource  # noqa: E402
from symwatch.tui.app import SymwatchApp  # noqa: E402
from symwatch.tui.layer_table import LayerTable  # noqa: E402


def record_demo(path: str, steps: int) -> None:
    env = {**os.environ, "SYMWATCH_RECORD": path}
    subprocess.run([sys.executable, "-m", "symwatch_agent.demo", "--steps", str(steps),
                    "--delay", "0", "--every", "1", "--endpoint", "tcp://127.0.0.1:0"],
                   env=env, check=True, capture_output=True, timeout=600)


async def shoot(path: str) -> None:
    source = ReplaySource.open(path, speed=float("inf"))
    app = SymwatchApp(source, title="symwatch — demo", owns_source=True, tick_s=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        while app.state.goodbye_reason is None:
            await pilot.pause(0.1)
        await pilot.pause(0.3)
        app.save_screenshot(str(HERE / "dashboard.svg"))
        await pilot.press("v")
        await pilot.pause(0.3)
        app.save_screenshot(str(HERE / "rank-view.svg"))
        table = app.query_one(LayerTable)
        table.move_cursor(row=0)
        await pilot.press("enter")
        await pilot.pause(0.8)
        app.save_screenshot(str(HERE / "layer-detail.svg"))
        await pilot.press("escape")
        await pilot.press("e")
        await pilot.pause(0.5)
        app.save_screenshot(str(HERE / "events.svg"))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        recording = str(Path(tmp) / "demo.db")
        record_demo(recording, 700)
        asyncio.run(shoot(recording))
    print("wrote", ", ".join(sorted(p.name for p in HERE.glob("*.svg"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
