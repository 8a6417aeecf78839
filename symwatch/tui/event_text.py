"""An event's parts as the screen shows them: its kind in words, its cause, the change in the
layer table's own names and units, and the rest of its message (the events timeline `e` and
the events log under the table both read events this way)."""

from __future__ import annotations

from dataclasses import dataclass

from symwatch.core.detection import KIND_ORDER, LOSS_KINDS
from symwatch.core.names import display
from symwatch.state import numbers
from symwatch.state.run_state import EventRecord

GENERIC_KIND = "a transition"
EXOGENOUS = " [exogenous: "


@dataclass(frozen=True)
class EventParts:
    """An event split for the timeline's columns."""

    kind: str  # what happened, in words
    cause: str  # why (an optimizer change, an exogenous label), "" when none is known
    change: str  # the headline change, in the table's names and units ("" when none)
    text: str  # the message, less what the columns above already say


def event_parts(ev: EventRecord) -> EventParts:
    message = ev.message.replace("\n", " ")
    # an optimizer change is itself the event (kind `optimizer change`, its message says
    # which setting moved): it has no cause of its own to show beside it
    cause = ""
    cut = message.rfind(EXOGENOUS)
    if cut >= 0 and message.endswith("]"):
        cause = message[cut + len(EXOGENOUS):-1]
        message = message[:cut]
    head, sep, rest = message.partition(": ")
    if sep and (head in KIND_ORDER or head in LOSS_KINDS or head == GENERIC_KIND
                or head.endswith((" fell", " rose")) and " " not in head[:-5]):
        # the loss's own kinds: `<loss> fell`, `<loss> rose` (its name, one word), a spike
        kind, message = head, rest
    elif ev.changes:
        kind = "optimizer change"
    else:
        kind = ev.severity
    change = ""
    if ev.metric and ev.before is not None and ev.after is not None:
        # the detector writes the change in the table's names and units (core/names.py,
        # core/units.py): its headline is the change, said once; the rest is context
        change, _, message = message.partition("; ")
        if ev.layer and change.startswith(f"{ev.layer}: {ev.metric} "):
            # an older agent's (or recording's) headline in wire names and raw fractions:
            # said again from the event's fields, in the table's names and units
            _, at, step = change.rpartition(" at step ")
            change = (f"{ev.layer} {display(ev.metric)} "
                      f"{numbers.indicator(ev.metric, ev.before)} → "
                      f"{numbers.indicator(ev.metric, ev.after)}{at}{step if at else ''}")
    # the event's own step is in every line that shows it (the log's and the timeline's step
    # column): said once there
    change = change.removesuffix(f" at step {ev.step}")
    return EventParts(kind, cause, change, message)


def event_layer(ev: EventRecord) -> str | None:
    """The layer an event is about (its headline's), else the first its jumps name."""
    return ev.layer or (ev.layers[0] if ev.layers else None)
