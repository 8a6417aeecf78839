"""`symwatch alert`: the headless subscriber that turns transitions into commands and webhooks.

symwatch/cli/main.py's build_parser calls `add_alert_parser`. The alerting itself (rules,
sinks, following a run) is symwatch/consumers/alerts/, imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from symwatch.cli.common import (UserError, add_security_arguments, curve_client, no_runs,
                                 finite_float, non_negative_float, non_negative_int,
                                 positive_float, positive_int, resolve_target, several_runs,
                                 subparser)
from symwatch.core import runtime
from symwatch.transport.subscriber import EndpointError

if TYPE_CHECKING:
    from symwatch.consumers.alerts.rules import Alert, Dispatcher

DEFAULT_DEDUP = "60s"
DEFAULT_MAX_PER_MINUTE = 10.0
DEFAULT_DRAIN_S = 10.0

EPILOG = """\
examples:
  symwatch alert --exec 'notify-send "symwatch" "$SYMWATCH_MESSAGE"'
                                          a desktop notification per transition of the only run
  symwatch alert my-experiment --webhook https://hooks.slack.com/services/T000/B000/XXXX
                                          post to Slack; follows my-experiment across restarts
  symwatch alert --layer 'encoder.*' --metric numerical_rank --min-score 8 --exec ./on-rank.sh
  symwatch alert tcp://127.0.0.1:5555 --severity transition,warning,error --exec 'cat >> log'
  symwatch alert --once --timeout 600 && echo "something changed"
  symwatch alert --dry-run --webhook https://example.com/hook   show what would be sent
  symwatch alert tcp://trainhost:5555 --server-key server.key --client-key client.key_secret
                                          a run published with CurveZMQ keys

Commands run through /bin/sh with the event JSON on stdin and SYMWATCH_RUN, SYMWATCH_RUN_NAME,
SYMWATCH_STEP, SYMWATCH_LAYER, SYMWATCH_METRIC, SYMWATCH_DIRECTION, SYMWATCH_BEFORE,
SYMWATCH_AFTER, SYMWATCH_SCORE (the top-scoring series, often the loss), SYMWATCH_HEADLINE_LAYER,
SYMWATCH_HEADLINE_METRIC, SYMWATCH_HEADLINE_BEFORE, SYMWATCH_HEADLINE_AFTER (the layer the
message leads with), SYMWATCH_MESSAGE, SYMWATCH_WHAT (and SYMWATCH_SEVERITY,
SYMWATCH_EXOGENOUS, SYMWATCH_TEXT) in the environment. Webhooks get a JSON POST {"text": "<run>: <message>",
"event": {...}}, retried with backoff. Without --exec or --webhook alerts are only printed.
Exit status: 0 (done, or stopped by SIGTERM), 1 (--timeout before --max-alerts was reached),
2 (bad arguments), 130 (Ctrl-C). See docs/alerts.md."""


# -- argument types ----------------------------------------------------------------------------

def _webhook_url(text: str) -> str:
    from symwatch.consumers.alerts.sinks import check_webhook_url  # noqa: PLC0415 (lazy: the sinks, urllib and http, only once the command runs; keeps start-up fast)

    try:
        return check_webhook_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _command(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a command, got an empty string")
    return text


def _window(text: str) -> tuple[int | None, float | None]:
    """'100' → 100 steps; '30s', '5m', '1h' → seconds; '0' → off."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or (not m.group(2) and "." in m.group(1)):
        raise argparse.ArgumentTypeError(
            f"expected a number of steps (100) or of seconds (30s, 5m, 1h), got {text!r}")
    number, unit = m.group(1), m.group(2)
    if not unit:
        return (int(number) or None), None
    return None, (float(number) * {"s": 1, "m": 60, "h": 3600}[unit]) or None


def _severities(text: str) -> list[str]:
    from symwatch.consumers.alerts.rules import SEVERITIES  # noqa: PLC0415 (lazy: the rules only once the command runs; keeps start-up fast)

    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SEVERITIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SEVERITIES)}, got {text!r}")
    return names


def add_alert_parser(subs: Any) -> Any:
    p = subparser(subs, "alert", "run commands / post webhooks when a run has a transition",
             "Follow a run headlessly and dispatch each detected transition to a command "
             "(--exec) and/or a webhook (--webhook). TARGET: an endpoint, a run id or name "
             "(see `symwatch ls`), or nothing for the only live run. A run followed by name "
             "(or the only run) is followed across restarts of the training process.", EPILOG)
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="tcp://HOST:PORT, ipc://PATH, or a run id / run name")
    out = p.add_argument_group("where alerts go")
    out.add_argument("--exec", dest="exec_", action="append", type=_command, default=[],
                     metavar="CMD", help="run CMD (through /bin/sh) per alert; repeatable")
    out.add_argument("--webhook", action="append", type=_webhook_url, default=[], metavar="URL",
                     help="POST each alert as JSON to URL (http/https); repeatable")
    out.add_argument("--exec-timeout", type=positive_float, default=30.0, metavar="S",
                     help="kill a command still running after S seconds (default 30)")
    out.add_argument("--webhook-timeout", type=positive_float, default=10.0, metavar="S",
                     help="HTTP timeout per attempt (default 10)")
    out.add_argument("--retries", type=non_negative_int, default=4, metavar="N",
                     help="webhook retries after a failed attempt (default 4)")
    out.add_argument("--retry-delay", type=positive_float, default=1.0, metavar="S",
                     help="first webhook backoff; doubles per retry, up to 30 s (default 1)")
    sel = p.add_argument_group("which events")
    sel.add_argument("--layer", action="append", default=[], metavar="GLOB",
                     help="only layers matching GLOB (fnmatch, e.g. 'encoder.*'); repeatable")
    sel.add_argument("--metric", action="append", default=[], metavar="GLOB",
                     help="only indicators matching GLOB (e.g. numerical_rank, loss); repeatable")
    sel.add_argument("--min-score", type=finite_float, default=None, metavar="X",
                     help="only transitions whose detector score is at least X")
    sel.add_argument("--include-exogenous", dest="include_exogenous", action="store_true",
                     default=True,
                     help="alert on transitions explained by a known change (an LR step, "
                          "weight decay switched on, a resume), with the cause said (default)")
    sel.add_argument("--exclude-exogenous", dest="include_exogenous", action="store_false",
                     help="leave out transitions explained by a known change")
    sel.add_argument("--severity", action="append", type=_severities, default=None,
                     metavar="LIST", help="severities to alert on, comma-separated: transition, "
                                          "error, warning, notice, info (default transition)")
    sel.add_argument("--dedup", type=_window, default=_window(DEFAULT_DEDUP), metavar="WINDOW",
                     help="one alert per layer/metric/direction within WINDOW: N steps, or "
                          f"30s / 5m / 1h; 0 = off (default {DEFAULT_DEDUP})")
    sel.add_argument("--max-per-minute", type=non_negative_float,
                     default=DEFAULT_MAX_PER_MINUTE, metavar="N",
                     help="at most N alerts a minute, the excess summarised later as one "
                          "alert; 0 = no limit (default 10)")
    run = p.add_argument_group("running")
    run.add_argument("--once", action="store_true", help="exit after the first alert")
    run.add_argument("--max-alerts", type=positive_int, default=None, metavar="N",
                     help="exit after N alerts")
    run.add_argument("--timeout", type=positive_float, default=None, metavar="S",
                     help="exit after S seconds")
    run.add_argument("--wait", action="store_true",
                     help="wait for the run (TARGET name, or any run) to appear instead of "
                          "failing when it is not live yet")
    run.add_argument("--stale", type=positive_float, default=5.0, metavar="S",
                     help="after S seconds without a message, look the run name up again "
                          "(default 5)")
    run.add_argument("--drain", type=non_negative_float, default=DEFAULT_DRAIN_S, metavar="S",
                     help="on exit, give pending deliveries up to S seconds (default 10)")
    run.add_argument("--dry-run", action="store_true",
                     help="print what would be run or posted instead of doing it")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="print nothing but errors (no alert lines, no status lines)")
    add_security_arguments(p)
    p.set_defaults(func=cmd_alert)
    return p


# -- target ------------------------------------------------------------------------------------

def plan_target(target: str | None, runs: list[runtime.RunEntry], *, wait: bool
                ) -> tuple[str | None, str | None, bool]:
    """(endpoint to start with, run name to follow or None, follow any run that appears)."""
    if target is None:
        if len(runs) == 1:
            return runs[0].endpoint, runs[0].name, False
        if not runs:
            if wait:
                return None, None, True
            raise UserError(no_runs("symwatch alert tcp://127.0.0.1:PORT")
                            + "; or pass --wait", code=1)
        raise several_runs(runs)
    if "://" in target:
        return resolve_target(target, runs)[0], None, False
    try:
        endpoint, name = resolve_target(target, runs)
    except UserError:
        if wait and not any(r.name == target for r in runs):
            return None, target, False  # not live yet: wait for a run of that name
        raise
    # resolve_target tries an exact id, then a name, then an id prefix; mirror that order.
    by_id = (any(r.run_id == target for r in runs)
             or not any(r.name == target for r in runs))
    # A run id names one process; a name outlives restarts, so only a name is re-resolved.
    return endpoint, (None if by_id else name), False


# -- the command -------------------------------------------------------------------------------

class _Stop:
    """SIGTERM / SIGINT set a flag the loop checks; a second signal aborts the drain."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (tests call main())
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _printer(quiet: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        if not quiet:
            _write(sys.stderr, f"symwatch alert: {line}")
    return say


def _write(stream: Any, line: str) -> None:
    try:
        stream.write(line + "\n")
    except UnicodeEncodeError:  # a C locale: keep the line, lose the arrows
        stream.write(line.encode("ascii", "backslashreplace").decode("ascii") + "\n")
    stream.flush()


def _alert_line(alert: Alert) -> str:
    score = alert.get("score")
    tail = f" (score {score:g})" if isinstance(score, (int, float)) else ""
    return (f"{time.strftime('%H:%M:%S')} [{alert.severity}] {alert.text} "
            f"(step {alert.step}){tail}")


def build_dispatcher(args: argparse.Namespace, log: Callable[[str], None]) -> Dispatcher:
    from symwatch.consumers.alerts.rules import AlertRule, Deduplicator, Dispatcher, RateLimiter  # noqa: PLC0415 (lazy: the rules only once the command runs; keeps start-up fast)
    from symwatch.consumers.alerts.sinks import DryRunSink, ExecSink, WebhookSink  # noqa: PLC0415 (lazy: the sinks, urllib and http, only once the command runs; keeps start-up fast)

    sinks: list[Any] = [ExecSink(cmd, timeout=args.exec_timeout, log=log) for cmd in args.exec_]
    sinks += [WebhookSink(url, timeout=args.webhook_timeout, attempts=args.retries + 1,
                          base_delay=args.retry_delay, log=log) for url in args.webhook]
    if args.dry_run:
        sinks = [DryRunSink(s) for s in sinks]
    severities = frozenset(s for group in (args.severity or [["transition"]]) for s in group)
    rule = AlertRule(layers=args.layer, metrics=args.metric, min_score=args.min_score,
                     include_exogenous=args.include_exogenous, severities=severities)
    steps, seconds = args.dedup
    return Dispatcher(sinks, rule, dedup=Deduplicator(steps=steps, seconds=seconds),
                      limiter=RateLimiter(args.max_per_minute or None),
                      on_alert=None if args.quiet else _AlertPrinter())


class _AlertPrinter:
    """One line per alert on stdout. If stdout goes away (`symwatch alert | head -1`), printing
    stops but alerting does not: the sinks are the point, our stdout is a courtesy."""

    def __init__(self) -> None:
        self.enabled = True

    def __call__(self, alert: Alert) -> None:
        if not self.enabled:
            return
        try:
            _write(sys.stdout, _alert_line(alert))
        except (BrokenPipeError, ValueError, OSError):  # ValueError: stdout already closed
            self.enabled = False
            try:  # so the interpreter's final flush of stdout cannot fail either
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass


def cmd_alert(args: argparse.Namespace) -> int:
    from symwatch.consumers.alerts.follow import RunFollower, run_alerts  # noqa: PLC0415 (lazy: only `symwatch alert` follows runs; keeps start-up fast)

    max_alerts = 1 if args.once else args.max_alerts
    say = _printer(args.quiet)
    endpoint, name, any_run = plan_target(args.target, runtime.live_runs(), wait=args.wait)
    curve = curve_client(args)
    try:
        follower = RunFollower(endpoint, name, any_run=any_run, stale_after=args.stale,
                               status=say, curve=curve)
    except EndpointError as exc:
        raise UserError(str(exc)) from None
    dispatcher = build_dispatcher(args, log=lambda line: _write(sys.stderr,
                                                                f"symwatch alert: {line}"))
    sinks = ", ".join(s.name for s in dispatcher.sinks) or "none: printing only"
    where = (f"{name} at {endpoint}" if name and endpoint else name or endpoint
             or "the first run that registers")
    say(f"following {where}; sinks: {sinks}")
    stop = _Stop()
    stop.install()
    reason = "stopped"
    try:
        reason = run_alerts(follower, dispatcher, max_alerts=max_alerts, timeout=args.timeout,
                            should_stop=lambda: stop.signal is not None)
    except KeyboardInterrupt:  # Ctrl-C outside our handler (not the main thread)
        stop.signal = stop.signal or signal.SIGINT
    finally:
        follower.close()
        try:
            abandoned = dispatcher.close(args.drain)
        except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM: leave now
            dispatcher.abort()
            abandoned = -1
        stop.restore()
    _report(dispatcher, reason, stop.signal, abandoned, say)
    if stop.signal == signal.SIGINT:
        return 130
    if reason == "timeout" and max_alerts is not None:
        return 1
    return 0


def _report(dispatcher: Dispatcher, reason: str, signum: int | None, abandoned: int,
            say: Callable[[str], None]) -> None:
    c = dispatcher.counts
    why = {"max-alerts": "reached --max-alerts", "timeout": "--timeout reached"}.get(
        reason, f"stopped by {signal.Signals(signum).name}" if signum else "stopped")
    parts = [f"{c.dispatched} alert{'s' if c.dispatched != 1 else ''} dispatched",
             f"{c.filtered} filtered out", f"{c.deduplicated} duplicates",
             f"{dispatcher.limiter.total_suppressed} rate-limited"]
    from symwatch.consumers.alerts.sinks import WorkerSink  # noqa: PLC0415 (lazy: the sinks, urllib and http, only once the command runs; keeps start-up fast)

    for sink in dispatcher.sinks:
        if isinstance(sink, WorkerSink):  # not a dry run
            extra = "".join(f", {n} {what}" for n, what in ((sink.failed, "failed"),
                                                            (sink.dropped, "dropped")) if n)
            parts.append(f"{sink.name}: {sink.delivered} delivered{extra}")
    if abandoned:
        parts.append("deliveries abandoned at exit" if abandoned < 0
                     else f"{abandoned} deliveries abandoned at exit")
    say(f"{why}: " + "; ".join(parts))
