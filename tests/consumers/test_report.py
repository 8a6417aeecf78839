"""`symwatch report`: a self-contained HTML report of a real recording of the demo run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from xml.etree import ElementTree

from symwatch.consumers.report import svg_chart


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
    assert "linear.0: numerical_rank 0 → 1 at step 25" in text  # the events table
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
