"""The wheel carries every module of both halves: the package list in pyproject.toml is written
by hand (two source roots), so a new package left out of it would install a broken symwatch
while the editable install used by the tests keeps working."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _shipped(root: Path) -> set[str]:
    """What a wheel must hold, as paths inside the wheel."""
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "symwatch").rglob("*")
             if p.suffix in {".py", ".tcss"}}
    files |= {str(p.relative_to(ROOT / "agent")) for p in (ROOT / "agent").rglob("*.py")}
    return {f for f in files if "__pycache__" not in f}


def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("symwatch", "agent"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-c",
         f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"],
        cwd=src, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = out / build.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        inside = {n for n in zf.namelist() if not n.split("/")[0].endswith(".dist-info")}
    missing = sorted(_shipped(ROOT) - inside)
    assert not missing, f"pyproject.toml's package list leaves out: {missing}"
