"""A screen a newcomer understands at a glance (issue #18): the views named in a tab strip,
each column explained by a legend line, one unit per number, events that say their kind and
cause, rows spent on something. The real app under Pilot, fed over a real PUB socket."""

from __future__ import annotations

from test_tui_app import app_on, join, publish_sample, sampled, text_of
from waiting import pilot_until as until

from symwatch.core import protocol
from symwatch.state.run_state import EventRecord
from symwatch.tui.columns import (
    LABELS,
    LEGEND,
    label,
    legend,
    shown_views,
    view_indicators,
)
from symwatch.tui.event_text import event_parts
from symwatch.tui.screens.events import EventsScreen
from symwatch.tui.screens.layer_detail import LayerDetailScreen
from symwatch.tui.widgets.header import RunHeader
from symwatch.tui.widgets.layer_table import LayerTable, column_key
from symwatch.tui.widgets.legend import LegendLine, ViewTabs, legend_text, tabs_text
from symwatch.tui.widgets.panels import EventsLog, GpuLine
from symwatch.tui.widgets.ranks_panel import RanksScreen

# as the detector writes it: the table's names (core/names.py) and units (core/units.py)
EXOGENOUS_MESSAGE = ("units died: fc1 never active 1.6% → 50.0% at step 40; loss +3 % in the "
                     "same window; also fc2 weight norm −20 % [exogenous: optimizer "
                     "weight_decay 0 → 1.5]")


def test_every_column_has_a_legend_with_its_symmetric_state_and_breaking_way() -> None:
    for name in LABELS:
        line = legend(name)
        assert name in LEGEND, f"{name}: no legend entry"
        assert line.startswith(label(name, short=True) + "  ")
        assert "symmetric at " in line and "breaking " in line
    # a head's series: its family's entry, under its own short name
    assert legend("qk_sigma1.h3").startswith("qkσ3  QK σ₁ h3: symmetric at 0")


def test_the_legend_line_is_cut_at_a_word_never_inside_one() -> None:
    for width in (40, 60, 80, 120):
        for name in LEGEND:
            line = legend_text(name, width).plain
            assert len(line) <= width
            if line.endswith("…"):  # what is left before the ellipsis is whole words
                assert (" " + legend(name) + " ").startswith(line[:-1].rstrip() + " ")


def test_the_tab_strip_keeps_the_current_view_and_whole_names() -> None:
    views = ["overview", "rank", "units", "scale", "rotation", "repr", "heads", "all"]
    wide = tabs_text(views, "units", 120).plain
    assert all(f" {v} " in wide for v in views) and "v next view" in wide
    for width in (20, 40, 60):
        narrow = tabs_text(views, "rotation", width).plain
        assert len(narrow) <= width and " rotation " in narrow
        words = narrow.replace("‹", " ").replace("›", " ").replace("│", " ").split()
        assert all(w in views for w in words if w not in ("v", "next", "view"))


def test_fractions_read_as_percent_whatever_their_name() -> None:
    from symwatch.state import numbers
    assert numbers.indicator("relu_dead", 0.015625) == "1.6%"
    assert numbers.indicator("dead_heads", 0.25) == "25.0%"
    assert numbers.indicator("dead_fraction", 0.5) == "50.0%"
    assert numbers.indicator("stable_rank", 0.5) == "0.5"


def test_an_mlp_has_no_heads_view() -> None:
    mlp = ["weight_norm", "stable_rank", "dead_fraction", "relu_dead", "balance"]
    assert "heads" not in shown_views(mlp)
    assert "heads" in shown_views(mlp + ["qk_rank.h0"])
    assert view_indicators("heads", mlp) == ()


def test_an_event_splits_into_kind_cause_and_the_change_in_screen_units() -> None:
    ev = EventRecord(step=40, time=0.0, message=EXOGENOUS_MESSAGE, severity="transition",
                     layer="fc1", metric="relu_dead", before=0.015625, after=0.5)
    parts = event_parts(ev)
    assert parts.kind == "units died"
    assert parts.cause == "optimizer weight_decay 0 → 1.5"
    assert parts.change == "fc1 never active 1.6% → 50.0%"  # the table's name, unit
    # the headline is said once (as `change`); the context stays
    assert "[exogenous" not in parts.text and parts.text.startswith("loss +3 %")
    notice = EventRecord(step=5, time=0.0, message="agent restarted", severity="notice")
    assert event_parts(notice).kind == "notice" and event_parts(notice).cause == ""


def test_a_loss_event_is_of_its_losss_kind_not_a_bare_transition() -> None:
    """The events log and timeline read a loss's own kinds (`linear_loss fell`, `a loss
    spike`) into the kind column, as they read a layer's (the demo's showed `transition` with
    `linear_loss fell:` repeated in the text)."""
    for kind in ("linear_loss fell", "loss rose", "a loss spike", "divergence"):
        name = kind.split()[0] if kind.endswith(("fell", "rose")) else "loss"
        ev = EventRecord(step=275, time=0.0, severity="transition", metric=name, before=2.0,
                         after=1.0, message=f"{kind}: {name} 2 → 1 (−50 %) at step 275; "
                                            "mlp_loss −0.2 % in the same window")
        parts = event_parts(ev)
        assert parts.kind == kind, parts
        assert parts.change == f"{name} 2 → 1 (−50 %)"
    # a sentence that only ends in `fell` is no kind
    ev = EventRecord(step=3, time=0.0, severity="transition",
                     message="the learning rate fell: see the schedule")
    assert event_parts(ev).kind == "transition"


async def test_tabs_name_the_views_and_v_moves_the_highlight(fake_agent) -> None:
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await sampled(pilot, agent, app)
        tabs = app.query_one(ViewTabs)
        await until(pilot, lambda: " overview " in text_of(tabs), what="the tab strip")
        # the four indicators publish_sample sends: the overview holds them; the heads view
        # (no attention here) and empty families are not offered
        assert "heads" not in text_of(tabs)
        highlighted = lambda: [text_of(tabs)[s.start:s.end] for s in tabs.content.spans
                               if "reverse" in str(s.style)]
        assert highlighted() == [" overview "]
        await pilot.press("v")
        table = app.query_one(LayerTable)
        await until(pilot, lambda: highlighted() == [f" {table.view} "] and
                    table.view != "overview", what="the next view highlighted")
        assert not app._notifications  # the strip names the view: no toast for it


async def test_the_legend_line_explains_the_column_under_the_cursor(fake_agent) -> None:
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await sampled(pilot, agent, app)
        line = app.query_one(LegendLine)
        table = app.query_one(LayerTable)
        await until(pilot, lambda: text_of(line).startswith(" norm "), what="the first legend")
        assert "symmetric at 0" in text_of(line)
        await pilot.press("right")
        await until(pilot, lambda: text_of(line).startswith(" srank "), what="→: next column")
        header = next(c.label for c in table.columns.values()
                      if c.key.value == column_key("stable_rank"))
        assert "underline" in str(header.style)
        assert table.cursor_type == "row" and table.cursor_row == 0  # the rows keep theirs
        await pilot.press("left", "left")  # at the first column it stays
        await until(pilot, lambda: text_of(line).startswith(" norm "), what="←: back")


async def test_the_header_leaves_the_socket_to_g_and_a_cpu_run_has_no_gpu_row(fake_agent):
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await sampled(pilot, agent, app)
        agent.send(protocol.GPU, available=False, devices=[],
                   reason="no NVIDIA GPU visible (NVML Shared Library Not Found)")
        await until(pilot, lambda: app.state.gpu is not None, what="the GPU report")
        await until(pilot, lambda: not app.query_one(GpuLine).display, what="no GPU row")
        assert agent.endpoint not in text_of(app.query_one(RunHeader))
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, RanksScreen), what="the g screen")
        await until(pilot, lambda: agent.endpoint in str(
            app.screen.query_one("#ranks-endpoint").content), what="the socket on g")
        await pilot.press("escape")
        agent.send(protocol.GPU, available=True, devices=[
            {"index": 0, "name": "H100", "util": 50, "mem_used": 2 ** 33, "mem_total": 2 ** 34,
             "temp": 70, "power": 300, "power_limit": 700}])
        await until(pilot, lambda: app.query_one(GpuLine).display
                    and "H100" in text_of(app.query_one(GpuLine)), what="the GPU row")


async def test_no_events_takes_one_row_and_the_table_gets_the_rest(fake_agent) -> None:
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await join(pilot, agent, app)
        agent.meta(layers=tuple((f"layer{i:02d}", "Linear", [8, 8]) for i in range(60)))
        agent.send(protocol.METRICS, 10, values={
            f"layer{i:02d}": {"weight_norm": 1.0 + i} for i in range(60)})
        table, log = app.query_one(LayerTable), app.query_one(EventsLog)
        await until(pilot, lambda: table.row_count == 60 and app._heights is not None
                    and log.region.height == 1, what="a one-line log")
        assert "no events yet" in text_of(log)
        with_log_share = app._heights.table
        for step in range(11, 14):
            agent.send(protocol.EVENT, step, message=f"notice {step}", severity="notice")
        # the agent's notices (a module it does not measure) do not hide why nothing is
        # flagged: a line each, and the "no transitions yet" line under them
        await until(pilot, lambda: log.region.height == 4
                    and len(text_of(log).splitlines()) == 4, what="a line per event")
        assert app._heights.table == with_log_share - 3
        lines = text_of(log).splitlines()
        assert [line.split()[-1] for line in lines[:3]] == ["11", "12", "13"], lines
        assert lines[3].strip().startswith("no transitions yet"), lines
        agent.send(protocol.EVENT, 14, message="a mode learned: layer01 modes 1 → 2 at step 14",
                   severity="transition", layer="layer01", metric="modes", before=1, after=2)
        await until(pilot, lambda: "a mode learned" in text_of(log), what="the transition")
        assert "no transitions yet" not in text_of(log)


async def test_events_screen_kind_cause_enter_and_no_toasts_over_it(fake_agent) -> None:
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(80, 24)) as pilot:
        await sampled(pilot, agent, app)
        for step in (20, 30):
            publish_sample(agent, step=step)
        agent.send(protocol.EVENT, 20, message=EXOGENOUS_MESSAGE, severity="transition",
                   layer="fc1", metric="relu_dead", before=0.015625, after=0.5)
        await until(pilot, lambda: len(app.state.events) == 1, what="the event")
        app.clear_notifications()
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, EventsScreen), what="events screen")
        table = app.screen.query_one("#events-table")
        row = [c.plain for c in table.get_row_at(0)]
        assert row[1] == "units died" and row[2] == "optimizer weight_decay 0 → 1.5"
        assert row[3].startswith("fc1 never active 1.6% → 50.0%")
        assert table.rows[next(iter(table.rows))].height > 1  # wrapped, not cut at the edge
        # an event while the timeline is open: no toast over it
        agent.send(protocol.EVENT, 30, message="a mode learned: fc2 modes 1 → 2 at step 30",
                   severity="transition", layer="fc2", metric="modes", before=1, after=2)
        await until(pilot, lambda: len(app.state.events) == 2, what="the second event")
        await pilot.pause(0.2)
        assert not app._notifications
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LayerDetailScreen),
                    what="the event's layer detail")
        assert app.screen.layer_name == "fc1"
        assert not app.window.live and app.window.end == 20  # at the event's step


def test_lost_units_are_coloured_against_thresholds() -> None:
    from symwatch.tui.widgets.layer_table import value_style
    assert value_style("dead_fraction", 0.0) == "bold"  # none lost: plain
    assert value_style("relu_dead", 0.1) == "bold yellow"
    assert value_style("duplicate_fraction", 0.75) == "bold red"
    assert value_style("stable_rank", 0.75) == "bold"  # no threshold for a rank
    assert value_style("dead_fraction", None) == "dim"


def test_an_optimizer_change_is_its_own_kind_without_a_cause() -> None:
    ev = EventRecord(step=401, time=0.0, severity="notice",
                     message="optimizer: weight_decay 0 → 1.5 at step 401",
                     changes=(("weight_decay", 0.0, 1.5),))
    parts = event_parts(ev)
    assert parts.kind == "optimizer change" and parts.cause == ""
    assert "weight_decay 0 → 1.5" in parts.text


def test_the_pairing_is_said_in_plain_words():
    """`paired with 4  (read this layer's units)` left a newcomer guessing who reads whom."""
    from symwatch.state.run_state import LayerState
    from symwatch.tui.widgets.layer_structure import metadata_text

    one = LayerState(name="mlp.0", type="Linear", shape=[64, 16], meta={"feeds": ["mlp.2"]})
    assert "paired with mlp.2  (mlp.2 reads this layer's outputs)" in metadata_text(one).plain
    two = LayerState(name="x", type="Linear", shape=[8, 8], meta={"feeds": ["a", "b"]})
    assert "(a, b read this layer's outputs)" in metadata_text(two).plain
    none = LayerState(name="head", type="Linear", shape=[4, 64], meta={})
    assert "none (no layer reads this layer's outputs directly)" in metadata_text(none).plain
