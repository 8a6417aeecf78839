"""symwatch's version: the one place it is written. The distribution's metadata (pyproject.toml,
`[tool.setuptools.dynamic]`), `symwatch.__version__` and `symwatch_agent.__version__` all read it
from here; the agent sends it in its META messages (`agent`)."""

__version__ = "0.1.0"
