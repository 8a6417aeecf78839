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
