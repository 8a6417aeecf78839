"""`symwatch report`: a self-contained HTML report of a real recording of the demo run."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from xml.etree import ElementTree

from symwatch.consumers.export import records, write_csv
from symwatch.consumers.report import build_report, svg_chart
from symwatch.core import protocol


def test_report_of_a_recorded_demo_has_every_layer_and_the_transitions(tmp_path):
    recording, page = tmp_path / "demo.db", tmp_path / "report.html"
    subprocess.run([sys.executable, "-m", "symwatch_agent.entry.demo", "--steps", "160", "--delay",
                    "0", "--every", "1", "--endpoint", "tcp://127.0.0.1:0"],
                   env={**os.environ, "SYMWATCH_RECORD": str(recording)}, check=True,
                   capture_output=True, timeout=300)
    result = subprocess.run([sys.executable, "-m", "symwatch", "report", str(recording), "-o",
                             str(page)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    for layer in ("linear.0", "linear.1", "mlp.0", "mlp.2", "mlp.4"):
        assert f"<h2>{layer}</h2>" in text
    assert "linear.0 modes" in text or "linear.0: modes" in text  # the events table
    assert text.count("<svg") > 20 and "stroke-dasharray" in text  # charts, marked
    assert "http" not in text.replace("http://www.w3.org", "")  # nothing loaded from outside
    for svg in re.findall(r"<svg.*?</svg>", text, flags=re.S):
        root = ElementTree.fromstring(svg)  # every chart is well-formed
        if "no data" not in svg:  # … and has axes: 5 y ticks, steps under it
            assert len(_texts(root, "ytick")) == 5 and _texts(root, "xtick")


def test_missing_values_are_gaps_not_zeros():
    svg = svg_chart([(1, 1.0), (2, 2.0), (3, None), (4, 3.0), (5, 4.0)])
    assert svg.count("<polyline") == 2  # the None splits the line, it is not drawn at 0
    assert "no data" in svg_chart([(1, None)])


def _texts(root, kind: str) -> list[str]:
    return [el.text for el in root.iter("{http://www.w3.org/2000/svg}text")
            if el.get("class") == kind] + [el.text for el in root.iter("text")
                                           if el.get("class") == kind]


def _line_ys(root) -> list[float]:
    ys = []
    for el in root.iter("polyline"):
        ys += [float(pair.split(",")[1]) for pair in el.get("points").split()]
    return ys


def _plot_height(root) -> float:
    grid = [float(el.get("y1")) for el in root.iter("line") if el.get("class") == "grid"]
    step = abs(grid[1] - grid[0])
    return step * len(grid)  # n ticks label the centres of n equal bands


def test_report_charts_have_axes_and_do_not_exaggerate():
    # issue #18: `broken` 0.875 → 0.870 drawn as a full-height cliff, min and max at the corners
    steps = range(0, 1001, 10)
    small = ElementTree.fromstring(svg_chart(
        [(s, 0.875 - 0.005 * s / 1000) for s in steps]))
    ticks = _texts(small, "ytick")
    assert len(ticks) == 5 and len(set(ticks)) == 5
    assert float(ticks[0]) < 0.870 and float(ticks[-1]) > 0.875  # nice values around it
    assert all(abs(float(t) * 100 - round(float(t) * 100)) < 1e-9 for t in ticks)
    assert _texts(small, "xtick") == ["0", "500", "1,000"]
    ys = _line_ys(small)
    assert 0 < max(ys) - min(ys) < 0.25 * _plot_height(small)  # a small move
    # a constant: flat at mid-height, its value the middle tick
    flat = ElementTree.fromstring(svg_chart([(s, 4.123) for s in steps]))
    ys = _line_ys(flat)
    grid = sorted(float(el.get("y1")) for el in flat.iter("line") if el.get("class") == "grid")
    assert len(set(ys)) == 1 and ys[0] == grid[2] and "4.123" in _texts(flat, "ytick")
    # float noise around 0: flat at 0
    noise = ElementTree.fromstring(svg_chart(
        [(s, (-5.1e-7, 3e-7, -2.2e-7)[s % 3]) for s in steps]))
    assert len(set(_line_ys(noise))) == 1 and "0" in _texts(noise, "ytick")
    # a real move fills the chart
    far = ElementTree.fromstring(svg_chart([(s, 0.2 + 0.7 * s / 1000) for s in steps]))
    ys = _line_ys(far)
    assert max(ys) - min(ys) > 0.6 * _plot_height(far)


def test_a_missing_recording_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "symwatch", "report",
                             str(tmp_path / "nope.db"), "-o", str(tmp_path / "r.html")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no such recording" in result.stderr


def _gpu_messages():
    """Two GPU samples of one run: device 0 held down by its power cap in the second."""
    def gpu(seq: int, step: int, throttle, clock) -> protocol.Message:
        return protocol.decode(list(protocol.encode(
            protocol.GPU, run="r", rank=0, restart=0, seq=seq, time=float(seq), step=step,
            payload={"available": True, "devices": [
                {"index": 0, "name": "H100", "util": 90, "sm_clock_mhz": clock,
                 "sm_clock_max_mhz": 1980, "throttle": throttle},
                {"index": 1, "name": "H100", "util": 0, "sm_clock_mhz": None,
                 "sm_clock_max_mhz": None, "throttle": None}]})))
    return [gpu(0, 10, ["idle"], 210), gpu(1, 20, ["power cap", "sw thermal"], 1410)]


def test_export_has_the_clock_and_throttle_columns():
    recs = list(records(_gpu_messages(), "gpu"))
    assert [(r["index"], r["sm_clock_mhz"], r["sm_clock_max_mhz"], r["throttle"]) for r in recs] \
        == [(0, 210, 1980, "idle"), (1, None, None, None),
            (0, 1410, 1980, "power cap, sw thermal"), (1, None, None, None)]
    out = io.StringIO()
    write_csv(recs, out, "gpu")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0])[-6:] == ["power_limit", "sm_clock_mhz", "sm_clock_max_mhz", "throttle",
                                  "run", "restart"]
    assert rows[2]["throttle"] == "power cap, sw thermal" and rows[1]["sm_clock_mhz"] == ""


def test_the_report_says_when_a_gpu_was_throttled():
    page = build_report(_gpu_messages())
    assert "<h2>GPU throttling</h2>" in page
    assert "power cap (1), sw thermal (1)" in page and "1 of 2" in page and "1410 MHz" in page
    assert "GPU 0 sm_clock_mhz" in page and "GPU 1 sm_clock_mhz" not in page
    idle_only = build_report(_gpu_messages()[:1])
    assert "GPU throttling" not in idle_only  # idle is not throttling


def _run(run: str, name: str, event_step: int) -> list[protocol.Message]:
    def message(kind: str, step: int, **payload) -> protocol.Message:
        return protocol.Message(kind, run, 0, 0, step, float(step), step, payload)

    return ([message(protocol.META, 0, name=name, pid=1, host="h", command=["x"], started=0.0,
                     layers=[{"name": "fc", "type": "Linear", "shape": [4, 4]}],
                     indicators=["weight_norm"], every=1)]
            + [message(protocol.METRICS, s, values={"fc": {"weight_norm": 1.0 + s}})
               for s in range(1, 11)]
            + [message(protocol.EVENT, event_step, message=f"event of {name}",
                       severity="transition", layer="fc", metric="weight_norm")])


def test_a_file_of_two_runs_gets_a_section_each():
    """Runs appended to one recording were reported as one run: the last run's name over
    every run's events, out of step order."""
    page = build_report(_run("aaaa00000001", "first", 7) + _run("bbbb00000002", "second", 3),
                        source="two.db")
    assert "<h1>symwatch — 2 runs in two.db</h1>" in page
    assert "<h1 id='run-0'>symwatch — first</h1>" in page
    assert "<h1 id='run-1'>symwatch — second</h1>" in page
    first, second = page.split("<h1 id='run-1'>")
    assert "event of first" in first and "event of second" not in first
    assert "event of second" in second and "event of first" not in second
    one = build_report(_run("aaaa00000001", "first", 7), source="one.db")
    assert "runs in" not in one and "<h1>symwatch — first</h1>" in one
