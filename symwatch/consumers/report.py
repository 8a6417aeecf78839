"""A self-contained HTML report of a recording: the loss, every layer's indicators over steps with
transitions marked, the events, and the GPUs over time. Plots are inline SVG written here (the
observer has no plotting dependency), so the file opens anywhere and can be attached to a
paper or a ticket as it is."""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Any, Iterable

from symwatch.core import protocol
from symwatch.consumers.export import records
from symwatch.state import axis
from symwatch.state.gpu_clocks import throttle_reasons, throttled

Point = tuple[float, float | None]

CHART_W, CHART_H, PAD = 320, 110, 6
Y_TICKS = 5  # labelled y ticks per chart (nice values: symwatch.state.axis)
LOSS_W, LOSS_H = 760, 200


def svg_chart(points: list[Point], marks: Iterable[float] = (), *, width: int = CHART_W,
              height: int = CHART_H, log: bool = False) -> str:
    """A line chart of (x, y) points with axes; None breaks the line (N/A is a gap, never 0);
    a dashed vertical line at each mark. log=True plots log10(y) for positive y.

    The y axis follows symwatch.state.axis, as the TUI's charts do: `Y_TICKS` nice ticks
    labelled at the left with light grid lines, a minimum range (a 0.8 % move is a small move,
    a constant a flat line at mid-height with its value as the middle tick, float noise around
    0 is 0); the x axis labels the first, middle and last step."""
    def ty(v: float | None) -> float | None:
        if v is None or not math.isfinite(v):
            return None
        if log:
            return math.log10(v) if v > 0 else None
        return axis.denoise(v)

    pts = [(x, ty(y)) for x, y in points]
    ax = axis.axis([y for _, y in pts], Y_TICKS)
    if ax is None:
        return f'<svg width="{width}" height="{height}"><text x="8" y="20">no data</text></svg>'
    x0, x1 = min(x for x, _ in pts), max(x for x, _ in pts)
    span_x = (x1 - x0) or 1
    tick_text = [f"{10 ** t:.3g}" for t in ax.ticks] if log else [s.strip() for s in ax.labels]
    left = PAD + 6 * max(len(t) for t in tick_text) + 4  # room for the y labels (10 px font)
    top, bottom = PAD, height - PAD - 14  # the plot area; the step labels under it

    def sx(x: float) -> float:
        return left + (x - x0) / span_x * (width - left - PAD)

    def sy(y: float) -> float:
        return bottom - ax.fraction(y) * (bottom - top)

    runs: list[list[tuple[float, float]]] = [[]]  # stretches between gaps
    for x, y in pts:
        if y is None:
            runs.append([])
        else:
            runs[-1].append((sx(x), sy(y)))
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>']
    for tick, words in zip(ax.ticks, tick_text):  # y ticks: a grid line and its label
        y = sy(tick)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - PAD}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" stroke="#e4e4e4"/>'
                     f'<text class="ytick" x="{left - 3}" y="{y + 3.5:.1f}" text-anchor="end" '
                     f'font-size="10" fill="#666">{html.escape(words)}</text>')
    for m in marks:
        if x0 <= m <= x1:
            parts.append(f'<line x1="{sx(m):.1f}" x2="{sx(m):.1f}" y1="{top}" '
                         f'y2="{bottom}" stroke="#d9534f" stroke-dasharray="3,2"/>')
    for run in runs:
        if len(run) > 1:
            points_text = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
            parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" '
                         f'points="{points_text}"/>')
        elif run:  # an isolated sample between gaps: a dot
            parts.append(f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="1.5" '
                         'fill="#1f77b4"/>')
    first, middle, last = axis.step_labels(int(x0), int(x1))
    anchors = [(sx(x0), "start", first), (sx(x1), "end", last)]
    if x1 - x0 >= 2 and middle not in (first, last):
        anchors.insert(1, (sx((x0 + x1) / 2), "middle", middle))
    for x, anchor, words in anchors:  # x ticks: the first, middle and last step
        parts.append(f'<text class="xtick" x="{x:.1f}" y="{height - 4}" text-anchor="{anchor}" '
                     f'font-size="10" fill="#666">{words}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _throttle_section(messages: list[protocol.Message]) -> list[str]:
    """A table of the GPUs whose clocks were held down (power cap, thermal, …: any reason but
    idle and application clocks) in some sample of the run; nothing when none was."""
    seen: dict[tuple[Any, Any], dict[str, Any]] = {}  # (rank, device index) -> what was seen
    for message in messages:
        if message.kind != protocol.GPU:
            continue
        for dev in message.payload.get("devices") or []:
            if not isinstance(dev, dict) or throttle_reasons(dev) is None:
                continue
            entry = seen.setdefault((message.rank, dev.get("index")), {
                "name": dev.get("name"), "samples": 0, "throttled": 0, "reasons": {},
                "first": None, "last": None, "lowest": None})
            entry["samples"] += 1
            slowing = throttled(dev)
            if not slowing:
                continue
            entry["throttled"] += 1
            for reason in slowing:
                entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
            entry["first"] = message.step if entry["first"] is None else entry["first"]
            entry["last"] = message.step
            clock = dev.get("sm_clock_mhz")
            if isinstance(clock, (int, float)) and not isinstance(clock, bool) and (
                    entry["lowest"] is None or clock < entry["lowest"]):
                entry["lowest"] = clock
    hit = {k: v for k, v in seen.items() if v["throttled"]}
    if not hit:
        return []
    out = ["<h2>GPU throttling</h2>",
           "<p>Clocks were held down during the run (NVML's clock-throttle reasons; idle and "
           "application clocks are not counted):</p>",
           "<table><tr><th>rank</th><th>GPU</th><th>throttled samples</th><th>reasons</th>"
           "<th>steps</th><th>lowest SM clock while throttled</th></tr>"]
    for (rank, index), e in sorted(hit.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        reasons = ", ".join(f"{r} ({n})" for r, n in sorted(e["reasons"].items(),
                                                             key=lambda rn: -rn[1]))
        lowest = f"{round(e['lowest'])} MHz" if e["lowest"] is not None else "N/A"
        out.append(f"<tr><td>{html.escape(str(rank))}</td><td>{html.escape(str(index))} "
                   f"{html.escape(str(e['name'] or ''))}</td>"
                   f"<td>{e['throttled']} of {e['samples']}</td><td>{html.escape(reasons)}</td>"
                   f"<td>{e['first']:,}–{e['last']:,}</td><td>{lowest}</td></tr>")
    out.append("</table>")
    return out


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def build_report(messages: Iterable[protocol.Message], *, source: str = "") -> str:
    """The whole report as one HTML string: one section per run of the recording (runs
    appended to one file, or an agent restarted, each keep their own steps: one report over
    them all read as one run, its events out of order)."""
    runs: dict[tuple[str, int], list[protocol.Message]] = {}
    for message in messages:
        runs.setdefault((message.run, message.restart), []).append(message)
    sections = [_run_section(msgs, source) for msgs in runs.values()] or [
        _run_section([], source)]
    title = sections[0][0] if len(sections) == 1 else f"{len(sections)} runs"
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>symwatch — {title}</title>",
           "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222}"
           "h2{margin-top:32px}.grid{display:flex;flex-wrap:wrap;gap:12px}"
           ".cell{font-size:12px}table{border-collapse:collapse;font-size:13px}"
           "td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left}"
           ".muted{color:#777}</style></head><body>"]
    if len(sections) > 1:
        links = ", ".join(f"<a href='#run-{i}'>{name} ({html.escape(run)}"
                          + (f", restart {restart}" if restart else "") + ")</a>"
                          for i, ((run, restart), (name, _)) in enumerate(zip(runs, sections)))
        out.append(f"<h1>symwatch — {len(sections)} runs in {html.escape(source)}</h1>"
                   f"<p class='muted'>runs appended to one recording (or an agent restarted), "
                   f"each with its own steps and section: {links}</p>")
    for i, (_, parts) in enumerate(sections):
        if len(sections) > 1:
            parts[0] = parts[0].replace("<h1>", f"<h1 id='run-{i}'>", 1)
        out.extend(parts)
    out.append("<p class='muted'>Made by symwatch report. Missing values are gaps, never 0."
               "</p></body></html>")
    return "\n".join(out)


def _run_section(messages: list[protocol.Message], source: str) -> tuple[str, list[str]]:
    """(the run's name, escaped; its section's HTML parts)."""
    meta = next((m.payload for m in reversed(messages) if m.kind == protocol.META), {})
    goodbye = next((m.payload for m in reversed(messages) if m.kind == protocol.GOODBYE), None)
    series: dict[tuple[str | None, str], list[Point]] = defaultdict(list)
    events: list[dict[str, Any]] = []
    gpus: dict[tuple[int, str], list[Point]] = defaultdict(list)
    for rec in records(messages, "all"):
        if rec["kind"] == "metric":
            series[(rec["layer"], rec["metric"])].append((rec["step"], rec["value"]))
        elif rec["kind"] == "event":
            events.append(rec)
        elif rec["kind"] == "gpu":
            for field in ("util", "mem_used", "sm_clock_mhz"):
                gpus[(int(rec["index"] or 0), field)].append((rec["step"], rec[field]))
    for key in [k for k, pts in gpus.items() if k[1] == "sm_clock_mhz"]:
        if all(v is None for _, v in gpus[key]):  # an agent without clocks, or N/A throughout
            del gpus[key]
    marks_by_layer: dict[str | None, list[float]] = defaultdict(list)
    for message in messages:  # every layer a grouped transition names, not only its top one
        if message.kind == protocol.EVENT and message.payload.get("severity") == "transition":
            for jump in message.payload.get("jumps") or [message.payload]:
                marks_by_layer[jump.get("layer")].append(message.step)
    all_marks = sorted({s for steps in marks_by_layer.values() for s in steps})
    layers = [row["name"] for row in meta.get("layers", [])] or sorted(
        {layer for layer, _ in series if layer is not None})
    name = html.escape(str(meta.get("name", "run")))
    steps = max((m.step for m in messages), default=0)

    out = [f"<h1>symwatch — {name}</h1>",
           f"<p class='muted'>{html.escape(source)} · host {html.escape(str(meta.get('host', '?')))}"
           f" · {steps:,} steps · {len(layers)} layers · {len(events)} events"
           + (f" · ended: {html.escape(str(goodbye.get('reason')))}" if goodbye else "")
           + "</p>",
           "<h2>Loss</h2>",
           svg_chart(series.get((None, "loss"), []), all_marks, width=LOSS_W, height=LOSS_H,
                     log=True),
           "<p class='muted'>log scale; dashed lines: transitions</p>",
           "<h2>Events</h2>"]
    if events:
        out.append("<table><tr><th>step</th><th>layer</th><th>what happened</th></tr>")
        for ev in events:
            out.append(f"<tr><td>{ev['step']:,}</td><td>{html.escape(str(ev['layer'] or ''))}"
                       f"</td><td>{html.escape(str(ev['message'] or ''))}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='muted'>none</p>")
    for layer in layers:
        metrics = sorted(m for (lay, m) in series if lay == layer)
        if not metrics:
            continue
        out.append(f"<h2>{html.escape(layer)}</h2><div class='grid'>")
        for metric in metrics:
            out.append(f"<div class='cell'><b>{html.escape(metric)}</b><br>"
                       f"{svg_chart(series[(layer, metric)], marks_by_layer.get(layer, []))}"
                       "</div>")
        out.append("</div>")
    if gpus:
        out.append("<h2>GPUs</h2><div class='grid'>")
        for (index, field), points in sorted(gpus.items()):
            out.append(f"<div class='cell'><b>GPU {index} {field}</b><br>"
                       f"{svg_chart(points)}</div>")
        out.append("</div>")
    out.extend(_throttle_section(messages))
    return name, out
