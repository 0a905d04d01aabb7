"""FederatedData from the user's own arrays: one centralized dataset or per-client data."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.data import load_digits
from fedloom.data.federated import FederatedData, build_federated_data
from fedloom.errors import DataError


def test_from_arrays_splits_as_a_configured_run() -> None:
    cfg = load_config(None, ["partition.num_clients=12", "data.client_holdout=0.25", "seed=3"])
    built = build_federated_data(cfg.data, cfg.partition, cfg.seed)
    digits = load_digits()
    d, p = cfg.data, cfg.partition
    mine = FederatedData.from_arrays(
        digits.x,
        digits.y,
        num_classes=10,
        test_fraction=d.test_fraction,
        partition=p.method,
        num_clients=p.num_clients,
        alpha=p.alpha,
        classes_per_client=p.classes_per_client,
        min_size=p.min_size,
        client_holdout=d.client_holdout,
        standardize=d.standardize,
        seed=cfg.seed,
    )
    assert built.holdout is not None and mine.holdout is not None
    for a, b in ((built.train, mine.train), (built.holdout, mine.holdout)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(built.test.y, mine.test.y)


def test_targets_are_inferred_from_y() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(60, 1, 4, 4))
    data = FederatedData.from_arrays(img, rng.integers(0, 4, 60), num_clients=3, standardize=True)
    assert (data.targets, data.num_classes, data.sample_shape) == ("classes", 4, (1, 4, 4))
    assert data.num_features == 16 and len(data.test) == 12 and data.train.sizes().sum() == 48
    ids = rng.integers(0, 20, (60, 6))
    data = FederatedData.from_arrays(ids, ids, partition="iid", num_clients=3, client_holdout=0.2)
    assert (data.targets, data.num_classes, data.train.x.dtype) == ("tokens", 20, np.int64)
    assert data.holdout is not None and data.holdout.sample_shape == (6,)
    data = FederatedData.from_arrays(
        rng.normal(size=(60, 3)), rng.normal(size=60), partition="iid", num_clients=3
    )
    assert (data.targets, data.num_classes, data.train.y.dtype) == ("values", None, np.float32)


def test_a_separate_test_set_and_natural_clients() -> None:
    rng = np.random.default_rng(1)
    x, y, groups = rng.normal(size=(30, 2, 2)), np.arange(30) % 3, np.arange(30) % 5
    test = (rng.normal(size=(8, 2, 2)), np.array([0, 1, 2, 3, 0, 1, 2, 3]))
    data = FederatedData.from_arrays(
        x, y, test=test, partition="natural", num_clients=0, groups=groups
    )
    assert data.num_classes == 4  # labels of the test set count too
    assert data.train.num_clients == 5 and len(data.test) == 8
    np.testing.assert_array_equal(data.train.sizes(), [6] * 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"partition": "bogus"}, "partition = 'bogus'.*iid, dirichlet"),
        ({"partition": "natural"}, "partition = 'natural' needs groups"),
        ({"client_holdout": 1.5, "partition": "iid"}, "client_holdout = 1.5"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"num_clients": 500}, "num_clients=500"),
        ({"test": (np.zeros((2, 3)), np.zeros(2, int))}, r"test has samples of shape \[3\]"),
        ({"test": (np.full((2, 2), np.nan), np.zeros(2, int))}, "test: x contains NaN"),
        ({"test": np.zeros(3)}, r"test must be an \(x, y\) pair"),
        ({"num_classes": 2}, r"y\[\d+\] = [2-9] is outside \[0, num_classes=2\)"),
    ],
)
def test_from_arrays_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2)), rng.integers(0, 5, 50)
    with pytest.raises(DataError, match=match):
        FederatedData.from_arrays(x, y, **{"num_clients": 4, **kwargs})


def test_from_clients_keeps_each_clients_data() -> None:
    rng = np.random.default_rng(2)
    shapes = [5, 0, 3, 8]
    clients = [(rng.normal(size=(n, 1, 3, 3)), rng.integers(0, 6, n)) for n in shapes]
    test = (rng.normal(size=(4, 1, 3, 3)), np.arange(4))
    data = FederatedData.from_clients(clients, test=test, client_holdout=0.4, seed=1)
    assert data.holdout is not None and data.num_classes == 6
    np.testing.assert_array_equal(data.train.sizes() + data.holdout.sizes(), shapes)
    np.testing.assert_array_equal(data.holdout.sizes(), [2, 0, 1, 3])
    x2 = np.sort(np.concatenate([data.train.client(2)[0], data.holdout.client(2)[0]]), axis=None)
    np.testing.assert_array_equal(x2, np.sort(clients[2][0].astype(np.float32), axis=None))
    again = FederatedData.from_clients(clients, test=test, client_holdout=0.4, seed=1)
    np.testing.assert_array_equal(again.holdout.x, data.holdout.x)  # type: ignore[union-attr]
    values = [(rng.normal(size=(4, 2)), rng.normal(size=4)) for _ in range(3)]
    data = FederatedData.from_clients(values, test=values[0])
    assert data.targets == "values" and data.num_classes is None


@pytest.mark.parametrize(
    ("clients", "match"),
    [
        ([], "clients is empty"),
        ([(np.zeros((2, 2)), np.zeros(2, int)), np.zeros(2)], r"clients\[1\] must be an \(x, y\)"),
        (
            [(np.zeros((2, 2)), np.zeros(2, int)), (np.full((1, 2), np.inf), np.zeros(1, int))],
            r"clients\[1\]: x contains NaN/inf",
        ),
        (
            [(np.zeros((2, 2)), np.zeros(2, int)), (np.zeros((1, 3)), np.zeros(1, int))],
            r"clients\[1\] has samples of shape \[3\] but clients\[0\] has \[2\]",
        ),
        (
            [(np.zeros((2, 2), int), np.zeros((2, 2), int)), (np.zeros((1, 2), int), [[0, -1]])],
            r"clients\[1\]: y\[0, 1\] = -1",
        ),
        ([(np.zeros((0, 2)), np.zeros(0, int))], "every client has 0 training examples"),
    ],
)
def test_from_clients_refuses_bad_clients(clients: list, match: str) -> None:
    with pytest.raises(DataError, match=match):
        FederatedData.from_clients(clients, test=(np.zeros((2, 2)), np.zeros(2, int)))
