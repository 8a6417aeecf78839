"""The version is written once (symwatch/core/version.py); everything else reads it."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import symwatch
import symwatch_agent
from symwatch.core import version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_package_the_agent_and_the_installed_distribution_agree():
    assert symwatch.__version__ == version.__version__
    assert symwatch_agent.__version__ == version.__version__
    # The installed metadata was built from version.py (re-install after changing it).
    assert importlib.metadata.version("symwatch") == version.__version__


def test_pyproject_reads_the_version_from_core():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads(PYPROJECT.read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "symwatch.core.version.__version__"
