"""The run picker over real registry entries (this test process's pid, so they count as live)."""

from __future__ import annotations

import os
import time

from textual.widgets import DataTable

from symwatch import runtime
from symwatch.tui.picker import PickerApp, RunPickerScreen


def _register(run_id: str, name: str, started: float) -> runtime.RunEntry:
    entry = runtime.RunEntry(run_id=run_id, name=name, pid=os.getpid(),
                             command=["python", "train.py", name], started=started,
                             endpoint=f"tcp://127.0.0.1:{5000 + int(started) % 1000}",
                             host="node-1", steps=100 * len(name))
    runtime.write_entry(entry)
    return entry


def _runs() -> list[runtime.RunEntry]:
    now = time.time()
    _register("aaaa11112222", "alpha", now - 30)
    _register("bbbb11112222", "beta", now - 20)
    _register("cccc11112222", "gamma", now - 10)
    return runtime.live_runs()


async def test_picker_lists_runs_and_enter_chooses():
    runs = _runs()
    assert [r.name for r in runs] == ["alpha", "beta", "gamma"]
    app = PickerApp(runs)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, RunPickerScreen)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 3
        first = [str(c) for c in table.get_row_at(0)]
        assert first[0] == "aaaa11112222" and first[1] == "alpha" and first[2] == str(os.getpid())
        assert "python train.py alpha" in first[3] and first[4] == runs[0].endpoint
        assert first[5] == time.strftime("%H:%M:%S", time.localtime(runs[0].started))
        assert first[6] == "500"
        await pilot.press("down")
        await pilot.press("enter")
        await pilot.pause()
    assert app.return_value == runs[1]


async def test_picker_escape_cancels():
    app = PickerApp(_runs())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
    assert app.return_value is None
