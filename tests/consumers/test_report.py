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
        ElementTree.fromstring(svg)  # every chart is well-formed


def test_missing_values_are_gaps_not_zeros():
    svg = svg_chart([(1, 1.0), (2, 2.0), (3, None), (4, 3.0), (5, 4.0)])
    assert svg.count("<polyline") == 2  # the None splits the line, it is not drawn at 0
    assert "no data" in svg_chart([(1, None)])


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
    assert list(rows[0])[-4:] == ["power_limit", "sm_clock_mhz", "sm_clock_max_mhz", "throttle"]
    assert rows[2]["throttle"] == "power cap, sw thermal" and rows[1]["sm_clock_mhz"] == ""


def test_the_report_says_when_a_gpu_was_throttled():
    page = build_report(_gpu_messages())
    assert "<h2>GPU throttling</h2>" in page
    assert "power cap (1), sw thermal (1)" in page and "1 of 2" in page and "1410 MHz" in page
    assert "GPU 0 sm_clock_mhz" in page and "GPU 1 sm_clock_mhz" not in page
    idle_only = build_report(_gpu_messages()[:1])
    assert "GPU throttling" not in idle_only  # idle is not throttling
