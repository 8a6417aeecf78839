"""`symwatch inspect PATH`: every weight-based indicator of a saved model, once, computed by the
agent's inspector in a subprocess (this process never imports torch)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from symwatch.cli.common import UserError, subparser

INSPECT_MODULE = "symwatch_agent.entry.inspect"


def add_inspect_parser(subs: Any) -> None:
    inspect = subparser(
        subs, "inspect", "every weight-based indicator of a saved model, once (needs torch)",
        "Compute every weight-based indicator once for a saved model: a torch.save'd "
        "state_dict or module, or a .safetensors file. Runs `python -m symwatch_agent.entry.inspect` "
        "in a subprocess (this command never imports torch itself).",
        "examples:\n"
        "  symwatch inspect model.pt\n"
        "  symwatch inspect model.safetensors --json | jq '.layers[0].values'\n"
        "  symwatch inspect whole_module.pt --trust   a pickled nn.Module (runs its code)\n"
        "  symwatch inspect gpt2_state_dict.pt --heads 12   attention heads of a state_dict")
    inspect.add_argument("path", help="the saved model")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--trust", action="store_true",
                         help="allow unpickling a whole module (runs code from the file)")
    inspect.add_argument("--heads", metavar="N[:KV]", default=None,
                         help="attention heads per module where the file does not say (a "
                              "state_dict never does; default: a config.json next to it)")
    inspect.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Run the agent-side inspector (it imports torch; this process must not)."""
    argv = [sys.executable, "-m", INSPECT_MODULE, args.path]
    argv += ["--json"] if args.json else []
    argv += ["--trust"] if args.trust else []
    argv += ["--heads", args.heads] if getattr(args, "heads", None) else []
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
    except OSError as exc:
        raise UserError(f"cannot run {sys.executable} -m {INSPECT_MODULE}: {exc}", 1) from None
