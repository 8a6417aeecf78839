"""The package layering, checked statically (nothing is imported):

- the import-linter contracts in pyproject.toml ([tool.importlinter]), one test per contract;
- no import cycle between any two modules (grimp's graph, strongly connected components);
- symwatch.core imports the standard library and symwatch.core, nothing else;
- no module imports a private name (`_x`, not a dunder) from another module;
- an import inside a function says why: `# noqa: PLC0415 (lazy: reason)` (ruff's rule).

The runtime side (everything imports with torch, or textual and rich, blocked) is in
test_boundaries.py."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest
from importlinter import api as importlinter_api

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
PACKAGES = ("symwatch", "symwatch_agent")
# Where each package's sources live (the agent is under agent/, see [tool.setuptools]).
SOURCE_DIRS = {"symwatch": ROOT / "symwatch", "symwatch_agent": ROOT / "agent" / "symwatch_agent"}


# -- import-linter contracts ---------------------------------------------------------------------

def _contract_ids() -> list[str]:
    options = importlinter_api.read_configuration(str(PYPROJECT))["contracts_options"]
    return [contract["id"] for contract in options]


@pytest.mark.parametrize("contract", _contract_ids())
def test_import_contract(contract: str) -> None:
    """`lint-imports --contract <id>` with this interpreter; its report is the failure text."""
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--config", str(PYPROJECT), "--contract", contract, "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = result.stdout.split("Broken contracts", 1)[-1].strip("-\n ")
    assert result.returncode == 0, f"contract {contract!r} is broken:\n{report}\n{result.stderr}"


# -- cycles between modules ----------------------------------------------------------------------

def module_cycles(*packages: str) -> list[list[str]]:
    """Every import cycle among the modules of `packages`: the strongly connected components of
    more than one module in grimp's import graph (all imports: top-level, inside functions, under
    TYPE_CHECKING), each sorted, the list sorted. Tarjan's algorithm, iterative."""
    graph = grimp.build_graph(*packages, cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in modules:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return sorted(components)


def _describe_cycle(graph: grimp.ImportGraph, component: list[str]) -> str:
    members = set(component)
    lines = [f"cycle of {len(component)} modules: {', '.join(component)}"]
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            where = sorted({d["line_number"] for d in
                            graph.get_import_details(importer=importer, imported=imported)})
            lines.append(f"    {importer} -> {imported} (l.{', l.'.join(map(str, where))})")
    return "\n".join(lines)


def test_no_import_cycles_between_modules() -> None:
    cycles = module_cycles(*PACKAGES)
    if cycles:
        graph = grimp.build_graph(*PACKAGES, cache_dir=None)
        pytest.fail("import cycles:\n" + "\n".join(_describe_cycle(graph, c) for c in cycles),
                    pytrace=False)


def test_the_cycle_check_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is only worth something if it fails on a cycle: a throwaway package where
    a -> b -> c -> a is a cycle and d -> a, e (alone) are not."""
    package = tmp_path / "swcyclepkg"
    package.mkdir()
    sources = {
        "__init__.py": "",
        "a.py": "import swcyclepkg.b\n",
        "b.py": "def later():\n    from swcyclepkg import c\n",  # lazy imports count too
        "c.py": "from swcyclepkg.a import *\n",
        "d.py": "import swcyclepkg.a\n",
        "e.py": "import json\n",
    }
    for name, text in sources.items():
        (package / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module_cycles("swcyclepkg") == [["swcyclepkg.a", "swcyclepkg.b", "swcyclepkg.c"]]
    (package / "c.py").write_text("import json\n")  # the cycle broken: nothing left
    assert module_cycles("swcyclepkg") == []


# -- symwatch.core: the standard library only ----------------------------------------------------

def test_core_imports_only_the_standard_library_and_core() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)
    core = {"symwatch.core"} | graph.find_descendants("symwatch.core")
    bad = []
    for importer in sorted(core):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            top = imported.split(".")[0]
            if imported in core or (top not in PACKAGES and top in sys.stdlib_module_names):
                continue
            lines = sorted({d["line_number"] for d in
                            graph.get_import_details(importer=importer, imported=imported)})
            bad.append(f"{importer} -> {imported} (l.{', l.'.join(map(str, lines))})")
    assert not bad, "symwatch.core imports outside the standard library and core:\n" + \
        "\n".join(bad)


# -- private names -------------------------------------------------------------------------------

def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _source_files() -> list[tuple[str, Path]]:
    """(module name, path) for every source file of both packages."""
    found = []
    for package, directory in SOURCE_DIRS.items():
        for path in sorted(directory.rglob("*.py")):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found.append((".".join(parts), path))
    return found


def private_imports(module: str, path: Path, source: str | None = None) -> list[str]:
    """The imports in one file that take a private name from another module: `from m import _x`,
    or `from m._p import x` / `import m._p` from outside the package that holds `_p`. ruff's
    PLC2701 exempts everything under the same top-level package, which is exactly the case that
    matters here, so this is an AST walk."""
    tree = ast.parse(source if source is not None else path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found = []

    def private_module(target: str) -> str | None:
        parts = target.split(".")
        for i, part in enumerate(parts):
            if _is_private(part):
                holder = ".".join(parts[:i])  # the package that holds the private module
                if not (module == holder or module.startswith(holder + ".")):
                    return ".".join(parts[:i + 1])
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names if _is_private(alias.name)]
            if names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                             f"from {target} import {', '.join(names)}")
            elif (hidden := private_module(target)) is not None:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                             f"from {target} import ... (private module {hidden})")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if (hidden := private_module(alias.name)) is not None:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                 f"import {alias.name} (private module {hidden})")
    return found


def test_no_module_imports_a_private_name_from_another() -> None:
    found = [line for module, path in _source_files() for line in private_imports(module, path)]
    assert not found, ("private names imported from another module (make them public, or move "
                       "the code):\n" + "\n".join(found))


def test_the_private_name_check_finds_them() -> None:
    path = SOURCE_DIRS["symwatch"] / "tui" / "widgets" / "example.py"
    source = textwrap.dedent("""
        from __future__ import annotations
        from symwatch import __version__
        from symwatch.tui.widgets.panels import _num, Panel
        from ._sibling import thing
        from . import _sibling
        import torch._dynamo
        from symwatch.tui.widgets._own import fine
        def later():
            from ..app import _private_helper
    """)
    found = [line.split(": ", 1)[1] for line in
             private_imports("symwatch.tui.widgets.example", path, source)]
    assert sorted(found) == sorted([
        "from symwatch.tui.widgets.panels import _num",
        "from symwatch.tui.widgets import _sibling",
        "import torch._dynamo (private module torch._dynamo)",
        "from symwatch.tui.app import _private_helper",
    ])


# -- imports inside functions carry a reason -----------------------------------------------------

LAZY_REASON = re.compile(r"#\s*noqa:[^#]*\bPLC0415\b[^#]*\(lazy:\s*[^)\s][^)]*\)")
ANY_PLC0415_NOQA = re.compile(r"#\s*noqa:[^#\n]*\bPLC0415\b")
LINTED = [str(SOURCE_DIRS["symwatch"]), str(SOURCE_DIRS["symwatch_agent"])]


def lazy_imports_without_reason(paths: list[str]) -> list[str]:
    """ruff's PLC0415 (import-outside-top-level) with every noqa ignored, then each hit kept
    unless its line says `# noqa: PLC0415 (lazy: reason)`: a bare `# noqa` or a reasonless
    `# noqa: PLC0415` does not count."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "PLC0415",
         "--ignore-noqa", "--exit-zero", "--output-format", "json", *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = []
    lines_of: dict[str, list[str]] = {}
    for hit in json.loads(result.stdout):
        lines = lines_of.setdefault(hit["filename"], Path(hit["filename"]).read_text().splitlines())
        row = hit.get("noqa_row") or hit["location"]["row"]
        if not LAZY_REASON.search(lines[row - 1]):
            where = Path(hit["filename"]).resolve()
            where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
            found.append(f"{where}:{row}: {lines[row - 1].strip()}")
    return found


def reasonless_noqa(paths: list[str]) -> list[str]:
    """Every `# noqa: ...PLC0415...` without `(lazy: reason)`, on any line of the files."""
    found = []
    for directory in map(Path, paths):
        for path in sorted(directory.rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if ANY_PLC0415_NOQA.search(line) and not LAZY_REASON.search(line):
                    where = path.resolve()
                    where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
                    found.append(f"{where}:{number}: {line.strip()}")
    return found


def test_imports_inside_functions_say_why() -> None:
    found = lazy_imports_without_reason(LINTED)
    assert not found, (f"{len(found)} imports inside functions without "
                       "`# noqa: PLC0415 (lazy: reason)` (move them to the top, or say why):\n"
                       + "\n".join(found))


def test_no_plc0415_noqa_without_a_reason() -> None:
    found = reasonless_noqa(LINTED)
    assert not found, "`# noqa: PLC0415` needs `(lazy: reason)`:\n" + "\n".join(found)


def test_the_lazy_import_check_finds_them(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(textwrap.dedent("""
        import os


        def f():
            import json  # noqa: PLC0415 (lazy: only the export needs it)
            import re  # noqa: PLC0415
            import sys  # noqa
            import csv  # noqa: PLC0415 (lazy: )
            import abc
            return os, json, re, sys, csv, abc


        x = 1  # noqa: PLC0415
    """))
    found = [line.split(": ", 1)[1] for line in lazy_imports_without_reason([str(tmp_path)])]
    assert found == ["import re  # noqa: PLC0415", "import sys  # noqa",
                     "import csv  # noqa: PLC0415 (lazy: )", "import abc"]
    found = [line.split(": ", 1)[1] for line in reasonless_noqa([str(tmp_path)])]
    assert found == ["import re  # noqa: PLC0415", "import csv  # noqa: PLC0415 (lazy: )",
                     "x = 1  # noqa: PLC0415"]
