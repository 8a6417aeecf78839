"""Security: CurveZMQ keys, authorised viewers only, refusing to expose the stream in clear.

Real sockets on 127.0.0.1 (CURVE works on loopback just as on a network interface); every
wait has a deadline, nothing asserts on time."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
import time

import pytest

from symwatch.core import protocol
from symwatch.cli.main import main
from symwatch.transport.subscriber import BackgroundFeed, Subscriber
from symwatch.transport.keys import KeyFileError, keygen, load_client
from symwatch.transport.late_join import fetch_snapshot

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="the agent needs torch")


@pytest.fixture
def keys(tmp_path):
    made = keygen(tmp_path / "keys")
    made["stranger_secret"] = keygen(tmp_path / "other")["client_secret"]  # not authorised
    return made


def _receives(sub, timeout: float) -> list[protocol.Message]:
    deadline = time.monotonic() + timeout
    got: list[protocol.Message] = []
    while time.monotonic() < deadline and not got:
        got = sub.poll(50)
    return got


def test_keygen_makes_private_secret_files_and_never_overwrites(tmp_path, capsys):
    folder = tmp_path / "k"
    assert main(["keygen", str(folder)]) == 0
    out = capsys.readouterr().out
    for name in ("server.key_secret", "server.key", "client.key_secret", "authorized"):
        assert str(folder / name) in out
    for secret in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE(os.stat(folder / secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert (folder / "authorized" / "client.key").read_bytes() == \
        (folder / "client.key").read_bytes()
    before = (folder / "server.key_secret").read_bytes()
    assert main(["keygen", str(folder)]) == 1
    assert "not overwriting" in capsys.readouterr().err
    assert (folder / "server.key_secret").read_bytes() == before
    assert main(["keygen", str(folder), "--client", "alice"]) == 0
    assert (folder / "authorized" / "alice.key").exists()


def test_a_secret_key_readable_by_others_is_refused(keys):
    os.chmod(keys["client_secret"], 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_client(keys["server_public"], keys["client_secret"])
    public_only = keys["client_secret"].with_name("public-only.key")
    public_only.write_bytes(keys["client_public"].read_bytes())
    os.chmod(public_only, 0o600)
    with pytest.raises(KeyFileError, match="no secret key"):
        load_client(keys["server_public"], public_only)


def test_non_loopback_needs_keys_or_insecure():
    from symwatch_agent.publish.publisher import (PublisherError, exposed_without_curve,
                                          resolve_bind_address)

    with pytest.raises(PublisherError, match="symwatch keygen"):
        resolve_bind_address("tcp://0.0.0.0:0")
    assert resolve_bind_address("tcp://0.0.0.0:0", curve=True) == "tcp://0.0.0.0:*"
    assert resolve_bind_address("tcp://0.0.0.0:0", insecure=True) == "tcp://0.0.0.0:*"
    assert exposed_without_curve("tcp://0.0.0.0:*", curve=False)
    assert not exposed_without_curve("tcp://0.0.0.0:*", curve=True)
    assert not exposed_without_curve("tcp://127.0.0.1:*", curve=False)
    assert not exposed_without_curve("ipc:///x.sock", curve=False)


def _agent(**options):
    import torch
    from torch import nn

    from symwatch_agent.agent import watch

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent = watch(model, opt, every=1, budget=1.0, heartbeat_interval=0.1, register=False,
                  **options)
    for _ in range(5):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    return agent


@needs_torch
def test_only_an_authorised_client_receives_anything(keys, zmq_ctx):
    agent = _agent(endpoint="tcp://127.0.0.1:0", curve_server_key=keys["server_secret"],
                   curve_authorized=keys["authorized"])
    try:
        assert agent.error is None and agent.endpoint.startswith("tcp://127.0.0.1:")
        good = load_client(keys["server_public"], keys["client_secret"])
        stranger = load_client(keys["server_public"], keys["stranger_secret"])
        ctx = zmq_ctx
        with Subscriber(agent.endpoint, context=ctx, curve=good) as sub:
            assert _receives(sub, 10), "the authorised client received nothing"
        for curve in (stranger, None):  # a key the agent does not list; no CURVE at all
            with Subscriber(agent.endpoint, context=ctx, curve=curve) as sub:
                assert _receives(sub, 1.5) == []
                assert sub.received == 0
        # The history socket admits the same clients only.
        history = agent._publisher.history_endpoint
        assert history.startswith("tcp://127.0.0.1:")
        assert isinstance(fetch_snapshot(history, context=ctx, timeout_s=1.0, curve=stranger),
                          str)
        assert isinstance(fetch_snapshot(history, context=ctx, timeout_s=1.0), str)
        snap = fetch_snapshot(history, context=ctx, timeout_s=10, curve=good)
        assert not isinstance(snap, str), snap
        assert snap.messages and snap.messages[0].kind == protocol.META
        # BackgroundFeed (attach) with keys: the late join and the live stream both work.
        with BackgroundFeed(agent.endpoint, context=ctx, curve=good) as feed:
            assert feed.wait_for_message(10)
            assert feed.late_join.error is None and feed.late_join.snapshot_messages > 0
    finally:
        agent.close()


@needs_torch
def test_bad_or_half_given_keys_mean_not_watching_not_a_crash(keys, capsys):
    agent = _agent(endpoint="tcp://127.0.0.1:0", curve_server_key=keys["server_secret"])
    assert agent.error and "curve_authorized" in agent.error
    os.chmod(keys["server_secret"], 0o640)
    agent = _agent(endpoint="tcp://127.0.0.1:0", curve_server_key=keys["server_secret"],
                   curve_authorized=keys["authorized"])
    assert agent.error and "readable by others" in agent.error
    assert "not watching this run" in capsys.readouterr().err


@needs_torch
def test_insecure_on_a_network_interface_warns_on_every_start(monkeypatch, capsys):
    # Pretend 127.0.0.1 is a network interface, so nothing is really exposed by this test.
    from symwatch.core import runtime

    monkeypatch.setattr(runtime, "is_loopback_host", lambda host: False)
    for _ in range(2):
        agent = _agent(endpoint="tcp://127.0.0.1:0", insecure=True)
        try:
            assert agent.error is None
            assert "WITHOUT encryption or authentication" in capsys.readouterr().err
            # ... and as a warning EVENT, which a late viewer finds in the history.
            snap = fetch_snapshot(agent._publisher.history_endpoint, timeout_s=10)
            assert not isinstance(snap, str), snap
            assert any(m.kind == protocol.EVENT and "WITHOUT" in m.get("message")
                       for m in snap.messages)
        finally:
            agent.close()
    monkeypatch.undo()
    agent = _agent(endpoint="tcp://127.0.0.1:0")
    agent.close()
    assert "WITHOUT" not in capsys.readouterr().err


@needs_torch
def test_attach_with_keys_from_the_command_line(keys, tmp_path):
    agent = _agent(endpoint="tcp://127.0.0.1:0", curve_server_key=keys["server_secret"],
                   curve_authorized=keys["authorized"])
    try:
        base = [sys.executable, "-m", "symwatch", "attach", agent.endpoint, "--headless"]
        proc = subprocess.Popen(base + ["--server-key", str(keys["server_public"]),
                                        "--client-key", str(keys["client_secret"])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            deadline = time.monotonic() + 30
            while "[live]" not in line and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
            assert "[live]" in line and "step 5" in line, (line, proc.poll())
        finally:
            proc.kill()
            proc.communicate(timeout=10)
        half = subprocess.run(base + ["--server-key", str(keys["server_public"])],
                              capture_output=True, text=True, timeout=60)
        assert half.returncode == 2 and "--client-key" in half.stderr
    finally:
        agent.close()


# -- one set of security options for every command (issue #17) ------------------------------

def _train_until(agent_parts, done, timeout: float = 30.0) -> bool:
    """Step the model until `done()` (True) or the deadline (False)."""
    import torch

    model, opt = agent_parts
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        time.sleep(0.02)
    return bool(done())


def _keyed_agent(keys):
    import torch
    from torch import nn

    from symwatch_agent.agent import watch

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    agent = watch(model, opt, every=1, budget=1.0, heartbeat_interval=0.1, register=False,
                  endpoint="tcp://127.0.0.1:0", curve_server_key=keys["server_secret"],
                  curve_authorized=keys["authorized"])
    assert agent.error is None, agent.error
    return agent, (model, opt)


def _viewer_keys(keys) -> list[str]:
    return ["--server-key", str(keys["server_public"]), "--client-key", str(keys["client_secret"])]


@needs_torch
def test_record_subscribes_to_a_keyed_run_with_the_viewer_keys(keys, tmp_path):
    from symwatch.core.recording import RecordingReader

    agent, parts = _keyed_agent(keys)
    out = tmp_path / "keyed.db"
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "record", agent.endpoint,
                             "-o", str(out), *_viewer_keys(keys)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "recording" in proc.stderr.readline()

        def recorded_live() -> bool:  # a few samples in the file
            try:
                with RecordingReader(out) as reader:
                    return sum(1 for _ in reader.messages((protocol.METRICS,))) >= 3
            except Exception:  # noqa: BLE001 - not written yet
                return False

        assert _train_until(parts, recorded_live), "nothing recorded through CURVE"
        agent.close()  # goodbye: the recording ends by itself
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "the run ended" in err
    finally:
        agent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    with RecordingReader(out) as reader:
        kinds = {m.kind for m in reader.messages()}
        assert {protocol.META, protocol.METRICS, protocol.GOODBYE} <= kinds


@needs_torch
def test_alert_subscribes_to_a_keyed_run_with_the_viewer_keys(keys):
    agent, parts = _keyed_agent(keys)
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "alert", agent.endpoint,
                             "--severity", "warning", "--once", "--timeout", "60",
                             *_viewer_keys(keys)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def warned() -> bool:
            agent._publisher.submit(protocol.EVENT, {"message": "keyed warning",
                                                     "severity": "warning"}, 0)
            return proc.poll() is not None
        assert _train_until(parts, warned, timeout=60), "alert never fired through CURVE"
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "[warning]" in out and "keyed warning" in out
    finally:
        agent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_record_and_alert_want_both_viewer_keys(keys, capsys):
    for command in (["record", "tcp://127.0.0.1:5", "-o", "x.db"], ["alert", "tcp://127.0.0.1:5"]):
        assert main(command + ["--server-key", str(keys["server_public"])]) == 2
        assert "--client-key" in capsys.readouterr().err


@needs_torch
@pytest.mark.parametrize("launcher, expected", [
    ("watch", "insecure=True (or SYMWATCH_INSECURE=1)"),
    ("run", "`symwatch run --insecure` (or SYMWATCH_INSECURE=1)"),
    ("inject", "`symwatch inject --insecure`"),
])
def test_the_agent_refusal_says_what_to_type_for_how_it_was_started(launcher, expected,
                                                                    monkeypatch):
    from symwatch_agent.options import injected

    monkeypatch.delenv("SYMWATCH_INSECURE", raising=False)
    monkeypatch.delenv("SYMWATCH_LAUNCH", raising=False)
    if launcher == "run":
        monkeypatch.setenv("SYMWATCH_LAUNCH", "1")  # what `symwatch run` sets
    if launcher == "inject":
        with injected({}):
            agent = _agent(endpoint="tcp://0.0.0.0:0")
    else:
        agent = _agent(endpoint="tcp://0.0.0.0:0")
    assert agent.error and expected in agent.error
    others = {"watch": "insecure=True", "run": "symwatch run", "inject": "symwatch inject"}
    assert all(text not in agent.error for name, text in others.items() if name != launcher)
    connect = _agent(connect="tcp://10.11.12.13:5557") if launcher != "inject" else None
    if connect is not None:
        assert connect.error and expected in connect.error


@needs_torch
def test_symwatch_insecure_is_read_by_the_agent_and_an_injection_keeps_the_environment(
        monkeypatch):
    from symwatch_agent.options import AgentOptions, injected

    monkeypatch.delenv("SYMWATCH_INSECURE", raising=False)
    assert AgentOptions().insecure is False
    monkeypatch.setenv("SYMWATCH_INSECURE", "1")
    assert AgentOptions().insecure is True
    assert AgentOptions(insecure=False).insecure is False  # the keyword wins
    monkeypatch.delenv("SYMWATCH_INSECURE")
    with injected({"SYMWATCH_INSECURE": "1", "SYMWATCH_CURVE_RELAY_KEY": "/k/relay.key"}):
        options = AgentOptions()
    assert options.insecure is True and options.curve_relay_key == "/k/relay.key"
    assert options.launcher == "inject"
    assert "SYMWATCH_INSECURE" not in os.environ and AgentOptions().launcher == "watch"


@pytest.mark.parametrize("argv, expected", [
    (["run", "--endpoint", "tcp://0.0.0.0:5555", "--", sys.executable, "-c", "0"],
     "`symwatch run --insecure` (or SYMWATCH_INSECURE=1)"),
    (["run", "--connect", "tcp://10.11.12.13:5557", "--", sys.executable, "-c", "0"],
     "`symwatch run --insecure`"),
    (["inject", str(os.getpid()), "--endpoint", "tcp://0.0.0.0:5555"],
     "`symwatch inject --insecure`"),
])
def test_run_and_inject_refuse_before_starting_and_say_what_to_type(argv, expected, capsys,
                                                                  monkeypatch):
    monkeypatch.delenv("SYMWATCH_INSECURE", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "insecure=True" not in err
    assert ("--server-key" in err) and ("--client-key" in err if "--connect" in argv
                                         else "--authorized" in err)


def test_relay_refusal_says_what_to_type(capsys):
    assert main(["relay", "--bind", "tcp://0.0.0.0:5557"]) == 1
    err = capsys.readouterr().err
    assert "`symwatch relay --insecure`" in err and "insecure=True" not in err


def test_run_puts_the_keys_and_insecure_in_the_commands_environment(keys, tmp_path):
    import argparse

    from symwatch.cli.common import UserError, publisher_environment

    def args(**given):
        base = {"endpoint": None, "connect": None, "server_key": None, "client_key": None,
                "authorized": None, "insecure": False}
        return argparse.Namespace(**{**base, **given})

    env = publisher_environment(args(endpoint="tcp://0.0.0.0:0",
                                     server_key=str(keys["server_secret"]),
                                     authorized=str(keys["authorized"])), "run", environ={})
    assert env == {"SYMWATCH_CURVE_SERVER_KEY": str(keys["server_secret"]),
                   "SYMWATCH_CURVE_AUTHORIZED": str(keys["authorized"])}
    env = publisher_environment(args(connect="tcp://10.1.2.3:5557",
                                     server_key=str(keys["server_public"]),
                                     client_key=str(keys["client_secret"])), "run", environ={})
    assert env == {"SYMWATCH_CURVE_RELAY_KEY": str(keys["server_public"]),
                   "SYMWATCH_CURVE_CLIENT_KEY": str(keys["client_secret"])}
    assert publisher_environment(args(endpoint="tcp://0.0.0.0:0", insecure=True), "run",
                                 environ={}) == {"SYMWATCH_INSECURE": "1"}
    # The variables count as given: no refusal when the environment has them.
    assert publisher_environment(args(endpoint="tcp://0.0.0.0:0"), "run",
                                 environ={"SYMWATCH_INSECURE": "1"}) == {}
    with pytest.raises(UserError, match="--client-key goes with --connect"):
        publisher_environment(args(client_key=str(keys["client_secret"])), "run", environ={})
    with pytest.raises(UserError, match="--authorized"):
        publisher_environment(args(server_key=str(keys["server_secret"])), "run", environ={})


@needs_torch
def test_symwatch_run_insecure_reaches_the_agent(tmp_path, monkeypatch):
    # 0.0.0.0 is bound for real, but only for a 3-step run.
    monkeypatch.delenv("SYMWATCH_INSECURE", raising=False)
    script = tmp_path / "train.py"
    script.write_text("import torch\n"
                      "m = torch.nn.Linear(2, 2)\n"
                      "o = torch.optim.SGD(m.parameters(), lr=0.1)\n"
                      "for _ in range(3):\n"
                      "    m(torch.randn(1, 2)).sum().backward(); o.step()\n")
    import socket

    with socket.socket() as probe:  # a free port (the CLI takes no port 0)
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    base = [sys.executable, "-m", "symwatch", "run", "--endpoint", f"tcp://0.0.0.0:{port}"]
    done = subprocess.run(base + ["--insecure", "--", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "WITHOUT encryption or authentication" in done.stderr
    refused = subprocess.run(base + ["--", sys.executable, str(script)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "`symwatch run --insecure`" in refused.stderr
