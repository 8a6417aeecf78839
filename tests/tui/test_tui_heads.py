"""The heads view under Pilot: each attention head's continuous series (σ₁, stable and
effective rank, modes of its QK and OV products; tests/agent/test_heads_series.py for the
agent side) are columns of their own beside its ranks, labelled per head, in head order."""

from __future__ import annotations

from test_tui_app import app_on, cell, join
from waiting import pilot_until as until

from symwatch.core import protocol
from symwatch.tui.widgets.layer_table import LayerTable, column_key

FAMILIES = ("qk_rank", "vo_rank", "qk_sigma1", "vo_sigma1", "qk_stable_rank", "vo_stable_rank",
            "qk_erank", "vo_erank", "qk_modes", "vo_modes")


async def test_the_heads_view_shows_each_heads_series_in_head_order(fake_agent):
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(240, 30)) as pilot:
        await join(pilot, agent, app)
        agent.meta(layers=(("attn", "Attention heads", [2, 8]), ("attn.q", "Linear", [16, 16])))
        for step, grow in ((10, 1.0), (20, 2.0), (30, 4.0)):  # head 1's σ₁ rising
            values = {f"{name}.h{h}": (0.5 * grow if h == 1 else 0.5)
                      if "sigma1" in name else 3 for name in FAMILIES for h in range(2)}
            if step == 30:  # a zero product: N/A, not 0
                values["vo_stable_rank.h0"] = None
            agent.send(protocol.METRICS, step, values={"attn": values,
                                                       "attn.q": {"stable_rank": 2.0}})
        await until(pilot, lambda: "qk_sigma1.h1" in app.state.indicator_names(),
                    what="the per-head series")
        table = app.query_one(LayerTable)
        for _ in range(8):  # `v` to the heads view
            if table.view == "heads":
                break
            await pilot.press("v")
            await pilot.pause(0.05)
        assert table.view == "heads"
        keys = [c.value for c in table.columns]
        order = [k for k in keys if k in {column_key(f"{n}.h{h}") for n in FAMILIES
                                          for h in range(2)}]
        assert order == [column_key(f"{n}.h{h}") for h in range(2) for n in FAMILIES]
        await until(pilot, lambda: cell(app, "attn", column_key("qk_sigma1.h1")).endswith("2"),
                    what="head 1's newest σ₁")
        assert cell(app, "attn", column_key("qk_sigma1.h0")).endswith("0.5")
        await until(pilot, lambda: cell(app, "attn", column_key("vo_stable_rank.h0")).endswith(
            "N/A"), what="head 0's VO stable rank N/A at the newest step")
        header = "\n".join(table.render_line(y).text for y in range(2))
        assert "QK σ₁ h1" in header or "qkσ1" in header
