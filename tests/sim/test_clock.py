"""Virtual clock: ordering, ties, determinism, cancellation, bulk insert, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedloom.errors import FedloomError
from fedloom.sim.clock import Event, VirtualClock


def drain(clock: VirtualClock) -> list[Event]:
    out = []
    while len(clock):
        out.append(clock.pop())
    return out


def test_pops_in_time_order_and_advances_now():
    clock = VirtualClock()
    clock.schedule(5.0, "upload_done", client=1)
    clock.schedule(1.5, "download_done", client=2)
    clock.schedule(3.0, "compute_done", client=3)
    assert clock.peek_time() == 1.5 and len(clock) == 3
    first = clock.pop()
    assert (first.time, first.kind, first.client) == (1.5, "download_done", 2)
    assert clock.now == 1.5
    assert [e.time for e in drain(clock)] == [3.0, 5.0]
    assert clock.now == 5.0 and clock.peek_time() is None


def test_ties_are_broken_by_insertion_order():
    clock = VirtualClock()
    for client in (7, 3, 9, 1):
        clock.schedule(2.0, "compute_done", client=client)
    assert [e.client for e in drain(clock)] == [7, 3, 9, 1]


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=60))
def test_same_inputs_give_the_same_sequence(times):
    def run() -> list[tuple[float, int, int]]:
        clock = VirtualClock()
        for i, t in enumerate(times):
            clock.schedule(t, "compute_done", client=i)
        return [(e.time, e.seq, e.client) for e in drain(clock)]

    seq = run()
    assert seq == run()
    assert [t for t, _, _ in seq] == sorted(times)
    # equal times come out in insertion order
    for a, b in zip(seq, seq[1:], strict=False):
        assert a[0] < b[0] or a[2] < b[2]


def test_event_data_and_ordering():
    clock = VirtualClock(start=10.0)
    ev = clock.schedule(12.0, "deadline", data={"round": 3})
    assert ev == Event(12.0, ev.seq, "deadline", -1, {"round": 3})
    assert Event(1.0, 5, "a") < Event(1.0, 6, "b") < Event(2.0, 0, "c")
    assert clock.pop().data == {"round": 3}


@pytest.mark.parametrize("bad", [0.5, math.nan, math.inf])
def test_rejects_past_and_non_finite_times(bad):
    clock = VirtualClock()
    clock.schedule(1.0, "x")
    clock.pop()
    with pytest.raises(FedloomError, match="client 4"):
        clock.schedule(bad, "compute_done", client=4)
    with pytest.raises(FedloomError, match="client 6"):
        clock.schedule_many(np.array([2.0, bad]), "compute_done", np.array([5, 6]))
    assert len(clock) == 0


def test_event_at_now_is_allowed():
    clock = VirtualClock(start=3.0)
    clock.schedule(3.0, "failure", client=0)
    assert clock.pop().time == 3.0


def test_pop_from_empty_queue_raises():
    with pytest.raises(FedloomError, match="empty"):
        VirtualClock().pop()


def test_cancel_client_drops_only_its_pending_events():
    clock = VirtualClock()
    clock.schedule(1.0, "download_done", client=1)
    clock.schedule(2.0, "compute_done", client=2)
    clock.schedule(3.0, "upload_done", client=1)
    assert clock.cancel_client(1) == 2
    assert len(clock) == 1
    clock.schedule(4.0, "download_done", client=1)  # scheduled after the cancel: kept
    assert clock.peek_time() == 2.0
    assert [(e.client, e.kind) for e in drain(clock)] == [(2, "compute_done"), (1, "download_done")]
    assert clock.cancel_client(5) == 0


def test_cancel_by_predicate():
    clock = VirtualClock()
    clock.schedule(1.0, "deadline")
    clock.schedule(2.0, "compute_done", client=0)
    clock.schedule(3.0, "compute_done", client=1)
    clock.cancel_client(0)
    assert clock.cancel(lambda e: e.kind == "deadline") == 1
    assert len(clock) == 1
    assert [e.client for e in drain(clock)] == [1]


def test_advance_to():
    clock = VirtualClock()
    clock.schedule(10.0, "deadline")
    clock.advance_to(4.0)
    assert clock.now == 4.0
    with pytest.raises(FedloomError, match="before now"):
        clock.advance_to(3.0)
    with pytest.raises(FedloomError, match="passes the pending event"):
        clock.advance_to(11.0)
    clock.advance_to(10.0)
    assert clock.pop().kind == "deadline"


def test_schedule_many_matches_one_by_one():
    rng = np.random.default_rng(0)
    times = rng.uniform(0, 100, size=1000).round(1)  # rounding makes ties
    clients = rng.permutation(1000)
    bulk, single = VirtualClock(), VirtualClock()
    bulk.schedule(50.0, "deadline")
    single.schedule(50.0, "deadline")
    bulk.schedule_many(times, "compute_done", clients)
    for t, c in zip(times, clients, strict=True):
        single.schedule(t, "compute_done", client=c)
    assert len(bulk) == 1001
    assert drain(bulk) == drain(single)


def test_schedule_many_rejects_mismatched_shapes():
    with pytest.raises(FedloomError, match="shape"):
        VirtualClock().schedule_many(np.zeros(3), "x", np.arange(4))


def test_state_round_trip_mid_run_continues_identically():
    def populate(clock: VirtualClock) -> None:
        rng = np.random.default_rng(1)
        clock.schedule_many(rng.uniform(0, 50, 40).round(), "compute_done", np.arange(40))
        clock.schedule(25.0, "deadline", data={"round": 1})

    original = VirtualClock()
    populate(original)
    for _ in range(10):
        original.pop()
    original.cancel_client(30)
    state = json.loads(json.dumps(original.state_dict()))

    resumed = VirtualClock()
    resumed.load_state_dict(state)
    assert resumed.now == original.now and len(resumed) == len(original)
    # new events get the same seqs in both, so ties resolve identically
    for clock in (original, resumed):
        clock.schedule(40.0, "offline", client=99)
    assert drain(resumed) == drain(original)


def test_load_rejects_malformed_state():
    with pytest.raises(FedloomError, match="malformed"):
        VirtualClock().load_state_dict({"now": 1.0})
    with pytest.raises(FedloomError, match="malformed"):
        VirtualClock().load_state_dict({"now": 5.0, "seq": 2, "events": [[1.0, 0, "x", 0, None]]})
