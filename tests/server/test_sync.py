"""Synchronous server state machine: dispatch, validation, FedAvg weighting, resume."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.errors import FedloomError, UpdateRejected
from fedloom.optim import FedAdam, FedAvg, ServerOptimizer
from fedloom.records import ClientMetrics, Dispatch, RoundResult, TrainPlan, Update
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.sync import SyncServer, client_seed

PARAMS = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
NUM_CLIENTS, PER_ROUND = 5, 3


def make_server(optimizer: ServerOptimizer | None = None, seed: int = 0) -> SyncServer:
    return SyncServer(
        PARAMS.copy(),
        num_clients=NUM_CLIENTS,
        clients_per_round=PER_ROUND,
        plan=TrainPlan(),
        optimizer=optimizer if optimizer is not None else FedAvg(lr=1.0),
        monitor=ConvergenceMonitor(),
        seed=seed,
    )


def make_update(
    d: Dispatch, delta: np.ndarray | list[float], n: int = 1, loss: float = 1.0
) -> Update:
    return Update(
        client_id=d.client_id,
        round=d.round,
        version=d.version,
        delta=np.asarray(delta, dtype=np.float32),
        num_examples=n,
        metrics=ClientMetrics(train_loss=loss, steps=1, epochs=1.0),
    )


def client_delta(client_id: int, rnd: int) -> np.ndarray:
    """A deterministic, client- and round-specific delta."""
    return np.random.default_rng([client_id, rnd]).standard_normal(4).astype(np.float32)


# --------------------------------------------------------------------------- dispatch


def test_begin_round_dispatches() -> None:
    server = make_server()
    dispatches = server.begin_round()
    assert len(dispatches) == PER_ROUND
    ids = [d.client_id for d in dispatches]
    assert len(set(ids)) == PER_ROUND
    assert all(0 <= c < NUM_CLIENTS for c in ids)
    assert server.pending == set(ids)
    for d in dispatches:
        assert isinstance(d, Dispatch)
        assert d.round == 1
        assert d.version == 0
        assert d.plan == TrainPlan()
        assert d.seed == client_seed(0, 1, d.client_id)
    assert len({d.seed for d in dispatches}) == PER_ROUND


def test_client_seed_is_deterministic_and_distinct() -> None:
    assert client_seed(0, 1, 2) == client_seed(0, 1, 2)
    seeds = {client_seed(s, r, c) for s in range(2) for r in range(1, 4) for c in range(5)}
    assert len(seeds) == 2 * 3 * 5
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)


def test_begin_round_with_available_subset() -> None:
    server = make_server()
    dispatches = server.begin_round(available=np.array([1, 3]))
    assert sorted(d.client_id for d in dispatches) == [1, 3]


def test_begin_round_twice_raises() -> None:
    server = make_server()
    server.begin_round()
    with pytest.raises(FedloomError, match="round 1 is still open"):
        server.begin_round()


def test_version_advances_each_aggregated_round() -> None:
    server = make_server()
    for rnd in (1, 2, 3):
        dispatches = server.begin_round()
        assert {(d.round, d.version) for d in dispatches} == {(rnd, rnd - 1)}
        server.receive(make_update(dispatches[0], [1, 1, 1, 1]))
        assert server.close_round().round == rnd
        assert server.round == rnd and server.version == rnd


# --------------------------------------------------------------------------- aggregation


@settings(max_examples=20, deadline=None)
@given(
    a1=st.floats(-10, 10, allow_subnormal=False, width=32),
    a2=st.floats(-10, 10, allow_subnormal=False, width=32),
)
def test_fedavg_weights_by_examples(a1: float, a2: float) -> None:
    server = make_server()
    d = server.begin_round()
    server.receive(make_update(d[0], [a1] * 4, n=1))
    server.receive(make_update(d[1], [a2] * 4, n=3))
    server.fail(d[2].client_id, "battery died")
    server.close_round()
    expected = PARAMS.astype(np.float64) + (1 * a1 + 3 * a2) / 4
    np.testing.assert_allclose(server.params, expected, rtol=1e-6, atol=1e-5)
    assert server.params.dtype == np.float32


def test_fedavg_weighting_per_coordinate() -> None:
    server = make_server()
    d = server.begin_round()
    u1 = np.array([1.0, -2.0, 0.5, 4.0])
    u2 = np.array([3.0, 1.0, -1.5, 0.0])
    u3 = np.array([-1.0, 0.0, 2.0, 8.0])
    server.receive(make_update(d[0], u1, n=2))
    server.receive(make_update(d[1], u2, n=5))
    server.receive(make_update(d[2], u3, n=1))
    server.close_round()
    expected = PARAMS + (2 * u1 + 5 * u2 + 1 * u3) / 8
    np.testing.assert_allclose(server.params, expected, rtol=1e-6)


def test_close_round_reports_and_fails_pending() -> None:
    server = make_server()
    d = server.begin_round()
    server.receive(make_update(d[0], [1, 1, 1, 1], n=1, loss=2.0))
    server.receive(make_update(d[2], [3, 3, 3, 3], n=3, loss=4.0))
    # d[1] neither answers nor fails: close_round records it as failed
    result = server.close_round()
    assert isinstance(result, RoundResult)
    assert result.round == 1
    assert result.selected == tuple(x.client_id for x in d)
    assert result.completed == tuple(sorted((d[0].client_id, d[2].client_id)))
    assert result.failed == (d[1].client_id,)
    assert result.rejected == 0
    assert result.num_examples == 4
    assert result.train_loss == pytest.approx((1 * 2.0 + 3 * 4.0) / 4)
    assert result.update_norm == pytest.approx(math.sqrt(4 * 2.5**2))
    assert server.pending == set()
    np.testing.assert_allclose(server.params, PARAMS + 2.5)


def test_close_round_failed_and_pending_both_listed() -> None:
    server = make_server()
    d = server.begin_round()
    server.fail(d[0].client_id, "offline")
    result = server.close_round()
    assert result.failed == tuple(sorted(x.client_id for x in d))
    assert result.completed == ()


def test_empty_round_leaves_params_unchanged() -> None:
    server = make_server()
    d = server.begin_round()
    for x in d:
        server.fail(x.client_id, "gone")
    result = server.close_round()
    np.testing.assert_array_equal(server.params, PARAMS)
    assert int(server.opt_state["step"]) == 0
    assert result.completed == ()
    assert result.failed == tuple(sorted(x.client_id for x in d))
    assert result.num_examples == 0
    assert math.isnan(result.train_loss)
    assert result.update_norm == 0.0
    # the round is over, but the model (its version) did not change
    assert server.round == 1 and result.status == "empty"
    assert {x.version for x in server.begin_round()} == {0}


def test_fail_requires_pending_work() -> None:
    server = make_server()
    with pytest.raises(FedloomError, match="no pending work"):
        server.fail(0, "no round")
    d = server.begin_round()
    server.receive(make_update(d[0], [0, 0, 0, 0]))
    with pytest.raises(FedloomError, match=f"client {d[0].client_id} has no pending work"):
        server.fail(d[0].client_id, "already answered")
    server.fail(d[1].client_id, "offline")
    with pytest.raises(FedloomError, match="no pending work"):
        server.fail(d[1].client_id, "twice")
    outsider = next(c for c in range(NUM_CLIENTS) if c not in server.pending | {d[0].client_id})
    with pytest.raises(FedloomError, match="no pending work"):
        server.fail(outsider, "never selected")


def test_close_without_open_round_raises() -> None:
    with pytest.raises(FedloomError, match="no round is open"):
        make_server().close_round()


# --------------------------------------------------------------------------- validation

BAD_KINDS = {
    "unknown_client": (lambda u, d, other: replace(u, client_id=99), "not selected"),
    "not_selected": (lambda u, d, other: replace(u, client_id=other), "not selected"),
    "duplicate": (
        lambda u, d, other: replace(d, delta=np.full(4, 100.0, np.float32)),
        "duplicate",
    ),
    "wrong_round": (lambda u, d, other: replace(u, round=2), "stale update for round 2"),
    "stale_version": (lambda u, d, other: replace(u, version=1), "model version 1"),
    "short": (lambda u, d, other: replace(u, delta=np.zeros(3, np.float32)), r"shape \(3,\)"),
    "matrix": (lambda u, d, other: replace(u, delta=np.zeros((4, 1), np.float32)), "shape"),
    "list": (lambda u, d, other: replace(u, delta=[0.0, 0.0, 0.0, 0.0]), "shape"),
    "float64": (lambda u, d, other: replace(u, delta=np.zeros(4)), "dtype float64"),
    "float16": (lambda u, d, other: replace(u, delta=np.zeros(4, np.float16)), "dtype float16"),
    "nan": (
        lambda u, d, other: replace(u, delta=np.array([0, np.nan, 0, 0], np.float32)),
        "1 NaN/inf",
    ),
    "pos_inf": (
        lambda u, d, other: replace(u, delta=np.array([np.inf, 0, np.inf, 0], np.float32)),
        "2 NaN/inf",
    ),
    "neg_inf": (
        lambda u, d, other: replace(u, delta=np.array([0, 0, 0, -np.inf], np.float32)),
        "NaN/inf",
    ),
    "zero_examples": (lambda u, d, other: replace(u, num_examples=0), "num_examples = 0"),
    "negative_examples": (lambda u, d, other: replace(u, num_examples=-3), "num_examples = -3"),
    "float_examples": (lambda u, d, other: replace(u, num_examples=2.0), "num_examples = 2.0"),
}


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_bad_update_is_rejected_and_changes_nothing(kind: str) -> None:
    make_bad, message = BAD_KINDS[kind]

    def run(with_bad: bool) -> tuple[SyncServer, RoundResult]:
        server = make_server()
        d = server.begin_round()
        other = next(c for c in range(NUM_CLIENTS) if c not in {x.client_id for x in d})
        first = make_update(d[0], [1.0, 2.0, 3.0, 4.0], n=2, loss=0.5)
        second = make_update(d[1], [-1.0, 0.5, 0.0, 2.0], n=3, loss=1.5)
        server.receive(first)
        if with_bad:
            bad = make_bad(second, first, other)
            pending_before = server.pending
            with pytest.raises(UpdateRejected, match=message) as info:
                server.receive(bad)
            assert info.value.client_id == bad.client_id
            assert f"client {bad.client_id!r}" in str(info.value)
            assert server.pending == pending_before
            np.testing.assert_array_equal(server.params, PARAMS)
        server.receive(second)  # the rejection did not block the legitimate update
        return server, server.close_round()

    clean_server, clean = run(with_bad=False)
    server, result = run(with_bad=True)
    np.testing.assert_array_equal(server.params, clean_server.params)
    assert result.rejected == clean.rejected + 1 == 1
    assert result.completed == clean.completed
    assert result.failed == clean.failed
    assert result.num_examples == clean.num_examples == 5
    assert result.train_loss == clean.train_loss
    assert int(server.opt_state["step"]) == 1


def test_rejected_count_accumulates() -> None:
    server = make_server()
    d = server.begin_round()
    good = make_update(d[0], [0, 0, 0, 0])
    for bad in (replace(good, client_id=99), replace(good, num_examples=0), replace(good, round=7)):
        with pytest.raises(UpdateRejected):
            server.receive(bad)
    assert server.close_round().rejected == 3


def test_update_from_failed_client_is_rejected() -> None:
    server = make_server()
    d = server.begin_round()
    server.fail(d[0].client_id, "timeout")
    with pytest.raises(UpdateRejected, match="already marked failed"):
        server.receive(make_update(d[0], [5, 5, 5, 5]))
    result = server.close_round()
    np.testing.assert_array_equal(server.params, PARAMS)
    assert result.rejected == 1 and d[0].client_id in result.failed


def test_update_from_previous_round_is_stale() -> None:
    server = make_server()
    d1 = server.begin_round()
    server.receive(make_update(d1[1], [0, 0, 0, 0]))
    server.close_round()
    d2 = server.begin_round()
    late = make_update(d1[0], [1, 1, 1, 1])
    with pytest.raises(UpdateRejected, match="stale update for round 1 / model version 0"):
        server.receive(replace(late, client_id=d2[0].client_id))
    with pytest.raises(UpdateRejected, match="expected round 2 / version 1"):
        server.receive(replace(make_update(d2[0], [1, 1, 1, 1]), version=0))
    assert server.close_round().rejected == 2
    np.testing.assert_array_equal(server.params, PARAMS)


def test_update_without_open_round_is_rejected() -> None:
    server = make_server()
    update = Update(0, 1, 0, np.zeros(4, np.float32), 1, ClientMetrics(1.0, 1, 1.0))
    with pytest.raises(UpdateRejected, match="no round is open"):
        server.receive(update)
    d = server.begin_round()
    server.close_round()
    with pytest.raises(UpdateRejected, match="no round is open"):
        server.receive(make_update(d[0], [1, 1, 1, 1]))
    np.testing.assert_array_equal(server.params, PARAMS)
    assert server.round == 1


def test_numpy_integer_example_count_is_accepted() -> None:
    server = make_server()
    d = server.begin_round()
    server.receive(replace(make_update(d[0], [2, 2, 2, 2]), num_examples=np.int64(4)))
    assert server.close_round().num_examples == 4


def test_bool_example_count_is_rejected() -> None:
    server = make_server()
    d = server.begin_round()
    with pytest.raises(UpdateRejected, match="num_examples"):
        server.receive(replace(make_update(d[0], [2, 2, 2, 2]), num_examples=True))


def test_constructor_rejects_bad_params() -> None:
    for params in (np.zeros(4), np.zeros((2, 2), np.float32)):
        with pytest.raises(FedloomError, match="1-D float32"):
            SyncServer(params, 5, 3, TrainPlan(), FedAvg(), ConvergenceMonitor(), 0)


def test_server_copies_initial_params() -> None:
    params = PARAMS.copy()
    server = SyncServer(params, 5, 3, TrainPlan(), FedAvg(), ConvergenceMonitor(), 0)
    params[:] = 9.0
    np.testing.assert_array_equal(server.params, PARAMS)


# --------------------------------------------------------------------------- checkpoints


def play_round(server: SyncServer, skip_last: bool = True) -> list[Dispatch]:
    dispatches = server.begin_round()
    answering = dispatches[:-1] if skip_last else dispatches
    for i, d in enumerate(answering):
        server.receive(make_update(d, client_delta(d.client_id, d.round), n=i + 1, loss=i))
    server.close_round()
    return dispatches


def save_and_load(state: dict, tmp_path: Path) -> dict:
    path = tmp_path / "server.npz"
    np.savez(path, **state["arrays"])
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(json.dumps(state["meta"]))
    return {"arrays": arrays, "meta": meta}


@pytest.mark.parametrize("optimizer", [FedAvg(lr=1.0), FedAdam(lr=0.1)], ids=["fedavg", "fedadam"])
def test_state_dict_round_trip_resumes_exactly(optimizer: ServerOptimizer, tmp_path: Path) -> None:
    first = make_server(optimizer)
    for _ in range(2):
        play_round(first)
        first.observe({"accuracy": 0.1 * first.round})
    state = save_and_load(first.state_dict(), tmp_path)

    second = make_server(optimizer)
    play_round(second, skip_last=False)  # give it a different history before loading
    second.observe({"accuracy": 0.9})
    second.load_state_dict(state)
    assert second.round == 2
    np.testing.assert_array_equal(second.params, first.params)
    assert second.monitor.state_dict() == first.monitor.state_dict()

    for _ in range(2):  # rounds 3 and 4 are identical
        da, db = first.begin_round(), second.begin_round()
        assert da == db
        for i, (a, b) in enumerate(zip(da, db, strict=True)):
            delta = client_delta(a.client_id, a.round)
            first.receive(make_update(a, delta, n=i + 2))
            second.receive(make_update(b, delta, n=i + 2))
        ra, rb = first.close_round(), second.close_round()
        assert ra == rb
        np.testing.assert_array_equal(second.params, first.params)
        assert first.opt_state.keys() == second.opt_state.keys()
        for k in first.opt_state:
            np.testing.assert_array_equal(second.opt_state[k], first.opt_state[k])
    assert int(second.opt_state["step"]) == 4


def test_state_dict_while_open_raises() -> None:
    server = make_server()
    server.begin_round()
    with pytest.raises(FedloomError, match="round is open"):
        server.state_dict()


def test_load_state_dict_rejects_wrong_shape() -> None:
    server = make_server()
    state = server.state_dict()
    state["arrays"]["params"] = np.zeros(5, np.float32)
    with pytest.raises(FedloomError, match=r"shape \(5,\)"):
        make_server().load_state_dict(state)


def test_state_dict_meta_is_json() -> None:
    server = make_server(FedAdam())
    play_round(server)
    state = server.state_dict()
    assert json.loads(json.dumps(state["meta"])) == state["meta"]
    assert set(state["arrays"]) == {"params", "opt.step", "opt.m", "opt.v"}


# --------------------------------------------------------------------------- server optimizer


def test_fedadam_is_applied_to_weighted_mean() -> None:
    opt = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    server = make_server(opt)
    params, state = PARAMS.copy(), opt.init(PARAMS)
    for _ in range(3):
        d = server.begin_round()
        deltas = [client_delta(x.client_id, x.round) for x in d]
        counts = [1, 3, 6]
        for x, delta, n in zip(d, deltas, counts, strict=True):
            server.receive(make_update(x, delta, n=n))
        result = server.close_round()
        mean = sum(n * delta.astype(np.float64) for delta, n in zip(deltas, counts, strict=True))
        mean = (mean / sum(counts)).astype(np.float32)
        params, state = opt.step(params, mean, state)
        np.testing.assert_allclose(server.params, params, rtol=1e-5, atol=1e-6)
        assert result.update_norm == pytest.approx(float(np.linalg.norm(mean)), rel=1e-5)
    for k in state:
        np.testing.assert_allclose(server.opt_state[k], state[k], rtol=1e-5, atol=1e-7)
    assert int(server.opt_state["step"]) == 3


def test_fedadam_step_differs_from_plain_averaging() -> None:
    server = make_server(FedAdam(lr=0.1))
    d = server.begin_round()
    for x in d:
        server.receive(make_update(x, [1.0, -2.0, 0.5, 3.0], n=2))
    server.close_round()
    # m = 0.1 * delta, v = 0.99 * tau**2 + 0.01 * delta**2: a ~lr * beta-scaled sign step
    tau = 1e-3
    delta = np.array([1.0, -2.0, 0.5, 3.0])
    m = 0.1 * delta
    v = 0.99 * tau**2 + 0.01 * delta**2
    np.testing.assert_allclose(server.params, PARAMS + 0.1 * m / (np.sqrt(v) + tau), rtol=1e-5)
    assert not np.allclose(server.params, PARAMS + delta, atol=0.1)


def test_observe_feeds_monitor() -> None:
    server = make_server()
    play_round(server)
    assert server.observe({"loss": 0.3}) is None  # metric not present
    assert server.observe({"accuracy": 0.4}) is None
    assert server.monitor.smoothed == pytest.approx(0.4)
