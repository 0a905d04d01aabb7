"""The asynchronous server (FedBuff, FedAsync) as a state machine, without any runtime."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from fedloom.errors import FedloomError, RejectionKind, UpdateRejected
from fedloom.optim import make_server_optimizer
from fedloom.privacy.central import CentralDP
from fedloom.records import ClientMetrics, Dispatch, TrainPlan, Update
from fedloom.server.asynchronous import AsyncServer
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.staleness import Staleness
from fedloom.server.stats import ClientStats
from fedloom.server.work_scheduler import WorkScheduler

D = 6


def server(**kw: object) -> AsyncServer:
    kw.setdefault("buffer_size", 2)
    return AsyncServer(
        np.zeros(D, np.float32),
        10,
        TrainPlan(),
        make_server_optimizer("fedavg", lr=1.0),
        ConvergenceMonitor(),
        seed=3,
        **kw,  # type: ignore[arg-type]
    )


def update(d: Dispatch, value: float | np.ndarray, n: int = 10) -> Update:
    delta = np.broadcast_to(np.asarray(value, np.float32), (D,)).copy()
    return Update(d.client_id, d.round, d.version, delta, n, ClientMetrics(0.5, 2, 1.0))


# staleness functions: the published forms (Xie et al. 2019, section 5.2; FedBuff) -----
def test_staleness_functions_give_their_published_values() -> None:
    s = np.arange(12)
    assert np.array_equal(Staleness("constant")(s), np.ones(12))
    poly = Staleness("polynomial", a=0.5)(s)
    assert np.allclose(poly, [1 / math.sqrt(1 + t) for t in range(12)])  # FedBuff's
    assert np.allclose(Staleness("polynomial", a=2.0)(s), [(1 + t) ** -2.0 for t in range(12)])
    hinge = Staleness("hinge", a=10, b=4)(s)  # the paper's FedAsync+Hinge setting
    expected = [1.0 if t <= 4 else 1 / (10 * (t - 4) + 1) for t in range(12)]
    assert np.allclose(hinge, expected)
    assert hinge[5] == pytest.approx(1 / 11)
    for fn in (Staleness("polynomial", 0.5), Staleness("hinge", 10, 4)):
        w = fn(s)
        assert w[0] == 1.0 and np.all(np.diff(w) <= 0)  # fresh = 1, never increasing


def test_staleness_refuses_bad_parameters_and_values() -> None:
    with pytest.raises(FedloomError, match="staleness = 'cubic'"):
        Staleness("cubic")  # type: ignore[arg-type]
    with pytest.raises(FedloomError, match="a = -1"):
        Staleness("polynomial", a=-1)
    with pytest.raises(ValueError, match="staleness must be finite"):
        Staleness()(np.array([-1]))


# FedBuff ------------------------------------------------------------------------
def test_fedbuff_steps_on_the_staleness_weighted_example_mean() -> None:
    srv = server(buffer_size=2, staleness=Staleness("polynomial", a=0.5))
    a, b, c = srv.hand_out(np.arange(10), 3, now=0.0)
    assert {a.version, b.version, c.version} == {0}
    srv.receive(update(a, 1.0, n=10), now=1.0)
    assert not srv.ready
    srv.receive(update(b, 3.0, n=30), now=2.0)
    assert srv.ready
    result = srv.close_round()
    assert result.status == "aggregated" and srv.version == 1 and srv.round == 1
    assert np.allclose(srv.params, (10 * 1 + 30 * 3) / 40)  # fresh: w(0) = 1
    assert result.completed == (a.client_id, b.client_id)
    # c trained from version 0: staleness 1, weight 1/sqrt(2)
    d = srv.hand_out(np.arange(10), 1, now=3.0)[0]
    srv.receive(update(c, 2.0, n=10), now=4.0)
    srv.receive(update(d, 4.0, n=10), now=5.0)
    before = srv.params.copy()
    srv.close_round()
    expected = (10 * 2.0 / math.sqrt(2) + 10 * 4.0) / 20
    assert np.allclose(srv.params - before, expected)
    assert srv.last_step is not None
    assert srv.last_step.histogram() == {"0": 1, "1": 1}
    assert np.allclose(srv.last_step.durations, [4.0, 2.0])  # hand-out to arrival


def test_fedasync_mixes_with_the_clients_model_from_its_base_version() -> None:
    srv = server(mode="fedasync", mixing=0.5, staleness=Staleness("hinge", a=1, b=0))
    a, b = srv.hand_out(np.arange(10), 2)
    srv.receive(update(a, 2.0))
    srv.close_round()  # x1 = 0.5 * 0 + 0.5 * (0 + 2) = 1
    assert np.allclose(srv.params, 1.0)
    srv.receive(update(b, 2.0))  # base version 0, staleness 1: a_t = 0.5 / (1 * 1 + 1)
    srv.close_round()
    assert np.allclose(srv.params, (1 - 0.25) * 1.0 + 0.25 * (0.0 + 2.0))
    assert srv.buffer_size == 1


def test_an_update_staler_than_the_maximum_is_dropped_counted_and_told() -> None:
    srv = server(buffer_size=1, max_staleness=1)
    old = srv.hand_out(np.arange(10), 1)[0]
    for _ in range(2):
        d = srv.hand_out(np.arange(10), 1)[0]
        srv.receive(update(d, 1.0))
        srv.close_round()
    with pytest.raises(
        UpdateRejected, match="staleness 2 exceeds asynchronous.max_staleness = 1"
    ) as err:
        srv.receive(update(old, 1.0))
    assert err.value.kind == RejectionKind.STALE_VERSION
    assert old.client_id not in srv.in_flight and not srv.buffer
    d = srv.hand_out(np.arange(10), 1)[0]
    srv.receive(update(d, 1.0))
    result = srv.close_round()
    assert srv.last_step is not None and srv.last_step.dropped_stale == 1
    assert [(e.client_id, e.kind) for e in result.excluded] == [
        (old.client_id, RejectionKind.STALE_VERSION)
    ]
    # the next step starts counting afresh
    d = srv.hand_out(np.arange(10), 1)[0]
    srv.receive(update(d, 1.0))
    srv.close_round()
    assert srv.last_step.dropped_stale == 0


def test_work_goes_only_to_idle_clients_and_each_client_enters_a_buffer_once() -> None:
    srv = server(buffer_size=3)
    first = srv.hand_out(np.arange(4), 4)
    assert sorted(d.client_id for d in first) == [0, 1, 2, 3]
    assert srv.hand_out(np.arange(4), 4) == []  # everyone busy
    srv.receive(update(first[0], 1.0))
    # its update waits in the buffer: no new work for it until the step
    assert srv.hand_out(np.arange(4), 4) == []
    srv.fail(first[1].client_id, "device failure")
    again = srv.hand_out(np.arange(4), 4)
    assert [d.client_id for d in again] == [first[1].client_id]
    seeds = {d.seed for d in first} | {d.seed for d in again}
    assert len(seeds) == 5  # every task its own seed


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (dict(version=5), RejectionKind.STALE_VERSION),
        (dict(delta=np.full(D + 1, 1.0, np.float32)), RejectionKind.WRONG_SHAPE),
        (dict(delta=np.full(D, np.nan, np.float32)), RejectionKind.NONFINITE),
        (dict(client_id=9), RejectionKind.UNSELECTED),
    ],
)
def test_hostile_updates_are_refused_and_end_the_task(change: dict, kind: RejectionKind) -> None:
    srv = server()
    d = srv.hand_out(np.array([0, 1]), 1)[0]
    bad = replace(update(d, 1.0), **change)
    with pytest.raises(UpdateRejected) as err:
        srv.receive(bad)
    assert err.value.kind == kind
    assert not srv.buffer
    if kind != RejectionKind.UNSELECTED:
        assert d.client_id not in srv.in_flight  # the task is over: the client is told


def test_checkpoint_round_trips_outstanding_work_buffer_and_history() -> None:
    srv = server(buffer_size=3)
    a, b, c = srv.hand_out(np.arange(10), 3)
    srv.receive(update(a, 1.0))
    srv.receive(update(b, 2.0))
    srv.receive(update(c, 3.0))
    srv.close_round()
    late = srv.hand_out(np.arange(10), 2)  # version 1
    srv.receive(update(late[0], 1.5))
    state = srv.state_dict()
    copy = server(buffer_size=3)
    copy.load_state_dict(state)
    assert copy.in_flight == srv.in_flight and copy.version == srv.version == 1
    assert sorted(copy.history) == sorted(srv.history) == [1]
    nxt = [srv.hand_out(np.arange(10), 1)[0], copy.hand_out(np.arange(10), 1)[0]]
    assert nxt[0] == nxt[1]  # same selector draws and seeds
    for s in (srv, copy):
        s.receive(update(late[1], 0.5))
        s.receive(update(nxt[0], 2.5))
        s.close_round()
    assert np.array_equal(srv.params, copy.params)


def test_central_dp_clips_each_buffered_update_and_noises_the_sum() -> None:
    dp = CentralDP(clip_norm=1.0, noise_multiplier=0.0, expected_clients=2, seed=0)
    srv = server(buffer_size=2, dp=dp, staleness=Staleness("constant"))
    a, b = srv.hand_out(np.arange(10), 2)
    srv.receive(update(a, 100.0))  # clipped to norm 1 whatever it claims
    srv.receive(update(b, 0.0))
    srv.close_round()
    assert np.linalg.norm(srv.params) == pytest.approx(0.5, rel=1e-5)  # 1 / K
    assert srv.last_release is not None


# the work scheduler ----------------------------------------------------------------
def stats(n: int, duration: float, reliability: float) -> ClientStats:
    return ClientStats(
        data_size=np.full(n, 10, np.int64),
        label_entropy=np.zeros(n),
        selected=np.zeros(n, np.int64),
        completed=np.zeros(n, np.int64),
        reliability=np.full(n, reliability),
        last_round=np.zeros(n, np.int64),
        loss=np.full(n, np.nan),
        loss_sq=np.full(n, np.nan),
        duration=np.full(n, duration),
        online_prob=np.ones((n, 24), np.float32),
        flags=np.zeros(n, np.int32),
    )


def test_scheduler_sizes_concurrency_by_littles_law_and_the_uplink() -> None:
    assert WorkScheduler(50, target_rate=2.0).capacity(stats(4, np.nan, 0.5)) == 50  # unmeasured
    known = stats(4, 10.0, 0.5)
    assert WorkScheduler(50, target_rate=2.0).capacity(known) == 40  # 2 * 10 / 0.5
    assert WorkScheduler(30, target_rate=2.0).capacity(known) == 30  # the cap
    # 1 MB/s uplink, 2 MB models, 10 s tasks: 5 downloads per task length
    assert WorkScheduler(50, uplink_bytes_per_s=1e6, model_bytes=2_000_000).capacity(known) == 5
    assert WorkScheduler(50, uplink_bytes_per_s=1.0, model_bytes=2_000_000).capacity(known) == 1


def test_scheduler_backs_off_exponentially_and_forgives_a_delivery() -> None:
    s = WorkScheduler(4, backoff_s=10.0, max_backoff_s=25.0)
    assert s.strike(7, now=0.0) == 10.0
    assert s.waiting(5.0) == {7} and s.waiting(10.0) == set()
    assert s.strike(7, now=10.0) == 30.0  # 20 s
    assert s.strike(7, now=30.0) == 55.0  # capped at 25 s
    assert s.next_release(31.0) == 55.0
    restored = WorkScheduler(4, backoff_s=10.0, max_backoff_s=25.0)
    restored.load_state_dict(s.state_dict())
    assert restored.waiting(40.0) == {7}
    s.clear(7)
    assert s.waiting(40.0) == set() and s.strike(7, now=40.0) == 50.0


def test_a_step_records_each_clients_last_outcome() -> None:
    srv = server(buffer_size=2)
    a = srv.hand_out(np.array([0]), 1)[0]
    srv.fail(a.client_id, "device failure")
    again = srv.hand_out(np.array([0, 1]), 2)
    for d in again:
        srv.receive(update(d, 1.0))
    result = srv.close_round()
    assert set(result.completed) == {0, 1} and result.excluded == ()
