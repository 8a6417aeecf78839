"""AgentOptions: watch()'s keyword arguments and the SYMWATCH_* variables, read in one place.
Nothing here starts an agent."""

from __future__ import annotations

import inspect

import pytest

from symwatch_agent import Agent, AgentOptions, watch
from symwatch_agent.entry.integrations.session import CallbackSession
from symwatch_agent.options import launch_options, launch_quiet, rank_endpoint

OPTION_VARIABLES = ("SYMWATCH_NAME", "SYMWATCH_EVERY", "SYMWATCH_ENDPOINT", "SYMWATCH_CONNECT",
                    "SYMWATCH_RECORD", "SYMWATCH_CURVE_SERVER_KEY", "SYMWATCH_CURVE_AUTHORIZED",
                    "SYMWATCH_CURVE_RELAY_KEY", "SYMWATCH_CURVE_CLIENT_KEY", "SYMWATCH_BUDGET",
                    "SYMWATCH_FULL_EVERY", "SYMWATCH_QUIET", "SYMWATCH_JOB_ID", "RANK",
                    "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK",
                    "TORCHELASTIC_RESTART_COUNT")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in OPTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_agent_signature_spells_out_the_options():
    parameters = inspect.signature(Agent).parameters
    assert list(parameters)[:2] == ["model", "optimizer"]
    keywords = [p for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert tuple(p.name for p in keywords) == AgentOptions.keywords()
    assert len(keywords) == 37
    assert parameters["every"].default is None and parameters["budget"].default == 0.01
    assert parameters["classifier"].default is True


@pytest.mark.parametrize("construct", [Agent, watch])
def test_an_unknown_option_is_refused_as_python_would(construct):
    with pytest.raises(TypeError) as caught:
        construct(object(), None, every=5, evry=5, budgt=0.1)
    assert str(caught.value) == "Agent.__init__() got an unexpected keyword argument 'evry'"


@pytest.mark.parametrize("model, optimizer, named", [
    (None, "opt", "NoneType for model"),
    ("opt", "net", "SGD for model"),  # the arguments swapped
    ({"a": "net", "b": 3}, "opt", "int for model 'b'"),
    ("net", "net", "Linear for optimizer"),
    ("net", ["opt", "x"], "str among the optimizers"),
    ("net", 3, "int for optimizer"),
])
def test_a_model_or_optimizer_of_the_wrong_type_says_what_to_pass(model, optimizer, named):
    """watch(None, opt) and watch(opt, net) said only "'SGD' object is not iterable"."""
    import torch
    from torch import nn
    net = nn.Linear(4, 4)
    objects = {"net": net, "opt": torch.optim.SGD(net.parameters(), lr=0.1)}

    def real(x):
        if isinstance(x, dict):
            return {k: real(v) for k, v in x.items()}
        if isinstance(x, list):
            return [real(v) for v in x]
        return objects.get(x, x) if isinstance(x, str) and x in objects else x

    with pytest.raises(TypeError) as caught:
        watch(real(model), real(optimizer))
    text = str(caught.value)
    assert text.startswith("watch(model, optimizer): model is an nn.Module") and named in text, text


def test_a_callback_refuses_an_unknown_option_or_the_model():
    with pytest.raises(TypeError, match="unknown option.*evry"):
        CallbackSession({"evry": 5})
    with pytest.raises(TypeError, match="unknown option.*model"):
        CallbackSession({"model": None})
    CallbackSession({"every": 5, "rank": 0})


def test_defaults_without_an_environment():
    options = AgentOptions()
    assert options.every == 10 and options.budget == 0.01
    assert options.name  # the script's name
    assert (options.rank, options.world_size, options.local_rank, options.node_rank) == \
        (0, 1, None, None)
    assert options.endpoint is None and options.connect is None and options.record is None
    assert options.curve_server_key is None and options.curve_relay_key is None
    assert options.job is None and options.restart == 0


def test_the_environment_fills_what_is_not_given(monkeypatch):
    env = {"SYMWATCH_NAME": "from-env", "SYMWATCH_EVERY": "7",
           "SYMWATCH_ENDPOINT": "tcp://127.0.0.1:5555", "SYMWATCH_CONNECT": "tcp://relay:1",
           "SYMWATCH_RECORD": "run-{run}.db", "SYMWATCH_CURVE_SERVER_KEY": "server.key_secret",
           "SYMWATCH_CURVE_AUTHORIZED": "clients", "SYMWATCH_CURVE_RELAY_KEY": "relay.key",
           "SYMWATCH_CURVE_CLIENT_KEY": "me.key_secret", "RANK": "1", "WORLD_SIZE": "2",
           "LOCAL_RANK": "1", "NODE_RANK": "0", "SYMWATCH_JOB_ID": "job7",
           "TORCHELASTIC_RESTART_COUNT": "3"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    options = AgentOptions()
    assert (options.name, options.every) == ("from-env", 7)
    assert options.endpoint == "tcp://127.0.0.1:5555" and options.connect == "tcp://relay:1"
    assert options.record == "run-{run}.db"
    assert (options.curve_server_key, options.curve_authorized) == ("server.key_secret",
                                                                    "clients")
    assert (options.curve_relay_key, options.curve_client_key) == ("relay.key", "me.key_secret")
    assert (options.rank, options.world_size, options.local_rank, options.node_rank) == \
        (1, 2, 1, 0)
    assert options.job is not None and options.restart == 3

    given = AgentOptions(name="mine", every=3, endpoint="tcp://127.0.0.1:6000", record="x.db",
                         curve_server_key="", rank=0, world_size=4)
    assert (given.name, given.every, given.endpoint, given.record) == \
        ("mine", 3, "tcp://127.0.0.1:6000", "x.db")
    assert given.curve_server_key == ""  # given (even empty) wins over the environment
    assert (given.rank, given.world_size) == (0, 4)


@pytest.mark.parametrize("options, variables, complaint", [
    ({"every": 0}, {}, "every must be a positive number of steps, got 0"),
    ({}, {"SYMWATCH_EVERY": "0"}, "every must be a positive number of steps, got 0"),
    ({}, {"SYMWATCH_EVERY": "often"}, "invalid literal for int"),
    ({"budget": 0}, {}, r"budget is a fraction of wall time in \(0, 1\], got 0"),
    ({"full_every": 0}, {}, "full_every must be a positive number of samples, got 0"),
    ({"rank": 2, "world_size": 2}, {}, "rank 2 is not below world_size 2"),
    ({"node_rank": True}, {}, "node_rank must be an integer >= 0, got True"),
])
def test_bad_values_are_refused(monkeypatch, options, variables, complaint):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=complaint):
        AgentOptions(**options)


def test_launch_options_are_lenient(monkeypatch, capsys):
    assert launch_options(print) == {}
    monkeypatch.setenv("SYMWATCH_BUDGET", "2")
    monkeypatch.setenv("SYMWATCH_EVERY", "often")
    monkeypatch.setenv("SYMWATCH_FULL_EVERY", "3")
    assert launch_options(print) == {"every": 10, "full_every": 3}
    out = capsys.readouterr().out
    assert "ignoring $SYMWATCH_BUDGET='2'" in out and "ignoring $SYMWATCH_EVERY='often'" in out
    monkeypatch.setenv("SYMWATCH_BUDGET", "0.5")
    monkeypatch.setenv("SYMWATCH_EVERY", "0")
    assert launch_options(print) == {"budget": 0.5, "every": 1, "full_every": 3}


def test_launch_options_keep_the_ranks_of_one_machine_apart(monkeypatch):
    monkeypatch.setenv("SYMWATCH_ENDPOINT", "tcp://127.0.0.1:5555")
    monkeypatch.setenv("SYMWATCH_RECORD", "runs/run.db")
    assert launch_options(print) == {}  # one process: Agent reads them itself
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launch_options(print) == {"endpoint": "tcp://127.0.0.1:5557",
                                     "record": "runs/run.rank{rank}.db"}
    assert rank_endpoint("ipc:///tmp/run.sock", 1) == "ipc:///tmp/run.sock.1"
    assert not launch_quiet()
    monkeypatch.setenv("SYMWATCH_QUIET", "1")
    assert launch_quiet()
