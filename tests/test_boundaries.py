"""The one-way rule at run time: the agent never imports the observer's UI stack, the observer
never imports torch. Each check runs in a fresh interpreter with the forbidden packages blocked
and imports every module. Which package may import which is the import-linter contracts in
pyproject.toml, checked statically by test_layers.py; here the agent may load `symwatch.core`
(and the `symwatch` package that holds it) and nothing else of the observer."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def __init__(self, names): self.names = names
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in self.names:
                raise ImportError(name + ' is blocked in this test')
            return None
    sys.meta_path.insert(0, Block({blocked!r}))
""")


def _run(blocked: set[str], body: str) -> subprocess.CompletedProcess[str]:
    code = BLOCKER.replace('{blocked!r}', repr(blocked)) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_agent_imports_with_textual_and_rich_blocked():
    result = _run({"textual", "rich"}, """
        import pkgutil, importlib, sys
        import symwatch_agent
        for mod in pkgutil.walk_packages(symwatch_agent.__path__, 'symwatch_agent.'):
            importlib.import_module(mod.name)
        leaked = sorted(m for m in sys.modules if m.split('.')[0] in {'textual', 'rich'}
                        or m.startswith('symwatch.') and not m.startswith('symwatch.core.')
                        and m != 'symwatch.core')
        print('LEAKED', leaked)
    """)
    assert result.returncode == 0, result.stderr
    assert "LEAKED []" in result.stdout


def test_observer_imports_and_helps_with_torch_blocked():
    result = _run({"torch", "symwatch_agent"}, """
        import pkgutil, importlib, sys
        import symwatch
        for mod in pkgutil.walk_packages(symwatch.__path__, 'symwatch.'):
            importlib.import_module(mod.name)
        from symwatch.cli.main import main
        for argv in (['--help'], ['attach', '--help'], ['ls', '--help'], ['demo', '--help'],
                     ['run', '--help']):
            try:
                main(argv)
            except SystemExit as exc:
                assert exc.code in (0, None), (argv, exc.code)
        print('LEAKED', sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'symwatch_agent'}))
    """)
    assert result.returncode == 0, result.stderr
    assert "LEAKED []" in result.stdout
    assert "symwatch attach" in result.stdout  # the help text was printed
