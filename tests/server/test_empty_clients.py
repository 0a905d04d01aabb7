"""Clients a partition leaves without training data are registered but never selected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.data.federated import FederatedData
from fedloom.server.cohort import CohortPolicy
from fedloom.server.registry import ClientRegistry

EMPTY = [0, 3, 4, 9]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def with_empty_clients() -> FederatedData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(130, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    clients = [(x[i * 10 : i * 10 + 10], y[i * 10 : i * 10 + 10]) for i in range(12)]
    for i in EMPTY:
        clients[i] = (x[:0], y[:0])
    return FederatedData.from_clients(clients, test=(x[120:], y[120:]))


def test_pool_leaves_out_clients_without_data(tmp_path: Path) -> None:
    registry = ClientRegistry(tmp_path / "clients.sqlite")
    registry.register(np.array([5, 0, 7, 0]), np.ones(4))
    online = np.array([0, 1, 3])
    np.testing.assert_array_equal(CohortPolicy(2).pool(online, registry.stats()), [0])
    fixed = CohortPolicy(2, sampling="fixed", sampling_rate=0.5)
    assert fixed.pool(online, registry.stats()) is None  # DP: the accountant's all N


def test_a_run_with_empty_clients_never_selects_them(tmp_path: Path) -> None:
    data = with_empty_clients()
    np.testing.assert_array_equal(np.flatnonzero(data.train.sizes() == 0), EMPTY)
    config = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=4",
            f"partition.num_clients={data.train.num_clients}",
            "server.clients_per_round=7",
            "model.hidden=[4]",
        ],
    )
    sim = start_simulation(config, data=data)
    sim.run()
    rounds = [r for r in sim.run_dir.records() if r.get("event") == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["status"] == "aggregated" for r in rounds)
    selected = sim.engine.registry.stats().selected
    assert selected[EMPTY].sum() == 0
    assert selected.sum() == 4 * 7  # every round found its 7 clients among the 8 with data
