"""The TUI's screens besides the run view."""
