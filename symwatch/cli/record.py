"""`symwatch record`, `symwatch export`, `symwatch replay`: recordings from the command line."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from typing import Any, Callable

from symwatch.cli.common import (UserError, add_security_arguments, add_ssh_arguments,
                                 curve_client, err, no_runs, positive_float, read_recording,
                                 refuse_folder, resolve_target, say_unreadable_rows, several_runs,
                                 subparser, write_output)
from symwatch.cli.remote import open_remote
from symwatch.core import runtime
from symwatch.transport.ssh import is_ssh_target
from symwatch.sources.base import SourceError
from symwatch.sources.open import open_endpoint, open_recording, tunnel_feed
from symwatch.transport.subscriber import EndpointError

RECORD_EPILOG = (
    "examples:\n"
    "  symwatch record -o run.db                 the only live run, until it ends or Ctrl-C\n"
    "  symwatch record my-experiment -o run.db   a run name or id from `symwatch ls`\n"
    "  symwatch record tcp://127.0.0.1:5555 -o run.db\n"
    "  symwatch record ssh://gpu-box/my-run -o run.db   a run on another machine, over ssh\n"
    "  symwatch record tcp://trainhost:5555 -o run.db --server-key server.key \\\n"
    "      --client-key client.key_secret       a run published with CurveZMQ keys\n"
    "  symwatch record my-experiment -o run.db --follow   on into each restart of the run\n\n"
    "In a script, the agent can record by itself (nothing to keep running):\n"
    "  symwatch.watch(model, optimizer, record='run.db')   or  SYMWATCH_RECORD=run.db\n"
    "An existing recording is appended to. See docs/recording.md.")
EXPORT_EPILOG = (
    "examples:\n"
    "  symwatch export run.db --format csv -o run.csv\n"
    "  symwatch export run.db --format jsonl --kind events\n"
    "  symwatch export run.db --format jsonl | jq 'select(.metric == \"loss\")'\n\n"
    "Record shapes (stable; missing values are null / empty, never 0): docs/export.md")
REPLAY_EPILOG = (
    "examples:\n"
    "  symwatch replay run.db                  in the terminal UI, at the recorded pace\n"
    "  symwatch replay run.db --speed 16\n"
    "  symwatch replay run.db --headless       print the summary of the recorded run\n\n"
    "keys in the UI: space play/pause, + faster, - slower, Home start, End end,\n"
    "[ ] { } back/forward to a step, G go to a step, q quit")


REPORT_EPILOG = (
    "examples:\n"
    "  symwatch report run.db -o report.html\n"
    "  symwatch record my-run -o run.db && symwatch report run.db -o run.html")


def _speed(text: str) -> float:
    if text.lower() in ("max", "inf"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a speed > 0 or 'max', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a speed > 0 or 'max', got {text!r}")
    return value


def add_recording_parsers(subs: Any) -> None:
    record = subparser(
        subs, "record", "record a live run to a SQLite file",
        "Subscribe to a live run and store every message in a SQLite recording until the run "
        "ends (goodbye) or Ctrl-C. With no target: the only live run on this machine.",
        RECORD_EPILOG)
    record.add_argument("target", nargs="?", metavar="ENDPOINT",
                        help="tcp://HOST:PORT, ipc://PATH, ssh://HOST[/RUN], or a run id / "
                             "run name")
    record.add_argument("-o", "--output", required=True, metavar="PATH",
                        help="the recording (SQLite; appended to if it exists)")
    record.add_argument("--follow", action="store_true",
                        help="when the run ends or goes silent, go on recording the newest "
                             "live run of the same name (a restarted script) until Ctrl-C; "
                             "each run keeps its run id in the file")
    record.add_argument("--stale", type=positive_float, default=5.0, metavar="S",
                        help="with --follow: after S seconds without a message, look the run "
                             "name up again (default 5)")
    add_security_arguments(record)
    add_ssh_arguments(record, short=False)
    record.set_defaults(func=cmd_record)

    export = subparser(
        subs, "export", "export a recording as CSV or JSON Lines",
        "Write one record per row (CSV) or line (JSON Lines) for the metrics (per-layer "
        "indicators, the loss and other run-level scalars), events and GPU samples of a "
        "recording.", EXPORT_EPILOG)
    export.add_argument("path", help="the recording")
    export.add_argument("--format", choices=("csv", "jsonl"), required=True)
    export.add_argument("--kind", choices=("metrics", "events", "gpu", "all"), default="all",
                        help="which records (default: all)")
    export.add_argument("-o", "--output", metavar="OUT", default=None,
                        help="write here instead of standard output")
    export.set_defaults(func=cmd_export)

    replay = subparser(
        subs, "replay", "replay a recording in the terminal UI",
        "Show a recording in the same terminal UI as a live run, at the recorded pace "
        "times --speed.", REPLAY_EPILOG)
    replay.add_argument("path", help="the recording")
    replay.add_argument("--speed", type=_speed, default=None, metavar="X",
                        help="playback speed, or 'max' (default: 1; with --headless: max)")
    replay.add_argument("--headless", action="store_true",
                        help="no UI: print the summary (about once a second) until the end")
    replay.set_defaults(func=cmd_replay)

    report = subparser(
        subs, "report", "write a recording as a self-contained HTML report with plots",
        "Write one HTML file (inline SVG plots, no external files) with the loss, every "
        "layer's indicators over steps with the transitions marked, the events, and the GPUs "
        "over time: for sharing and papers.", REPORT_EPILOG)
    report.add_argument("path", help="the recording")
    report.add_argument("-o", "--output", required=True, metavar="HTML",
                        help="where to write the report")
    report.set_defaults(func=cmd_report)


# -- record ------------------------------------------------------------------------------------

SILENT_HINT_S = 10.0  # an endpoint silent this long at the start: say so once (it waited mutely)

def _pick_run(target: str | None) -> tuple[str, str | None]:
    runs = runtime.live_runs()
    if target is not None:
        return resolve_target(target, runs)
    if not runs:
        raise UserError(no_runs("symwatch record tcp://127.0.0.1:PORT -o run.db"), code=1)
    if len(runs) > 1:
        raise several_runs(runs)
    return runs[0].endpoint, runs[0].name


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_record(args: argparse.Namespace) -> int:
    # SIGTERM ends the recording as Ctrl-C does, from the first moment: a signal that came
    # while the run was looked up or ssh connected would otherwise kill us before the tunnel
    # and its socket directory are cleaned up.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _record(args)
    except KeyboardInterrupt:  # before recording began (looking for the run, connecting)
        err("symwatch record: interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _record(args: argparse.Namespace) -> int:
    from symwatch.core.recording import Recorder  # noqa: PLC0415 (lazy: sqlite3 only for the commands that write or read a recording)
    from symwatch.state.run_state import RunState  # noqa: PLC0415 (lazy: only the commands that follow a run fold its state; keeps start-up fast)

    curve = curve_client(args)
    tunnel = None
    if args.follow and is_ssh_target(args.target):
        raise UserError("--follow follows the runs of this machine's registry; on another "
                        "host, run `symwatch record --follow` there")
    if is_ssh_target(args.target):  # the run's sockets forwarded over ssh (cli/remote.py)
        entry, tunnel = open_remote(args, "record")  # a Ctrl-C in there closes the tunnel
        endpoint, name = tunnel.endpoint, f"{entry.name} on {tunnel.target.label}"
    else:
        endpoint, name = _pick_run(args.target)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {args.output}: there is no folder {folder}", code=1)
    appending = os.path.isfile(args.output) and os.path.getsize(args.output) > 0
    warnings: list[str] = []
    try:
        recorder = Recorder(args.output, warn=warnings.append).start()
        opened = recorder.wait_open(10.0)
    except BaseException:  # Ctrl-C while the file opens: the feed does not own the tunnel yet
        if tunnel is not None:
            tunnel.close()
        raise
    if not opened:
        recorder.close()
        if tunnel is not None:
            tunnel.close()
        raise UserError(warnings[0] if warnings else f"cannot open {args.output}", code=1)
    state = RunState()

    def on_messages(batch: list[Any]) -> None:  # the feed's thread
        for msg in batch:
            recorder.submit_message(msg)
        state.fold_all(batch)

    interrupted = False
    try:
        if args.follow:  # the follower of `symwatch alert` (consumers/alerts/follow.py)
            interrupted = _record_following(args, endpoint, name, curve, recorder,
                                            on_messages)
        else:
            interrupted = _record_one(args, endpoint, name, curve, tunnel, state, recorder,
                                      on_messages)
    except KeyboardInterrupt:  # between the file's opening and the feed's loop
        interrupted = True
    finally:
        recorder.close(timeout=10.0)
    return _recorded(args, recorder, warnings, interrupted, state, appending)


def _record_one(args: argparse.Namespace, endpoint: str, name: str | None, curve: Any,
                tunnel: Any, state: Any, recorder: Any,
                on_messages: Callable[[list[Any]], None]) -> bool:
    """Record one run until it ends, Ctrl-C (True) or a write failure."""
    try:
        feed = (tunnel_feed(tunnel, curve=curve, on_messages=on_messages)
                if tunnel is not None
                else open_endpoint(endpoint, curve=curve, on_messages=on_messages))
    except SourceError as exc:  # tunnel_feed has closed the tunnel (on Ctrl-C too)
        raise UserError(str(exc)) from None
    try:
        err(f"symwatch record: recording {name or endpoint} to {args.output} "
            "(until the run ends; Ctrl-C to stop)")
        silent_until = time.monotonic() + SILENT_HINT_S
        while not state.finished and recorder.failed is None:
            time.sleep(0.1)
            if silent_until and time.monotonic() > silent_until:
                silent_until = 0.0
                if state.last_rx is None:
                    err(f"symwatch record: nothing from {endpoint} in {SILENT_HINT_S:.0f} s; "
                        "is a run publishing there? (`symwatch ls` lists the live runs; "
                        "still waiting, Ctrl-C to stop)")
    except KeyboardInterrupt:
        return True
    finally:
        feed.close()
    return False


def _record_following(args: argparse.Namespace, endpoint: str, name: str | None, curve: Any,
                      recorder: Any, on_messages: Callable[[list[Any]], None]) -> bool:
    """`record --follow`: record through a RunFollower, which moves to the newest live run of
    the name when the run ends or goes silent, until Ctrl-C (True) or a write failure."""
    from symwatch.consumers.alerts.follow import RunFollower  # noqa: PLC0415 (lazy: only `record --follow` follows a run's name)

    try:
        follower = RunFollower(endpoint, name, any_run=name is None, stale_after=args.stale,
                               status=lambda line: err(f"symwatch record: {line}"),
                               curve=curve)
    except EndpointError as exc:
        raise UserError(str(exc)) from None
    err(f"symwatch record: recording {name or endpoint} to {args.output}, and each restart "
        "of it (Ctrl-C to stop)")
    try:
        while recorder.failed is None:
            batch = follower.poll(100)
            if batch:
                on_messages(batch)
    except KeyboardInterrupt:
        return True
    finally:
        follower.close()
    return False


def _recorded(args: argparse.Namespace, recorder: Any, warnings: list[str], interrupted: bool,
              state: Any, appending: bool) -> int:
    """Say how the recording (closed) ended; the exit status. `appending`: the file held
    messages before (they are not counted here: `N messages in` it read as the file's
    total)."""
    if recorder.failed is not None:
        err(f"symwatch record: {warnings[0] if warnings else recorder.failed}")
        return 1
    how = "interrupted" if interrupted else ("the run ended" if state.finished else "stopped")
    where = "added to" if appending else "in"
    err(f"symwatch record: {how}; {recorder.written:,} messages {where} {args.output}"
         + (f" ({recorder.dropped:,} could not be queued)" if recorder.dropped else ""))
    return 130 if interrupted else 0


# -- export ------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    from symwatch.consumers.export import records, write_csv, write_jsonl  # noqa: PLC0415 (lazy: only `symwatch export` writes records; keeps start-up fast)

    reader = read_recording(args.path)

    def write(out: Any) -> None:
        recs = records(reader, args.kind)
        if args.format == "jsonl":
            write_jsonl(recs, out)
        else:
            write_csv(recs, out, args.kind)

    try:
        write_output(args.output, write, newline="")
    finally:
        reader.close()
    say_unreadable_rows("export", reader)
    return 0


# -- replay ------------------------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    speed = args.speed if args.speed is not None else (math.inf if args.headless else 1.0)
    refuse_folder(args.path)
    try:
        source = open_recording(args.path, speed=speed)
    except SourceError as exc:
        raise UserError(str(exc), code=1) from None
    if args.headless:
        return _replay_headless(source)
    from symwatch.tui.app import SymwatchApp  # noqa: PLC0415 (lazy: Textual, only when the UI opens)

    SymwatchApp(source, title=f"symwatch — replay of {args.path}", owns_source=True).run()
    return 0


def _replay_headless(source: Any, interval: float = 1.0) -> int:
    """Like `attach --headless`, on the replay's clock: the summary about once a second of
    wall time, each event as it passes, and the summary once more at the end (a run recorded
    without a goodbye ends stale)."""
    from symwatch.consumers.summary import PrintEvents, summary_lines  # noqa: PLC0415 (lazy: only --headless prints the summary; keeps start-up fast)
    from symwatch.state.run_state import DEFAULT_STALE_AFTER, RunState  # noqa: PLC0415 (lazy: only the commands that follow a run fold its state; keeps start-up fast)

    state = RunState()
    events = PrintEvents(source, sys.stdout)
    next_print = time.monotonic() + interval
    while not source.exhausted:
        batch = events.poll(100)
        state.fold_all(batch, source.now())
        state.garbage = source.garbage
        if time.monotonic() >= next_print:
            print("\n".join(summary_lines(state, source.now())), flush=True)
            next_print = time.monotonic() + interval
    end = source.now()
    if not state.finished:
        end += DEFAULT_STALE_AFTER + 1.0  # the recording stops here; the run went silent
    print("\n".join(summary_lines(state, end)), flush=True)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from symwatch.consumers.report import build_report  # noqa: PLC0415 (lazy: only `symwatch report` draws plots; keeps start-up fast)

    reader = read_recording(args.path)
    try:
        page = build_report(reader, source=args.path)
    finally:
        reader.close()
    say_unreadable_rows("report", reader)
    write_output(args.output, lambda out: out.write(page))
    print(f"wrote {args.output} ({len(page) // 1024:,} KiB)", file=sys.stderr)
    return 0
