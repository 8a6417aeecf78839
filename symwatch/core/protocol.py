"""The wire contract between the agent and every observer (protocol version 1; stdlib only).

docs/protocol.md is the authoritative, human-readable form of this module. Both halves import
it: the agent (inside somebody else's training process) to encode, observers to decode and
validate. It must stay importable with nothing but the standard library.

A message is two ZeroMQ frames: a topic frame (the kind, ASCII, so subscribers can filter by
prefix) and a body frame (one UTF-8 JSON object). JSON was chosen over msgpack/pickle because
it needs no third-party package on either side, is readable in a packet dump, and the
measured cost is small next to the sampling interval (see docs/protocol.md, "Encoding").
Never pickle: a socket is untrusted input.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

PROTOCOL_VERSION = 1

# A receiver drops (and counts) any body larger than this. Large enough for the metadata of a
# 10,000-layer model; ZeroMQ's MAXMSGSIZE is set to the same figure on every receiving socket.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# Message kinds. The topic frame carries the kind, so `SUB.subscribe(b"metrics")` works.
META = "meta"  # run metadata and the layer table; sent on start and re-sent periodically
METRICS = "metrics"  # per-layer indicator values of one sample
STATS = "stats"  # run-level scalars: loss, step time, steps/s, the agent's own overhead
GPU = "gpu"  # GPU statistics of the node (or why there are none)
EVENT = "event"  # a transition-like jump, or a one-time notice from the agent
HEARTBEAT = "heartbeat"  # "still alive" with counters, once a second
GOODBYE = "goodbye"  # the run ended (normally or not); no more messages follow

KINDS = (META, METRICS, STATS, GPU, EVENT, HEARTBEAT, GOODBYE)

# Names of the indicators the foundation agent publishes, in display order. Observers must
# accept indicators they do not know (newer agents add more); this list is a default order.
INDICATORS = ("weight_norm", "stable_rank", "numerical_rank", "dead_fraction")

HEADER_FIELDS = ("v", "kind", "run", "rank", "restart", "seq", "time", "step")


class ProtocolError(ValueError):
    """A message that does not follow this contract; receivers count and drop it."""


Number = (int, float)
_OptNumber = (int, float, type(None))
_HEADER_TYPES: dict[str, tuple[type, ...]] = {"run": (str,), "rank": (int,), "restart": (int,),
                                              "seq": (int,), "time": Number, "step": (int,)}


@dataclass(frozen=True)
class Message:
    """One decoded, validated message: the common header plus its kind's payload."""

    kind: str
    run: str
    rank: int
    restart: int
    seq: int
    time: float
    step: int
    payload: dict[str, Any] = field(default_factory=dict)
    # Set by the observer (never on the wire) on messages that came from a history snapshot
    # rather than live: the `seq` up to which that snapshot was complete. See "Late join".
    snapshot_seq: int | None = None

    @property
    def from_history(self) -> bool:
        return self.snapshot_seq is not None

    def get(self, key: str, default: Any = None) -> Any:
        return self.payload.get(key, default)


# ---------------------------------------------------------------------------------------------
# Schemas: for each kind, required and optional payload fields with their accepted types.
# Validation is shallow-but-strict on types; nested structures are checked by small functions.

_PAYLOAD_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    META: {"name": (str,), "pid": (int,), "host": (str,), "command": (list,),
           "started": Number, "layers": (list,), "indicators": (list,), "every": (int,)},
    METRICS: {"values": (dict,)},
    STATS: {},
    GPU: {"available": (bool,), "devices": (list,)},
    EVENT: {"message": (str,), "severity": (str,)},
    HEARTBEAT: {"dropped": (int,), "samples": (int,)},
    GOODBYE: {"reason": (str,)},
}

_PAYLOAD_OPTIONAL: dict[str, dict[str, tuple[type, ...]]] = {
    META: {"world_size": (int,), "endpoint": (str,), "torch": (str,), "device": (str,),
           "agent": (str,), "python": (str,), "skipped": (list,), "history_endpoint": (str,),
           "local_rank": (int,), "node_rank": (int,), "job": (str,), "gpu_poller": (bool,)},
    METRICS: {"nonfinite": (list,), "cost_s": Number, "sharded": (dict,), "detail": (dict,),
              "loss": _OptNumber, "scalars": (dict,)},
    STATS: {"loss": _OptNumber, "step_time": _OptNumber, "steps_per_s": _OptNumber,
            "overhead": _OptNumber, "dropped": (int,), "scalars": (dict,),
            "memory": (dict, type(None)), "per_step": (dict,), "sampling": (dict,),
            "optimizer": (list,), "loss_nonfinite": (str,)},
    GPU: {"reason": (str,)},
    EVENT: {"layer": (str, type(None)), "metric": (str, type(None)), "direction": (str, type(None)),
            "before": _OptNumber, "after": _OptNumber, "score": _OptNumber,
            "exogenous": (str, type(None)), "onset": (int,), "jumps": (list,),
            "changes": (list,)},
    HEARTBEAT: {"overhead": _OptNumber, "history_endpoint": (str,)},
    GOODBYE: {"exit_code": (int, type(None))},
}

# A layer row in META's layer table.
_LAYER_REQUIRED: dict[str, tuple[type, ...]] = {"name": (str,), "type": (str,), "shape": (list,),
                                                 "params": (int,)}
# One series' jump inside a grouped transition EVENT.
_JUMP_REQUIRED: dict[str, tuple[type, ...]] = {"metric": (str,), "direction": (str,),
                                               "step": (int,)}
_JUMP_OPTIONAL: dict[str, tuple[type, ...]] = {"layer": (str, type(None)), "before": _OptNumber,
                                               "after": _OptNumber, "score": _OptNumber,
                                               "onset": (int,)}
# One device in a GPU message; every numeric field may be null ("N/A"), never a fake zero.
_GPU_DEVICE_REQUIRED: dict[str, tuple[type, ...]] = {"index": (int,), "name": (str,)}
_GPU_DEVICE_NUMERIC = ("util", "mem_used", "mem_total", "temp", "power", "power_limit",
                       "job_mem_used", "sm_clock_mhz", "sm_clock_max_mhz")
# `throttle`: the active clock-throttle reasons by short name, null when NVML cannot say.
_GPU_DEVICE_OTHER: dict[str, tuple[type, ...]] = {"uuid": (str,), "processes": (list,),
                                                  "throttle": (list, type(None))}
# A process on a device (the job's own, from NVML's process list).
_GPU_PROCESS_REQUIRED: dict[str, tuple[type, ...]] = {"pid": (int,), "mem_used": _OptNumber}
# The rank's allocator figures in `stats.memory` (bytes; the CUDA device index, its NVML UUID).
_MEMORY_OPTIONAL: dict[str, tuple[type, ...]] = {"allocated": _OptNumber, "reserved": _OptNumber,
                                                 "peak": _OptNumber, "device": (int,),
                                                 "uuid": (str,)}
# One series of STATS `per_step`: every step's value since the previous STATS message.
_PER_STEP_REQUIRED: dict[str, tuple[type, ...]] = {"steps": (list,), "values": (list,)}
# STATS `sampling`: what sets the interval between samples.
_SAMPLING_OPTIONAL: dict[str, tuple[type, ...]] = {"interval": _OptNumber, "every": (int,),
                                                   "budget": Number, "limit": (str,),
                                                   "run_level_every": (int,)}
# One layer's entry in METRICS `detail` (full-tier samples): its singular values (capped) and
# unit-level facts. Index lists: integers; `duplicates`: a list of lists of them.
_DETAIL_OPTIONAL: dict[str, tuple[type, ...]] = {
    "spectrum": (list,), "count": (int,), "rank_threshold": Number, "units": (int,),
    "dead": (list,), "dead_count": (int,), "duplicates": (list,), "duplicate_count": (int,)}
# METRICS of a sharded (FSDP) layer set: this rank holds shard `index` of `shards`.
_SHARDED_REQUIRED: dict[str, tuple[type, ...]] = {"shards": (int,), "index": (int,)}


def _check_fields(obj: Mapping[str, Any], required: Mapping[str, tuple[type, ...]],
                  optional: Mapping[str, tuple[type, ...]], where: str) -> None:
    for name, types in required.items():
        if name not in obj:
            raise ProtocolError(f"{where}: missing field {name!r}")
        _check_type(obj[name], types, f"{where}.{name}")
    for name, types in optional.items():
        if name in obj:
            _check_type(obj[name], types, f"{where}.{name}")


def _check_type(value: Any, types: tuple[type, ...], where: str) -> None:
    # bool is an int subclass in Python; a boolean where a number is expected is a schema error.
    if isinstance(value, bool) and bool not in types:
        raise ProtocolError(f"{where}: expected {_type_names(types)}, got bool")
    if not isinstance(value, types):
        raise ProtocolError(f"{where}: expected {_type_names(types)}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{where}: non-finite number (encode NaN/inf as null)")
    if type(value) is int and float in types and abs(value) > _MAX_FLOAT_INT:
        raise ProtocolError(f"{where}: number too large for a float")


_MAX_FLOAT_INT = int(sys.float_info.max)
_FLOAT, _INT, _NONE = frozenset({float}), frozenset({int}), frozenset({float, type(None)})


def _check_items(values: Iterable[Any], types: tuple[type, ...], where: str) -> None:
    """_check_type for every item of a collection (`where[i]` names the bad one).

    A METRICS message of 1,000 layers holds ~15,000 values and as many spectrum entries; the
    common case (all finite floats, or all plain ints) is checked by C-level map/set calls,
    ~20× faster than one _check_type per item, and only a collection that fails it is walked
    item by item for the error message."""
    values = values if isinstance(values, (list, tuple)) else list(values)
    kinds = set(map(type, values))
    if float in types and kinds <= _FLOAT:
        if all(map(math.isfinite, values)):
            return
    elif type(None) in types and float in types and kinds <= _NONE:
        if all(map(math.isfinite, [v for v in values if v is not None])):
            return
    elif int in types and kinds <= _INT and float not in types:
        return
    for i, value in enumerate(values):
        _check_type(value, types, f"{where}[{i}]")


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _validate_payload(kind: str, payload: Mapping[str, Any]) -> None:
    _check_fields(payload, _PAYLOAD_REQUIRED[kind], _PAYLOAD_OPTIONAL[kind], kind)
    if kind == META:
        for i, layer in enumerate(payload["layers"]):
            if not isinstance(layer, dict):
                raise ProtocolError(f"meta.layers[{i}]: expected object")
            _check_fields(layer, _LAYER_REQUIRED, {}, f"meta.layers[{i}]")
        if not all(isinstance(x, str) for x in payload["indicators"]):
            raise ProtocolError("meta.indicators: expected a list of strings")
    elif kind == METRICS:
        for layer, values in payload["values"].items():
            if not isinstance(values, dict):
                raise ProtocolError(f"metrics.values[{layer!r}]: expected object")
            try:
                _check_items(values.values(), _OptNumber, "")
            except ProtocolError:  # again item by item, for the indicator's name
                for name, value in values.items():
                    _check_type(value, _OptNumber, f"metrics.values[{layer!r}][{name!r}]")
        for layer, entry in (payload.get("detail") or {}).items():
            _validate_detail(layer, entry)
        if "sharded" in payload:
            _check_fields(payload["sharded"], _SHARDED_REQUIRED, {}, "metrics.sharded")
            if not 0 <= payload["sharded"]["index"] < payload["sharded"]["shards"]:
                raise ProtocolError("metrics.sharded: index must be in [0, shards)")
    elif kind == STATS and ("scalars" in payload or payload.get("memory") is not None
                            or "per_step" in payload or "sampling" in payload):
        for name, value in (payload.get("scalars") or {}).items():
            _check_type(value, _OptNumber, f"stats.scalars[{name!r}]")
        if payload.get("memory") is not None:
            _check_fields(payload["memory"], {}, _MEMORY_OPTIONAL, "stats.memory")
        for name, series in (payload.get("per_step") or {}).items():
            where = f"stats.per_step[{name!r}]"
            if not isinstance(series, dict):
                raise ProtocolError(f"{where}: expected object")
            _check_fields(series, _PER_STEP_REQUIRED, {}, where)
            _check_items(series["steps"], (int,), f"{where}.steps")
            _check_items(series["values"], _OptNumber, f"{where}.values")
            if len(series["steps"]) != len(series["values"]):
                raise ProtocolError(f"{where}: steps and values differ in length")
        if "sampling" in payload:
            _check_fields(payload["sampling"], {}, _SAMPLING_OPTIONAL, "stats.sampling")
    elif kind == EVENT and "jumps" in payload:
        for i, jump in enumerate(payload["jumps"]):
            if not isinstance(jump, dict):
                raise ProtocolError(f"event.jumps[{i}]: expected object")
            _check_fields(jump, _JUMP_REQUIRED, _JUMP_OPTIONAL, f"event.jumps[{i}]")
    elif kind == GPU:
        for i, dev in enumerate(payload["devices"]):
            if not isinstance(dev, dict):
                raise ProtocolError(f"gpu.devices[{i}]: expected object")
            _check_fields(dev, _GPU_DEVICE_REQUIRED,
                          {**{k: _OptNumber for k in _GPU_DEVICE_NUMERIC}, **_GPU_DEVICE_OTHER},
                          f"gpu.devices[{i}]")
            _check_items(dev.get("throttle") or (), (str,), f"gpu.devices[{i}].throttle")
            for j, proc in enumerate(dev.get("processes") or ()):
                if not isinstance(proc, dict):
                    raise ProtocolError(f"gpu.devices[{i}].processes[{j}]: expected object")
                _check_fields(proc, _GPU_PROCESS_REQUIRED, {},
                              f"gpu.devices[{i}].processes[{j}]")


def _validate_detail(layer: str, entry: Any) -> None:
    where = f"metrics.detail[{layer!r}]"
    if not isinstance(entry, dict):
        raise ProtocolError(f"{where}: expected object")
    _check_fields(entry, {}, _DETAIL_OPTIONAL, where)
    _check_items(entry.get("spectrum", ()), Number, f"{where}.spectrum")
    groups = entry.get("duplicates", ())
    for i, group in enumerate(groups):
        if not isinstance(group, list):
            raise ProtocolError(f"{where}.duplicates[{i}]: expected a list of unit indices")
    for name, values in (("dead", entry.get("dead", ())),
                         *((f"duplicates[{i}]", g) for i, g in enumerate(groups))):
        _check_items(values, (int,), f"{where}.{name}")


# ---------------------------------------------------------------------------------------------
# Encoding and decoding.

def nonfinite_name(value: float | int | None) -> str | None:
    """What a non-finite number was, for the fields that say so beside its null ("nan",
    "inf", "-inf"); None for a finite number or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return None


def clean_number(value: float | int | None) -> float | int | None:
    """Map a number to its wire form: NaN and ±inf become null (JSON has no NaN)."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode(kind: str, *, run: str, rank: int, restart: int, seq: int, time: float, step: int,
           payload: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Build the two frames (topic, body) of a message. Validates, so a bug in the sender fails
    loudly at the sender instead of being dropped silently by every receiver."""
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind!r}")
    header = {"run": run, "rank": rank, "restart": restart, "seq": seq, "time": time, "step": step}
    _check_fields(header, _HEADER_TYPES, {}, "header")
    clash = sorted(set(payload) & set(HEADER_FIELDS))
    if clash:
        raise ProtocolError(f"{kind}: payload fields {clash} are header fields")
    _validate_payload(kind, payload)
    body = {"v": PROTOCOL_VERSION, "kind": kind, "run": run, "rank": rank, "restart": restart,
            "seq": seq, "time": time, "step": step, **payload}
    try:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:  # a non-JSON type or NaN in an unchecked place
        raise ProtocolError(f"{kind}: cannot encode: {exc}") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{kind} message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return kind.encode("ascii"), data


def decode(frames: list[bytes]) -> Message:
    """Parse and validate the frames of one message; raises ProtocolError on anything else."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames (topic, body), got {len(frames)}")
    topic, data = frames
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"body of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: >4300 digits
        raise ProtocolError(f"body is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("body is not a JSON object")
    version = body.get("v")
    if type(version) is not int:  # no version at all: not a symwatch message (a damaged one)
        raise ProtocolError(f"not a symwatch message (protocol version {version!r})")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not {PROTOCOL_VERSION}; "
                            "upgrade the older of symwatch and the agent")
    kind = body.get("kind")
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind!r}")
    if topic != kind.encode("ascii"):
        raise ProtocolError(f"topic {topic[:32]!r} does not match kind {kind!r}")
    _check_fields(body, _HEADER_TYPES, {}, "header")
    payload = {k: v for k, v in body.items() if k not in HEADER_FIELDS}
    _validate_payload(kind, payload)
    return Message(kind=kind, run=body["run"], rank=body["rank"], restart=body["restart"],
                   seq=body["seq"], time=float(body["time"]), step=body["step"], payload=payload)


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"non-standard JSON constant {name}")


# ---------------------------------------------------------------------------------------------
# Late join: the history service (a ROUTER socket next to the PUB one; ZeroMQ's Clone pattern).
# Not message kinds (they never travel on the PUB socket), so v1 is unchanged for subscribers.
#
# request (DEALER -> ROUTER): [b"snapshot", {"v": 1, "max_bytes": N}]
# reply   (ROUTER -> DEALER): the stored messages, each the same two frames it had on the PUB
#                             socket, then [b"snapshot_end", {"v": 1, "run", "rank", "restart",
#                             "seq", "count", "complete"}]

SNAPSHOT = "snapshot"
SNAPSHOT_END = "snapshot_end"
MAX_REQUEST_BYTES = 4096  # a request is tiny; the agent's ROUTER refuses anything larger
DEFAULT_SNAPSHOT_BYTES = 32 * 1024 * 1024  # what an observer asks for at most


@dataclass(frozen=True)
class SnapshotEnd:
    """The end marker of a snapshot: every message of (run, rank, restart) with a sequence
    number up to `seq` was published before the snapshot was taken; `count` messages came
    before this marker; `complete` is False when `max_bytes` (or the agent) cut it short.
    `more` (a relay's reply, which holds one snapshot per publisher): another publisher's
    messages and end marker follow this one."""

    run: str
    rank: int
    restart: int
    seq: int
    count: int
    complete: bool
    more: bool = False


def _small_json_object(frames: list[bytes], topic: str, limit: int) -> dict[str, Any]:
    if len(frames) != 2:
        raise ProtocolError(f"{topic}: expected 2 frames, got {len(frames)}")
    if frames[0] != topic.encode("ascii"):
        raise ProtocolError(f"expected topic {topic!r}, got {frames[0][:32]!r}")
    if len(frames[1]) > limit:
        raise ProtocolError(f"{topic}: body of {len(frames[1])} bytes exceeds {limit}")
    try:
        body = json.loads(frames[1].decode("utf-8"), parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{topic}: body is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{topic}: body is not a JSON object")
    if type(body.get("v")) is not int or body["v"] != PROTOCOL_VERSION:
        raise ProtocolError(f"{topic}: protocol version {body.get('v')!r} is not "
                            f"{PROTOCOL_VERSION}")
    return body


def encode_snapshot_request(max_bytes: int = DEFAULT_SNAPSHOT_BYTES) -> list[bytes]:
    if type(max_bytes) is not int or max_bytes <= 0:
        raise ProtocolError(f"snapshot: max_bytes must be a positive integer, got {max_bytes!r}")
    body = {"v": PROTOCOL_VERSION, "max_bytes": max_bytes}
    return [SNAPSHOT.encode("ascii"), json.dumps(body, separators=(",", ":")).encode("ascii")]


def decode_snapshot_request(frames: list[bytes]) -> int:
    """The `max_bytes` of a valid snapshot request; ProtocolError for anything else."""
    body = _small_json_object(frames, SNAPSHOT, MAX_REQUEST_BYTES)
    max_bytes = body.get("max_bytes")
    if type(max_bytes) is not int or max_bytes <= 0:
        raise ProtocolError(f"snapshot: max_bytes must be a positive integer, got "
                            f"{type(max_bytes).__name__}")
    return max_bytes


def encode_snapshot_end(end: SnapshotEnd) -> list[bytes]:
    body = {"v": PROTOCOL_VERSION, "run": end.run, "rank": end.rank, "restart": end.restart,
            "seq": end.seq, "count": end.count, "complete": end.complete}
    if end.more:  # only a relay sends it; absent means false (an agent's single snapshot)
        body["more"] = True
    return [SNAPSHOT_END.encode("ascii"), json.dumps(body, separators=(",", ":")).encode("ascii")]


def decode_snapshot_end(frames: list[bytes]) -> SnapshotEnd:
    body = _small_json_object(frames, SNAPSHOT_END, MAX_REQUEST_BYTES)
    _check_fields(body, {"run": (str,), "rank": (int,), "restart": (int,), "seq": (int,),
                         "count": (int,), "complete": (bool,)}, {"more": (bool,)},
                  SNAPSHOT_END)
    if body["count"] < 0 or body["seq"] < -1:
        raise ProtocolError(f"{SNAPSHOT_END}: negative count or seq")
    return SnapshotEnd(run=body["run"], rank=body["rank"], restart=body["restart"],
                       seq=body["seq"], count=body["count"], complete=body["complete"],
                       more=body.get("more", False))
