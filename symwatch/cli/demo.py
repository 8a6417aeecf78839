"""`symwatch demo`: train a small model in a subprocess (symwatch/launch/demo.py) and watch it."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from symwatch.cli.common import (UserError, err, non_negative_int, non_negative_seconds,
                                 positive_int, subparser, theme_from_args)
from symwatch.core import protocol
from symwatch.launch.demo import DemoProcess, free_endpoint
from symwatch.sources.base import SourceError
from symwatch.sources.open import open_endpoint
from symwatch.transport.subscriber import BackgroundFeed

DEMO_HINT = ("hint: the demo trains small PyTorch models in a subprocess "
             "(python -m symwatch_agent.entry.demo); it needs torch and the symwatch agent importable "
             "by {python}. Install torch (pip install torch) and try again.")
DEFAULT_HEADLESS_STEPS = 400
STARTUP_TIMEOUT_S = 60.0  # importing torch on a cold cache can take tens of seconds
# From its goodbye to its exit the demo closes its agent and unloads torch: a second when idle,
# over 10 s on a loaded 2-core machine (seen at a load average of 15), where a 10 s limit
# failed a run that had finished well.
EXIT_TIMEOUT_S = 60.0


def add_demo_parser(subs: Any) -> None:
    demo = subparser(
        subs, "demo", "train a small demo model and watch it (needs torch)",
        "Start a small PyTorch training run in a subprocess with the agent attached, and watch "
        "it in the terminal UI. Quitting the UI (or Ctrl-C) stops the run.",
        "examples:\n"
        "  symwatch demo                          runs until you quit (q)\n"
        "  symwatch demo --steps 2000 --delay 0.01\n"
        "  symwatch demo --headless --steps 200   text summary, exits when the run ends")
    demo.add_argument("--headless", action="store_true",
                      help="no UI: print each detected event as it comes and a summary about "
                           "once a second, exit when the run ends")
    demo.add_argument("--steps", type=non_negative_int, default=None, metavar="N",
                      help="training steps; 0 = until stopped (default: 0, or "
                           f"{DEFAULT_HEADLESS_STEPS} with --headless)")
    demo.add_argument("--delay", type=non_negative_seconds, default=0.05, metavar="S",
                      help="seconds to sleep after each step, to make it watchable (default 0.05)")
    demo.add_argument("--every", type=positive_int, default=1, metavar="K",
                      help="sample the indicators every K steps (default 1)")
    demo.add_argument("--name", default="demo", help="run name shown in the UI and `ls`")
    demo.add_argument("--endpoint", default=None,
                      help="where the demo publishes (default: a private Unix socket, else a "
                           "free loopback TCP port)")
    demo.add_argument("--theme", choices=("auto", "dark", "light", "terminal"), default=None,
                      help="colours, as for attach (default: $SYMWATCH_THEME, else auto)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    theme = theme_from_args(args)
    endpoint = args.endpoint or free_endpoint()
    steps = args.steps if args.steps is not None else (
        DEFAULT_HEADLESS_STEPS if args.headless else 0)
    demo = DemoProcess(endpoint, name=args.name, steps=steps, delay=args.delay, every=args.every)
    try:
        # Subscribe before the run starts, so its first messages are not lost to a slow join.
        feed = open_endpoint(endpoint)
    except SourceError as exc:
        raise UserError(str(exc)) from None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            demo.start()
        except OSError as exc:
            return _demo_failed(demo, f"could not start {demo.argv[0]}: {exc}")
        err(f"symwatch demo: started `{' '.join(demo.argv[1:])}`; waiting for its first "
            "message (importing torch can take a while)…")
        if not _wait_first_message(feed, demo, STARTUP_TIMEOUT_S):
            rc = demo.poll()
            if rc == 0:  # it ran and ended before our subscription reached it
                err("symwatch demo: the demo run finished before symwatch could connect; "
                    "give it more --steps or a longer --delay")
                return 0
            return _demo_failed(demo, "the demo run did not start" if rc is not None else
                                f"the demo run sent nothing within {STARTUP_TIMEOUT_S:.0f} s")
        if args.headless:
            return _demo_headless(feed, demo, args.name)
        from symwatch.tui.app import SymwatchApp  # noqa: PLC0415 (lazy: Textual, only when the UI opens)

        SymwatchApp(feed, title=f"symwatch — demo ({endpoint})", theme=theme).run()
        rc = demo.poll()
        if rc not in (None, 0):
            return _demo_failed(demo, f"the demo run exited with status {rc}")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        feed.close()
        demo.stop()
        demo.cleanup()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _wait_first_message(feed: BackgroundFeed, demo: DemoProcess, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if feed.wait_for_message(0.2):
            return True
        if demo.poll() is not None:
            return bool(feed.wait_for_message(0.5))  # it may have published and exited at once
    return False


def _demo_headless(feed: BackgroundFeed, demo: DemoProcess, name: str) -> int:
    from symwatch.consumers.summary import PrintEvents, follow  # noqa: PLC0415 (lazy: only --headless prints the summary; keeps start-up fast)

    state = follow(PrintEvents(feed, sys.stdout), sys.stdout,
                   should_stop=lambda: demo.poll() is not None, name=name)
    rc = demo.wait(EXIT_TIMEOUT_S)
    if rc is None:
        return _demo_failed(demo, "the demo run said goodbye but did not exit within "
                                  f"{EXIT_TIMEOUT_S:.0f} s")
    if rc != 0:
        return _demo_failed(demo, f"the demo run exited with status {rc}")
    if not state.finished:
        err("symwatch demo: warning: the run exited without a goodbye message")
    return 0


def _demo_failed(demo: DemoProcess, what: str) -> int:
    err(f"symwatch demo: {what}.")
    tail = demo.output_tail()
    if tail:
        err("--- demo output (last lines) ---\n" + tail + "\n---")
    err(DEMO_HINT.format(python=sys.executable))
    return 1
