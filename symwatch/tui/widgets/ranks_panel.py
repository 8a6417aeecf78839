"""The per-rank view and the GPU panel: every rank's step, loss, speed and memory side by side
(stragglers and diverging ranks highlighted), and every node's GPUs with the ranks on them.

`RanksLine` is one line under the GPU line of the main view, shown only for a run with more
than one rank; `g` opens `RanksScreen`, the full table and GPU panel, redrawn live from the
app's RunState. The text builders are plain functions of the state, so tests read them too.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from symwatch.state import numbers
from symwatch.state.gpu_clocks import clock_text, throttled
from symwatch.state.ranks import RankView
from symwatch.state.run_state import RunState

NO_GPU = "no NVIDIA GPU visible"
REDRAW_S = 0.25


def _gib(n: Any) -> str:
    return numbers.gib(n) if n is not None else numbers.NA


def memory_text(view: RankView) -> str:
    """The rank's allocator figures: allocated / reserved (peak), GiB; N/A without CUDA."""
    mem = view.memory
    if not isinstance(mem, dict):
        return numbers.NA
    return (f"{_gib(mem.get('allocated'))}/{_gib(mem.get('reserved'))} GiB "
            f"(peak {_gib(mem.get('peak'))})")


def ranks_table(state: RunState) -> Table:
    """rank, node, step, loss, steps/s, step time, memory, status; one row per rank."""
    stragglers, diverging = state.ranks.stragglers(), state.ranks.diverging()
    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    for name, justify in (("rank", "right"), ("node", "left"), ("local", "right"),
                          ("step", "right"), ("loss", "right"), ("steps/s", "right"),
                          ("step time", "right"), ("memory (alloc/reserved)", "right"),
                          ("status", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for view in state.ranks.views():
        status, style = _status(view, stragglers, diverging)
        table.add_row(
            str(view.rank), view.host or "?",
            str(view.local_rank) if view.local_rank is not None else numbers.NA,
            f"{view.step:,}" if view.step is not None else numbers.NA,
            Text(numbers.compact(view.loss),
                 style="bold red" if view.rank in diverging else ""),
            numbers.compact(view.steps_per_s, 3),
            _seconds(view.step_time),
            memory_text(view),
            Text(status, style=style),
            style="on #3a1f1f" if view.rank in stragglers or view.rank in diverging else None)
    return table


def _status(view: RankView, stragglers: dict[int, str],
            diverging: dict[int, str]) -> tuple[str, str]:
    if view.finished:
        return "finished", "dim"
    parts, style = [], "green"
    if view.rank in stragglers:
        parts.append(f"straggler: {stragglers[view.rank]}")
        style = "bold yellow"
    if view.rank in diverging:
        parts.append(f"diverging: {diverging[view.rank]}")
        style = "bold red"
    if view.restart:
        parts.append(f"restart {view.restart}")
    return ("; ".join(parts) or "ok"), style


def _seconds(value: float | None) -> str:
    if value is None:
        return numbers.NA
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def gpu_panel_text(state: RunState) -> Text:
    """Per node (its polling rank): each device's utilisation, memory used/total, temperature,
    power/limit, SM clock/max and throttle reasons (warning colour when one slows it), the ranks training on it with their allocator figures, and the job's own
    memory on it from NVML's process list. N/A for what a device cannot report."""
    text = Text()
    reports = state.ranks.gpu_reports()
    if not reports:
        text.append(" no GPU report yet", "dim")
        return text
    for i, view in enumerate(reports):
        if i:
            text.append("\n")
        text.append_text(_node_text(view, view.gpu or {}, state))
    reported = {d.get("uuid") for r in reports for d in (r.gpu or {}).get("devices", [])
                if d.get("uuid")}
    uncovered = [v for v in state.ranks.views()
                 if v.memory and v.memory.get("uuid") not in reported]
    for view in uncovered:
        text.append(f"\n rank {view.rank}", "bold")
        text.append(f" on {view.host or '?'}: cuda:{view.memory.get('device', '?')} "
                    f"allocator {memory_text(view)} (its node's GPUs are not reported)")
    return text


def _node_text(view: RankView, gpu: dict[str, Any], state: RunState) -> Text:
    text = Text()
    text.append(f" {view.host or '?'} (rank {view.rank} polls)", "bold")
    if not gpu.get("available"):
        text.append(f"  {NO_GPU}", "yellow")
        reason = str(gpu.get("reason") or "")
        if reason.startswith(NO_GPU):
            reason = reason[len(NO_GPU):].strip(" ()")
        if reason:
            text.append(f" ({reason})", "dim")
        return text
    devices = gpu.get("devices") or []
    if not devices:
        text.append("  no devices reported", "dim")
    for dev in devices:
        text.append(f"\n  {dev.get('index', '?')}: {dev.get('name', '?')}", "bold")
        text.append(f"  util {numbers.with_unit(dev.get('util'), '%')}")
        text.append(f"  mem {_gib(dev.get('mem_used'))}/{_gib(dev.get('mem_total'))} GiB")
        text.append(f"  {numbers.with_unit(dev.get('temp'), '°C')}")
        power = numbers.with_unit(dev.get("power"), "")
        text.append(f"  {power}/{numbers.with_unit(dev.get('power_limit'), ' W')}")
        clocks = clock_text(dev)  # the SM clock and why NVML holds it down
        if clocks:
            text.append(f"  {clocks}", "bold yellow" if throttled(dev) else "")
        if "job_mem_used" in dev:  # NVML's process list: this job's processes on the device
            used = dev.get("job_mem_used")
            text.append(f"  job {_gib(used) + ' GiB' if used is not None else numbers.NA} "
                        f"({len(dev.get('processes') or [])} proc)", "cyan")
        for rank in state.ranks.ranks_on_device(dev.get("uuid"), view.host):
            text.append(f"\n      rank {rank.rank}: {memory_text(rank)}", "dim")
    return text


def ranks_line_text(state: RunState) -> Text:
    """One line for the main view: how many ranks, and who straggles or diverges."""
    text = Text(no_wrap=True, overflow="ellipsis")
    views = state.ranks.views()
    text.append(" ranks ", "dim")
    text.append(f"{len(views)}", "bold")
    stragglers, diverging = state.ranks.stragglers(), state.ranks.diverging()
    steps = [v.step for v in views if v.step is not None]
    if steps:
        text.append(f"  steps {min(steps):,}–{max(steps):,}", "dim")
    for rank, why in stragglers.items():
        text.append(f"  rank {rank} straggler ({why})", "bold yellow")
    for rank, why in diverging.items():
        text.append(f"  rank {rank} diverging ({why})", "bold red")
    if not stragglers and not diverging:
        text.append("  all in step", "green")
    text.append("   g: ranks & GPUs", "dim")
    return text


class RanksLine(Static):
    DEFAULT_CSS = """
    RanksLine {
        height: 1;
        display: none;
    }
    """

    def show(self, state: RunState) -> None:
        self.display = len(state.ranks) > 1
        if self.display:
            self.update(ranks_line_text(state), layout=False)  # one line, fixed height


class RanksScreen(ModalScreen[None]):
    """Every rank and every node's GPUs, redrawn from the app's live state."""

    DEFAULT_CSS = """
    RanksScreen {
        align: center middle;
    }
    #ranks-box {
        width: 98%;
        height: 95%;
        border: round $primary;
        background: $surface;
        padding: 0 1;
    }
    #ranks-title, #gpu-title {
        height: auto;
        text-style: bold;
        padding-top: 1;
    }
    """

    BINDINGS = [Binding("escape", "close", "Close"), Binding("g", "close", "Close", show=False)]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="ranks-box"):
            # where this view reads the run from (its socket, or ssh://…): off the header,
            # whose width goes to the run's numbers
            yield Static(id="ranks-endpoint")
            yield Static("ranks", id="ranks-title")
            yield Static(id="ranks-table")
            yield Static("GPUs", id="gpu-title")
            yield Static(id="gpu-panel")

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(REDRAW_S, self.redraw)

    def redraw(self) -> None:
        state: RunState = self.app.state  # type: ignore[attr-defined]
        count = len(state.ranks)
        world = state.world_size
        title = f"ranks — {count} reporting" + (f" of {world}" if world else "")
        self.query_one("#ranks-title", Static).update(title)
        endpoint = getattr(self.app, "endpoint", "")
        self.query_one("#ranks-endpoint", Static).update(
            Text.assemble(("reading from ", "dim"), (endpoint, "italic")) if endpoint else "")
        self.query_one("#ranks-table", Static).update(ranks_table(state))
        self.query_one("#gpu-panel", Static).update(gpu_panel_text(state))

    def action_close(self) -> None:
        self.dismiss(None)
