"""The wire contract (symwatch.core.protocol, docs/protocol.md): reference payloads, rejection of bad
input, a fuzz test, and a round trip over a real ZeroMQ socket.

tests/protocol/*.json hold the exact body bytes `protocol.encode` produces for the fixed inputs
below. A test failing here because a reference file differs is a *wire protocol change*: either
the change was an accident, or it is deliberate and then docs/protocol.md, the version rules in
it, and the reference files change together. To rewrite the files after a deliberate change:

    .venv/bin/python tests/core/test_protocol.py --write-references
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from symwatch.core import protocol
from symwatch.core.protocol import Message, ProtocolError, decode, encode

REFERENCE_DIR = Path(__file__).parents[1] / "protocol"

RUN = "3f9c2a7b1e04"  # the agent uses uuid4().hex[:12]

# name of the reference file -> (kind, header, payload). Fixed literals on purpose: nothing here
# may follow the module under test (e.g. protocol.INDICATORS), or a change there would go unseen.
REFERENCE_INPUTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "meta": ("meta",
             {"run": RUN, "rank": 0, "restart": 0, "seq": 0, "time": 1735732800.25, "step": 0},
             {"name": "mlp-demo", "pid": 4242, "host": "node-1",
              "command": ["python", "train.py", "--lr", "3e-4"], "started": 1735732800.0,
              "layers": [
                  {"name": "conv1", "type": "Conv2d", "shape": [32, 3, 3, 3], "params": 896},
                  {"name": "fc1", "type": "Linear", "shape": [256, 128], "params": 33024},
                  {"name": "fc2", "type": "Linear", "shape": [10, 256], "params": 2570},
              ],
              "indicators": ["weight_norm", "stable_rank", "numerical_rank", "dead_fraction"],
              "every": 10, "world_size": 1, "endpoint": f"ipc:///run/user/1000/symwatch/{RUN}.sock",
              "torch": "2.5.1", "device": "cuda:0", "agent": "0.1.0", "python": "3.11.7"}),
    "metrics": ("metrics",
                {"run": RUN, "rank": 0, "restart": 0, "seq": 1, "time": 1735732801.5, "step": 10},
                {"values": {
                    "conv1": {"weight_norm": 5.77, "stable_rank": 4.125, "numerical_rank": 27,
                              "dead_fraction": 0.0},
                    "fc1": {"weight_norm": 11.31, "stable_rank": 2.048, "numerical_rank": 3,
                            "dead_fraction": 0.0390625},
                    "fc2": {"weight_norm": None, "stable_rank": None, "numerical_rank": None,
                            "dead_fraction": None},
                 },
                 "nonfinite": ["fc2"], "cost_s": 0.0042}),
    # a full-tier sample: the optional `detail` (spectrum, threshold, dead and duplicate units)
    "metrics_detail": ("metrics",
                       {"run": RUN, "rank": 0, "restart": 0, "seq": 3, "time": 1735732802.5,
                        "step": 20},
                       {"values": {"fc1": {"numerical_rank": 2, "dead_fraction": 0.125}},
                        "detail": {"fc1": {
                            "spectrum": [9.1, 4.2, 0.8, 0.01], "count": 4,
                            "rank_threshold": 2.73, "units": 8, "dead": [3], "dead_count": 1,
                            "duplicates": [[1, 5, 6]], "duplicate_count": 3}}}),
    "stats": ("stats",
              {"run": RUN, "rank": 0, "restart": 0, "seq": 2, "time": 1735732801.75, "step": 10},
              {"loss": 2.3125, "step_time": 0.125, "steps_per_s": 8.0, "overhead": 0.004,
               "dropped": 0, "scalars": {"lr": 0.0003, "grad_norm": None}}),
    "gpu": ("gpu",
            {"run": RUN, "rank": 0, "restart": 0, "seq": 3, "time": 1735732802.0, "step": 12},
            {"available": True, "devices": [
                {"index": 0, "name": "NVIDIA H100 80GB HBM3", "util": 97, "mem_used": 61203283968,
                 "mem_total": 85520809984, "temp": 71, "power": 612.5, "power_limit": 700.0,
                 "sm_clock_mhz": 1410, "sm_clock_max_mhz": 1980, "throttle": ["power cap"]},
                {"index": 1, "name": "NVIDIA H100 80GB HBM3", "util": None, "mem_used": 1048576,
                 "mem_total": 85520809984, "temp": None, "power": None, "power_limit": None,
                 "sm_clock_mhz": None, "sm_clock_max_mhz": None, "throttle": None},
            ]}),
    "gpu_unavailable": ("gpu",
                        {"run": RUN, "rank": 0, "restart": 0, "seq": 4, "time": 1735732802.0,
                         "step": 12},
                        {"available": False, "devices": [],
                         "reason": "no NVIDIA GPU visible (NVML Shared Library Not Found)"}),
    "event": ("event",
              {"run": RUN, "rank": 0, "restart": 0, "seq": 5, "time": 1735732808.5, "step": 66},
              {"message": "fc1: numerical rank 2 \u2192 3 at step 66", "severity": "transition",
               "layer": "fc1", "metric": "numerical_rank", "direction": "up", "before": 2,
               "after": 3, "score": 7.25}),
    "heartbeat": ("heartbeat",
                  {"run": RUN, "rank": 0, "restart": 0, "seq": 6, "time": 1735732809.0,
                   "step": 70},
                  {"dropped": 3, "samples": 7, "overhead": 0.0041}),
    "goodbye": ("goodbye",
                {"run": RUN, "rank": 0, "restart": 0, "seq": 7, "time": 1735732900.0, "step": 800},
                {"reason": "finished", "exit_code": 0}),
}


def _frames(name: str) -> tuple[bytes, bytes]:
    kind, header, payload = REFERENCE_INPUTS[name]
    return encode(kind, payload=payload, **header)


def _expected_message(name: str) -> Message:
    kind, header, payload = REFERENCE_INPUTS[name]
    return Message(kind=kind, run=header["run"], rank=header["rank"], restart=header["restart"],
                   seq=header["seq"], time=float(header["time"]), step=header["step"],
                   payload=payload)


def _body(name: str = "heartbeat", **changes: Any) -> dict[str, Any]:
    """A valid body as a dict, with some fields replaced; a value of `...` removes the field."""
    body = json.loads(_frames(name)[1])
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _raw(body: Any, topic: bytes | None = None, **dumps: Any) -> list[bytes]:
    """Frames for an arbitrary JSON body, bypassing encode's validation."""
    if topic is None:
        kind = body.get("kind", "heartbeat") if isinstance(body, dict) else "heartbeat"
        topic = str(kind).encode()
    return [topic, json.dumps(body, **dumps).encode("utf-8")]


# ---------------------------------------------------------------------------------------------
# (a) Reference payloads.

def test_every_kind_has_a_reference_file() -> None:
    kinds = {kind for kind, _, _ in REFERENCE_INPUTS.values()}
    assert kinds == set(protocol.KINDS)
    files = {p.stem for p in REFERENCE_DIR.glob("*.json")}
    assert files == set(REFERENCE_INPUTS)


@pytest.mark.parametrize("name", sorted(REFERENCE_INPUTS))
def test_encode_matches_reference_file(name: str) -> None:
    topic, body = _frames(name)
    reference = (REFERENCE_DIR / f"{name}.json").read_bytes()
    assert topic == REFERENCE_INPUTS[name][0].encode("ascii")
    assert body == reference, (
        f"protocol.encode no longer produces tests/protocol/{name}.json: this changes the wire "
        "format (see docs/protocol.md, 'Versioning')")


@pytest.mark.parametrize("name", sorted(REFERENCE_INPUTS))
def test_decode_reference_file_round_trips(name: str) -> None:
    kind = REFERENCE_INPUTS[name][0]
    reference = (REFERENCE_DIR / f"{name}.json").read_bytes()
    message = decode([kind.encode("ascii"), reference])
    assert message == _expected_message(name)
    # ...and encoding the decoded message gives the same bytes again.
    again = encode(message.kind, run=message.run, rank=message.rank, restart=message.restart,
                   seq=message.seq, time=message.time, step=message.step,
                   payload=message.payload)
    assert again == (kind.encode("ascii"), reference)


def test_reference_files_are_ascii_compact_json() -> None:
    # encode uses json.dumps defaults (ensure_ascii): non-ASCII text travels as \\uXXXX escapes.
    for path in REFERENCE_DIR.glob("*.json"):
        data = path.read_bytes()
        data.decode("ascii")
        assert data == json.dumps(json.loads(data), separators=(",", ":")).encode(), path.name


def test_null_means_not_available_and_nan_becomes_null() -> None:
    assert protocol.clean_number(float("nan")) is None
    assert protocol.clean_number(float("inf")) is None
    assert protocol.clean_number(float("-inf")) is None
    assert protocol.clean_number(None) is None
    assert protocol.clean_number(0.0) == 0.0
    assert protocol.clean_number(3) == 3
    message = decode(list(_frames("gpu")))
    assert message.payload["devices"][1]["util"] is None  # not 0
    assert message.payload["devices"][1]["throttle"] is None  # N/A, not "no reason"


def test_gpu_clocks_and_throttle_reasons_are_optional_and_accepted() -> None:
    for dev in ({"index": 0, "name": "H100"},  # an older agent: none of them
                {"index": 0, "name": "H100", "sm_clock_mhz": 1410.0, "sm_clock_max_mhz": 1980,
                 "throttle": ["power cap", "sw thermal", "a reason not known yet"]},
                {"index": 0, "name": "H100", "throttle": []},
                {"index": 0, "name": "H100", "sm_clock_mhz": None, "throttle": None}):
        frames = encode("gpu", run=RUN, rank=0, restart=0, seq=0, time=0.0, step=0,
                        payload={"available": True, "devices": [dev]})
        assert decode(list(frames)).payload["devices"][0] == dev


# ---------------------------------------------------------------------------------------------
# (b) Rejections: every malformed input raises ProtocolError (pytest.raises lets any other
# exception through, which fails the test).

def _hb_topic_body(body: bytes) -> list[bytes]:
    return [b"heartbeat", body]


GOOD_TOPIC, GOOD_BODY = _frames("heartbeat")

REJECTED: dict[str, tuple[list[bytes], str]] = {
    "no frames": ([], "expected 2 frames"),
    "one frame": ([GOOD_BODY], "expected 2 frames"),
    "three frames": ([GOOD_TOPIC, GOOD_BODY, b""], "expected 2 frames"),
    "not utf-8": (_hb_topic_body(b'{"v":1,"run":"\xff\xfe"}'), "not UTF-8 JSON"),
    "latin-1 body": (_hb_topic_body('{"run":"caf\u00e9"}'.encode("latin-1")), "not UTF-8 JSON"),
    "empty body": (_hb_topic_body(b""), "not UTF-8 JSON"),
    "not json": (_hb_topic_body(b"hello"), "not UTF-8 JSON"),
    "truncated json": (_hb_topic_body(GOOD_BODY[:-1]), "not UTF-8 JSON"),
    "trailing data": (_hb_topic_body(GOOD_BODY + b"{}"), "not UTF-8 JSON"),
    "deeply nested": (_hb_topic_body(b"[" * 100_000 + b"]" * 100_000), "UTF-8 JSON"),
    "json array": (_hb_topic_body(b"[1, 2]"), "not a JSON object"),
    "json string": (_hb_topic_body(b'"heartbeat"'), "not a JSON object"),
    "json null": (_hb_topic_body(b"null"), "not a JSON object"),
    "json number": (_hb_topic_body(b"1"), "not a JSON object"),
    "NaN constant": (_hb_topic_body(GOOD_BODY.replace(b'"time":1735732809.0', b'"time":NaN')),
                     "NaN"),
    "Infinity constant": (_raw(_body(overhead=float("inf"))), "Infinity"),
    "-Infinity constant": (_raw(_body(overhead=float("-inf"))), "-Infinity"),
    "NaN in metrics value": (
        _raw(_body("metrics", values={"fc1": {"weight_norm": float("nan")}})), "NaN"),
    "1e999 overflows to inf": (_hb_topic_body(GOOD_BODY.replace(b'"time":1735732809.0',
                                                                 b'"time":1e999')), "non-finite"),
    "version 2": (_raw(_body(v=2)), "upgrade"),
    "version 0": (_raw(_body(v=0)), "upgrade"),
    "version missing": (_raw(_body(v=...)), "not a symwatch message"),
    "version as string": (_raw(_body(v="1")), "not a symwatch message"),
    "unknown kind": (_raw(_body(kind="telemetry")), "unknown message kind"),
    "kind missing": (_raw(_body(kind=...), topic=b"heartbeat"), "unknown message kind"),
    "kind not a string": (_raw(_body(kind=["heartbeat"]), topic=b"heartbeat"),
                          "unknown message kind"),
    "topic/kind mismatch": (_raw(_body(), topic=b"metrics"), "does not match kind"),
    "topic prefix only": (_raw(_body(), topic=b"heart"), "does not match kind"),
    "topic with suffix": (_raw(_body(), topic=b"heartbeat\x00"), "does not match kind"),
    "header run missing": (_raw(_body(run=...)), "missing field 'run'"),
    "header rank missing": (_raw(_body(rank=...)), "missing field 'rank'"),
    "header restart missing": (_raw(_body(restart=...)), "missing field 'restart'"),
    "header seq missing": (_raw(_body(seq=...)), "missing field 'seq'"),
    "header time missing": (_raw(_body(time=...)), "missing field 'time'"),
    "header step missing": (_raw(_body(step=...)), "missing field 'step'"),
    "rank is bool": (_raw(_body(rank=True)), "header.rank: expected int, got bool"),
    "seq is bool": (_raw(_body(seq=False)), "got bool"),
    "seq is float": (_raw(_body(seq=6.0)), "header.seq: expected int, got float"),
    "seq is string": (_raw(_body(seq="6")), "expected int, got str"),
    "step is null": (_raw(_body(step=None)), "expected int, got NoneType"),
    "time is string": (_raw(_body(time="1735732809.0")), "header.time: expected int or float"),
    "time is bool": (_raw(_body(time=True)), "got bool"),
    "run is int": (_raw(_body(run=7)), "header.run: expected str"),
    "payload field missing": (_raw(_body(samples=...)), "heartbeat: missing field 'samples'"),
    "payload int is bool": (_raw(_body(dropped=True)), "heartbeat.dropped: expected int, got bool"),
    "payload number is string": (_raw(_body("stats", loss="2.3")), "stats.loss"),
    "payload optional number is bool": (_raw(_body("stats", overhead=False)), "got bool"),
    "metrics values not an object": (_raw(_body("metrics", values=[1, 2])), "metrics.values"),
    "metrics layer not an object": (_raw(_body("metrics", values={"fc1": 1.0})),
                                    "metrics.values['fc1']: expected object"),
    "metrics value is string": (_raw(_body("metrics", values={"fc1": {"stable_rank": "2"}})),
                                "metrics.values['fc1']['stable_rank']"),
    "metrics value is bool": (_raw(_body("metrics", values={"fc1": {"dead_fraction": True}})),
                              "got bool"),
    "metrics value is list": (_raw(_body("metrics", values={"fc1": {"weight_norm": [1.0]}})),
                              "got list"),
    "metrics value is object": (_raw(_body("metrics", values={"fc1": {"weight_norm": {}}})),
                                "got dict"),
    "stats scalar is string": (_raw(_body("stats", scalars={"lr": "3e-4"})), "stats.scalars['lr']"),
    "meta layers not a list": (_raw(_body("meta", layers={"fc1": {}})), "meta.layers"),
    "meta layer not an object": (_raw(_body("meta", layers=["fc1"])),
                                 "meta.layers[0]: expected object"),
    "meta layer missing name": (
        _raw(_body("meta", layers=[{"type": "Linear", "shape": [2, 2], "params": 4}])),
        "meta.layers[0]: missing field 'name'"),
    "meta layer missing type": (
        _raw(_body("meta", layers=[{"name": "fc1", "shape": [2, 2], "params": 4}])),
        "missing field 'type'"),
    "meta layer missing shape": (
        _raw(_body("meta", layers=[{"name": "fc1", "type": "Linear", "params": 4}])),
        "missing field 'shape'"),
    "meta layer missing params": (
        _raw(_body("meta", layers=[{"name": "a", "type": "Linear", "shape": [2, 2], "params": 4},
                                   {"name": "fc1", "type": "Linear", "shape": [2, 2]}])),
        "meta.layers[1]: missing field 'params'"),
    "meta layer params is float": (
        _raw(_body("meta", layers=[{"name": "fc1", "type": "Linear", "shape": [2, 2],
                                    "params": 4.0}])),
        "meta.layers[0].params: expected int"),
    "meta indicators not strings": (_raw(_body("meta", indicators=["weight_norm", 3])),
                                    "meta.indicators"),
    "meta pid is string": (_raw(_body("meta", pid="4242")), "meta.pid"),
    "gpu devices not a list": (_raw(_body("gpu", devices={})), "gpu.devices"),
    "gpu device not an object": (_raw(_body("gpu", devices=[0])),
                                 "gpu.devices[0]: expected object"),
    "gpu device index is string": (
        _raw(_body("gpu", devices=[{"index": "0", "name": "H100"}])),
        "gpu.devices[0].index: expected int"),
    "gpu device name missing": (_raw(_body("gpu", devices=[{"index": 0}])),
                                "gpu.devices[0]: missing field 'name'"),
    "gpu device util is string": (
        _raw(_body("gpu", devices=[{"index": 0, "name": "H100", "util": "97%"}])),
        "gpu.devices[0].util"),
    "gpu device temp is bool": (
        _raw(_body("gpu", devices=[{"index": 0, "name": "H100", "temp": True}])), "got bool"),
    "gpu available is int": (_raw(_body("gpu", available=1)), "gpu.available: expected bool"),
    "gpu sm clock is string": (
        _raw(_body("gpu", devices=[{"index": 0, "name": "H100", "sm_clock_mhz": "1410"}])),
        "gpu.devices[0].sm_clock_mhz"),
    "gpu sm clock max is bool": (
        _raw(_body("gpu", devices=[{"index": 0, "name": "H100", "sm_clock_max_mhz": True}])),
        "got bool"),
    "gpu throttle is a string": (
        _raw(_body("gpu", devices=[{"index": 0, "name": "H100", "throttle": "power cap"}])),
        "gpu.devices[0].throttle"),
    "gpu throttle holds a number": (
        _raw(_body("gpu", devices=[{"index": 0, "name": "H100", "throttle": ["idle", 4]}])),
        "gpu.devices[0].throttle[1]"),
    "event severity missing": (_raw(_body("event", severity=...)), "missing field 'severity'"),
    "event layer is int": (_raw(_body("event", layer=3)), "event.layer"),
    "goodbye exit_code is string": (_raw(_body("goodbye", exit_code="0")), "goodbye.exit_code"),
}


@pytest.mark.parametrize("frames, match", list(REJECTED.values()), ids=list(REJECTED))
def test_decode_rejects(frames: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(match)):
        decode(frames)


def test_wrong_version_message_tells_what_to_do() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(_raw(_body(v=2)))
    text = str(info.value)
    assert "2" in text and "1" in text and "upgrade" in text


def test_oversize_body_is_rejected_before_parsing() -> None:
    body = b" " * (protocol.MAX_MESSAGE_BYTES + 1)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode([b"heartbeat", body])
    # A body of exactly the limit is parsed (and here fails only as JSON).
    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):
        decode([b"heartbeat", b" " * protocol.MAX_MESSAGE_BYTES])


def test_encode_rejects_oversize_message() -> None:
    kind, header, payload = REFERENCE_INPUTS["event"]
    big = dict(payload, message="x" * protocol.MAX_MESSAGE_BYTES)
    with pytest.raises(ProtocolError, match="exceeds"):
        encode(kind, payload=big, **header)


NONFINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["metrics value", "stats loss", "stats scalar", "event before",
                                   "heartbeat overhead", "gpu power", "metrics cost_s"])
def test_encode_rejects_nonfinite_numbers(where: str, value: float) -> None:
    name, patch = {
        "metrics value": ("metrics", {"values": {"fc1": {"stable_rank": value}}}),
        "stats loss": ("stats", {"loss": value}),
        "stats scalar": ("stats", {"scalars": {"lr": value}}),
        "event before": ("event", {"before": value}),
        "heartbeat overhead": ("heartbeat", {"overhead": value}),
        "gpu power": ("gpu", {"devices": [{"index": 0, "name": "H100", "power": value}]}),
        "metrics cost_s": ("metrics", {"cost_s": value}),
    }[where]
    kind, header, payload = REFERENCE_INPUTS[name]
    with pytest.raises(ProtocolError, match="non-finite"):
        encode(kind, payload={**payload, **patch}, **header)


@pytest.mark.parametrize("detail, match", [
    ({"spectrum": [3.0, 2.0, float("nan"), 1.0]}, r"spectrum\[2\]: non-finite"),
    ({"spectrum": [3.0, None, 1.0]}, r"spectrum\[1\]: expected int or float, got NoneType"),
    ({"spectrum": [3.0, True]}, r"spectrum\[1\]: expected int or float, got bool"),
    ({"dead": [0, 4, 7.0]}, r"dead\[2\]: expected int, got float"),
    ({"dead": [0, False]}, r"dead\[1\]: expected int, got bool"),
    ({"duplicates": [[0, 1], [2, "3"]]}, r"duplicates\[1\]\[1\]: expected int, got str"),
])
def test_detail_lists_name_the_bad_item(detail: dict[str, Any], match: str) -> None:
    """Homogeneous lists are checked in bulk; one bad item still gets its own message."""
    kind, header, payload = REFERENCE_INPUTS["metrics"]
    ok = {"spectrum": [3.0, 2, 1.5], "dead": [0, 4], "duplicates": [[0, 1]]}
    encode(kind, payload={**payload, "detail": {"fc1": ok}}, **header)
    with pytest.raises(ProtocolError, match=match):
        encode(kind, payload={**payload, "detail": {"fc1": detail}}, **header)


def test_metrics_values_name_the_bad_indicator() -> None:
    kind, header, payload = REFERENCE_INPUTS["metrics"]
    values = {"fc1": {"weight_norm": 1.0, "stable_rank": None, "numerical_rank": 3,
                      "effective_rank": float("inf")}}
    with pytest.raises(ProtocolError, match=r"metrics.values\['fc1'\]\['effective_rank'\]"):
        encode(kind, payload={**payload, "values": values}, **header)
    values["fc1"]["effective_rank"] = 2.5  # ints and nulls among floats are fine
    encode(kind, payload={**payload, "values": values}, **header)


@pytest.mark.parametrize("kind, payload, match", [
    ("telemetry", {}, "unknown message kind"),
    ("heartbeat", {"dropped": 0}, "missing field 'samples'"),
    ("heartbeat", {"dropped": 0, "samples": True}, "got bool"),
    ("metrics", {"values": {"fc1": {"weight_norm": "1.0"}}}, "metrics.values"),
    ("meta", {**REFERENCE_INPUTS["meta"][2], "layers": [{"name": "fc1"}]}, "missing field 'type'"),
    ("gpu", {"available": True, "devices": [{"index": 0, "name": "H100", "util": "97"}]},
     "gpu.devices[0].util"),
    ("meta", {**REFERENCE_INPUTS["meta"][2], "command": "python train.py"}, "meta.command"),
])
def test_encode_rejects_schema_errors(kind: str, payload: dict[str, Any], match: str) -> None:
    header = REFERENCE_INPUTS["heartbeat"][1]
    with pytest.raises(ProtocolError, match=re.escape(match)):
        encode(kind, payload=payload, **header)


def test_unknown_fields_and_indicators_are_accepted() -> None:
    """Additive changes (new optional fields, new indicators) must not break a v1 receiver."""
    body = _body("metrics", future_field={"anything": [1, 2]})
    body["values"]["fc1"]["new_indicator"] = 0.5
    body["values"]["new_layer"] = {}
    message = decode(_raw(body))
    assert message.payload["values"]["fc1"]["new_indicator"] == 0.5
    assert message.payload["future_field"] == {"anything": [1, 2]}
    layer = dict(REFERENCE_INPUTS["meta"][2]["layers"][0], dtype="bfloat16")
    meta = decode(_raw(_body("meta", layers=[layer])))
    assert meta.payload["layers"][0]["dtype"] == "bfloat16"


def test_raw_utf8_text_is_accepted() -> None:
    # encode escapes non-ASCII, but a receiver must accept raw UTF-8 too (it is valid JSON).
    frames = _raw(_body("event", message="fc1: rank 2 \u2192 3, caf\u00e9"), ensure_ascii=False)
    assert "\u2192".encode() in frames[1]
    assert decode(frames).payload["message"] == "fc1: rank 2 \u2192 3, caf\u00e9"


def test_header_time_int_is_float_in_message() -> None:
    message = decode(_raw(_body(time=1735732809)))
    assert message.time == 1735732809.0 and isinstance(message.time, float)


# Regression tests for defects found while writing these tests (fixed in protocol.py).

def test_decode_huge_integer_literal_is_protocol_error() -> None:
    body = GOOD_BODY.replace(b'"seq":6', b'"seq":' + b"9" * 5000)
    with pytest.raises(ProtocolError):
        decode([b"heartbeat", body])


def test_decode_time_too_large_for_float_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(_raw(_body(time=10**400)))


@pytest.mark.parametrize("version", [True, 1.0])
def test_decode_version_must_be_the_integer_1(version: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(_raw(_body(v=version)))


@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
def test_encode_rejects_nonfinite_time(value: float) -> None:
    kind, header, payload = REFERENCE_INPUTS["heartbeat"]
    with pytest.raises(ProtocolError):
        encode(kind, payload=payload, **{**header, "time": value})


@pytest.mark.parametrize("field, value", [("rank", True), ("seq", "6"), ("run", 7)])
def test_encode_rejects_bad_header_types(field: str, value: Any) -> None:
    kind, header, payload = REFERENCE_INPUTS["heartbeat"]
    with pytest.raises(ProtocolError):
        encode(kind, payload=payload, **{**header, field: value})


@pytest.mark.parametrize("field", ["v", "kind", "seq"])
def test_encode_rejects_payload_keys_that_shadow_the_header(field: str) -> None:
    kind, header, payload = REFERENCE_INPUTS["heartbeat"]
    with pytest.raises(ProtocolError):
        encode(kind, payload={**payload, field: 2}, **header)


# ---------------------------------------------------------------------------------------------
# (c) Fuzz: whatever arrives, decode returns a Message or raises ProtocolError, nothing else.

try:  # in the `test` extra; without it only these tests are skipped, visibly (-ra)
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    def test_fuzz() -> None:
        pytest.skip("hypothesis is not installed (pip install -e '.[test]')")
else:
    # database=None: no .hypothesis/ directory in the tree; deadline=None: a loaded CI box is slow.
    FUZZ = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

    # Integers are bounded: the huge-integer cases have their own deterministic tests above.
    _scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
    json_values = st.recursive(
        _scalars,
        lambda children: st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5),
        max_leaves=30)
    topics = st.sampled_from([k.encode() for k in protocol.KINDS]) | st.binary(max_size=12)


    def _decode_or_protocol_error(frames: list[bytes]) -> Message | None:
        try:
            message = decode(frames)
        except ProtocolError:
            return None
        assert isinstance(message, Message)
        # Whatever got through satisfies the header contract.
        assert message.kind in protocol.KINDS
        assert isinstance(message.run, str)
        for value in (message.rank, message.restart, message.seq, message.step):
            assert type(value) is int
        assert type(message.time) is float and math.isfinite(message.time)
        assert not set(message.payload) & set(protocol.HEADER_FIELDS)
        return message


    @FUZZ
    @given(st.lists(st.binary(max_size=200), max_size=4))
    def test_fuzz_random_frames(frames: list[bytes]) -> None:
        _decode_or_protocol_error(frames)


    @FUZZ
    @given(topics, json_values)
    def test_fuzz_random_json(topic: bytes, value: Any) -> None:
        _decode_or_protocol_error([topic, json.dumps(value).encode()])


    def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        """Every (container, key or index) in a JSON tree, depth first."""
        if isinstance(node, dict):
            for key, value in node.items():
                out.append((node, key))
                _slots(value, out)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                out.append((node, index))
                _slots(value, out)
        return out

    @st.composite
    def mutated_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
        """A valid reference body with a few random edits anywhere in its payload, at any depth.
        The header is left alone (the rejection tests, random JSON and byte flips cover it) so
        that the edits reach the nested validators."""
        name = draw(st.sampled_from(sorted(REFERENCE_INPUTS)))
        body = json.loads(_frames(name)[1])
        for _ in range(draw(st.integers(1, 3))):
            slots = [(c, k) for c, k in _slots(body, [])
                     if not (c is body and k in protocol.HEADER_FIELDS)]
            if not slots:
                break
            container, key = draw(st.sampled_from(slots))
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                container[key] = draw(json_values)
            elif action == "delete":
                del container[key]
            elif isinstance(container, dict):
                container[draw(st.text(max_size=10))] = draw(json_values)
            else:
                container.insert(key, draw(json_values))
        return body["kind"].encode(), json.dumps(body).encode()

    @settings(FUZZ, max_examples=1000)
    @given(mutated_bodies())
    def test_fuzz_mutated_valid_messages(frames: tuple[bytes, bytes]) -> None:
        _decode_or_protocol_error(list(frames))


    @FUZZ
    @given(st.sampled_from(sorted(REFERENCE_INPUTS)), st.data())
    def test_fuzz_byte_flips_of_valid_messages(name: str, data: st.DataObject) -> None:
        body = bytearray(_frames(name)[1])
        for _ in range(data.draw(st.integers(1, 8))):
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
        _decode_or_protocol_error([REFERENCE_INPUTS[name][0].encode(), bytes(body)])


# ---------------------------------------------------------------------------------------------
# (d) A real PUB/SUB pair: what a subscriber receives decodes, or raises ProtocolError.

DEADLINE_S = 10.0
PROBE = [b"heartbeat", json.dumps(_body(run="probe")).encode()]


@pytest.fixture
def pub_sub(zmq_ctx: zmq.Context) -> Any:
    ctx = zmq_ctx
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    try:
        for sock in (pub, sub):
            sock.setsockopt(zmq.LINGER, 0)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        _wait_until_subscribed(pub, sub)
        yield pub, sub
    finally:
        pub.close(linger=0)
        sub.close(linger=0)


def _wait_until_subscribed(pub: Any, sub: Any) -> None:
    """The slow joiner: a SUB misses what is published before its subscription reaches the PUB.
    Keep publishing a probe until one arrives."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        pub.send_multipart(PROBE)
        if sub.poll(50):
            assert sub.recv_multipart(zmq.NOBLOCK) == PROBE
            return
    pytest.fail("subscription did not propagate within the deadline")


def _receive(sub: Any, count: int) -> list[list[bytes]]:
    """The next `count` messages other than late probes, each within the deadline."""
    received: list[list[bytes]] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(received) < count:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0 or not sub.poll(remaining_ms):
            pytest.fail(f"received {len(received)} of {count} messages before the deadline")
        frames = sub.recv_multipart(zmq.NOBLOCK)
        if frames != PROBE:
            received.append(frames)
    return received


def test_pub_sub_round_trip_with_garbage(pub_sub: Any) -> None:
    pub, sub = pub_sub
    garbage = [
        [b"metrics", b"\xff\xfe not utf-8"],
        [b"heartbeat", b"[]"],
        [b"junk"],
        [b"heartbeat", GOOD_BODY, b"extra"],
        [b"metrics", GOOD_BODY],
        [b"heartbeat", GOOD_BODY.replace(b'"v":1', b'"v":2')],
        [b"heartbeat", GOOD_BODY.replace(b'"time":1735732809.0', b'"time":NaN')],
    ]
    valid = {name: list(_frames(name)) for name in sorted(REFERENCE_INPUTS)}
    outgoing: list[tuple[str | None, list[bytes]]] = []
    for (name, frames), bad in zip(valid.items(), garbage + [None] * len(valid)):
        outgoing.append((name, frames))
        if bad is not None:
            outgoing.append((None, bad))
    for _, frames in outgoing:
        pub.send_multipart(frames)

    received = _receive(sub, len(outgoing))
    assert received == [frames for _, frames in outgoing]  # one TCP pipe: order is kept
    for (name, _), frames in zip(outgoing, received):
        if name is None:
            with pytest.raises(ProtocolError):
                decode(frames)
        else:
            assert decode(frames) == _expected_message(name)


def test_sub_maxmsgsize_never_delivers_an_oversize_body(pub_sub: Any) -> None:
    pub, sub = pub_sub
    pub.send_multipart([b"heartbeat", b" " * (protocol.MAX_MESSAGE_BYTES + 1)])
    # ZeroMQ drops the connection of a peer that exceeds MAXMSGSIZE; nothing may arrive except
    # probes already in flight.
    deadline = time.monotonic() + 0.5
    while (remaining_ms := int((deadline - time.monotonic()) * 1000)) > 0:
        if sub.poll(remaining_ms):
            assert sub.recv_multipart(zmq.NOBLOCK) == PROBE


# ---------------------------------------------------------------------------------------------

def _write_references() -> None:
    REFERENCE_DIR.mkdir(exist_ok=True)
    for name in REFERENCE_INPUTS:
        (REFERENCE_DIR / f"{name}.json").write_bytes(_frames(name)[1])
        print(f"wrote {REFERENCE_DIR / name}.json")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-references"]:
        _write_references()
    else:
        print(__doc__)
