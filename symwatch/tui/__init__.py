"""The Textual terminal UI; `symwatch.tui.app.make_app(endpoint)` builds the live view."""
