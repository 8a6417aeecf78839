"""`python -m symwatch`: the same as the `symwatch` command."""

from __future__ import annotations

import sys

from symwatch.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
