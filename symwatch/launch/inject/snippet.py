"""What runs in the target: the few lines of Python its main thread runs at a safe point,
which import the agent's injected entry and arm it."""

from __future__ import annotations

import json
from typing import Any, Sequence

SNIPPET_FILENAME = "<symwatch inject>"


def snippet(request: dict[str, Any], roots: Sequence[str]) -> str:
    """The Python run in the target's main thread. Quick and exception-proof: it checks that
    torch is there, imports `symwatch_agent.entry.injected` and calls `inject`, which arms a hook
    and never raises. A failure to import is reported to the result file and undone: the
    path entries added and the modules imported are removed again."""
    inner = f"""\
import sys
_result = {request["result"]!r}
_added = []
_before = set(sys.modules)
try:
    if "torch" not in sys.modules:
        raise RuntimeError("this process has not imported torch")
    for _root in {list(roots)!r}:
        if _root not in sys.path:
            sys.path.append(_root)
            _added.append(_root)
    from symwatch_agent.entry.injected import inject as _inject
except BaseException as _exc:
    for _root in _added:
        if _root in sys.path:
            sys.path.remove(_root)
    for _name in set(sys.modules) - _before:
        if _name.partition(".")[0] in ("symwatch", "symwatch_agent"):
            sys.modules.pop(_name, None)
    try:
        import json, os
        with open(_result + ".tmp", "w") as _fh:
            json.dump({{"state": "error", "stage": "import",
                       "error": type(_exc).__name__ + ": " + str(_exc),
                       "python": sys.version.split()[0], "executable": sys.executable}}, _fh)
        os.replace(_result + ".tmp", _result)
    except BaseException:
        pass
else:
    _inject({json.dumps(request)!r})
"""
    # Run in a namespace of its own: nothing is defined in the target's __main__.
    return f"exec(compile({inner!r}, {SNIPPET_FILENAME!r}, 'exec'), {{}})"
