"""`symwatch relay`: real agent processes publish to it (connect=), real viewers subscribe to it.
Several runs at once, two viewers that see everything, a third that attaches late and gets
every run's history, garbage refused, the loopback/CurveZMQ rules, the registry entry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq

from symwatch.core import protocol, runtime
from symwatch.cli.main import main
from symwatch.transport.subscriber import BackgroundFeed, Subscriber
from symwatch.transport.relay import Relay, RelayError
from waiting import until

AGENT = textwrap.dedent("""
    import os, sys, time
    import torch
    from torch import nn
    import symwatch

    stop, name = sys.argv[1], sys.argv[2]
    torch.manual_seed(len(name))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with symwatch.watch(model, opt, name=name, every=1, budget=1.0,
                        heartbeat_interval=0.05, meta_interval=0.3) as agent:
        assert agent.error is None, agent.error
        deadline = time.monotonic() + 60
        while not os.path.exists(stop) and time.monotonic() < deadline:
            loss = model(torch.randn(8, 4)).square().mean()
            opt.zero_grad(); loss.backward(); opt.step()
            time.sleep(0.02)
""")


def _drain(sub: Subscriber, into: list, seconds: float = 0.1) -> None:
    into.extend(sub.poll(int(seconds * 1000)))


def _runs_with(messages, kind, min_step=0) -> set[str]:
    return {m.run for m in messages if m.kind == kind and m.step >= min_step}


def test_several_agent_processes_two_viewers_and_a_late_one(tmp_path, runtime_dir):
    with Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:0") as relay:
        # The relay is what `symwatch ls` lists (the agents behind it are not).
        [entry] = runtime.live_runs()
        assert entry.endpoint == relay.publish_endpoint and entry.extra["relay"] is True
        assert entry.extra["history_endpoint"] == relay.history_endpoint

        viewers = [Subscriber(relay.publish_endpoint), Subscriber(relay.publish_endpoint)]
        seen: list[list] = [[], []]
        stop = tmp_path / "stop"
        env = {**os.environ, "SYMWATCH_CONNECT": relay.bind_endpoint,
               "SYMWATCH_RUNTIME_DIR": runtime_dir}
        names = ["run-a", "run-b", "run-c"]
        procs = [subprocess.Popen([sys.executable, "-c", AGENT, str(stop), name], env=env,
                                  stderr=subprocess.PIPE, text=True) for name in names]
        try:
            deadline = time.monotonic() + 60
            while not all(len(_runs_with(s, protocol.METRICS, 20)) == 3 for s in seen):
                assert time.monotonic() < deadline, (
                    f"viewers saw {[len(_runs_with(s, protocol.METRICS)) for s in seen]} runs")
                assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
                for sub, into in zip(viewers, seen):
                    _drain(sub, into, 0.05)
            runs = _runs_with(seen[0], protocol.METRICS)
            assert _runs_with(seen[1], protocol.METRICS) == runs
            assert {m.payload["name"] for m in seen[0] if m.kind == protocol.META} == set(names)
            # Only agents publish here: no registry entries of their own (the relay's only).
            assert [e.run_id for e in runtime.live_runs()] == [relay.relay_id]

            # A viewer attaching now gets each run's history first, then live messages.
            with BackgroundFeed(relay.publish_endpoint) as late:
                got: list = []
                deadline = time.monotonic() + 30
                while not (late.late_join is not None and late.late_join.done
                           and len(_runs_with([m for m in got if not m.from_history],
                                              protocol.METRICS)) == 3):
                    assert time.monotonic() < deadline, "the late viewer got no history"
                    got.extend(late.poll(100))
                join = late.late_join
                assert join.error is None and join.snapshot_messages > 0
                history = [m for m in got if m.from_history]
                assert _runs_with(history, protocol.METRICS) == runs
                for run in runs:  # each run's early samples, long before the viewer came
                    steps = [m.step for m in history if m.run == run and m.kind == protocol.METRICS]
                    assert min(steps) == 1 and max(steps) >= 20
                    assert any(m.run == run and m.kind == protocol.META for m in history)
                    live = [m.seq for m in got if m.run == run and not m.from_history]
                    snapshot_end = max(m.snapshot_seq for m in history if m.run == run)
                    assert live and min(live) > snapshot_end  # no duplicates after the history
            assert relay.snapshots_served >= 1 and len(relay.publishers) == 3
        finally:
            stop.write_text("stop")
            for proc in procs:
                proc.wait(60)
        deadline = time.monotonic() + 20
        while not all(_runs_with(s, protocol.GOODBYE) == runs for s in seen):
            assert time.monotonic() < deadline, "not every goodbye reached both viewers"
            for sub, into in zip(viewers, seen):
                _drain(sub, into, 0.05)
        assert all(p.returncode == 0 for p in procs), [p.stderr.read() for p in procs]
        for sub, into in zip(viewers, seen):
            assert sub.garbage == 0
            for run in runs:  # every message of every run reached both viewers, in order
                seqs = [m.seq for m in into if m.run == run]
                assert seqs == sorted(seqs) and len(seqs) > 20
        assert relay.garbage == 0 and relay.received == relay.forwarded
        for sub in viewers:
            sub.close()
    assert runtime.live_runs() == []  # the relay unregistered itself


def test_garbage_from_a_sender_is_dropped_not_passed_on(zmq_ctx):
    with Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:0") as relay:
        viewer = Subscriber(relay.publish_endpoint)
        ctx = zmq_ctx
        pub = ctx.socket(zmq.PUB)
        pub.linger = 0
        pub.connect(relay.bind_endpoint)
        good = protocol.encode(protocol.HEARTBEAT, run="r1", rank=0, restart=0, seq=0,
                               time=time.time(), step=0, payload={"dropped": 0, "samples": 0})
        got: list = []
        try:
            deadline = time.monotonic() + 10
            while not got:
                assert time.monotonic() < deadline, "nothing came through the relay"
                pub.send_multipart([b"metrics", b"not json"])
                pub.send_multipart([b"a", b"b", b"c"])
                pub.send_multipart(list(good))
                got.extend(viewer.poll(50))
            assert {m.run for m in got} == {"r1"} and viewer.garbage == 0
            assert relay.garbage >= 2 and relay.garbage % 2 == 0
        finally:
            pub.close(0)
            viewer.close()


def test_network_interfaces_need_keys_or_insecure(tmp_path):
    with pytest.raises(RelayError, match="CurveZMQ keys"):
        Relay("tcp://0.0.0.0:0", "tcp://127.0.0.1:0")
    with pytest.raises(RelayError, match="CurveZMQ keys"):
        Relay("tcp://127.0.0.1:0", "tcp://0.0.0.0:0")
    assert Relay("tcp://0.0.0.0:0", "tcp://127.0.0.1:0", insecure=True,
                 register=False).exposed
    assert main(["relay", "--bind", "tcp://0.0.0.0:5557"]) == 1


def test_an_agent_refuses_to_send_in_clear_text_to_another_host(capsys):
    torch = pytest.importorskip("torch")
    import symwatch

    agent = symwatch.watch(torch.nn.Linear(2, 2), connect="tcp://10.11.12.13:5557")
    assert agent.error and "refusing to send the stream in clear text" in agent.error
    assert "SYMWATCH_CURVE_RELAY_KEY" in capsys.readouterr().err


def test_curve_keys_encrypt_both_sides_and_refuse_strangers(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import symwatch
    from symwatch.transport.keys import keygen, load_client
    from symwatch.transport.relay import load_curve

    made = keygen(tmp_path / "keys")  # the relay's pair; "client" for the viewer
    agent_keys = keygen(tmp_path / "keys", client="agent", server=False)
    for name in ("agent.key",):  # the agent's public key, authorised like the viewer's
        Path(made["authorized"], name).write_bytes(Path(agent_keys["agent_public"]).read_bytes())
    curve = load_curve(str(made["server_secret"]), str(made["authorized"]))
    with Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", curve=curve) as relay:
        viewer = Subscriber(relay.publish_endpoint,
                            curve=load_client(made["server_public"], made["client_secret"]))
        stranger = Subscriber(relay.publish_endpoint)  # no keys: never admitted
        monkeypatch.setenv("SYMWATCH_CURVE_RELAY_KEY", str(made["server_public"]))
        monkeypatch.setenv("SYMWATCH_CURVE_CLIENT_KEY", str(agent_keys["agent_secret"]))
        model = torch.nn.Sequential(torch.nn.Linear(3, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        got: list = []
        with symwatch.watch(model, opt, every=1, budget=1.0, connect=relay.bind_endpoint,
                            heartbeat_interval=0.05) as agent:
            assert agent.error is None
            deadline = time.monotonic() + 15
            while not any(m.kind == protocol.METRICS for m in got):
                assert time.monotonic() < deadline, "nothing arrived through the CURVE relay"
                model(torch.randn(2, 3)).sum().backward()
                opt.step()
                got.extend(viewer.poll(50))
        assert {m.run for m in got} == {agent.run_id}
        assert stranger.poll(300) == []
        viewer.close()
        stranger.close()


def test_symwatch_run_connect_reaches_every_process_and_bad_endpoints_are_refused(capsys):
    import sys as _sys

    from symwatch.launch.run import plan

    p = plan([_sys.executable, "train.py"], {"connect": "tcp://127.0.0.1:5557"})
    assert p.env["SYMWATCH_CONNECT"] == "tcp://127.0.0.1:5557"
    assert main(["run", "--connect", "127.0.0.1:5557", "--", _sys.executable, "-c", "0"]) == 2
    assert "did you mean tcp://127.0.0.1:5557" in capsys.readouterr().err


def test_the_relay_keeps_a_bounded_set_of_publishers(zmq_ctx):
    """At most `max_publishers` histories (the least recently heard go first), and a publisher
    that said goodbye is forgotten `forget_after` seconds later (the relay's clock is a stand-in
    here, so the test need not wait)."""
    now = [0.0]
    with Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", max_publishers=2, forget_after=60,
               clock=lambda: now[0], register=False) as relay:
        ctx = zmq_ctx
        pub = ctx.socket(zmq.PUB)
        pub.linger = 0
        pub.connect(relay.bind_endpoint)

        def send(run: str, kind: str = protocol.HEARTBEAT, seq: int = 0, **payload) -> None:
            payload = payload or {"dropped": 0, "samples": 0}
            pub.send_multipart(list(protocol.encode(kind, run=run, rank=0, restart=0, seq=seq,
                                                    time=0.0, step=0, payload=payload)))

        try:
            assert until(lambda: (send("a"), relay.received > 0)[1]), "the relay never heard run a"
            now[0] = 1.0
            send("b")
            assert until(lambda: ("b", 0, 0) in relay.publishers), "run b"
            now[0] = 2.0
            send("c")  # a third publisher: a, heard longest ago, is dropped
            assert until(lambda: ("c", 0, 0) in relay.publishers), "run c"
            assert set(relay.publishers) == {("b", 0, 0), ("c", 0, 0)}
            send("b", protocol.GOODBYE, seq=1, reason="finished")
            assert until(lambda: relay.publishers[("b", 0, 0)].said_goodbye), "b's goodbye"
            now[0] = 100.0  # past forget_after since b's goodbye (checked every 2 s of clock)
            assert until(lambda: ("b", 0, 0) not in relay.publishers), "b forgotten"
            assert ("c", 0, 0) in relay.publishers  # no goodbye: kept
        finally:
            pub.close(0)
