"""The Runs screen (symwatch/tui/screens/runs.py) driven by Textual's Pilot, over real agents
training in this process (real registry entries, real sockets), a dead run's entry, and an SSH
host that cannot be reached (a real ssh to a closed port)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

from symwatch.core import runtime
from symwatch.core.processes import free_port
from symwatch.core.runtime import RunEntry
from symwatch.transport.ssh import SshOptions, load_hosts
from symwatch.tui.widgets.layer_table import LayerTable
from symwatch.tui.app import RunsApp
from symwatch.tui.screens.runs import (FINISHED, IDLE, LOST, RUNNING, RunsConfig, RunsModel,
                                      RunsScreen)
from symwatch_agent import watch
from waiting import pilot_until as wait_for


class Training:
    """A real model, optimizer and agent, stepping on a thread until stopped."""

    def __init__(self, name: str, widths: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.model = nn.Sequential(*layers[:-1])
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.agent = watch(self.model, self.opt, name=name, every=1, budget=1.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        x = torch.randn(32, self.model[0].in_features)
        while not self.stop.is_set():
            loss = self.model(x).pow(2).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.agent.close()


@pytest.fixture
def trainings():
    made = [Training("alpha", (8, 16, 4)), Training("beta", (6, 12, 12, 3))]
    yield made
    for t in made:
        t.close()


@pytest.fixture
def config(tmp_path, monkeypatch) -> RunsConfig:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    # ssh to a closed port on this machine: a host that fails at once, for real
    return RunsConfig(hosts=[f"ssh://127.0.0.1:{free_port()}"],
                      options=SshOptions(ssh_command=["ssh", "-o", "StrictHostKeyChecking=no",
                                                      "-o", "UserKnownHostsFile=/dev/null"]))


def dead_entry() -> RunEntry:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    entry = RunEntry("dead00000000", "crashed", proc.pid, ["python", "crashed.py"],
                     "ipc:///nonexistent.sock", time.time() - 60, "here", steps=42,
                     updated=time.time() - 50)
    runtime.write_entry(entry)
    return entry


def table_rows(screen: RunsScreen) -> dict[str, list[str]]:
    from textual.widgets import DataTable

    table = screen.query_one(DataTable)
    return {str(r.key.value): [str(c) for c in table.get_row(r.key)] for r in table.ordered_rows}


async def test_runs_screen_lists_states_host_errors_and_enter_attaches(trainings, config):
    dead = dead_entry()
    alpha = trainings[0].agent
    app = RunsApp(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="the screen")
        screen = app.screen
        await wait_for(pilot, lambda: screen.scans >= 1 and screen.host_errors
                       and len([k for k in table_rows(screen) if k.startswith("local/")]) == 3,
                       what="a scan with both runs, the dead one and the host error")
        rows = table_rows(screen)
        assert rows[f"local/{alpha.run_id}"][2:4] == ["alpha", RUNNING]
        assert rows[f"local/{dead.run_id}"][2:4] == ["crashed", LOST]
        (host,) = config.hosts
        error_row = rows[f"error:{host}"]
        assert error_row[3] == "error" and "cannot reach 127.0.0.1" in error_row[5]
        # Enter on alpha's row: the dashboard shows alpha's layers
        keys = list(rows)
        screen.query_one("#runs-table").move_cursor(row=keys.index(f"local/{alpha.run_id}"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunsScreen), what="dismiss")
        table = app.query_one(LayerTable)
        await wait_for(pilot, lambda: table.row_count == 2, what="alpha's two layers")
        assert set(app.state.layers) == {"0", "2"} and app.state.name == "alpha"
        assert "alpha" in app.title
        # r from the dashboard: the Runs screen again; beta this time
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="r")
        screen = app.screen
        await wait_for(pilot, lambda: screen.scans >= 1, what="a scan")
        keys = list(table_rows(screen))
        screen.query_one("#runs-table").move_cursor(
            row=keys.index(f"local/{trainings[1].agent.run_id}"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state.name == "beta" and table.row_count == 3,
                       what="beta's three layers")
        assert set(app.state.layers) == {"0", "2", "4"}


async def test_add_host_is_remembered_and_escape_goes_back(config, tmp_path):
    app = RunsApp(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="the screen")
        await pilot.press("a")
        port = free_port()  # nothing listens: its scan fails at once
        await pilot.press(*f"me@127.0.0.1:{port}")
        await pilot.press("enter")
        await pilot.pause()
        url = f"ssh://me@127.0.0.1:{port}"
        assert url in load_hosts()
        assert load_hosts() == config.hosts
        screen = app.screen
        await wait_for(pilot, lambda: url in screen.host_errors, what="the new host's error")
        assert f"cannot reach me@127.0.0.1:{port}" in screen.host_errors[url]
        table = screen.query_one("#runs-table")
        table.move_cursor(row=[str(r.key.value) for r in table.ordered_rows].index(f"error:{url}"))
        await pilot.press("x")  # forget it again
        await pilot.pause()
        assert url not in load_hosts() and f"error:{url}" not in table_rows(screen)
        await pilot.press("escape")  # the first screen of `attach`: Esc leaves
        await pilot.pause()
    assert app.return_value is None


async def test_open_recording_from_the_runs_screen(config, tmp_path):
    db = tmp_path / "run.db"
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent = watch(model, opt, name="recorded", every=1, budget=1.0, record=str(db))
    x = torch.randn(16, 5)
    for _ in range(20):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    agent.close()
    app = RunsApp(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="the screen")
        await pilot.press("o")
        await pilot.press(*str(db))
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunsScreen), what="dismiss")
        assert type(app.source).__name__ == "ReplaySource"
        await wait_for(pilot, lambda: set(app.state.layers) == {"0", "2"}, what="its layers")
        assert "replay of" in app.title


def test_model_states_idle_finished_lost():
    entry = RunEntry("r1", "one", 1, [], "ipc:///x", 0.0, "h", steps=10, updated=100.0)
    model = RunsModel(idle_after_s=30)
    model.fold("local", [(entry, True)], now=0.0, wall=100.0)
    assert [r.state for r in model.rows()] == [RUNNING]
    model.fold("local", [(entry, True)], now=31.0, wall=101.0)  # steps stood still 31 s
    assert [r.state for r in model.rows()] == [IDLE]
    moved = RunEntry(**{**entry.to_json(), "steps": 11, "updated": 131.0})
    model.fold("local", [(moved, True)], now=32.0, wall=132.0)
    assert [r.state for r in model.rows()] == [RUNNING]
    model.fold("local", [(moved, True)], now=33.0, wall=200.0)  # entry not rewritten for 69 s
    assert [r.state for r in model.rows()] == [IDLE]
    model.fold("local", [], now=34.0)  # it unregistered
    assert [r.state for r in model.rows()] == [FINISHED]
    model.fold("local", [(entry, False)], now=35.0)  # a registered entry, its process dead
    assert [r.state for r in model.rows()] == [LOST]
    model.fold("local", [], now=36.0)  # lost stays lost when its entry is pruned
    assert [r.state for r in model.rows()] == [LOST]


async def test_the_dashboard_lists_r_in_help_and_palette(config):
    from symwatch.sources.memory import ListSource
    from symwatch.tui.app import SymwatchApp
    from symwatch.tui.commands import palette_commands
    from symwatch.tui.screens.help import KEYS

    assert ("r", next(what for key, what in KEYS if key == "r")) in KEYS
    app = SymwatchApp(ListSource())
    async with app.run_test(size=(120, 40)) as pilot:
        assert "Runs" in [c.title for c in palette_commands(app)]
        app.runs_config = config
        shown = lambda: {b.binding.action for b in app.active_bindings.values()  # noqa: E731
                         if b.binding.show and b.enabled}
        assert {"pause", "next_view", "events"} <= shown()
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="r")
        # the dashboard's keys are off the runs list's footer (they pushed it past 120
        # columns, cut mid-word) and do nothing there
        await wait_for(pilot, lambda: not {"pause", "next_view", "events"} & shown()
                       and "refresh" in shown(), what="the runs list's own footer")
        assert app.check_action("events", ()) is False  # the key does nothing there
        assert app.check_action("replay", ("seek_end",)) is False  # End is the list's
        await pilot.press("escape")  # back to the dashboard, not out of the app
        await wait_for(pilot, lambda: not isinstance(app.screen, RunsScreen), what="Esc")
        assert app.is_running


def test_hosts_file_is_read_leniently(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# my hosts\ngpu-box\nssh://me@node-7:2222/\nssh://h:99999\n\n")
    assert load_hosts(path) == ["ssh://gpu-box", "ssh://me@node-7:2222"]
    config = RunsConfig(hosts=["ssh://new-box"], hosts_path=path, options=SshOptions())
    assert config.hosts == ["ssh://gpu-box", "ssh://me@node-7:2222", "ssh://new-box"]
    assert load_hosts(path) == config.hosts  # the new one is remembered
