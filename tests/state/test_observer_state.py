"""RunState folding, with injected time; messages go through the real encode/decode."""

from __future__ import annotations

import pytest

from symwatch.core import protocol
from symwatch.state.run_state import FINISHED, LIVE, STALE, WAITING, RunState

_SEQ: dict[tuple[str, int, int], int] = {}


def msg(kind: str, step: int = 0, *, run: str = "r1", rank: int = 0, restart: int = 0,
        seq: int | None = None, **payload) -> protocol.Message:
    key = (run, rank, restart)
    if seq is None:
        seq = _SEQ.get(key, -1) + 1
    _SEQ[key] = seq
    return protocol.decode(list(protocol.encode(kind, run=run, rank=rank, restart=restart,
                                                seq=seq, time=1000.0 + step, step=step,
                                                payload=payload)))


@pytest.fixture(autouse=True)
def _fresh_sequences():
    _SEQ.clear()


def meta(name: str = "run", layers=(("conv1", "Conv2d", [32, 3, 3, 3]), ("fc1", "Linear", [4, 8])),
         **kw) -> protocol.Message:
    return msg(protocol.META, name=name, pid=7, host="h", command=["x"], started=1.0, every=1,
               indicators=list(protocol.INDICATORS),
               layers=[{"name": n, "type": t, "shape": s, "params": 3} for n, t, s in layers], **kw)


def test_meta_sets_identity_and_layer_table():
    s = RunState()
    s.fold(meta("exp", world_size=2, device="cuda:0"), now=0.0)
    assert (s.name, s.host, s.pid, s.world_size, s.device) == ("exp", "h", 7, 2, "cuda:0")
    assert list(s.layers) == ["conv1", "fc1"]
    assert s.layers["conv1"].shape == (32, 3, 3, 3) and s.layers["conv1"].type == "Conv2d"
    assert all(layer.announced for layer in s.layers.values())
    assert s.run_id == "r1"


def test_metrics_current_value_and_bounded_history():
    s = RunState(history=4)  # 4 to 8 recent samples whole, older ones merged in pairs
    s.fold(meta(), now=0.0)
    for step in range(8):
        s.fold(msg(protocol.METRICS, step, values={"fc1": {"stable_rank": float(step),
                                                           "numerical_rank": None}}), now=0.0)
    fc1 = s.layers["fc1"]
    assert fc1.value("stable_rank") == 7.0
    series = fc1.indicators["stable_rank"]
    assert series.history == [(4, 4.0), (5, 5.0), (6, 6.0), (7, 7.0)]
    # the older samples are still there, merged pairwise: (last step, min, max, last value)
    assert list(series.store.entries()) == [(1, 0.0, 1.0, 1.0), (3, 2.0, 3.0, 3.0),
                                            (4, 4.0, 4.0, 4.0), (5, 5.0, 5.0, 5.0),
                                            (6, 6.0, 6.0, 6.0), (7, 7.0, 7.0, 7.0)]
    assert series.store.at(3) == (3, 3.0) and series.store.count == 8
    assert fc1.value("numerical_rank") is None  # N/A stays N/A, never 0
    assert fc1.indicators["numerical_rank"].values() == [None] * 4
    assert fc1.value("weight_norm") is None  # never sent
    assert fc1.updates == 8


def test_a_large_metrics_message_folds_in_slices_to_the_same_state():
    # The TUI folds 1,000-layer messages a slice at a time, handling keys in between.
    from symwatch.state.run_state import FOLD_SLICE_LAYERS
    n = 3 * FOLD_SLICE_LAYERS + 7
    values = {f"l{i}": {"weight_norm": float(i), "stable_rank": 1.5} for i in range(n)}
    whole, sliced = RunState(), RunState()
    m = msg(protocol.METRICS, 12, values=values)
    whole.fold(m, now=1.0)
    steps = sliced.fold_steps(m, now=1.0)
    next(steps)  # the first slice: some layers in, the rest not yet
    partial = [name for name, layer in sliced.layers.items() if layer.updates]
    assert 0 < len(partial) < n and sliced.step == 12
    assert 1 + sum(1 for _ in steps) == n // FOLD_SLICE_LAYERS  # a pause every slice
    for state in (whole, sliced):
        assert len(state.layers) == n and state.messages == 1
        assert state.layers[f"l{n - 1}"].indicators["weight_norm"].current == float(n - 1)
        assert all(layer.updates == 1 for layer in state.layers.values())


def test_layer_not_in_meta_is_added_on_sight_and_kept_after_meta():
    s = RunState()
    s.fold(msg(protocol.METRICS, 1, values={"late.layer": {"weight_norm": 2.0}}), now=0.0)
    assert list(s.layers) == ["late.layer"]
    assert not s.layers["late.layer"].announced and s.layers["late.layer"].type == "?"
    s.fold(meta(), now=0.0)
    assert list(s.layers) == ["conv1", "fc1", "late.layer"]
    assert s.layers["late.layer"].value("weight_norm") == 2.0


def test_unknown_indicators_are_kept_after_the_standard_ones():
    s = RunState()
    s.fold(msg(protocol.METRICS, 1, values={"fc1": {"balance": 0.5, "weight_norm": 1.0}}), now=0)
    assert s.indicator_names() == list(protocol.INDICATORS) + ["balance"]
    assert s.layers["fc1"].value("balance") == 0.5


def test_nonfinite_layers_are_flagged():
    s = RunState()
    s.fold(msg(protocol.METRICS, 1, values={"fc1": {"weight_norm": None}, "fc2": {}},
               nonfinite=["fc1"]), now=0)
    assert s.layers["fc1"].nonfinite and not s.layers["fc2"].nonfinite


def test_connection_states_with_injected_time():
    s = RunState(stale_after=3.0)
    assert s.connection(now=100.0) == WAITING
    s.fold(msg(protocol.HEARTBEAT, dropped=0, samples=0), now=100.0)
    assert s.connection(now=102.9) == LIVE
    assert s.connection(now=103.1) == STALE
    assert s.silent_for(now=103.5) == pytest.approx(3.5)
    s.fold(msg(protocol.HEARTBEAT, dropped=0, samples=0), now=104.0)
    assert s.connection(now=104.5) == LIVE  # back from stale
    s.fold(msg(protocol.GOODBYE, 50, reason="finished", exit_code=0), now=105.0)
    assert s.connection(now=1e9) == FINISHED
    assert (s.goodbye_reason, s.exit_code) == ("finished", 0)


def test_finished_only_when_every_rank_said_goodbye():
    s = RunState()
    s.fold(msg(protocol.HEARTBEAT, rank=0, dropped=0, samples=0), now=0)
    s.fold(msg(protocol.HEARTBEAT, rank=1, dropped=0, samples=0), now=0)
    s.fold(msg(protocol.GOODBYE, rank=0, reason="finished"), now=0)
    assert s.connection(now=0.5) == LIVE
    s.fold(msg(protocol.GOODBYE, rank=1, reason="finished"), now=0)
    assert s.connection(now=0.5) == FINISHED


def test_stats_update_loss_rate_overhead_and_scalars():
    s = RunState()
    s.fold(msg(protocol.STATS, 10, loss=2.5, steps_per_s=8.0, overhead=0.004, step_time=0.125,
               scalars={"lr": 0.1, "grad_norm": None}), now=0)
    s.fold(msg(protocol.STATS, 20, loss=None), now=0)
    assert s.loss.current is None and s.loss.values() == [2.5, None]
    assert (s.steps_per_s, s.overhead, s.step_time, s.step) == (8.0, 0.004, 0.125, 20)
    assert s.scalars == {"lr": 0.1, "grad_norm": None}


def test_steps_per_s_estimated_when_the_agent_sends_none():
    s = RunState()
    s.fold(msg(protocol.HEARTBEAT, 0, dropped=0, samples=0), now=0.0)
    s.fold(msg(protocol.HEARTBEAT, 50, dropped=0, samples=0), now=2.5)
    assert s.steps_per_s == pytest.approx(20.0)


def test_dropped_is_agent_counter_plus_sequence_gaps():
    s = RunState()
    s.fold(msg(protocol.HEARTBEAT, seq=5, dropped=0, samples=0), now=0)  # baseline, no gap
    assert s.dropped == 0
    s.fold(msg(protocol.HEARTBEAT, seq=6, dropped=2, samples=0), now=0)
    s.fold(msg(protocol.HEARTBEAT, seq=10, dropped=3, samples=0), now=0)  # 3 lost
    s.fold(msg(protocol.HEARTBEAT, seq=8, dropped=1, samples=0), now=0)  # reordered: nothing
    assert (s.agent_dropped, s.gap_dropped, s.dropped) == (3, 3, 6)
    # Another rank and a restarted worker have their own sequences and counters.
    s.fold(msg(protocol.STATS, rank=1, seq=0, dropped=4), now=0)
    s.fold(msg(protocol.STATS, rank=1, seq=3), now=0)
    s.fold(msg(protocol.HEARTBEAT, restart=1, seq=0, dropped=0, samples=0), now=0)
    assert (s.agent_dropped, s.gap_dropped) == (7, 5)


def test_new_run_id_resets_per_run_data_in_the_same_view():
    s = RunState()
    s.fold(meta("first"), now=0)
    s.fold(msg(protocol.STATS, 100, loss=1.0), now=0)
    s.fold(msg(protocol.GOODBYE, 100, reason="closed"), now=0)
    assert s.connection(now=0) == FINISHED
    s.fold(msg(protocol.HEARTBEAT, 0, run="r2", dropped=0, samples=0), now=1.0)
    assert s.run_id == "r2" and s.restarts == 1
    assert s.name is None and s.layers == {} and s.loss.current is None and s.step == 0
    assert s.connection(now=1.0) == LIVE
    assert "replaces first" in s.events[-1].message
    # A late message of the replaced run is ignored rather than flipping the view back.
    s.fold(msg(protocol.STATS, 200, loss=9.0), now=1.5)
    assert s.ignored == 1 and s.loss.current is None and s.run_id == "r2"


def test_events_are_bounded_and_counted():
    s = RunState(max_events=3)
    for i in range(5):
        s.fold(msg(protocol.EVENT, i, message=f"e{i}", severity="transition", layer="fc1",
                   before=2, after=3), now=0)
    assert [e.message for e in s.events] == ["e2", "e3", "e4"]
    assert s.events_total == 5
    assert (s.events[-1].layer, s.events[-1].before, s.events[-1].after) == ("fc1", 2.0, 3.0)


def test_gpu_message_is_kept_as_is():
    s = RunState()
    s.fold(msg(protocol.GPU, available=False, devices=[], reason="no NVML"), now=0)
    assert s.gpu == {"available": False, "devices": [], "reason": "no NVML"}


def test_revision_changes_on_every_fold():
    s = RunState()
    r0 = s.revision
    s.fold(msg(protocol.HEARTBEAT, dropped=0, samples=0), now=0)
    assert s.revision == r0 + 1 and s.messages == 1
