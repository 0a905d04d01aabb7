"""ArrayDataset validation and ClientPartition bookkeeping against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.data import ArrayDataset, ClientPartition
from fedloom.errors import DataError


def small() -> ArrayDataset:
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    return ArrayDataset(x, np.array([0, 1, 2, 0, 1, 2]), 3, np.array([5, 5, 7, 7, 9, 9]))


def test_dataset_normalizes_dtypes() -> None:
    data = small()
    assert data.x.dtype == np.float32 and data.x.flags.c_contiguous
    assert data.y.dtype == np.int64 and data.groups is not None and data.groups.dtype == np.int64
    assert len(data) == 6 and data.num_features == 2


def test_subset_keeps_groups() -> None:
    sub = small().subset(np.array([4, 1]))
    np.testing.assert_array_equal(sub.x, [[8, 9], [2, 3]])
    np.testing.assert_array_equal(sub.y, [1, 1])
    np.testing.assert_array_equal(sub.groups, [9, 5])


@pytest.mark.parametrize(
    ("x", "y", "num_classes", "groups", "match"),
    [
        (np.zeros(3), np.zeros(3, int), 2, None, "2-D"),
        (np.zeros((3, 2)), np.zeros(2, int), 2, None, "3 labels"),
        (np.zeros((3, 2)), np.array([0, 1, 5]), 2, None, r"y\[2\] = 5"),
        (np.zeros((3, 2)), np.array([0, -1, 1]), 2, None, r"y\[1\] = -1"),
        (np.zeros((3, 2)), np.zeros(3), 2, None, "integer class labels"),
        (np.array([[0.0, 1.0], [np.nan, 2.0]]), np.zeros(2, int), 2, None, "row 1, feature 0"),
        (np.array([["a", "b"]]), np.zeros(1, int), 2, None, "numeric"),
        (np.zeros((3, 2)), np.zeros(3, int), 0, None, "num_classes"),
        (np.zeros((3, 2)), np.zeros(3, int), 2, np.zeros(2, int), "groups"),
    ],
)
def test_dataset_rejects_bad_arrays(
    x: np.ndarray, y: np.ndarray, num_classes: int, groups: np.ndarray | None, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        ArrayDataset(x, y, num_classes, groups)


def hand_partition() -> ClientPartition:
    parts = [np.array([5, 0]), np.array([], dtype=np.int64), np.array([1, 2, 3])]
    return ClientPartition.from_indices(small(), parts)


def test_from_indices_and_client_views() -> None:
    part = hand_partition()
    assert part.num_clients == 3 and part.num_classes == 3
    np.testing.assert_array_equal(part.offsets, [0, 2, 2, 5])
    np.testing.assert_array_equal(part.sizes(), [2, 0, 3])
    x0, y0 = part.client(0)
    np.testing.assert_array_equal(x0, [[10, 11], [0, 1]])
    np.testing.assert_array_equal(y0, [2, 0])
    assert np.shares_memory(x0, part.x) and np.shares_memory(y0, part.y)
    assert part.client(1)[0].shape == (0, 2)
    np.testing.assert_array_equal(part.client(np.int64(2))[1], [1, 2, 0])


@pytest.mark.parametrize("bad", [3, -1, 100])
def test_unknown_client(bad: int) -> None:
    with pytest.raises(DataError, match=f"unknown client {bad}"):
        hand_partition().client(bad)


def test_label_histograms() -> None:
    expected = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]])
    hist = hand_partition().label_histograms()
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, expected)


def test_from_indices_rejects_out_of_range() -> None:
    with pytest.raises(DataError, match=r"parts\[1\] \(client 1\)"):
        ClientPartition.from_indices(small(), [np.array([0]), np.array([6])])


def test_partition_rejects_bad_offsets() -> None:
    x, y = np.zeros((4, 1)), np.zeros(4, dtype=np.int64)
    with pytest.raises(DataError, match="end at the pool size 4"):
        ClientPartition(x, y, np.array([0, 2, 3]), 1)
    with pytest.raises(DataError, match="non-decreasing"):
        ClientPartition(x, y, np.array([0, 3, 2, 4]), 1)


def test_split_holdout_sizes() -> None:
    rng = np.random.default_rng(0)
    sizes = np.array([1, 2, 3, 10, 0, 7])
    x = np.arange(sizes.sum(), dtype=np.float32)[:, None]
    part = ClientPartition(x, np.zeros(sizes.sum(), np.int64), np.r_[0, np.cumsum(sizes)], 1)
    train, held = part.split_holdout(0.5, rng)
    assert train.num_clients == held.num_clients == 6
    np.testing.assert_array_equal(held.sizes(), [0, 1, 1, 5, 0, 3])
    np.testing.assert_array_equal(train.sizes(), [1, 1, 2, 5, 0, 4])
    for i in range(6):
        merged = np.sort(np.concatenate([train.client(i)[0][:, 0], held.client(i)[0][:, 0]]))
        np.testing.assert_array_equal(merged, part.client(i)[0][:, 0])
    # A near-1 fraction still leaves every non-empty client one training sample.
    train, held = part.split_holdout(0.99, rng)
    np.testing.assert_array_equal(train.sizes(), [1, 1, 1, 1, 0, 1])


def test_split_holdout_is_reproducible_and_validated() -> None:
    part = ClientPartition.from_indices(small(), [np.arange(6)])
    a = part.split_holdout(0.5, np.random.default_rng(3))[1].x
    b = part.split_holdout(0.5, np.random.default_rng(3))[1].x
    np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="fraction"):
        part.split_holdout(1.0, np.random.default_rng(0))
