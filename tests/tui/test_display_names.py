"""One name per number (issue #18): every indicator the agent can publish has exactly one display
name (symwatch/core/names.py), and the layer table's header, its legend and the detector's
event text all use it; the wire name stays the data's key (events' `metric`)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from symwatch_agent.measure import representations
from symwatch_agent.measure.heads import PER_HEAD
from symwatch_agent.measure.indicators import COL
from test_tui_app import app_on, join
from waiting import pilot_until as until

from symwatch.core import protocol
from symwatch.core.detection import (
    LOSS_KEY,
    TransitionDetector,
    family,
    head_count,
    to_event_payload,
)
from symwatch.core.names import NAMES, display
from symwatch.state.run_state import EventRecord
from symwatch.tui.columns import label, legend
from symwatch.tui.event_text import event_parts
from symwatch.tui.widgets.layer_table import LayerTable, column_key


def representation_names() -> list[str]:
    """The names representations.measure publishes, from a real call (activations of a layer
    and a 4-class classifier's features), not a list copied here."""
    torch.manual_seed(0)
    y = torch.arange(64) % 4
    h = torch.randn(64, 16) + 3 * torch.nn.functional.one_hot(y, 16).float()
    values = representations.measure({"fc": torch.randn(64, 32)}, ("head", h, y,
                                                                   torch.randn(4, 16)))
    return sorted({name for per_layer in values.values() for name in per_layer})


LAYER_NAMES = list(COL)
REPRESENTATION_NAMES = representation_names()
HEAD_NAMES = [f"{family}.h{h}" for family in PER_HEAD for h in (0, 3)]
ALL = LAYER_NAMES + REPRESENTATION_NAMES + HEAD_NAMES


def test_the_agent_publishes_what_this_test_covers() -> None:
    assert {"act_erank", "act_modes", "nc1", "nc2", "nc2_norm", "nc3"} <= set(
        REPRESENTATION_NAMES)
    assert "weight_norm" in LAYER_NAMES and "qk_sigma1" in PER_HEAD


def test_every_published_indicator_has_exactly_one_display_name() -> None:
    for name in ALL:
        base = name.split(".h")[0] if "." in name else name
        assert base in NAMES, f"{name}: no display name (it would read as its wire name)"
    # one name each: no two indicators shown under the same long or short name
    for short in (False, True):
        shown = [display(n, short) for n in ALL]
        assert len(set(shown)) == len(shown), sorted(s for s in shown if shown.count(s) > 1)
    assert display("qk_sigma1.h3") == "QK σ₁ h3" and display("qk_sigma1.h3", True) == "qkσ3"
    assert display("qk_rank.h3") == "QK rank h3"  # the family's "(mean)" is not a head's
    assert display("a_newer_agents_indicator") == "a newer agents indicator"


def test_the_table_and_the_legend_use_the_display_name() -> None:
    for name in ALL:
        assert label(name) == display(name) and label(name, short=True) == display(name, True)
        line = legend(name)
        assert line.startswith(f"{display(name, True)}  {display(name)}: symmetric at "), line


def step_message(name: str) -> tuple[str, EventRecord]:
    """A real detector's event for a step in `name` on layer fc1, and its record."""
    det = TransitionDetector()
    lo, hi = (0.1, 0.5) if "fraction" in name or name in ("relu_dead", "dead_heads",
                                                           "balance_norm") else (2.0, 6.0)
    rng = random.Random(7)
    found = []
    # a count change is an event only with something continuous moving with it (the loss
    # falling, for a count that rises): core/detection.py
    count = family(name) == "count"
    for i in range(300):  # a little noise: a noiseless fraction reads its step as its quantum
        value = (hi if i >= 150 else lo) + rng.gauss(0, 0.005)
        series = {("fc1", name): value}
        if count:
            series[LOSS_KEY] = (0.5 if i >= 150 else 1.0) * (1 + rng.gauss(0, 0.005))
        if head_count(name):  # a head's count only moves with an event: a head's σ₁ triggers it
            series[("fc1", "qk_sigma1.h0")] = (3.0 if i >= 150 else 1.0) * (1 + rng.gauss(0, 0.005))
        found += det.update(10 * i, series, time=1000.0 + i)
    found += det.flush()
    assert found, f"{name}: no event for a ×3 step"
    payload = to_event_payload(found[0])
    record = EventRecord(step=found[0].step, time=0.0, message=payload["message"],
                         severity="transition", layer=payload.get("layer"),
                         metric=payload.get("metric"), before=payload.get("before"),
                         after=payload.get("after"))
    return found[0].message, record


def test_an_event_names_each_indicator_as_the_table_does_and_says_it_once() -> None:
    for name in ALL:
        message, record = step_message(name)
        assert f"fc1 {display(name)} " in message, message
        if head_count(name):  # named among the movers, after the σ₁ that triggered the event
            assert "_" not in name or name.split(".h")[0] not in message, message
            continue
        assert "_" not in name or name.split(".h")[0] not in message, message  # no wire name
        assert record.metric == name  # the payload keeps the wire name: the data's key
        parts = event_parts(record)
        assert parts.change.startswith(f"fc1 {display(name)} "), parts
        # said once: the rest does not repeat the headline
        assert "→" not in parts.text, parts


async def test_the_screen_headers_and_an_event_use_the_display_names(fake_agent) -> None:
    agent = fake_agent()
    app = app_on(agent)
    async with app.run_test(size=(200, 50)) as pilot:
        await join(pilot, agent, app)
        agent.meta(name="names")
        layer = {n: 0.5 for n in LAYER_NAMES + REPRESENTATION_NAMES}
        agent.send(protocol.METRICS, 10, values={"fc1": layer,
                                                 "attn": {n: 0.25 for n in HEAD_NAMES}})
        await until(pilot, lambda: "qk_sigma1.h3" in app.state.indicator_names(),
                    what="every indicator")
        table = app.query_one(LayerTable)
        seen: dict[str, str] = {}
        for _ in range(10):  # every view once
            for column in table.columns.values():
                seen[column.key.value] = column.label.plain.replace("\n", " ").lstrip("▲▼ ")
            await pilot.press("v")
            await pilot.pause(0.05)
        for name in ALL:
            header = seen.get(column_key(name))
            assert header in (display(name), display(name, short=True)), (name, header)
        message, _ = step_message("weight_norm")
        agent.send(protocol.EVENT, 20, message=message, severity="transition", layer="fc1",
                   metric="weight_norm", before=2.0, after=6.0)
        await until(pilot, lambda: len(app.state.events) == 1, what="the event")
        assert app.state.events[-1].message.count("→") == message.count("→")
        assert "fc1 weight norm " in message and "weight_norm" not in message


def test_the_docs_list_each_display_name_next_to_its_wire_name() -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "metrics.md").read_text()
    table = text.split("<!-- display names: begin -->")[1].split("<!-- display names: end -->")[0]
    rows = table.strip().splitlines()[2:]
    assert rows == [f"| `{w}` | {long_} | {short} |" for w, (long_, short) in NAMES.items()]
    assert "docs/metrics.md, *Display\nnames*" in (root / "docs" / "export.md").read_text()


def test_an_older_agents_wire_name_headline_reads_in_the_table_names() -> None:
    """A recording made before display names (`fc1: relu_dead 0.01562 → 0.5`) still reads as
    the table does, from the event's fields, once."""
    old = EventRecord(step=40, time=0.0, severity="transition", layer="fc1", metric="relu_dead",
                      before=0.015625, after=0.5,
                      message="units died: fc1: relu_dead 0.01562 → 0.5 at step 40; loss +3 %")
    parts = event_parts(old)
    assert parts.change == "fc1 never active 1.6% → 50.0%"
    assert parts.text == "loss +3 %"
