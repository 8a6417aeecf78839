"""Shared fixtures: an isolated runtime directory per test, a ZeroMQ context that cannot hang
the suite at teardown, a deadline-bound subscriber and a fake agent."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from typing import Callable, Iterator

import pytest
import zmq

from symwatch.core import protocol
from waiting import terminate


@pytest.fixture(autouse=True)
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test gets its own registry and socket directory (short, so ipc:// paths fit)."""
    path = tempfile.mkdtemp(prefix="sw-")
    monkeypatch.setenv("SYMWATCH_RUNTIME_DIR", path)
    already_open = set(map(id, _open_agents()))  # e.g. a module-scoped fixture's run
    yield path
    for agent in _open_agents():
        if id(agent) not in already_open:
            agent.close()
    shutil.rmtree(path, ignore_errors=True)


def _open_agents() -> list:
    """A test that fails before its `agent.close()` must not leave hooks on torch (the patched
    `Tensor.backward`) or a registered run behind to break the tests after it: the runtime_dir
    fixture closes the agents a test opened and left open."""
    agent_module = sys.modules.get("symwatch_agent.agent")
    return agent_module.open_agents() if agent_module is not None else []


class Collector:
    """A real SUB socket that records every decoded message; every wait has a deadline."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.messages: list[protocol.Message] = []
        self.garbage = 0

    def drain(self, timeout: float = 0.05) -> None:
        while self.sock.poll(int(timeout * 1000)):
            try:
                self.messages.append(protocol.decode(self.sock.recv_multipart()))
            except protocol.ProtocolError:
                self.garbage += 1
            timeout = 0.0

    def wait_for(self, predicate: Callable[[protocol.Message], bool],
                 timeout: float = 10.0) -> protocol.Message:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kinds = sorted({m.kind for m in self.messages})
                raise AssertionError(f"no matching message within {timeout}s "
                                     f"({len(self.messages)} received, kinds {kinds})")
            self.drain(min(remaining, 0.1))

    def of_kind(self, kind: str) -> list[protocol.Message]:
        return [m for m in self.messages if m.kind == kind]


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context]:
    """A fresh ZeroMQ context for one test. At teardown any socket the test left open is closed
    with linger 0 and the context terminated under a deadline (`waiting.terminate`): a leaked
    socket fails that test instead of hanging `ctx.term()` and the whole suite. Tests that need
    a context take this fixture rather than calling `zmq.Context()`."""
    ctx = zmq.Context()
    yield ctx
    terminate(ctx)


@pytest.fixture
def collector(zmq_ctx: zmq.Context) -> Iterator[Callable[[str], Collector]]:
    ctx = zmq_ctx
    made: list[Collector] = []

    def connect(endpoint: str) -> Collector:
        c = Collector(ctx, endpoint)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.sock.close(0)


# -- observer tests: a real PUB socket that speaks the protocol (no torch needed) --------------

class FakeAgent:
    """A PUB socket bound to a random loopback port that sends protocol-encoded messages with
    a correct header and consecutive sequence numbers, like the agent's publisher."""

    LAYERS = (("conv1", "Conv2d", [32, 3, 3, 3]), ("fc1", "Linear", [256, 128]),
              ("fc2", "Linear", [10, 256]))

    def __init__(self, ctx: zmq.Context, run: str = "run-aaaa") -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.run, self.rank, self.restart = run, 0, 0
        self.seq = 0
        self.step = 0

    def send(self, kind: str, step: int | None = None, *, skip_seq: int = 0,
             **payload: object) -> None:
        self.seq += skip_seq
        if step is not None:
            self.step = step
        frames = protocol.encode(kind, run=self.run, rank=self.rank, restart=self.restart,
                                 seq=self.seq, time=time.time(), step=self.step, payload=payload)
        self.seq += 1
        self.sock.send_multipart(frames)

    def raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def meta(self, name: str = "fake-run", layers: tuple = LAYERS, **extra: object) -> None:
        self.send(protocol.META, name=name, pid=4242, host="node-1", command=["train.py"],
                  started=time.time(), every=1, indicators=list(protocol.INDICATORS),
                  layers=[{"name": n, "type": t, "shape": s, "params": 1} for n, t, s in layers],
                  **extra)

    def heartbeat(self, dropped: int = 0) -> None:
        self.send(protocol.HEARTBEAT, dropped=dropped, samples=0)


@pytest.fixture
def fake_agent(zmq_ctx: zmq.Context) -> Iterator[Callable[..., FakeAgent]]:
    ctx = zmq_ctx
    made: list[FakeAgent] = []

    def bind(run: str = "run-aaaa") -> FakeAgent:
        agent = FakeAgent(ctx, run)
        made.append(agent)
        return agent

    yield bind
    for agent in made:
        agent.sock.close(0)
