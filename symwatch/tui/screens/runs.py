"""The Runs screen: every run known here or on added SSH hosts; Enter attaches, `o` a recording.

Local runs come from the registry (`runtime.registered_runs`, dead entries included), remote
ones from `symwatch ls --json` over ssh (both through symwatch.sources.discovery). A worker
thread scans every
REFRESH_S, so ssh never blocks the UI; a host that fails shows its error as a row of its own.
States: *running*; *idle* (its step count has not moved, or its registry entry has not been
rewritten, for IDLE_AFTER_S); *lost* (its process died without unregistering); *finished*
(it was listed and then unregistered: a run says goodbye and removes its entry as it ends).
Hosts given with `attach --ssh-host` or added with `a` are remembered in
$XDG_CONFIG_HOME/symwatch/hosts (one ssh:// URL a line).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from symwatch.core.runtime import RunEntry
from symwatch.sources import discovery
from symwatch.sources.base import MessageSource, SourceError
from symwatch.sources.discovery import SshOptions, scan_host, scan_local
from symwatch.sources.open import open_recording
from symwatch.tui.run_text import started_text

REFRESH_S = 2.0  # the list is read this often (the agent rewrites its entry every 5 s)
REMOTE_REFRESH_S = 6.0  # each host scan is an ssh login: less often
IDLE_AFTER_S = 30.0
FINISHED_KEPT_S = 600.0  # finished runs stay listed this long
LOCAL = "local"
RUNNING, IDLE, FINISHED, LOST = "running", "idle", "finished", "lost"
STATE_STYLES = {RUNNING: "bold green", IDLE: "yellow", FINISHED: "dim", LOST: "bold red"}
# (`symwatch ls` has each run's command; here its width goes to the last transition)
COLUMNS = ("where", "run id", "name", "state", "steps", "last transition", "started")


@dataclass
class RunsConfig:
    """What the screen lists and how it reaches hosts. `hosts` from `attach --ssh-host` join
    the remembered ones (and are remembered)."""

    hosts: list[str] = field(default_factory=list)
    options: SshOptions | None = None
    curve: Any = None  # CurveZMQ client settings for local runs that need them
    hosts_path: Path | None = None
    model: Any = None  # the RunsModel, kept across visits (a run seen, then gone: finished)

    def __post_init__(self) -> None:
        """SourceError for a given host that is not one."""
        if self.model is None:
            self.model = RunsModel()
        self.hosts = discovery.remembered_hosts(self.hosts, self.hosts_path)
        if self.options is None:
            self.options = discovery.default_ssh_options()  # None: hosts show that error

    def add_host(self, text: str) -> str:
        """SourceError when `text` is not a host, OSError when it cannot be remembered."""
        return discovery.add_host(self.hosts, text, self.hosts_path)

    def remove_host(self, url: str) -> None:
        discovery.remove_host(self.hosts, url, self.hosts_path)


class RunsHost(Protocol):
    """What the Runs screen needs of the app it is pushed on (symwatch.tui.app.SymwatchApp)."""

    runs_config: RunsConfig | None

    def attach_source(self, source: MessageSource, title: str | None = None) -> None: ...


@dataclass
class RunRow:
    key: str  # the table's row key: "local/<run_id>" or "<host url>/<run_id>"
    where: str  # LOCAL or the host URL
    entry: RunEntry
    state: str


@dataclass
class _Seen:
    row: RunRow
    steps: int
    steps_changed: float  # our clock
    gone_at: float | None = None


class RunsModel:
    """Folds scans into rows with states; no Textual, no I/O (the worker does the I/O)."""

    def __init__(self, idle_after_s: float = IDLE_AFTER_S) -> None:
        self.idle_after_s = idle_after_s
        self._seen: dict[str, _Seen] = {}

    def fold(self, where: str, entries: Sequence[tuple[RunEntry, bool]], now: float,
             wall: float | None = None) -> None:
        """One scan of `where`: its entries, each with whether its process is alive."""
        wall = time.time() if wall is None else wall
        present = set()
        for entry, alive in entries:
            key = f"{where}/{entry.run_id}"
            present.add(key)
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen(RunRow(key, where, entry, RUNNING), entry.steps,
                                               now)
            elif seen.steps != entry.steps:  # it moved: idle is counted from here
                seen.steps, seen.steps_changed = entry.steps, now
            seen.row.entry, seen.gone_at = entry, None
            stale = entry.updated and wall - entry.updated > self.idle_after_s and where == LOCAL
            if not alive:
                seen.row.state = LOST
            elif stale or now - seen.steps_changed > self.idle_after_s:
                seen.row.state = IDLE
            else:
                seen.row.state = RUNNING
        for key, seen in list(self._seen.items()):
            if seen.row.where != where or key in present:
                continue
            if seen.gone_at is None:
                seen.gone_at = now
                if seen.row.state != LOST:  # it unregistered: it said goodbye
                    seen.row.state = FINISHED
            elif now - seen.gone_at > FINISHED_KEPT_S:
                del self._seen[key]

    def forget(self, where: str) -> None:
        for key in [k for k, s in self._seen.items() if s.row.where == where]:
            del self._seen[key]

    def rows(self) -> list[RunRow]:
        order = {LOCAL: 0}
        return sorted((replace(s.row) for s in self._seen.values()),
                      key=lambda r: (order.get(r.where, 1), r.where, r.entry.started))


def last_transition_text(entry: RunEntry) -> str:
    last = entry.extra.get("last_transition") if isinstance(entry.extra, dict) else None
    if not isinstance(last, dict):
        return ""
    message = str(last.get("message", ""))
    return message or f"step {last.get('step', '?')}"


class RunsScreen(Screen[None]):
    """See the module docstring. Enter (or `o`) hands the chosen run's MessageSource to
    `app.attach_source` and closes the screen; Esc closes it (quits when `first`)."""

    DEFAULT_CSS = """
    RunsScreen #runs-title { height: 1; padding: 0 1; }
    RunsScreen #runs-table { height: 1fr; }
    RunsScreen #runs-errors { height: auto; max-height: 6; padding: 0 1; color: $error; }
    RunsScreen #runs-hint { height: auto; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "add_host", "Add host"),
        Binding("x", "remove_host", "Remove host"),
        Binding("o", "open_recording", "Open recording"),
        Binding("f5,ctrl+r", "refresh", "Refresh", key_display="F5"),
    ]

    def __init__(self, config: RunsConfig, *, refresh_s: float = REFRESH_S,
                 first: bool = False) -> None:
        super().__init__()
        self.config = config
        self.refresh_s = refresh_s
        self.model: RunsModel = config.model
        self.first = first  # the app starts here: Esc quits instead of going back
        self.host_errors: dict[str, str] = {}
        self.rows: dict[str, RunRow] = {}
        self.scans = 0  # completed scans (tests wait on it)
        self._scanning = threading.Lock()
        self._input_mode: str | None = None
        # the last scan of each host and when (the scan thread's; hosts are slower to ask)
        self._remote: dict[str, list[tuple[RunEntry, bool]] | str] = {}
        self._remote_at: dict[str, float] = {}

    def compose(self) -> ComposeResult:
        yield Static("Runs — scanning…", id="runs-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="runs-errors")
        yield Input(id="runs-input")
        yield Static("", id="runs-hint")
        yield Footer()

    def on_resize(self) -> None:
        if self.scans:
            self._draw()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in COLUMNS:
            table.add_column(col, key=col)
        self.query_one(Input).display = False
        table.focus()
        self._scan_soon()
        self.set_interval(self.refresh_s, self._scan_soon)

    # -- scanning (worker threads) -------------------------------------------------------------

    def action_refresh(self) -> None:
        """F5: scan now, hosts included."""
        self._remote_at.clear()
        self._scan_soon()

    def _scan_soon(self) -> None:
        if self._scanning.acquire(blocking=False):  # a slow host: skip, never pile up scans
            # a daemon thread, not a Textual worker: quitting never waits for a slow ssh
            threading.Thread(target=self._scan, name="symwatch-runs-scan", daemon=True).start()

    def _scan(self) -> None:
        try:
            now = time.monotonic()
            due = [h for h in self.config.hosts if h not in self._remote
                   or now - self._remote_at.get(h, 0.0) >= REMOTE_REFRESH_S]
            # one daemon thread per host, at once: a slow host delays no other, and quitting
            # never waits for one (ssh gives up by itself within its timeouts)
            threads = [threading.Thread(target=self._scan_host, args=(h,), daemon=True,
                                        name=f"symwatch-runs {h}") for h in due]
            for thread in threads:
                thread.start()
            local = scan_local()
            for thread in threads:
                thread.join()
            results = {h: self._remote[h] for h in self.config.hosts if h in self._remote}
            self.app.call_from_thread(self._show, local, results)
        except RuntimeError:
            pass  # the screen or app is closing
        finally:
            self._scanning.release()

    def _scan_host(self, host: str) -> None:
        self._remote[host] = scan_host(host, self.config.options)
        self._remote_at[host] = time.monotonic()

    def _show(self, local: list[tuple[RunEntry, bool]],
              remote: dict[str, list[tuple[RunEntry, bool]] | str]) -> None:
        now = time.monotonic()
        self.model.fold(LOCAL, local, now)
        self.host_errors = {}
        for host, result in remote.items():
            if isinstance(result, str):
                self.host_errors[host] = result
            else:
                self.model.fold(host, result, now)
        for where in {r.where for r in self.model.rows()} - {LOCAL} - set(self.config.hosts):
            self.model.forget(where)
        self.scans += 1
        try:
            self._draw()
        except NoMatches:
            pass  # the scan ended after the screen was closed: nothing to draw on

    def _draw(self) -> None:
        table = self.query_one(DataTable)
        rows = self.model.rows()
        self.rows = {r.key: r for r in rows}
        keep = self._cursor_key()
        table.clear()
        cells = []
        for row in rows:
            e = row.entry
            where = "local" if row.where == LOCAL else discovery.host_label(row.where)
            cells.append((row.key, [
                _clip(where, 16), e.run_id, _clip(e.name, 20),
                Text(row.state, style=STATE_STYLES.get(row.state, "")), f"{e.steps:,}",
                last_transition_text(e), started_text(e.started)]))
        for host, error in self.host_errors.items():  # inline, and in full below the table
            cells.append((f"error:{host}", [
                _clip(discovery.host_label(host), 16), "", "", Text("error", style="bold red"),
                "", Text(error, style="red"), ""]))
        # The last transition (or error) takes the width the other columns leave, so the row
        # fits the screen (a DataTable pads each cell by one column on each side).
        others = sum(max([len(str(c[i])) for _, c in cells] + [len(COLUMNS[i])])
                     for i in range(len(COLUMNS)) if i != 5)
        room = max(16, self.size.width - others - 2 * len(COLUMNS) - 2)
        for key, values in cells:
            text = values[5]
            values[5] = (Text(_clip(text.plain, room), style=text.style)
                         if isinstance(text, Text) else _clip(text, room))
            table.add_row(*values, key=key)
        self.query_one("#runs-errors", Static).update(Text("\n".join(
            f"{discovery.host_label(h)}: {e}" for h, e in self.host_errors.items())))
        if keep is not None:
            index = next((i for i, key in enumerate(self._row_keys()) if key == keep), None)
            if index is not None:
                table.move_cursor(row=index, animate=False)
        live = sum(r.state in (RUNNING, IDLE) for r in rows)
        hosts = len(self.config.hosts)
        title = (f"Runs — {live} live of {len(rows)} listed · this machine"
                 + (f" and {hosts} host{'s' * (hosts != 1)}" if hosts else "")
                 + f" · refreshed {time.strftime('%H:%M:%S')}")
        self.query_one("#runs-title", Static).update(Text(title, style="bold"))
        hint = ("Enter attach · a add an ssh host · x remove it · o open a recording · "
                "Esc back")
        if not rows and not self.host_errors:
            hint = ("No runs yet: start one (symwatch run -- python train.py), add a host "
                    "with a, or open a recording with o.")
        self.query_one("#runs-hint", Static).update(Text(hint, style="dim"))

    def _row_keys(self) -> list[str]:
        table = self.query_one(DataTable)
        return [str(r.key.value) for r in table.ordered_rows]

    def _cursor_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    # -- attaching -----------------------------------------------------------------------------

    @on(DataTable.RowSelected, "#runs-table")
    def _chosen(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        if key.startswith("error:"):
            host = key[len("error:"):]
            self.notify(self.host_errors.get(host, ""), title=host, severity="error",
                        timeout=10)
            return
        row = self.rows.get(key)
        if row is None:
            return
        if row.state in (FINISHED, LOST):
            self.notify(f"{row.entry.name} has {row.state}: nothing to attach to (its recording, "
                        "if it made one, opens with o)", severity="warning")
            return
        if row.where == LOCAL:
            try:
                source = discovery.open_local_run(row.entry, curve=self.config.curve)
            except SourceError as exc:
                self.notify(str(exc), severity="error")
                return
            self._show_source(source, f"symwatch — {row.entry.name}")
            return
        self.notify(f"connecting to {row.entry.name} on {discovery.host_label(row.where)}…",
                    timeout=3)
        threading.Thread(target=self._open_remote, args=(row,), name="symwatch-runs-attach",
                         daemon=True).start()

    def _open_remote(self, row: RunRow) -> None:
        """Worker thread: ssh may take seconds to authenticate and forward."""
        try:
            source = discovery.open_host_run(row.where, row.entry, self.config.options,
                                             curve=self.config.curve)
        except SourceError as exc:
            try:
                self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)
            except RuntimeError:
                pass  # the app has gone
            return
        title = f"symwatch — {row.entry.name} on {discovery.host_label(row.where)}"
        try:
            self.app.call_from_thread(self._show_source, source, title)
        except RuntimeError:
            source.close()  # the app quit while ssh connected: end the tunnel

    def _show_source(self, source: MessageSource, title: str) -> None:
        app: RunsHost = self.app  # type: ignore[assignment]
        self.dismiss(None)
        app.attach_source(source, title)

    # -- hosts and recordings ------------------------------------------------------------------

    def _ask(self, mode: str, placeholder: str) -> None:
        field_ = self.query_one(Input)
        self._input_mode = mode
        field_.placeholder = placeholder
        field_.value = ""
        field_.display = True
        field_.focus()

    def action_add_host(self) -> None:
        self._ask("host", "ssh://[user@]host[:port] or a Host from ~/.ssh/config; Enter adds, "
                          "Esc cancels")

    def action_open_recording(self) -> None:
        self._ask("recording", "path of a recording (symwatch record / SYMWATCH_RECORD); "
                               "Enter opens, Esc cancels")

    def action_remove_host(self) -> None:
        key = self._cursor_key()
        row = self.rows.get(key or "")
        host = (key[len("error:"):] if key and key.startswith("error:")
                else row.where if row is not None else None)
        if host is None or host == LOCAL:
            self.notify("select a row of the host to remove", severity="warning")
            return
        self.config.remove_host(host)
        self.model.forget(host)
        self.host_errors.pop(host, None)
        self._draw()
        self.notify(f"removed {host}")

    @on(Input.Submitted, "#runs-input")
    def _submitted(self, event: Input.Submitted) -> None:
        mode, text = self._input_mode, event.value.strip()
        self._close_input()
        if not text:
            return
        if mode == "host":
            try:
                url = self.config.add_host(text)
            except SourceError as exc:
                self.notify(str(exc), severity="error")
                return
            except OSError as exc:
                self.notify(f"cannot remember the host: {exc}", severity="warning")
                return
            self.notify(f"added {url}; listing its runs…")
            self.action_refresh()
        elif mode == "recording":
            self._open_recording(os.path.expanduser(text))

    def _open_recording(self, path: str) -> None:
        try:
            source = open_recording(path)
        except SourceError as exc:
            self.notify(str(exc), severity="error")
            return
        self._show_source(source, f"symwatch — replay of {path}")

    def _close_input(self) -> None:
        field_ = self.query_one(Input)
        field_.display = False
        self._input_mode = None
        self.query_one(DataTable).focus()

    def action_back(self) -> None:
        if self._input_mode is not None:
            self._close_input()
            return
        if self.first:
            self.app.exit()
        else:
            self.dismiss(None)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def open_runs_screen(app: Any, *, first: bool = False) -> None:
    """Push the Runs screen over `app` (a Textual App that is a RunsHost: the dashboard's
    `r`)."""
    config = app.runs_config
    if config is None:
        config = app.runs_config = RunsConfig()
    app.push_screen(RunsScreen(config, first=first))
