"""The agent's bounded history of what it published, served to late viewers.

The class lives in `symwatch.history` (stdlib only, shared with `symwatch relay`, which keeps
one per publisher); this module keeps the agent's import path.
"""

from symwatch.history import DEFAULT_EVENTS, DEFAULT_MAX_BYTES, DEFAULT_SAMPLES, Entry, History

__all__ = ["DEFAULT_EVENTS", "DEFAULT_MAX_BYTES", "DEFAULT_SAMPLES", "Entry", "History"]
