"""Ways the agent starts: the zero-code start-up hook, the injected entry, the trainer callbacks, and the `python -m` entries (demo, inspect)."""
