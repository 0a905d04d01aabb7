"""Per-client directory layout: round trips and errors that name the broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import (
    ArrayDataset,
    ClientPartition,
    dirichlet,
    read_client,
    read_partition,
    write_partition,
)
from fedloom.errors import DataError


def make_partition() -> ClientPartition:
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(60, 4)), rng.integers(0, 5, 60), 5)
    return ClientPartition.from_indices(data, dirichlet(data.y, 4, 0.5, rng, min_size=3))


def assert_partitions_equal(a: ClientPartition, b: ClientPartition) -> None:
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.num_classes == b.num_classes


def test_round_trip_with_holdout(tmp_path: Path) -> None:
    train, held = make_partition().split_holdout(0.3, np.random.default_rng(1))
    root = tmp_path / "parts" / "run1"
    write_partition(root, train, held)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest == {
        "format": 2,
        "num_clients": 4,
        "num_classes": 5,
        "num_features": 4,
        "sample_shape": [4],
        "x_dtype": "float32",
        "targets": "classes",
        "has_holdout": True,
    }
    assert sorted(p.name for p in (root / "client-000003").iterdir()) == [
        "holdout.npz",
        "train.npz",
    ]
    assert not list(root.rglob("*.tmp"))
    got_train, got_held = read_partition(root)
    assert got_held is not None
    assert_partitions_equal(got_train, train)
    assert_partitions_equal(got_held, held)

    client_train, client_held = read_client(root / "client-000002")
    np.testing.assert_array_equal(client_train.x, train.client(2)[0])
    np.testing.assert_array_equal(client_train.y, train.client(2)[1])
    assert client_held is not None and client_train.num_classes == 5
    np.testing.assert_array_equal(client_held.y, held.client(2)[1])


def test_round_trip_without_holdout_and_overwrite(tmp_path: Path) -> None:
    part = make_partition()
    train, held = part.split_holdout(0.5, np.random.default_rng(0))
    write_partition(tmp_path, train, held)
    write_partition(tmp_path, part)  # overwriting drops the stale hold-out files
    got, got_held = read_partition(tmp_path)
    assert got_held is None
    assert_partitions_equal(got, part)
    assert read_client(tmp_path / "client-000000")[1] is None


def test_read_client_without_manifest(tmp_path: Path) -> None:
    write_partition(tmp_path, make_partition())
    (tmp_path / "manifest.json").unlink()
    train, held = read_client(tmp_path / "client-000001")
    assert held is None
    assert train.num_classes == int(train.y.max()) + 1


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    write_partition(tmp_path, make_partition())
    bad = tmp_path / "client-000001" / "train.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="client-000001.train.npz"):
        read_partition(tmp_path)
    with pytest.raises(DataError, match="client-000001.train.npz"):
        read_client(tmp_path / "client-000001")
    bad.unlink()
    with pytest.raises(DataError, match="client-000001.train.npz.*not found"):
        read_partition(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: corrupt"):
        read_partition(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 3}))
    with pytest.raises(DataError, match="unsupported format 3"):
        read_partition(tmp_path)
    with pytest.raises(DataError, match="manifest.json: manifest not found"):
        read_partition(tmp_path / "elsewhere")


def test_wrong_shapes_in_files_are_named(tmp_path: Path) -> None:
    write_partition(tmp_path, make_partition())
    target = tmp_path / "client-000000" / "train.npz"
    np.savez(target, x=np.zeros((2, 3)), y=np.zeros(2, int))
    with pytest.raises(DataError, match=r"client-000000.train.npz: has sample shape \[3\]"):
        read_partition(tmp_path)
    np.savez(target, x=np.zeros((2, 4)), y=np.array([0, 9]))
    with pytest.raises(DataError, match=r"client-000000.train.npz: y\[1\] = 9"):
        read_partition(tmp_path)
    np.savez(target, x=np.zeros((2, 4)))
    with pytest.raises(DataError, match="client-000000.train.npz: corrupt.*'y'"):
        read_partition(tmp_path)


def test_mismatched_holdout_is_rejected(tmp_path: Path) -> None:
    part = make_partition()
    other = ClientPartition(part.x, part.y, np.array([0, part.x.shape[0]]), part.num_classes)
    with pytest.raises(DataError, match="holdout num_clients=1"):
        write_partition(tmp_path, part, other)
