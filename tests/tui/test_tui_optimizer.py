"""The optimizers' settings in the TUI (issue #16, point 5): the header shows lr and weight
decay, a change is a toast and a line of the events log, and a mark on the loss chart in the
column of its step. The payloads are the agent's own (publish/hyperparameters.py over a real
AdamW), sent on a real PUB socket."""

from __future__ import annotations

import re

import torch
from symwatch_agent.publish.hyperparameters import (
    changes,
    notice,
    read_settings,
    wire_groups,
)
from torch import nn

from symwatch.core import protocol
from symwatch.tui.widgets.header import RunHeader
from symwatch.tui.widgets.panels import SETTINGS_MARK, EventsLog, LossPanel
from tests.tui.test_tui_app import app_on, join, until

SWITCH = 150  # of 200 steps: the mark lands three quarters along the chart


async def test_header_toast_log_and_chart_mark_of_a_weight_decay_switch(fake_agent):
    model = nn.Linear(8, 8)
    adamw = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await join(pilot, agent, app)
        agent.meta()
        before = read_settings([adamw])
        agent.send(protocol.STATS, SWITCH - 1, loss=1.0, per_step={"loss": {
            "steps": list(range(1, SWITCH)), "values": [1.0 / s for s in range(1, SWITCH)]}},
            optimizer=wire_groups(before, [adamw]))
        header = app.query_one(RunHeader)
        await until(pilot, lambda: "lr 3e-4 · wd 0.01" in str(header.content),
                    what="lr and weight decay in the header")

        adamw.param_groups[0]["weight_decay"] = 5.0
        after = read_settings([adamw])
        agent.send(protocol.EVENT, SWITCH, **notice(SWITCH, changes(before, after), 1))
        agent.send(protocol.STATS, 200, loss=0.5, per_step={"loss": {
            "steps": list(range(SWITCH, 201)), "values": [0.5] * (201 - SWITCH)}},
            optimizer=wire_groups(after, [adamw]),
            # three logged scalars with long names (the demo's): the title's end is cut
            scalars={"linear_loss_on_the_held_out_set": 0.25,
                     "mlp_loss_on_the_held_out_set": 0.25, "accuracy_on_the_held_out_set": 0.5})
        await until(pilot, lambda: "lr 3e-4 · wd 5" in str(header.content),
                    what="the new weight decay in the header")
        await until(pilot, lambda: any("weight_decay 0.01 → 5" in n.message
                                       for n in app._notifications), what="the toast")
        log = str(app.query_one(EventsLog).content)
        assert "step     150" in log and "weight_decay 0.01 → 5" in log  # its step once

        panel = app.query_one(LossPanel)
        await until(pilot, lambda: SETTINGS_MARK in str(panel.content), what="the chart mark")
        title, *chart = str(panel.content).split("\n")
        # whole, before the scalars (the title's end, cut first at 120 columns)
        assert f"{SETTINGS_MARK} wd 0.01 → 5 @150" in title
        assert title.index(SETTINGS_MARK) < title.index("linear_loss_on_the_held_out_set")
        # the chart has axes at 120×40 (issue #18): each row led by its y tick label, and the
        # step line (steps 1–200) as its last row
        *bars, steps = chart
        assert steps.split() == ["1", "100", "200"], steps
        pad = re.match(r"^ +[0-9.e+-]+ ", bars[0]).end()  # type: ignore[union-attr]
        # the mark's column is the switch's step on the chart's step axis (steps 1–200)
        width = len(bars[0]) - pad
        column = (SWITCH - 1) * width // 200
        assert all(row[pad + column] == SETTINGS_MARK for row in bars), bars
        assert sum(row.count(SETTINGS_MARK) for row in bars) == len(bars)
