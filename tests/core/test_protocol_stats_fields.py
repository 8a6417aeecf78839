"""STATS `per_step` (every step's loss and scalars) and `sampling` (what sets the interval):
additive v1 fields, validated like the rest of the payload."""

from __future__ import annotations

import pytest

from symwatch.core import protocol


def _roundtrip(**payload):
    frames = protocol.encode(protocol.STATS, run="r", rank=0, restart=0, seq=1, time=1.0,
                             step=3, payload=payload)
    return protocol.decode(list(frames))


def test_per_step_and_sampling_round_trip():
    msg = _roundtrip(loss=0.5, per_step={"loss": {"steps": [1, 2, 3], "values": [0.7, None, 0.5]},
                                         "lr": {"steps": [3], "values": [0.1]}},
                     sampling={"interval": 190.0, "every": 10, "budget": 0.01, "limit": "budget"})
    assert msg.payload["per_step"]["loss"]["values"] == [0.7, None, 0.5]
    assert msg.payload["sampling"]["limit"] == "budget"


@pytest.mark.parametrize("per_step", [
    {"loss": [1, 2]},
    {"loss": {"steps": [1, 2], "values": [0.5]}},
    {"loss": {"steps": [1.5], "values": [0.5]}},
    {"loss": {"steps": [True], "values": [0.5]}},
    {"loss": {"steps": [1], "values": ["x"]}},
    {"loss": {"values": [0.5]}},
])
def test_malformed_per_step_is_rejected(per_step):
    with pytest.raises(protocol.ProtocolError):
        _roundtrip(per_step=per_step)


def test_malformed_sampling_is_rejected():
    with pytest.raises(protocol.ProtocolError):
        _roundtrip(sampling={"every": "10"})
    with pytest.raises(protocol.ProtocolError):
        _roundtrip(sampling={"interval": float("nan")})
