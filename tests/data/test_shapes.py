"""Images, token sequences and regression targets through datasets, partitions and storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import (
    ArrayDataset,
    ClientPartition,
    iid,
    partition,
    read_client,
    read_partition,
    standardize,
    write_partition,
)
from fedloom.errors import DataError


def images(n: int = 40) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.normal(size=(n, 2, 3, 4)), rng.integers(0, 5, n), 5)


def tokens(n: int = 40) -> ArrayDataset:
    ids = np.random.default_rng(1).integers(0, 30, (n, 7))
    return ArrayDataset(ids.astype(np.int32), np.roll(ids, -1, axis=1), 30)


def values(n: int = 40, width: int | None = 2) -> ArrayDataset:
    rng = np.random.default_rng(2)
    y = rng.normal(size=(n,) if width is None else (n, width))
    return ArrayDataset(rng.normal(size=(n, 3)), y, None)


@pytest.mark.parametrize(
    ("data", "targets", "shape", "x_dtype", "y_dtype", "y_shape"),
    [
        (images(), "classes", (2, 3, 4), np.float32, np.int64, (40,)),
        (tokens(), "tokens", (7,), np.int64, np.int64, (40, 7)),
        (values(), "values", (3,), np.float32, np.float32, (40, 2)),
        (values(width=None), "values", (3,), np.float32, np.float32, (40,)),
    ],
)
def test_datasets_of_any_shape(
    data: ArrayDataset, targets: str, shape: tuple, x_dtype: type, y_dtype: type, y_shape: tuple
) -> None:
    assert data.targets == targets and data.sample_shape == shape
    assert data.num_features == int(np.prod(shape))
    assert data.x.dtype == x_dtype and data.x.flags.c_contiguous
    assert data.y.dtype == y_dtype and data.y.shape == y_shape
    sub = data.subset(np.array([3, 1]))
    np.testing.assert_array_equal(sub.x, data.x[[3, 1]])
    assert sub.targets == targets and sub.num_classes == data.num_classes
    part = ClientPartition.from_indices(data, iid(len(data), 4, np.random.default_rng(0)))
    assert part.targets == targets and part.sample_shape == shape
    x0, y0 = part.client(0)
    assert x0.shape == (10, *shape) and y0.shape == (10, *y_shape[1:])
    train, held = part.split_holdout(0.3, np.random.default_rng(0))
    assert train.sample_shape == held.sample_shape == shape
    np.testing.assert_array_equal(train.sizes() + held.sizes(), part.sizes())


def test_label_histograms_need_class_labels() -> None:
    part = ClientPartition.from_indices(images(), [np.arange(20), np.arange(20, 40)])
    assert part.label_histograms().sum() == 40
    for data, kind in ((tokens(), "tokens"), (values(), "values")):
        part = ClientPartition.from_indices(data, [np.arange(40)])
        with pytest.raises(DataError, match=f"label histograms need class labels.*'{kind}'"):
            part.label_histograms()


@pytest.mark.parametrize(
    ("x", "y", "num_classes", "match"),
    [
        (np.full((3, 1, 2, 2), np.nan), np.zeros(3, int), 2, r"NaN/inf \(first at row 0, element"),
        (np.zeros((2, 3), int), np.array([[0, 1, 2], [0, 9, 1]]), 5, r"y\[1, 1\] = 9"),
        (np.array([[0, -1], [2, 3]]), np.zeros((2, 2), int), 5, r"x\[0, 1\] = -1.*>= 0"),
        (np.zeros((3, 2)), np.zeros((3, 2, 2), int), 2, r"shape \(3, 2, 2\)"),
        (np.zeros((3, 2)), np.zeros((3, 0), int), 2, r"shape \(3, 0\)"),
        (np.zeros((3, 2)), np.zeros(4), None, r"regression targets \[3\] or \[3, k\]"),
        (np.zeros((2, 2)), np.array([1.0, np.inf]), None, r"y\[1\] = inf"),
        (np.zeros((2, 2)), np.array(["a", "b"]), None, "real regression targets"),
        (np.zeros((2, 2)), np.zeros(2, int), 2.5, "num_classes must be an integer"),
        (np.zeros((2, 2), complex), np.zeros(2, int), 2, "complex"),
    ],
)
def test_bad_arrays_are_named(
    x: np.ndarray, y: np.ndarray, num_classes: object, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        ArrayDataset(x, y, num_classes)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["dirichlet", "shards"])
@pytest.mark.parametrize("data", [tokens(), values()], ids=["tokens", "values"])
def test_label_skew_needs_class_labels(method: str, data: ArrayDataset) -> None:
    with pytest.raises(DataError, match=f"'{method}'.*'{data.targets}'.*'iid' or 'natural'"):
        partition(method, data, 4, np.random.default_rng(0))
    parts = partition("iid", data, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(data)))


def test_natural_partition_of_tokens() -> None:
    data = tokens()
    grouped = ArrayDataset(data.x, data.y, 30, np.arange(40) % 3)
    parts = partition("natural", grouped, 0, np.random.default_rng(0))
    assert [p.size for p in parts] == [14, 13, 13]


def test_standardize_per_element_and_ids_unchanged() -> None:
    train, test = images(40), images(10)
    scaled_train, scaled_test = standardize(train, test)
    np.testing.assert_allclose(scaled_train.x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(scaled_train.x.std(axis=0), 1, atol=1e-4)
    assert scaled_test.sample_shape == (2, 3, 4)
    ids = tokens()
    assert standardize(ids, ids)[0] is ids
    with pytest.raises(DataError, match="dataset #1 has 7 features of shape"):
        standardize(images(), tokens())
    flat = ArrayDataset(np.zeros((4, 7)), np.zeros(4, int), 2)
    with pytest.raises(DataError, match="dataset #1 has float32 inputs but train has int64"):
        standardize(tokens(), flat)


def assert_same(a: ClientPartition, b: ClientPartition) -> None:
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.x.dtype == b.x.dtype and a.y.dtype == b.y.dtype and a.num_classes == b.num_classes


@pytest.mark.parametrize("data", [images(), tokens(), values()], ids=["images", "tokens", "values"])
def test_storage_round_trip(tmp_path: Path, data: ArrayDataset) -> None:
    parts = [np.arange(0, 15), np.array([], dtype=np.int64), np.arange(15, 40)]
    train, held = ClientPartition.from_indices(data, parts).split_holdout(
        0.2, np.random.default_rng(0)
    )
    write_partition(tmp_path, train, held)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == 2
    assert manifest["sample_shape"] == list(data.sample_shape)
    assert manifest["x_dtype"] == str(data.x.dtype) and manifest["targets"] == data.targets
    assert manifest["num_classes"] == data.num_classes
    got_train, got_held = read_partition(tmp_path)
    assert got_held is not None
    assert_same(got_train, train)
    assert_same(got_held, held)
    client, client_held = read_client(tmp_path / "client-000002")
    np.testing.assert_array_equal(client.x, train.client(2)[0])
    assert client.targets == data.targets and client_held is not None
    (tmp_path / "manifest.json").unlink()  # a folder on its own takes the targets from y
    alone, _ = read_client(tmp_path / "client-000002")
    assert alone.targets == data.targets and alone.sample_shape == data.sample_shape


def test_shards_that_disagree_with_the_manifest_are_named(tmp_path: Path) -> None:
    part = ClientPartition.from_indices(images(), [np.arange(20), np.arange(20, 40)])
    write_partition(tmp_path, part)
    target = tmp_path / "client-000001" / "train.npz"
    np.savez(target, x=np.zeros((2, 2, 3, 5)), y=np.zeros(2, int))
    with pytest.raises(DataError, match=r"client-000001.train.npz: has sample shape \[2, 3, 5\]"):
        read_partition(tmp_path)
    np.savez(target, x=np.zeros((2, 2, 3, 4), int), y=np.zeros(2, int))
    with pytest.raises(DataError, match="client-000001.train.npz: has inputs of dtype int64"):
        read_client(tmp_path / "client-000001")
    np.savez(target, x=np.zeros((2, 2, 3, 4)), y=np.zeros((2, 3), int))
    with pytest.raises(DataError, match="client-000001.train.npz: has targets tokens"):
        read_partition(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for field, value, match in (
        ("sample_shape", [2, 3], "sample_shape.*holds 6 values but num_features is 24"),
        ("x_dtype", "float64", "'x_dtype' must be one of"),
        ("targets", "labels", "'targets' must be one of"),
        ("num_classes", 5.0, "'num_classes' must be an integer"),
    ):
        broken = {**manifest, field: value}
        (tmp_path / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(DataError, match=match):
            read_partition(tmp_path)
    regression = {**manifest, "targets": "values"}
    (tmp_path / "manifest.json").write_text(json.dumps(regression))
    with pytest.raises(DataError, match="'num_classes' must be null for regression"):
        read_partition(tmp_path)


def test_format_1_manifest_is_still_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(30, 4)), rng.integers(0, 3, 30), 3)
    part = ClientPartition.from_indices(data, [np.arange(10), np.arange(10, 30)])
    write_partition(tmp_path, part)
    old = {"format": 1, "num_clients": 2, "num_classes": 3, "num_features": 4}
    (tmp_path / "manifest.json").write_text(json.dumps({**old, "has_holdout": False}))
    got, held = read_partition(tmp_path)
    assert held is None
    assert_same(got, part)
    train, _ = read_client(tmp_path / "client-000001")
    assert train.num_classes == 3 and train.sample_shape == (4,)
