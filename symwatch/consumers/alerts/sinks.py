"""Where alerts go: a command (`ExecSink`) or an HTTP webhook (`WebhookSink`) (stdlib only).

Each sink delivers on a worker thread of its own from a bounded queue, so a hanging command
or a dead HTTP endpoint delays only its own deliveries: the dispatcher's `submit` never
waits, and when a queue is full the oldest alert is dropped (and counted) rather than letting
memory grow or the subscriber fall behind. docs/alerts.md describes the behaviour for users.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from http.client import HTTPException
from typing import Any, Callable, Sequence, TextIO

from symwatch import __version__
from symwatch.consumers.alerts.rules import Alert

Log = Callable[[str], None]
_log_lock = threading.Lock()

# An environment string must fit the kernel's per-string limit (MAX_ARG_STRLEN, 128 KiB on
# Linux); the full event is on stdin anyway.
_MAX_ENV_CHARS = 4096
_MAX_RETRY_AFTER_S = 120.0  # a server asking for an hour would stall the queue for an hour


def stderr_log(message: str) -> None:
    with _log_lock:  # worker threads log too; keep lines whole
        print(f"symwatch alert: {message}", file=sys.stderr, flush=True)


def event_json(alert: Alert) -> str:
    # ensure_ascii: event strings are untrusted and may hold lone surrogates, which cannot be
    # written as UTF-8; escaped, they are still valid JSON.
    return json.dumps(alert.event(), ensure_ascii=True, allow_nan=False, default=str)


def _env_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\x00", "")  # NUL cannot be in an environment string
    text = text.encode("utf-8", "replace").decode("utf-8")  # nor an unpaired surrogate
    return text[:_MAX_ENV_CHARS]


def alert_env(alert: Alert) -> dict[str, str]:
    """The SYMWATCH_* variables a command gets (empty string for a missing value)."""
    fields = {"RUN": alert.run, "RUN_NAME": alert.run_name, "STEP": alert.step,
              "SEVERITY": alert.severity, "MESSAGE": alert.message, "TEXT": alert.text}
    for name in ("layer", "metric", "direction", "before", "after", "score", "exogenous",
                 "what"):
        fields[name.upper()] = alert.get(name)
    fields.update(_headline_fields(alert))
    return {f"SYMWATCH_{key}": _env_text(value) for key, value in fields.items()}


def _headline_fields(alert: Alert) -> dict[str, Any]:
    """HEADLINE_*: the layer series the message leads with (the event's `headline`, the
    strongest of its `movers`) and its levels. The flat LAYER/METRIC/BEFORE/AFTER are the
    top-scoring jump's, which is often the loss while the message names a layer (a new
    user's report: `linear.0 effective rank 2.659 → 3.049` came with LAYER empty and the
    loss's 5.24 → 3.62)."""
    headline = alert.get("headline")
    headline = headline if isinstance(headline, dict) else {}
    layer, metric = headline.get("layer"), headline.get("metric")
    movers = alert.get("movers")
    mover = next((m for m in movers if isinstance(m, dict) and m.get("layer") == layer
                  and m.get("metric") == metric), {}) if isinstance(movers, list) else {}
    return {"HEADLINE_LAYER": layer, "HEADLINE_METRIC": metric,
            "HEADLINE_BEFORE": mover.get("before"), "HEADLINE_AFTER": mover.get("after")}


class WorkerSink:
    """A bounded queue and a daemon thread calling `deliver` for each alert, in order."""

    name = "sink"

    def __init__(self, *, max_queue: int = 100, log: Log | None = None) -> None:
        self.log: Log = log or stderr_log
        self.max_queue = max(1, max_queue)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0  # oldest alerts pushed out of a full queue
        self.abandoned = 0  # still queued (or in delivery) when the close deadline passed
        self._queue: deque[Alert] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None

    def deliver(self, alert: Alert) -> bool:
        raise NotImplementedError

    def describe(self, alert: Alert) -> str:
        """What `deliver` would do, in words (for --dry-run)."""
        raise NotImplementedError

    def submit(self, alert: Alert) -> None:
        with self._cond:
            if self._closing.is_set():
                self.abandoned += 1
                return
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1:  # once; the total is in the closing summary
                    self.log(f"{self.name}: falling behind; dropping the oldest queued alerts "
                             f"(queue of {self.max_queue})")
            self._queue.append(alert)
            if self._thread is None:  # started on first use: a --dry-run never starts one
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"symwatch-alert {self.name}")
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self.abandoned += len(self._queue)
                    self._queue.clear()
                    return
                alert = self._queue.popleft()
                self._busy = True
            try:
                ok = self.deliver(alert)
            except Exception as exc:  # noqa: BLE001 - one bad delivery must not kill the sink
                self.log(f"{self.name}: delivery failed: {type(exc).__name__}: {exc}")
                ok = False
            with self._cond:
                if self._busy:  # else close() gave up on this delivery and counted it already
                    if ok:
                        self.delivered += 1
                    elif self._abort.is_set():
                        self.abandoned += 1  # cut short by the close deadline
                    else:
                        self.failed += 1
                self._busy = False
                self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + int(self._busy)

    def wait_idle(self, timeout: float) -> bool:
        """True once everything submitted so far has been delivered or given up (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def begin_close(self, deadline: float) -> None:
        """Stop taking alerts; deliver what is queued until `deadline` (monotonic)."""
        with self._cond:
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
            self._closing.set()
            self._cond.notify_all()

    def close(self, deadline: float) -> int:
        """Drain until `deadline`, then abandon the rest; returns the number abandoned."""
        self.begin_close(deadline)
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._abort.set()
                self._stop_delivery()
                thread.join(2.0)
                with self._cond:
                    self.abandoned += len(self._queue) + int(self._busy)
                    self._queue.clear()
                    self._busy = False
        return self.abandoned

    def abort(self) -> None:
        """Give up at once (a second Ctrl-C): stop retrying, kill a running command."""
        with self._cond:
            self._closing.set()
            self._deadline = time.monotonic()
            self._cond.notify_all()
        self._abort.set()
        self._stop_delivery()

    def _stop_delivery(self) -> None:
        """Cut short a delivery in progress (the deadline has passed)."""

    def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` before a retry; False when that would overrun the close deadline."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                return True
            if self._deadline is not None:
                if end > self._deadline:
                    return False
                self._abort.wait(end - now)
                return not self._abort.is_set()
            self._closing.wait(end - now)  # wakes when closing starts, to re-check the deadline


class ExecSink(WorkerSink):
    """Runs a command per alert: the event JSON on stdin, SYMWATCH_* in the environment.

    A string runs through `/bin/sh -c` (so pipes and `$SYMWATCH_MESSAGE` work); a list runs
    as argv. The command gets its own process group, so a timeout kills what it started too.
    Its stdout goes to our stderr, keeping our stdout one line per alert."""

    def __init__(self, command: str | Sequence[str], *, timeout: float = 30.0,
                 stdout: int | TextIO | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.shell = isinstance(command, str)
        self.command: str | list[str] = command if isinstance(command, str) else list(command)
        if not self.command:
            raise ValueError("empty command")
        self.display = command if isinstance(command, str) else " ".join(command)
        self.name = f"exec `{_shorten(self.display)}`"
        self.timeout = timeout
        self._stdout = stdout if stdout is not None else _stderr_fd()
        self._proc: subprocess.Popen[bytes] | None = None

    def describe(self, alert: Alert) -> str:
        env = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}"
                       for k, v in alert_env(alert).items() if v)
        return f"would run `{self.display}` with {env} and stdin {event_json(alert)}"

    def deliver(self, alert: Alert) -> bool:
        data = (event_json(alert) + "\n").encode("ascii")  # a line: `read`, `cat >> x.jsonl`
        env = dict(os.environ)
        env.update(alert_env(alert))
        try:
            proc = subprocess.Popen(self.command, shell=self.shell, stdin=subprocess.PIPE,
                                    stdout=self._stdout, env=env, start_new_session=True)
        except (OSError, ValueError) as exc:  # not found, not executable, bad argument
            self.log(f"{self.name}: cannot run it: {exc}")
            return False
        self._proc = proc
        if self._abort.is_set():  # abort() ran between Popen and the line above
            _kill_group(proc)
        try:
            proc.communicate(data, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            self.log(f"{self.name}: still running after {self.timeout:g} s; killed")
            return False
        finally:
            self._proc = None
            if proc.poll() is None:  # communicate was interrupted by an abort
                _kill_group(proc)
        if self._abort.is_set():
            return False  # killed by close(): counted as abandoned, not as the command's fault
        if proc.returncode != 0:
            hint = " (command not found)" if proc.returncode == 127 and self.shell else ""
            self.log(f"{self.name}: exited with status {proc.returncode}{hint}")
            return False
        return True

    def _stop_delivery(self) -> None:
        proc = self._proc
        if proc is not None:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        pass


def _stderr_fd() -> int | None:
    try:
        os.fstat(2)
        return 2
    except OSError:  # no stderr at all (a daemon): the child inherits whatever there is
        return subprocess.DEVNULL


def _shorten(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


class WebhookSink(WorkerSink):
    """POSTs `{"text": "<run name>: <message>", "event": {...}}` as JSON (Slack's incoming
    webhooks read `text`). Connection errors, timeouts, 5xx and 429 are retried with
    exponential backoff and jitter (Retry-After is obeyed); any other status is final.
    After `attempts` tries the alert is given up with one log line."""

    def __init__(self, url: str, *, timeout: float = 10.0, attempts: int = 5,
                 base_delay: float = 1.0, max_delay: float = 30.0,
                 rng: random.Random | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.url = check_webhook_url(url)
        self.display = redact_url(self.url)
        self.name = f"webhook {self.display}"
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._rng = rng or random.Random()
        self._opener = urllib.request.build_opener()  # honours http(s)_proxy / no_proxy

    def body(self, alert: Alert) -> bytes:
        payload = {"text": slack_escape(alert.text), "event": alert.event()}
        return json.dumps(payload, ensure_ascii=True, allow_nan=False, default=str).encode()

    def describe(self, alert: Alert) -> str:
        return f"would POST to {self.display}: {self.body(alert).decode()}"

    def deliver(self, alert: Alert) -> bool:
        body = self.body(alert)
        error = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            retry_after: float | None = None
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": f"symwatch/{__version__}"})
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    response.read(65536)
                return True
            except urllib.error.HTTPError as exc:
                status = exc.code
                retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers
                                                else None)
                exc.close()
                error = f"HTTP {status} {exc.reason}".rstrip()
                if status != 429 and status < 500:  # a bad URL or token will not heal
                    self.log(f"{self.name}: {error}; not retried")
                    return False
            except (urllib.error.URLError, OSError, HTTPException) as exc:
                reason = getattr(exc, "reason", None) or exc
                error = f"{type(exc).__name__}: {reason}"
            if attempt == self.attempts:
                break
            if not self._sleep(self.delay(attempt, retry_after)):
                self.log(f"{self.name}: gave up on an alert when shutting down "
                         f"after {attempt} attempts ({error})")
                return False
        self.log(f"{self.name}: gave up on an alert after {self.attempts} attempts ({error})")
        return False

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(retry_after, _MAX_RETRY_AFTER_S)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        # "Equal jitter": at least half the backoff, so retries from several alerters spread
        # out without any of them retrying at once.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)


def check_webhook_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url.strip()


def redact_url(url: str) -> str:
    """scheme://host[:port]/… : webhook paths carry secrets (Slack's token), so logs omit them."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    tail = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{tail}"


def slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>); its docs ask for exactly these three.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class DryRunSink:
    """Prints what `inner` would do with each alert, and does nothing else."""

    def __init__(self, inner: WorkerSink, out: TextIO | None = None) -> None:
        self.inner = inner
        self.name = f"dry-run {inner.name}"
        self._out = out

    def submit(self, alert: Alert) -> None:
        out = self._out or sys.stdout
        out.write(self.inner.describe(alert) + "\n")
        out.flush()

    def close(self, deadline: float) -> int:
        return 0
