"""`symwatch alert`: filters, de-duplication, rate limit, the exec and webhook sinks (a real
subprocess, a real local HTTP server), following a restarted run by name, and the command run
as a real subprocess against a FakeAgent. Every wait has a deadline."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from symwatch.core import protocol, runtime
from symwatch.core.names import display
from symwatch.core.processes import free_port
from symwatch.cli.alert import plan_target
from symwatch.consumers.alerts.follow import LIVE, RunFollower, run_alerts
from symwatch.consumers.alerts.sinks import (ExecSink, WebhookSink, alert_env, parse_retry_after,
                                  redact_url, slack_escape)
from symwatch.consumers.alerts.rules import (Alert, AlertRule, Deduplicator, Dispatcher, RateLimiter,
                               SUMMARY)
from symwatch.cli.common import UserError
from symwatch.cli.main import main
from waiting import until

_seq = itertools.count()


def msg(kind: str, step: int = 10, run: str = "run-aaaa", **payload: Any) -> protocol.Message:
    """A message as a receiver gets it: encoded and decoded with the real protocol."""
    frames = protocol.encode(kind, run=run, rank=0, restart=0, seq=next(_seq), time=time.time(),
                             step=step, payload=payload)
    return protocol.decode(list(frames))


def transition(layer: str | None = "fc1", metric: str = "numerical_rank", direction: str = "up",
               before: float = 2, after: float = 3, score: float | None = 7.25,
               exogenous: str | None = None, **extra: Any) -> dict[str, Any]:
    # the message as the detector writes it (the table's name, core/names.py); the payload's
    # `metric` stays the wire name
    who = f"{layer} {display(metric)}" if layer else metric
    return {"message": f"{who} {before} → {after}", "severity": "transition",
            "layer": layer, "metric": metric, "direction": direction, "before": before,
            "after": after, "score": score, "exogenous": exogenous, **extra}


class ListSink:
    name = "list"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.closed = False

    def submit(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def close(self, deadline: float) -> int:
        self.closed = True
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the rule ----------------------------------------------------------------------------------

def test_rule_selects_by_severity_layer_metric_score_and_exogenous():
    def passes(rule: AlertRule, **payload: Any) -> bool:
        return rule.matches(Alert.from_message(msg(protocol.EVENT, **payload), "job"))

    default = AlertRule()
    assert passes(default, **transition())
    # a transition with a known cause is still sent by default (the cause is in the alert)
    assert passes(default, **transition(exogenous="weight_decay 0 → 1.5"))
    assert not passes(AlertRule(include_exogenous=False), **transition(exogenous="lr drop"))
    assert not passes(default, message="layer x cannot be measured", severity="warning")
    assert passes(AlertRule(severities=frozenset({"warning"})), message="x", severity="warning")
    # an unknown severity counts as "info" (docs/protocol.md)
    assert passes(AlertRule(severities=frozenset({"info"})), message="x", severity="weird")

    rule = AlertRule(layers=["enc.*"], metrics=["*rank"], min_score=8.0)
    assert passes(rule, **transition(layer="enc.0", score=9.0))
    assert not passes(rule, **transition(layer="dec.0", score=9.0))
    assert not passes(rule, **transition(layer="enc.0", metric="weight_norm", score=9.0))
    assert not passes(rule, **transition(layer="enc.0", score=7.9))
    assert not passes(rule, **transition(layer="enc.0", score=None))
    assert not passes(AlertRule(layers=["*"]), **transition(layer=None, metric="loss"))
    # a grouped transition passes when any one of its series matches (same jump, all criteria)
    jumps = [{"layer": "dec.0", "metric": "numerical_rank", "direction": "up", "step": 9,
              "score": 12.0},
             {"layer": "enc.3", "metric": "stable_rank", "direction": "up", "step": 9,
              "score": 8.5}]
    assert passes(rule, **transition(layer="dec.0", score=12.0, jumps=jumps))
    assert not passes(AlertRule(layers=["enc.*"], min_score=9.0),
                      **transition(layer="dec.0", score=12.0, jumps=jumps))


# -- de-duplication and rate limit -------------------------------------------------------------

def test_dedup_by_steps_and_by_seconds():
    clock = Clock()
    sink = ListSink()
    d = Dispatcher([sink], dedup=Deduplicator(steps=100), clock=clock)
    d.feed([msg(protocol.EVENT, 10, **transition()),
            msg(protocol.EVENT, 60, **transition()),  # same change 50 steps later: dropped
            msg(protocol.EVENT, 70, **transition(direction="down")),  # other direction: kept
            msg(protocol.EVENT, 80, **transition(layer="fc2")),  # other layer: kept
            msg(protocol.EVENT, 80, run="run-bbbb", **transition()),  # other run: kept
            msg(protocol.EVENT, 111, **transition())])  # 101 steps after the first: kept
    assert [(a.run, a.step, a.get("layer"), a.get("direction")) for a in sink.alerts] == [
        ("run-aaaa", 10, "fc1", "up"), ("run-aaaa", 70, "fc1", "down"),
        ("run-aaaa", 80, "fc2", "up"), ("run-bbbb", 80, "fc1", "up"),
        ("run-aaaa", 111, "fc1", "up")]
    assert d.counts.deduplicated == 1

    sink2 = ListSink()
    d2 = Dispatcher([sink2], dedup=Deduplicator(seconds=30), clock=clock)
    d2.feed([msg(protocol.EVENT, 1, **transition())])
    clock.now += 29
    d2.feed([msg(protocol.EVENT, 5000, **transition())])
    clock.now += 2  # 31 s after the first alert
    d2.feed([msg(protocol.EVENT, 5001, **transition())])
    assert [a.step for a in sink2.alerts] == [1, 5001]

    sink3 = ListSink()  # no window: every event goes out
    d3 = Dispatcher([sink3], dedup=Deduplicator(), clock=clock)
    d3.feed([msg(protocol.EVENT, 1, **transition()), msg(protocol.EVENT, 1, **transition())])
    assert len(sink3.alerts) == 2


def test_rate_limit_summarises_the_excess_later():
    clock = Clock()
    sink = ListSink()
    d = Dispatcher([sink], limiter=RateLimiter(2, clock=clock), clock=clock)
    d.feed([msg(protocol.EVENT, s, **transition(layer=f"l{s}")) for s in range(6)])
    assert [a.get("layer") for a in sink.alerts] == ["l0", "l1"]
    assert d.tick() is None  # no token free yet: nothing due
    clock.now += 30  # one token back (2 a minute)
    summary = d.tick()
    assert summary is not None and summary.severity == SUMMARY and summary.suppressed == 4
    assert summary.message.startswith("4 more transitions suppressed by the rate limit (2 a "
                                      "minute)")
    assert "l2 numerical_rank ×1" in summary.message
    assert sink.alerts[-1] is summary and summary.text.startswith("run-aaaa: 4 more")
    assert summary.event()["suppressed"] == 4 and summary.event()["severity"] == "summary"
    assert d.tick() is None
    # more excess, then shutdown: the summary is flushed without waiting for a token
    d.feed([msg(protocol.EVENT, 99, **transition(layer="x")) for _ in range(3)])
    d.close(timeout=1)
    assert sink.alerts[-1].suppressed == 3 and sink.closed
    assert d.counts.dispatched == 2 and d.limiter.total_suppressed == 7


def test_alert_event_env_and_name_from_meta():
    sink = ListSink()
    d = Dispatcher([sink], clock=Clock())
    d.name_hint = "from-registry"
    d.feed([msg(protocol.EVENT, 3, **transition(layer="early"))])
    d.feed([msg(protocol.META, 4, name="job", pid=1, host="h", command=[], started=0.0,
                layers=[], indicators=[], every=1),
            msg(protocol.EVENT, 66, **transition(onset=60, unknown_field=[1]))])
    first, second = sink.alerts
    assert first.run_name == "from-registry" and second.run_name == "job"
    event = second.event()
    assert event["run"] == "run-aaaa" and event["run_name"] == "job" and event["step"] == 66
    assert event["onset"] == 60 and event["unknown_field"] == [1] and event["exogenous"] is None
    env = alert_env(second)
    assert env["SYMWATCH_RUN"] == "run-aaaa" and env["SYMWATCH_RUN_NAME"] == "job"
    assert env["SYMWATCH_STEP"] == "66" and env["SYMWATCH_SCORE"] == "7.25"
    assert env["SYMWATCH_BEFORE"] == "2" and env["SYMWATCH_EXOGENOUS"] == ""
    assert env["SYMWATCH_TEXT"] == "job: fc1 numerical rank 2 → 3"
    # the message's own layer: `headline` and its mover, where the top jump is the loss's
    led = Alert(run="r", run_name="n", step=123, time=0.0, payload={
        "severity": "transition", "layer": None, "metric": "loss", "before": 5.24, "after": 3.62,
        "message": "a transition: linear.0 effective rank 2.659 → 3.049 at step 123",
        "headline": {"layer": "linear.0", "metric": "effective_rank"},
        "movers": [{"layer": "linear.0", "metric": "effective_rank", "before": 2.659,
                    "after": 3.049}, {"layer": "linear.1", "metric": "weight_norm"}]})
    env = alert_env(led)
    assert (env["SYMWATCH_HEADLINE_LAYER"], env["SYMWATCH_HEADLINE_METRIC"],
            env["SYMWATCH_HEADLINE_BEFORE"], env["SYMWATCH_HEADLINE_AFTER"]) == (
        "linear.0", "effective_rank", "2.659", "3.049")
    assert env["SYMWATCH_LAYER"] == "" and env["SYMWATCH_METRIC"] == "loss"
    # untrusted strings: NUL and lone surrogates cannot go into an environment
    odd = Alert(run="r", run_name="n\x00\ud800", step=1, time=0.0,
                payload={"message": "m" * 10000, "severity": "transition"})
    env = alert_env(odd)
    assert env["SYMWATCH_RUN_NAME"] == "n?" and len(env["SYMWATCH_MESSAGE"]) == 4096


# -- the exec sink: a real subprocess ----------------------------------------------------------

RECORDER = textwrap.dedent("""
    import json, os, sys
    data = sys.stdin.read()
    env = {k: v for k, v in os.environ.items() if k.startswith("SYMWATCH_")}
    with open(sys.argv[1], "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"stdin": json.loads(data), "env": env}) + "\\n")
""")


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[str, Path]:
    """(shell command, output file): the command appends what it got as one JSON line."""
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    out = tmp_path / "calls.jsonl"
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(out))}", out


def read_calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_exec_sink_passes_json_on_stdin_and_fields_in_env(recorder):
    command, out = recorder
    logs: list[str] = []
    sink = ExecSink(command, log=logs.append)
    d = Dispatcher([sink], clock=Clock())
    d.name_hint = "job"
    d.feed([msg(protocol.EVENT, 66, **transition(layer="fc1", before=2, after=3))])
    assert sink.wait_idle(20)
    (call,) = read_calls(out)
    assert call["stdin"]["layer"] == "fc1" and call["stdin"]["run_name"] == "job"
    assert call["stdin"]["message"] == "fc1 numerical rank 2 → 3"
    env = {k: v for k, v in call["env"].items() if k != runtime.ENV_RUNTIME_DIR}  # inherited
    assert env == {
        "SYMWATCH_RUN": "run-aaaa", "SYMWATCH_RUN_NAME": "job", "SYMWATCH_STEP": "66",
        "SYMWATCH_SEVERITY": "transition", "SYMWATCH_MESSAGE": "fc1 numerical rank 2 → 3",
        "SYMWATCH_TEXT": "job: fc1 numerical rank 2 → 3", "SYMWATCH_LAYER": "fc1",
        "SYMWATCH_METRIC": "numerical_rank", "SYMWATCH_DIRECTION": "up",
        "SYMWATCH_BEFORE": "2", "SYMWATCH_AFTER": "3", "SYMWATCH_SCORE": "7.25",
        "SYMWATCH_EXOGENOUS": "", "SYMWATCH_WHAT": "", "SYMWATCH_HEADLINE_LAYER": "",
        "SYMWATCH_HEADLINE_METRIC": "", "SYMWATCH_HEADLINE_BEFORE": "",
        "SYMWATCH_HEADLINE_AFTER": ""}
    assert sink.delivered == 1 and not logs
    d.close(5)


def sink_alert() -> Alert:
    return Alert.from_message(msg(protocol.EVENT, **transition()), "job")


def test_exec_sink_argv_list_and_failures_are_logged_not_raised(tmp_path):
    logs: list[str] = []
    out = tmp_path / "argv.txt"
    ok = ExecSink([sys.executable, "-c", "import sys, os; open(sys.argv[1], 'w').write("
                   "os.environ['SYMWATCH_LAYER'])", str(out)], log=logs.append)
    missing = ExecSink("no-such-command-symwatch-test --flag", log=logs.append)
    missing_argv = ExecSink(["/no/such/binary"], log=logs.append)
    failing = ExecSink([sys.executable, "-c", "raise SystemExit(3)"], log=logs.append)
    slow = ExecSink([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5,
                    log=logs.append)
    sinks = [ok, missing, missing_argv, failing, slow]
    for sink in sinks:
        sink.submit(sink_alert())
    for sink in sinks:
        assert sink.wait_idle(20), sink.name
    assert out.read_text() == "fc1" and ok.delivered == 1
    assert [s.failed for s in sinks] == [0, 1, 1, 1, 1]
    text = "\n".join(logs)
    assert "exited with status 127 (command not found)" in text
    assert "cannot run it" in text and "/no/such/binary" in text
    assert "exited with status 3" in text and "still running after 0.5 s; killed" in text


def test_exec_sink_queue_is_bounded_and_close_has_a_deadline(tmp_path):
    logs: list[str] = []
    sink = ExecSink([sys.executable, "-c", "import time; time.sleep(30)"], max_queue=2,
                    log=logs.append)
    start = time.monotonic()
    sink.submit(sink_alert())
    assert until(lambda: sink._busy), "the first command never started"
    for _ in range(4):
        sink.submit(sink_alert())  # never waits on the running command
    assert time.monotonic() - start < 5.0
    assert sink.pending() == 3 and sink.dropped == 2  # 1 running + 2 queued
    assert "dropping the oldest" in logs[0]
    abandoned = sink.close(time.monotonic() + 0.5)
    assert abandoned == 3 and time.monotonic() - start < 10


def test_abort_kills_a_running_command_at_once(tmp_path):
    sink = ExecSink([sys.executable, "-c", "import time; time.sleep(60)"], log=lambda _: None)
    sink.submit(sink_alert())
    sink.submit(sink_alert())
    assert until(lambda: sink._busy), "the command never started"
    begun = time.monotonic()
    Dispatcher([sink]).abort()
    assert sink.wait_idle(10) and time.monotonic() - begun < 5
    assert (sink.abandoned, sink.failed, sink.delivered) == (2, 0, 0)


# -- the webhook sink: a real HTTP server ------------------------------------------------------

class Receiver:
    """An http.server on 127.0.0.1 (random port, own thread) that records POSTs and answers
    with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[tuple[int, dict[str, str]]] = []
        self.always: int | None = None
        self.cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                              "json": json.loads(body)})
                    if receiver.always is not None:
                        status, headers = receiver.always, {}
                    elif receiver.statuses:
                        status, headers = receiver.statuses.pop(0)
                    else:
                        status, headers = 200, {}
                    receiver.cond.notify_all()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/SECRET"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.requests) >= n, timeout), \
                f"{len(self.requests)} requests, expected {n}"
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_webhook_posts_slack_compatible_json(receiver):
    logs: list[str] = []
    sink = WebhookSink(receiver.url, log=logs.append)
    d = Dispatcher([sink], clock=Clock())
    d.feed([msg(protocol.META, 1, name="job", pid=1, host="h", command=[], started=0.0,
                layers=[], indicators=[], every=1),
            msg(protocol.EVENT, 66, **transition())])
    (request,) = receiver.wait_for(1)
    assert request["path"] == "/hooks/T000/SECRET"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["json"]["text"] == "job: fc1 numerical rank 2 → 3"
    assert request["json"]["event"]["layer"] == "fc1" and request["json"]["event"]["step"] == 66
    assert sink.wait_idle(5) and sink.delivered == 1 and not logs
    d.close(5)


def test_webhook_retries_500_then_succeeds(receiver):
    receiver.statuses = [(500, {}), (429, {"Retry-After": "0"})]
    logs: list[str] = []
    sink = WebhookSink(receiver.url, base_delay=0.05, log=logs.append)
    sink.submit(sink_alert())
    requests = receiver.wait_for(3)
    assert sink.wait_idle(5) and sink.delivered == 1 and sink.failed == 0 and not logs
    assert len({json.dumps(r["json"], sort_keys=True) for r in requests}) == 1  # same body


def test_webhook_gives_up_after_bounded_attempts_and_logs_once(receiver):
    receiver.always = 503
    logs: list[str] = []
    sink = WebhookSink(receiver.url, attempts=3, base_delay=0.05, log=logs.append)
    sink.submit(sink_alert())
    assert sink.wait_idle(10)
    assert len(receiver.requests) == 3 and sink.failed == 1
    assert len(logs) == 1 and "gave up on an alert after 3 attempts (HTTP 503" in logs[0]
    assert "SECRET" not in logs[0] and "127.0.0.1" in logs[0]  # the token stays out of logs
    receiver.always = 404
    sink.submit(sink_alert())
    assert sink.wait_idle(10) and len(receiver.requests) == 4  # a 4xx is not retried
    assert "HTTP 404" in logs[-1] and "not retried" in logs[-1]


def test_webhook_connection_refused_is_retried_then_given_up():
    port = free_port()  # closed again: nothing listens there
    logs: list[str] = []
    sink = WebhookSink(f"http://127.0.0.1:{port}/x", attempts=2, base_delay=0.05,
                       log=logs.append)
    sink.submit(sink_alert())
    assert sink.wait_idle(10) and sink.failed == 1
    assert len(logs) == 1 and "after 2 attempts" in logs[0] and "refused" in logs[0].lower()


def test_failing_webhook_does_not_block_exec_or_the_dispatcher(receiver, recorder):
    receiver.always = 500
    command, out = recorder
    logs: list[str] = []
    hook = WebhookSink(receiver.url, attempts=50, base_delay=0.2, max_delay=0.2,
                       log=logs.append)
    run = ExecSink(command, log=logs.append)
    d = Dispatcher([hook, run], clock=Clock())
    start = time.monotonic()
    d.feed([msg(protocol.EVENT, s, **transition(layer=f"l{s}")) for s in range(3)])
    assert time.monotonic() - start < 0.5  # handing over never waits on a sink
    assert run.wait_idle(20)
    assert [c["env"]["SYMWATCH_LAYER"] for c in read_calls(out)] == ["l0", "l1", "l2"]
    assert hook.pending() >= 2 and hook.delivered == 0  # still retrying the first one
    begun = time.monotonic()
    abandoned = d.close(timeout=0.5)
    assert time.monotonic() - begun < 5  # the deadline holds even mid-backoff
    # each queued alert gets the attempts that fit before the deadline, then is given up
    assert abandoned + hook.failed == 3 and hook.delivered == 0 and run.delivered == 3
    assert any("gave up on an alert when shutting down" in line for line in logs)


def test_webhook_helpers():
    assert redact_url("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com/…"
    assert redact_url("http://u:pw@[::1]:8080") == "http://[::1]:8080"
    assert slack_escape("a<b>&c") == "a&lt;b&gt;&amp;c"
    assert parse_retry_after("7") == 7.0 and parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    sink = WebhookSink("http://127.0.0.1:1/", base_delay=1.0, max_delay=30.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)):
        delays = [sink.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= x <= ceiling for x in delays)
    assert sink.delay(1, retry_after=3.0) == 3.0 and sink.delay(1, retry_after=1e6) == 120.0
    with pytest.raises(ValueError):
        WebhookSink("ftp://example.com/x")


# -- following a run over loopback -------------------------------------------------------------

def pump(follower: RunFollower, dispatcher: Dispatcher, until: Callable[[], bool],
         send: Callable[[], None] | None = None, timeout: float = 15.0) -> None:
    """Poll and dispatch (calling `send` each round) until `until()`; deadline-bound."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; follower {follower.state} at {follower.endpoint}")
        if send is not None:
            send()
        dispatcher.name_hint = follower.name
        dispatcher.feed(follower.poll(50))
        dispatcher.tick()


def test_filters_dedup_and_rate_limit_over_a_real_socket(fake_agent, collector):
    agent = fake_agent()
    sink = ListSink()
    rule = AlertRule(layers=["fc*"], min_score=5.0, include_exogenous=False)
    d = Dispatcher([sink], rule, dedup=Deduplicator(steps=50),
                   limiter=RateLimiter(3))
    follower = RunFollower(agent.endpoint, stale_after=5)
    viewer = collector(agent.endpoint)  # another subscriber, as `symwatch attach` would be
    try:
        pump(follower, d, lambda: follower.state == LIVE, send=agent.heartbeat)
        deadline = time.monotonic() + 15
        while not viewer.of_kind(protocol.HEARTBEAT):  # the viewer's own slow join
            assert time.monotonic() < deadline, "the viewer never received a heartbeat"
            agent.heartbeat()
            viewer.drain(0.05)
        viewer.sock.close(0)  # the viewer is killed: the alerter carries on
        agent.meta(name="fake-run")
        agent.send(protocol.EVENT, 10, **transition(layer="conv1"))  # layer filtered
        agent.send(protocol.EVENT, 11, **transition(score=4.0))  # score filtered
        agent.send(protocol.EVENT, 12, **transition(exogenous="lr drop"))  # exogenous
        agent.send(protocol.EVENT, 13, message="fc1 cannot be measured", severity="warning")
        agent.send(protocol.EVENT, 20, **transition())  # 1st alert
        agent.send(protocol.EVENT, 30, **transition())  # duplicate within 50 steps
        agent.send(protocol.EVENT, 40, **transition(layer="fc2"))  # 2nd
        agent.send(protocol.EVENT, 41, **transition(layer="fc3"))  # 3rd
        agent.send(protocol.EVENT, 42, **transition(layer="fc4"))  # rate-limited
        agent.send(protocol.EVENT, 43, **transition(layer="fc5"))  # rate-limited
        pump(follower, d, lambda: d.counts.received >= 10)
    finally:
        follower.close()
    assert [(a.get("layer"), a.step, a.run_name) for a in sink.alerts] == [
        ("fc1", 20, "fake-run"), ("fc2", 40, "fake-run"), ("fc3", 41, "fake-run")]
    assert (d.counts.filtered, d.counts.deduplicated, d.counts.rate_limited) == (4, 1, 2)
    d.close(1)
    assert sink.alerts[-1].severity == SUMMARY and sink.alerts[-1].suppressed == 2


def _register(agent: Any, name: str, started: float) -> runtime.RunEntry:
    entry = runtime.RunEntry(run_id=agent.run, name=name, pid=os.getpid(), command=["train.py"],
                             endpoint=agent.endpoint, started=started, host="h")
    runtime.write_entry(entry)
    return entry


def test_follows_a_restarted_run_by_name(fake_agent):
    a = fake_agent("runA00000001")
    _register(a, "job", time.time() - 10)
    endpoint, name, any_run = plan_target("job", runtime.live_runs(), wait=False)
    assert (endpoint, name, any_run) == (a.endpoint, "job", False)
    status: list[str] = []
    sink = ListSink()
    d = Dispatcher([sink], dedup=Deduplicator())
    follower = RunFollower(endpoint, name, stale_after=0.5, status=status.append)
    try:
        pump(follower, d, lambda: follower.state == LIVE, send=a.heartbeat)
        a.send(protocol.EVENT, 5, **transition(layer="fc1"))
        pump(follower, d, lambda: len(sink.alerts) == 1)
        # The training process dies (no goodbye) and comes back: new id, endpoint, same name.
        a.sock.close(0)
        runtime.remove_entry(a.run)
        b = fake_agent("runB00000002")
        _register(b, "job", time.time())
        pump(follower, d, lambda: follower.endpoint == b.endpoint and follower.state == LIVE,
             send=b.heartbeat)
        b.meta(name="job")
        b.send(protocol.EVENT, 7, **transition(layer="fc2"))
        pump(follower, d, lambda: len(sink.alerts) == 2)
    finally:
        follower.close()
    assert [(x.run, x.run_name, x.get("layer")) for x in sink.alerts] == [
        ("runA00000001", "job", "fc1"), ("runB00000002", "job", "fc2")]
    assert follower.switches == 1
    text = "\n".join(status)
    assert "looking for a restarted run" in text and "following run runB00000002" in text


@pytest.mark.parametrize("target", [None, "late-job"])
def test_wait_for_a_run_that_registers_later(fake_agent, target):
    status: list[str] = []
    endpoint, name, any_run = plan_target(target, [], wait=True)
    follower = RunFollower(endpoint, name, any_run=any_run, stale_after=0.5,
                           status=status.append)
    sink = ListSink()
    d = Dispatcher([sink])
    try:
        assert follower.poll(50) == [] and follower.endpoint is None
        if target is not None:
            other = fake_agent("runX00000009")
            _register(other, "someone-else", time.time())  # not the name waited for
            time.sleep(1.1)  # past the registry re-read interval
            assert follower.poll(50) == [] and follower.endpoint is None
            runtime.remove_entry(other.run)
        agent = fake_agent("runL00000001")
        _register(agent, "late-job", time.time())
        pump(follower, d, lambda: follower.state == LIVE, send=agent.heartbeat)
        agent.send(protocol.EVENT, 3, **transition())
        pump(follower, d, lambda: len(sink.alerts) == 1)
    finally:
        follower.close()
    assert follower.name == "late-job"
    assert sink.alerts[0].run == "runL00000001" and sink.alerts[0].run_name == "late-job"


def test_an_explicit_endpoint_is_not_re_resolved_and_goodbye_is_reported(fake_agent):
    a = fake_agent()
    other = fake_agent("runC00000003")
    _register(other, "job", time.time())
    status: list[str] = []
    d = Dispatcher([ListSink()])
    follower = RunFollower(a.endpoint, None, stale_after=0.2, status=status.append)
    try:
        pump(follower, d, lambda: follower.state == LIVE, send=a.heartbeat)
        a.send(protocol.GOODBYE, 9, reason="finished", exit_code=0)
        pump(follower, d, lambda: follower.state == "ended")
        time.sleep(0.3)
        pump(follower, d, lambda: True)
        follower.poll(300)
    finally:
        follower.close()
    assert follower.switches == 0
    assert any(f"run {a.run} ended (finished)" in line for line in status)


def test_run_alerts_stops_on_max_alerts_timeout_and_request(fake_agent):
    agent = fake_agent()
    sink = ListSink()
    d = Dispatcher([sink], dedup=Deduplicator())
    follower = RunFollower(agent.endpoint)
    try:
        pump(follower, d, lambda: follower.state == LIVE, send=agent.heartbeat)
        stop = threading.Event()

        def publish() -> None:
            for step in range(1, 200):
                if stop.is_set():
                    return
                agent.send(protocol.EVENT, step, **transition(layer=f"l{step}"))
                time.sleep(0.01)

        sender = threading.Thread(target=publish)
        sender.start()
        try:
            assert run_alerts(follower, d, max_alerts=3, timeout=20) == "max-alerts"
        finally:
            stop.set()
            sender.join(10)
        assert d.counts.dispatched == 3
        begun = time.monotonic()
        assert run_alerts(follower, d, max_alerts=1000, timeout=0.3) == "timeout"
        assert 0.25 <= time.monotonic() - begun < 3
        assert run_alerts(follower, d, should_stop=lambda: True) == "stopped"
    finally:
        follower.close()


# -- targets and arguments ---------------------------------------------------------------------

def test_plan_target(fake_agent):
    assert plan_target("tcp://127.0.0.1:5555", [], wait=False) == (
        "tcp://127.0.0.1:5555", None, False)
    with pytest.raises(UserError, match="no live symwatch runs.*symwatch alert"):
        plan_target(None, [], wait=False)
    assert plan_target(None, [], wait=True) == (None, None, True)
    with pytest.raises(UserError, match="not the id or name of a live run"):
        plan_target("job", [], wait=False)
    assert plan_target("job", [], wait=True) == (None, "job", False)
    a, b = fake_agent("abc000000001"), fake_agent("abd000000002")
    _register(a, "alpha", 1.0)
    _register(b, "beta", 2.0)
    runs = runtime.live_runs()
    assert plan_target("alpha", runs, wait=False) == (a.endpoint, "alpha", False)
    assert plan_target("abc000000001", runs, wait=False) == (a.endpoint, None, False)
    assert plan_target("abd", runs, wait=False) == (b.endpoint, None, False)  # id prefix
    with pytest.raises(UserError, match="2 live runs"):
        plan_target(None, runs, wait=False)


@pytest.mark.parametrize("argv, fragment", [
    (["--webhook", "ftp://example.com/x"], "expected an http:// or https:// URL"),
    (["--webhook", "hooks.slack.com/x"], "expected an http:// or https:// URL"),
    (["--exec", " "], "expected a command"),
    (["--dedup", "5 minutes"], "expected a number of steps (100) or of seconds"),
    (["--severity", "transition,loud"], "expected a comma-separated list"),
    (["--min-score", "nan"], "expected a number"),
    (["--max-per-minute", "-1"], "expected a number >= 0"),
    (["tcp://nohost", "--timeout", "1"], "expected tcp://HOST:PORT or ipc://PATH"),
])
def test_bad_arguments_exit_2_with_a_message(argv, fragment, capsys):
    assert main(["alert", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_help_and_no_runs(capsys):
    assert main(["alert", "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "usage: symwatch alert" in out and "SYMWATCH_LAYER" in out
    assert main(["alert"]) == 1
    assert "no live symwatch runs" in capsys.readouterr().err


def test_dry_run_prints_what_would_be_sent(fake_agent, capsys, receiver):
    agent = fake_agent()
    _register(agent, "job", time.time())
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main([
        "alert", "job", "--dry-run", "--once", "--timeout", "20", "--webhook", receiver.url,
        "--exec", "echo hi"])))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while thread.is_alive() and time.monotonic() < deadline:
            agent.send(protocol.EVENT, 66, **transition())
            thread.join(0.1)
    finally:
        thread.join(20)
    assert result == [0]
    out = capsys.readouterr().out
    assert "would run `echo hi` with SYMWATCH_RUN=\"run-aaaa\"" in out
    assert 'would POST to http://127.0.0.1:' in out and '"text": "job: fc1' in out
    assert "SECRET" not in out
    assert receiver.requests == []


# -- the command as a real subprocess ----------------------------------------------------------

class Proc:
    """`python -m symwatch alert ...` with its stdout and stderr read by threads."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "symwatch", "alert", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     encoding="utf-8")
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def has(self, lines: list[str], fragment: str) -> bool:
        return any(fragment in line for line in list(lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def test_cli_end_to_end_with_exec_and_webhook_then_max_alerts(fake_agent, recorder, receiver):
    agent = fake_agent()
    command, out = recorder
    p = Proc(agent.endpoint, "--exec", command, "--webhook", receiver.url, "--max-alerts", "2",
             "--timeout", "60", "--dedup", "0", "--exclude-exogenous")
    try:
        _heartbeats(agent, p)
        agent.meta(name="e2e")
        agent.send(protocol.EVENT, 10, **transition(layer="conv1", score=3.0))
        agent.send(protocol.EVENT, 11, **transition(layer="fc1", exogenous="lr drop"))
        agent.send(protocol.EVENT, 12, **transition(layer="fc1"))
        agent.send(protocol.EVENT, 13, **transition(layer="fc2", direction="down"))
        assert p.proc.wait(30) == 0, "\n".join(p.err)
    finally:
        p.stop()
    calls = read_calls(out)
    layers = [c["env"]["SYMWATCH_LAYER"] for c in calls]
    assert layers == ["conv1", "fc1"]  # the exogenous one skipped; stopped after 2 alerts
    assert calls[0]["env"]["SYMWATCH_RUN_NAME"] == "e2e"
    texts = [r["json"]["text"] for r in receiver.wait_for(2)]
    assert texts == ["e2e: conv1 numerical rank 2 → 3", "e2e: fc1 numerical rank 2 → 3"]
    assert sum("[transition] e2e: " in line for line in p.out) == 2
    assert p.has(p.err, "reached --max-alerts: 2 alerts dispatched")


def _heartbeats(agent: Any, p: Proc, timeout: float = 30) -> None:
    """Heartbeat until the subprocess says it receives (ZeroMQ's slow joiner)."""
    deadline = time.monotonic() + timeout
    while not p.has(p.err, "receiving from run"):
        if p.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("no subscription:\n" + "\n".join(p.err))
        agent.heartbeat()
        time.sleep(0.05)


def test_cli_follows_restart_by_name_and_stops_cleanly_on_sigterm(fake_agent, recorder):
    command, out = recorder
    a = fake_agent("runA00000001")
    _register(a, "job", time.time() - 10)
    p = Proc("job", "--exec", command, "--stale", "0.5", "--timeout", "90")
    try:
        _heartbeats(a, p)
        a.send(protocol.EVENT, 5, **transition(layer="fc1"))
        assert until(lambda: len(read_calls(out)) == 1), "no alert from run A"
        a.sock.close(0)
        runtime.remove_entry(a.run)
        b = fake_agent("runB00000002")
        _register(b, "job", time.time())
        deadline = time.monotonic() + 30
        while not p.has(p.err, "receiving from run runB00000002"):
            assert time.monotonic() < deadline and p.proc.poll() is None, "\n".join(p.err)
            b.heartbeat()
            time.sleep(0.05)
        b.send(protocol.EVENT, 8, **transition(layer="fc2"))
        assert until(lambda: len(read_calls(out)) == 2), "no alert from run B"
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(20) == 0
    finally:
        p.stop()
    calls = read_calls(out)
    assert [(c["env"]["SYMWATCH_RUN"], c["env"]["SYMWATCH_LAYER"]) for c in calls] == [
        ("runA00000001", "fc1"), ("runB00000002", "fc2")]
    assert all(c["env"]["SYMWATCH_RUN_NAME"] == "job" for c in calls)
    assert until(lambda: p.has(p.err, "stopped by SIGTERM"), 5), "\n".join(p.err)
    assert p.has(p.err, "2 alerts dispatched") and not p.has(p.err, "Traceback")


def test_cli_keeps_alerting_when_its_stdout_goes_away(fake_agent, recorder):
    agent = fake_agent()
    command, out = recorder
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "alert", agent.endpoint,
                             "--exec", command, "--max-alerts", "2", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    proc.stdout.close()  # like `symwatch alert | head -0`: the reader is gone
    try:
        deadline = time.monotonic() + 30
        while not any("receiving from run" in line for line in list(err)):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(err)
            agent.heartbeat()
            time.sleep(0.05)
        agent.send(protocol.EVENT, 1, **transition(layer="fc1"))
        agent.send(protocol.EVENT, 2, **transition(layer="fc2"))
        assert proc.wait(30) == 0, "".join(err)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert [c["env"]["SYMWATCH_LAYER"] for c in read_calls(out)] == ["fc1", "fc2"]
    assert "Traceback" not in "".join(err)


def test_a_mover_named_by_a_loss_transition_matches_the_layer_glob():
    """A loss spike's event names the layers that moved most in the same window (`movers`);
    an alert rule on those layers selects it, by each mover's |z|."""
    payload = transition(layer=None, metric="loss", score=12.0,
                         movers=[{"layer": "enc.3", "metric": "weight_norm", "z": -9.5}])
    alert = Alert.from_message(msg(protocol.EVENT, **payload), "job")
    assert AlertRule(layers=["enc.*"], min_score=9.0).matches(alert)
    assert not AlertRule(layers=["enc.*"], min_score=10.0).matches(alert)
    assert not AlertRule(layers=["dec.*"]).matches(alert)
