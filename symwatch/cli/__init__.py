"""The `symwatch` command: argument parsing, one module per command; the only place errors become messages and exit codes."""
