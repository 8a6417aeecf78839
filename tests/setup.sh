#!/usr/bin/env sh
# Set up everything the test suite drives, on a fresh Debian/Ubuntu machine:
#   - system tools: tmux (the TUI read from a real terminal), openssh-server/client (a real
#     sshd on loopback for `attach ssh://`), gdb and lldb (`symwatch inject` into a running
#     process, either way),
#     chromium (the `--web` view loaded in a headless browser);
#   - a virtual environment in .venv with torch (CPU build, installed first on purpose: a bare
#     `torch` requirement makes pip download a multi-GB CUDA build) and symwatch[test].
# Tests whose system tool is missing are skipped with a reason, so the suite still runs where
# this script cannot install them (not root, no sudo, not Debian).
set -eu
cd "$(dirname "$0")/.."

TOOLS="tmux openssh-server openssh-client gdb lldb chromium"
missing=""
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
command -v gdb >/dev/null 2>&1 || missing="$missing gdb"
command -v lldb >/dev/null 2>&1 || missing="$missing lldb"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
    if [ "$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing$missing"
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null \
            || echo "setup: could not install$missing; the tests that need them will be skipped"
    else
        echo "setup: missing$missing (of $TOOLS) and cannot install them here; the tests that need them will be skipped"
    fi
fi

python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
