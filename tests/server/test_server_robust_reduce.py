"""The server chain's reduce step with a robust rule (``server/reduction.py``): the rule
sees its context (bucketing randomness, the last aggregate, FLTrust's root update), a
round with fewer updates than the rule needs is skipped, and the state it keeps survives
a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.aggregation import build_reducer, centered_clip, fltrust
from fedloom.errors import FedloomError
from fedloom.optim import FedAvg
from fedloom.records import ClientMetrics, Dispatch, TrainPlan, Update
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.sync import SyncServer

DIM, CLIENTS = 6, 7


def server(rule: str, params: dict | None = None, bucketing: int = 0, **kw: object) -> SyncServer:
    return SyncServer(
        np.zeros(DIM, dtype=np.float32),
        num_clients=CLIENTS,
        clients_per_round=CLIENTS,
        plan=TrainPlan(),
        optimizer=FedAvg(lr=1.0),
        monitor=ConvergenceMonitor(),
        seed=3,
        reducer=build_reducer(rule, params or {}, bucketing),
        **kw,  # type: ignore[arg-type]
    )


def deltas(k: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(1.0, 0.1, (k, DIM)).astype(np.float32)
    rows[0] = 1e6  # one Byzantine row
    return rows


def play(srv: SyncServer, rows: np.ndarray, ns: list[int] | None = None) -> object:
    dispatches: list[Dispatch] = srv.begin_round()
    for i, d in enumerate(dispatches[: len(rows)]):
        srv.receive(
            Update(
                d.client_id,
                d.round,
                d.version,
                rows[i],
                (ns or [10] * len(rows))[i],
                ClientMetrics(train_loss=1.0, steps=1, epochs=1.0),
            )
        )
    return srv.close_round()


def test_median_round_ignores_the_byzantine_row_and_its_claimed_weight() -> None:
    srv = server("median")
    rows = deltas(CLIENTS)
    result = play(srv, rows, ns=[10_000] + [1] * (CLIENTS - 1))
    assert result.status == "aggregated"
    np.testing.assert_allclose(srv.params, np.median(rows, axis=0), rtol=1e-6)


def test_a_round_with_fewer_updates_than_krum_needs_is_skipped_not_reduced() -> None:
    srv = server("krum", {"f": 1})  # needs 2f + 3 = 5 rows
    result = play(srv, deltas(4))
    assert result.status == "skipped"
    assert "needs at least 5" in (result.skip_reason or "")
    assert not srv.params.any() and srv.version == 0
    assert play(srv, deltas(5)).status == "aggregated"


def test_centered_clipping_starts_from_the_last_aggregate_across_a_checkpoint() -> None:
    srv = server("centered_clip", {"tau": 0.5, "iters": 1})
    play(srv, deltas(CLIENTS, 1))
    first = srv.params.copy()  # FedAvg lr 1 from zeros: the first aggregate
    state = srv.state_dict()
    again = server("centered_clip", {"tau": 0.5, "iters": 1})
    again.load_state_dict(state)
    rows = deltas(CLIENTS, 2)
    for s in (srv, again):
        play(s, rows)
    expected = first + centered_clip(rows, 0.5, 1, start=first)
    np.testing.assert_allclose(srv.params, expected, rtol=1e-5)
    np.testing.assert_array_equal(srv.params, again.params)


def test_fltrust_reduces_with_the_servers_root_update_from_the_round_start() -> None:
    seen: list[tuple[np.ndarray, int]] = []
    reference = np.full(DIM, 1.0, dtype=np.float32)

    def root_update(start: np.ndarray, round: int) -> np.ndarray:
        seen.append((start.copy(), round))
        return reference

    srv = server("fltrust", root_update=root_update)
    rows = deltas(CLIENTS)
    rows[1] = -rows[2]  # a flipped row earns no trust
    play(srv, rows)
    assert [r for _, r in seen] == [1] and not seen[0][0].any()
    np.testing.assert_allclose(srv.params, fltrust(rows, reference), rtol=1e-5)


def test_fltrust_without_a_root_update_is_refused_when_the_server_is_built() -> None:
    with pytest.raises(FedloomError, match="root-data update"):
        server("fltrust")


def test_bucketing_draws_its_buckets_per_round_from_the_seed_in_simulation() -> None:
    """Two servers with the same seed bucket identically (a simulated run replays)."""
    a, b = (server("median", bucketing=2) for _ in range(2))
    rows = deltas(CLIENTS)
    play(a, rows), play(b, rows)
    np.testing.assert_array_equal(a.params, b.params)


def test_screening_refuses_flagged_rows_before_the_rule_and_checkpoints_histories() -> None:
    from fedloom.server.anomaly import AnomalyDetector, AnomalyGuard, ReputationPolicy

    def guarded() -> SyncServer:
        guard = AnomalyGuard(AnomalyDetector(CLIENTS, DIM), ReputationPolicy())
        return server("median", guard=guard)

    srv = guarded()
    rows = deltas(CLIENTS)  # row 0 (client of the first dispatch) is at 1e6
    result = play(srv, rows)
    assert srv.last_screening is not None and srv.last_screening.flagged.sum() == 1
    (refusal,) = result.excluded
    assert refusal.kind == "anomaly" and "norm_outlier" in refusal.detail
    assert len(result.completed) == CLIENTS - 1 and result.rejected == 1
    np.testing.assert_allclose(srv.params, np.median(rows[1:], axis=0), rtol=1e-6)
    again = guarded()
    again.load_state_dict(srv.state_dict())
    later = deltas(CLIENTS, 5)
    for s in (srv, again):
        play(s, later)
    np.testing.assert_array_equal(
        srv.last_screening.z["history"], again.last_screening.z["history"]
    )


def test_a_round_without_updates_has_no_screening_of_its_own() -> None:
    from fedloom.server.anomaly import AnomalyDetector, AnomalyGuard, ReputationPolicy

    guard = AnomalyGuard(AnomalyDetector(CLIENTS, DIM), ReputationPolicy())
    srv = server("median", guard=guard)
    play(srv, deltas(CLIENTS))
    assert srv.last_screening is not None
    assert play(srv, np.zeros((0, DIM), dtype=np.float32)).status == "empty"
    assert srv.last_screening is None  # the engine records no stale screening for it
