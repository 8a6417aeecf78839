"""`symwatch ls` shows what sets each run's sampling interval (the registry's extra.sampling)."""

from __future__ import annotations

import json
import os
import time

import torch
from torch import nn

import symwatch
from symwatch.cli.main import main
from symwatch.core import runtime


def test_ls_shows_the_sampling_interval_and_json_has_it(capsys):
    sampling = {"interval": 190.0, "every": 10, "budget": 0.01, "limit": "budget"}
    runtime.write_entry(runtime.RunEntry(
        run_id="aaaa00001111", name="alpha", pid=os.getpid(), command=["train.py"],
        endpoint="tcp://127.0.0.1:5555", started=time.time(), host="h", steps=7,
        extra={"sampling": sampling}))
    assert main(["ls", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries[0]["extra"]["sampling"] == sampling
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "sampling" in out and "every ~190 steps: 1 % budget" in out


def test_a_live_agent_registers_its_sampling(capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agent = symwatch.watch(model, opt, endpoint="tcp://127.0.0.1:0", every=5, budget=1.0)
    try:
        for _ in range(20):
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
        agent._refresh_registry()
        assert main(["ls", "--json"]) == 0
        entry = json.loads(capsys.readouterr().out)[0]
        assert entry["extra"]["sampling"] == {"interval": 5.0, "every": 5, "budget": 1.0,
                                              "limit": "every"}
    finally:
        agent.close()
