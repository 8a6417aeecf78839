"""The wheel carries every module of both halves: the package list in pyproject.toml is written
by hand (two source roots), so a new package left out of it would install a broken symwatch
while the editable install used by the tests keeps working."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _shipped(root: Path) -> set[str]:
    """What a wheel must hold, as paths inside the wheel."""
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "symwatch").rglob("*")
             if p.suffix in {".py", ".tcss"}}
    files |= {str(p.relative_to(ROOT / "agent")) for p in (ROOT / "agent").rglob("*.py")}
    return {f for f in files if "__pycache__" not in f}


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of this tree, built from a copy of its sources (no build isolation)."""
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
    return out / build.stdout.strip().splitlines()[-1]


def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        inside = {n for n in zf.namelist() if not n.split("/")[0].endswith(".dist-info")}
    missing = sorted(_shipped(ROOT) - inside)
    assert not missing, f"pyproject.toml's package list leaves out: {missing}"


# -- the viewer installs without torch -----------------------------------------------------------

def _base_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist without an extra: what a plain `pip install symwatch` pulls."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def _closure(requirements: list[str]) -> dict[str, Any]:
    """The installed distributions (this venv's) that `requirements` need, transitively."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, Any] = {}
    done: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements are queued
    todo = [(r, "") for r in requirements]
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name not in found:
            try:
                found[name] = distribution(req.name)
            except PackageNotFoundError:
                pytest.skip(f"{req.name} is not installed here, so no wheel can be made of it")
        for wanted in ("", *req.extras):  # markdown-it-py[linkify]: its extra's needs too
            if (name, wanted) not in done:
                done.add((name, wanted))
                todo += [(r, wanted) for r in found[name].requires or []]
    return found


def _repack(dist: Any, out: Path) -> Path:
    """A wheel of an installed distribution, from its files (RECORD) and its WHEEL tag: so the
    fresh venv below installs offline (`--no-index`) what this venv already has."""
    tag = next(line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines()
               if line.startswith("Tag:"))
    name = dist.metadata["Name"].replace("-", "_")
    wheel = out / f"{name}-{dist.version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in dist.files or []:
            path = str(file)
            if path.startswith("..") or "__pycache__" in path:
                continue  # console scripts (pip writes new ones), bytecode
            full = Path(dist.locate_file(file))
            if full.is_file():
                zf.write(full, path)
    return wheel


def test_the_viewer_installs_and_runs_without_torch(tmp_path):
    wheel = _build_wheel(tmp_path)
    requirements = _base_requirements(wheel)
    assert not any(r.split()[0].lower().startswith(("torch", "numpy", "nvidia-ml-py"))
                   for r in requirements), requirements
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for dist in _closure(requirements).values():
        _repack(dist, wheels)
    venv = tmp_path / "viewer"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_ = venv / "bin"
    install = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q",
                              "--disable-pip-version-check", "--no-index", "--find-links",
                              str(wheels), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    env = {**os.environ, "SYMWATCH_RUNTIME_DIR": str(tmp_path / "rt")}
    env.pop("PYTHONPATH", None)
    torch = subprocess.run([str(bin_ / "python"), "-c", "import torch"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, timeout=60)
    assert torch.returncode != 0, "torch came with the viewer's install"
    ls = subprocess.run([str(bin_ / "symwatch"), "ls"], capture_output=True, text=True,
                        cwd=tmp_path, env=env, timeout=120)
    assert ls.returncode == 0 and "Traceback" not in ls.stderr, ls.stderr
    helped = subprocess.run([str(bin_ / "symwatch"), "attach", "--help"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=120)
    assert helped.returncode == 0 and "--server-key" in helped.stdout, helped.stderr
    watch = subprocess.run([str(bin_ / "python"), "-c", "import symwatch; symwatch.watch(None)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert watch.returncode != 0
    assert "pip install 'symwatch[agent]'" in watch.stderr and "torch" in watch.stderr
