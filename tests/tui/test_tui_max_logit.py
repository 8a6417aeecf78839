"""The attention max-logit under Pilot (tests/agent/test_max_logit.py for the agent side): each
head's `max_logit.h<N>` is a column of the heads view, last within its head, labelled as the
events name it; the module's `max_logit` is a column of the rotation view."""

from __future__ import annotations

from test_tui_app import app_on, cell, join
from waiting import pilot_until as until

from symwatch.core import protocol
from symwatch.tui.widgets.layer_table import LayerTable, column_key


async def to_view(pilot, table: LayerTable, view: str) -> None:
    for _ in range(10):  # `v` cycles the views
        if table.view == view:
            return
        await pilot.press("v")
        await pilot.pause(0.05)
    assert table.view == view


async def test_the_heads_view_shows_each_heads_max_logit_after_its_weight_series(fake_agent):
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(240, 30)) as pilot:
        await join(pilot, agent, app)
        agent.meta(layers=(("attn", "Attention heads", [2, 8]), ("attn.q", "Linear", [16, 16])))
        for step, logit in ((10, 3.0), (20, 12.0), (30, 45.0)):  # head 1's logits growing
            values = {"qk_sigma1.h0": 0.5, "qk_sigma1.h1": 0.5, "max_logit.h0": 2.5,
                      "max_logit.h1": logit, "max_logit": max(2.5, logit)}
            agent.send(protocol.METRICS, step, values={"attn": values,
                                                       "attn.q": {"stable_rank": 2.0}})
        await until(pilot, lambda: "max_logit.h1" in app.state.indicator_names(),
                    what="the per-head max-logit")
        table = app.query_one(LayerTable)
        await to_view(pilot, table, "heads")
        keys = [c.value for c in table.columns]
        order = [k for k in keys if k in {column_key(f"{n}.h{h}") for n in
                                          ("qk_sigma1", "max_logit") for h in range(2)}]
        assert order == [column_key(n) for n in ("qk_sigma1.h0", "max_logit.h0",
                                                 "qk_sigma1.h1", "max_logit.h1")]
        await until(pilot, lambda: cell(app, "attn", column_key("max_logit.h1")).endswith("45"),
                    what="head 1's newest max-logit")
        assert cell(app, "attn", column_key("max_logit.h0")).endswith("2.5")
        header = "\n".join(table.render_line(y).text for y in range(2))
        assert "max logit h1" in header or "mlog1" in header
        await to_view(pilot, table, "rotation")
        await until(pilot, lambda: cell(app, "attn", column_key("max_logit")).endswith("45"),
                    what="the module's max-logit in the rotation view")
