"""`symwatch attach --web`: the real server (textual-serve) as a subprocess, against a real PUB
socket on loopback, loaded in headless Chromium (driven by playwright, using the system's
/usr/bin/chromium; playwright never downloads a browser here). Skipped where any of them is
missing (tests/setup.sh installs chromium)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from symwatch.cli import main as cli
from symwatch.core import protocol
from symwatch.launch.web import WebError, attach_command, check_host, url_for
from tui_stream import LAYERS, STAIRCASE_LAYER
from tui_stream import messages as stream_messages

CHROMIUM = os.environ.get("SYMWATCH_CHROMIUM", "/usr/bin/chromium")
# textual.js keeps its xterm.js terminal in a local; the test page exposes it so the test can
# read the terminal's buffer (the text the canvas is drawn from). The page is otherwise as
# served. If textual-serve changes this line, the test says so.
HOOK_FROM = "const t=new w(e,{ping:r});"
HOOK_TO = HOOK_FROM + "window.__symwatchTerminal=t.terminal;"
READ_SCREEN = """() => {
    const term = window.__symwatchTerminal;
    if (!term) return "";
    const buffer = term.buffer.active, lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return lines.join("\\n");
}"""


def test_attach_command_repeats_the_options_for_each_browser_session():
    command = attach_command("tcp://127.0.0.1:5555", title="symwatch — my run", theme="light",
                             bell=True, server_key="/k/server.key", client_key="/k/me.key_secret")
    assert command.startswith(f"{sys.executable} -m symwatch attach tcp://127.0.0.1:5555 ")
    assert "--title 'symwatch — my run'" in command and "--theme light" in command
    assert "--bell" in command and "--server-key /k/server.key" in command
    assert "--web" not in command  # the served process draws in the page, it does not serve
    assert url_for("::1", 8000) == "http://[::1]:8000"
    check_host("127.0.0.1", allow_remote=False)
    check_host("0.0.0.0", allow_remote=True)
    with pytest.raises(WebError, match="not a loopback address.*--allow-remote"):
        check_host("0.0.0.0", allow_remote=False)


@pytest.mark.parametrize("argv, message", [
    (["--port", "8000"], "go with --web"),
    (["--web", "--headless"], "exclude each other"),
    (["--web", "--host", "0.0.0.0"], "not a loopback address"),
    (["--web", "--port", "99999"], "expected a port number, 0 to 65535"),
])
def test_bad_web_options_are_clear_errors(argv, message, capsys):
    assert cli.main(["attach", "tcp://127.0.0.1:5555", *argv]) in (1, 2)
    assert message in capsys.readouterr().err


def _publish_until(stop: threading.Event, agent) -> None:
    """What a running agent does for a viewer that joins late: META again every few
    messages, then the latest metrics, stats and a heartbeat; here every 0.2 s."""
    stream = stream_messages(120)
    last = {m.kind: m for m in stream}
    while not stop.is_set():
        for msg in (stream[0], last[protocol.METRICS], last[protocol.STATS]):
            agent.send(msg.kind, msg.step, **msg.payload)
        agent.heartbeat()
        stop.wait(0.2)


def _server_url(proc: subprocess.Popen, timeout: float) -> str:
    """The URL the server prints on stderr (read on a thread: a silent server cannot hang us)."""
    found: list[str] = []
    seen: list[str] = []

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            seen.append(line)
            match = re.search(r"serving the run view at (http://\S+)", line)
            if match:
                found.append(match[1])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        raise AssertionError(f"the server printed no URL within {timeout} s; stderr: "
                             f"{''.join(seen)!r}")
    return found[0]


@pytest.mark.timeout(120)
def test_web_view_renders_the_run_in_headless_chromium(fake_agent, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pytest.importorskip("textual_serve", reason="textual-serve is not installed")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (tests/setup.sh installs it)")

    agent = fake_agent()
    stop = threading.Event()
    publisher = threading.Thread(target=_publish_until, args=(stop, agent), daemon=True)
    publisher.start()
    server = subprocess.Popen(
        [sys.executable, "-m", "symwatch", "attach", agent.endpoint, "--web", "--theme", "dark",
         "--title", "symwatch — web test"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    shot = tmp_path / "web-view.png"
    try:
        url = _server_url(server, timeout=30)
        assert url.startswith("http://127.0.0.1:")  # loopback unless asked otherwise
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.route("**/*", _serve_locally(url))
                page.goto(url)
                try:
                    page.wait_for_function(
                        f"() => ({READ_SCREEN})().includes({STAIRCASE_LAYER!r})", timeout=45_000)
                finally:
                    page.screenshot(path=str(shot))
                    print(f"screenshot of the web view: {shot}")
                screen = page.evaluate(READ_SCREEN)
            finally:
                browser.close()
    finally:
        stop.set()
        publisher.join(5)
        _stop(server)
    assert shot.stat().st_size > 10_000  # a real picture, not an empty page
    assert "LIVE" in screen and "tiny-gpt" in screen and "gpu-node-7" in screen
    for name, _, _ in LAYERS:
        assert name in screen, f"{name} is not on the web page:\n{screen}"
    assert re.search(r"step\s+120\b", screen), screen
    assert "Quit" in screen and "Help" in screen  # the footer: the same app, keys and all


def _serve_locally(url: str):
    """Route handler: the page's own files pass through (textual.js with the hook above);
    anything from elsewhere (the page asks Google for a font) is refused, as offline."""
    def handle(route) -> None:
        request_url = route.request.url
        if not request_url.startswith(url):
            route.abort()
        elif request_url.endswith("/static/js/textual.js"):
            response = route.fetch()
            body = response.text()
            assert HOOK_FROM in body, ("textual-serve's textual.js changed: update HOOK_FROM in "
                                       "tests/tui/test_web.py")
            route.fulfill(response=response, body=body.replace(HOOK_FROM, HOOK_TO, 1))
        else:
            route.continue_()
    return handle


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's session: textual-serve and the view it started for the page."""
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(5)
