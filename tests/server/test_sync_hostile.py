"""What one hostile (or diverged) client can send the sans-IO server: each poisoned
statistic or update is refused with a typed reason and changes nothing, a huge declared
example count is clamped to the client's bound, and the round still closes with finite
results that the registry records."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import RejectionKind, UpdateRejected
from fedloom.optim import FedAvg
from fedloom.records import ClientMetrics, Dispatch, TrainPlan, Update
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.registry import ClientRegistry, Completion
from fedloom.server.sync import SyncServer
from fedloom.transforms.validation import MAX_UPDATE_NORM

DIM = 6


def make_server(max_examples: int | None = None) -> SyncServer:
    return SyncServer(
        np.zeros(DIM, np.float32),
        num_clients=3,
        clients_per_round=3,
        plan=TrainPlan(),
        optimizer=FedAvg(lr=1.0),
        monitor=ConvergenceMonitor(),
        seed=0,
        max_examples=max_examples,
    )


def update(d: Dispatch, delta: float | np.ndarray, n: int = 10, **metrics: float) -> Update:
    fields = {"train_loss": 1.0, "steps": 2, "epochs": 1.0, "train_loss_sq": 1.5} | metrics
    return Update(
        d.client_id,
        d.round,
        d.version,
        np.broadcast_to(np.float32(delta), (DIM,)).astype(np.float32),
        n,
        ClientMetrics(**fields),
    )


@pytest.mark.parametrize(
    ("change", "kind", "match"),
    [
        ({"train_loss_sq": math.inf}, "nonfinite", "train_loss_sq = inf"),
        ({"train_loss": math.nan}, "nonfinite", "train_loss = nan"),
        ({"train_loss": -math.inf}, "nonfinite", "train_loss = -inf"),
        ({"epochs": math.inf}, "nonfinite", "epochs = inf"),
        ({"epochs": -1.0}, "bad_count", "epochs = -1.0"),
        ({"steps": -3}, "bad_count", "steps = -3"),
        ({"delta": 3e38}, "overflow", "L2 norm"),
        ({"delta": np.float32(np.inf)}, "nonfinite", "NaN/inf"),
        ({"n": 0}, "bad_count", "num_examples = 0"),
    ],
)
def test_each_poisoned_message_is_refused_with_its_kind(
    change: dict, kind: str, match: str
) -> None:
    server = make_server()
    d0, d1, d2 = server.begin_round()
    delta, n = change.pop("delta", 0.01), change.pop("n", 10)
    with pytest.raises(UpdateRejected, match=match) as info:
        server.receive(update(d0, delta, n, **change))
    assert info.value.kind == kind and info.value.client_id == d0.client_id
    assert server.pending == {d0.client_id, d1.client_id, d2.client_id}  # nothing changed
    server.receive(update(d1, 0.02))
    server.receive(update(d2, 0.04))
    result = server.close_round()
    assert result.status == "aggregated" and result.rejected == 1
    assert np.allclose(server.params, 0.03)  # the refused client weighs nothing
    assert np.isfinite(result.clients.contribution).all()
    assert np.isfinite(result.clients.train_loss_sq).all()


def test_squared_loss_may_be_unreported_but_not_infinite() -> None:
    server = make_server()
    d0, *_ = server.begin_round()
    server.receive(update(d0, 0.01, train_loss_sq=math.nan))  # not reported: accepted


def test_the_largest_admitted_updates_keep_every_result_finite(tmp_path: Path) -> None:
    """Rows at the norm limit: sums, norm and contributions stay finite, and the registry
    takes the round (it refused ``contribution = nan`` before)."""
    server = make_server()
    big = np.float32(MAX_UPDATE_NORM / math.sqrt(DIM) * 0.999)
    ds = server.begin_round()
    for i, d in enumerate(ds):
        server.receive(update(d, big if i else -big, n=10**6))
    result = server.close_round()
    assert math.isfinite(result.update_norm) and np.isfinite(server.params).all()
    c = result.clients
    assert np.isfinite(c.contribution).all()
    with ClientRegistry(tmp_path / "clients.sqlite") as registry:
        registry.register(np.full(3, 10), np.zeros(3))
        registry.record_round(
            1,
            1.0,
            np.array(result.selected),
            Completion(
                c.ids,
                np.ones(3),
                c.train_loss,
                c.train_loss_sq,
                c.num_examples,
                c.steps,
                c.contribution,
            ),
            {},
            {},
        )


def test_a_declared_count_cannot_replace_the_model() -> None:
    """With 2**62 examples one client would set the average to its own vector; its weight
    is clamped to its bound (the runtime's knowledge of it) and recorded."""
    server = make_server()
    server.bound_examples(np.array([0, 1, 2]), np.array([10, 10, 10]))
    ds = {d.client_id: d for d in server.begin_round()}
    server.receive(update(ds[0], 9.0, n=2**62))
    server.receive(update(ds[1], 0.0, n=10))
    server.receive(update(ds[2], 0.0, n=10))
    result = server.close_round()
    assert np.allclose(server.params, 3.0)  # one third, not 9.0
    assert result.clamped == ((0, 2**62, 10),)
    assert result.num_examples == 30


def test_the_configured_cap_bounds_every_client_and_the_lowest_bound_wins() -> None:
    server = make_server(max_examples=50)
    server.bound_examples(np.array([1]), np.array([20]))
    server.bound_examples(np.array([1]), np.array([40]))  # a looser bound changes nothing
    ds = {d.client_id: d for d in server.begin_round()}
    server.receive(update(ds[0], 1.0, n=1000))
    server.receive(update(ds[1], 1.0, n=1000))
    server.receive(update(ds[2], 1.0, n=30))
    result = server.close_round()
    assert result.clamped == ((0, 1000, 50), (1, 1000, 20))
    assert result.clients.num_examples.tolist() == [50, 20, 30]


def test_a_stale_update_keeps_its_kind() -> None:
    server = make_server()
    d0, *_ = server.begin_round()
    with pytest.raises(UpdateRejected) as info:
        server.receive(replace(update(d0, 0.1), version=7))
    assert info.value.kind == "stale_version"


def test_round_result_names_each_excluded_client_and_why() -> None:
    server = SyncServer(
        np.zeros(DIM, np.float32), 6, 4, TrainPlan(), FedAvg(lr=1.0), ConvergenceMonitor(), 0
    )
    ds = server.begin_round()
    chosen = [d.client_id for d in ds]
    outsider = next(c for c in range(6) if c not in chosen)
    a, b, c, e = ds
    with pytest.raises(UpdateRejected):
        server.receive(update(a, np.float32(np.nan)))
    with pytest.raises(UpdateRejected):  # refused, then made good by a valid update
        server.receive(update(b, 0.01, n=0))
    server.receive(update(b, 0.01))
    server.fail(c.client_id, "disconnected")
    with pytest.raises(UpdateRejected):
        server.receive(replace(update(a, 0.01), client_id=outsider))
    result = server.close_round()  # e never answered
    got = {x.client_id: (x.outcome, x.kind) for x in result.excluded}
    assert got == {
        a.client_id: ("rejected", RejectionKind.NONFINITE),
        c.client_id: ("failed", "disconnected"),
        e.client_id: ("failed", "no update"),
        outsider: ("rejected", RejectionKind.UNSELECTED),
    }
    assert [x.client_id for x in result.excluded] == sorted(got)
    assert result.rejected == 3 and result.completed == (b.client_id,)
    nan = next(x for x in result.excluded if x.client_id == a.client_id)
    assert "NaN/inf" in nan.detail
    assert nan.to_json()["kind"] == "nonfinite"
