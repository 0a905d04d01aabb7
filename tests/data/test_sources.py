"""Dataset sources (digits, FedProx synthetic, user files) and centralized preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom.data import (
    ArrayDataset,
    load_arrays,
    load_digits,
    standardize,
    synthetic_fedprox,
    train_test_split,
)
from fedloom.errors import DataError


def test_load_digits() -> None:
    data = load_digits()
    assert data.x.shape == (1797, 64) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64 and data.num_classes == 10
    assert data.x.min() == 0 and data.x.max() == 16
    np.testing.assert_array_equal(np.unique(data.y), np.arange(10))


def test_synthetic_fedprox_shapes_and_sizes() -> None:
    data = synthetic_fedprox(100, 1.0, 1.0, np.random.default_rng(0))
    assert data.x.shape[1] == 60 and data.num_classes == 10
    assert data.groups is not None
    sizes = np.bincount(data.groups, minlength=100)
    assert sizes.size == 100 and sizes.sum() == len(data)
    assert sizes.min() >= 50
    assert sizes.max() / np.median(sizes) > 5  # heavy-tailed (lognormal) client sizes
    assert np.unique(data.y).size > 1
    # Labels differ across clients: the local models are not all the same.
    per_client_majority = [np.bincount(data.y[data.groups == k]).argmax() for k in range(100)]
    assert len(set(per_client_majority)) > 1


def test_synthetic_fedprox_reproducible_and_configurable() -> None:
    kwargs = dict(num_features=5, num_classes=3, size_mean_log=1.0, size_sigma_log=0.5)
    a = synthetic_fedprox(7, 0.5, 0.5, np.random.default_rng(3), **kwargs)
    b = synthetic_fedprox(7, 0.5, 0.5, np.random.default_rng(3), **kwargs)
    c = synthetic_fedprox(7, 0.5, 0.5, np.random.default_rng(4), **kwargs)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.x.shape[1] == 5 and a.num_classes == 3 and a.y.max() < 3
    assert a.x.shape != c.x.shape or not np.array_equal(a.x, c.x)
    capped = synthetic_fedprox(
        50, 0.0, 0.0, np.random.default_rng(0), min_samples=5, max_samples=20
    )
    sizes = np.bincount(capped.groups)
    assert sizes.min() >= 5 and sizes.max() <= 20


def test_synthetic_fedprox_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="num_clients"):
        synthetic_fedprox(0, 1.0, 1.0, rng)
    with pytest.raises(DataError, match="alpha"):
        synthetic_fedprox(3, -1.0, 1.0, rng)
    with pytest.raises(DataError, match="max_samples=10"):
        synthetic_fedprox(3, 1.0, 1.0, rng, max_samples=10)


def test_npz_round_trip_with_string_labels_and_client_ids(tmp_path: Path) -> None:
    x = np.arange(10, dtype=np.float64).reshape(5, 2)
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x=x,
        y=np.array(["cat", "dog", "ant", "dog", "cat"]),
        client_id=np.array([30, 10, 10, 20, 30]),
    )
    data = load_arrays(path)
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, [1, 2, 0, 2, 1])  # ant < cat < dog
    np.testing.assert_array_equal(data.groups, [2, 0, 0, 1, 2])
    assert data.num_classes == 3
    np.savez(path, x=x, y=np.array([7, 3, 3, 7, 9]), groups=np.zeros(5, int))
    data = load_arrays(path)
    np.testing.assert_array_equal(data.y, [1, 0, 0, 1, 2])
    np.testing.assert_array_equal(data.groups, np.zeros(5))


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,label,client,b\n1.5,10,u2,3\n2,2,u1,-4e1\n0,10,u2,0\n\n")
    data = load_arrays(path, label_column="label", group_column="client")
    np.testing.assert_array_equal(data.x, [[1.5, 3], [2, -40], [0, 0]])
    np.testing.assert_array_equal(data.y, [1, 0, 1])  # integer order: 2 < 10
    np.testing.assert_array_equal(data.groups, [1, 0, 1])
    by_index = load_arrays(path, label_column=2)
    np.testing.assert_array_equal(by_index.y, [1, 0, 1])
    assert by_index.x.shape == (3, 3) and by_index.groups is None
    path.write_text("f1,f2,y\n1,2,spam\n3,4,ham\n")
    data = load_arrays(path)  # default: last column is the label
    np.testing.assert_array_equal(data.y, [1, 0])
    np.testing.assert_array_equal(data.x, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "match"),
    [
        ("d.csv", "a,b\n1,x\n", {"label_column": "nope"}, "'nope'"),
        ("d.csv", "a,b\n1,x\n", {"label_column": 5}, "label column index 5"),
        ("d.csv", "a,b,y\n1,oops,0\n", {}, "feature column 'b' is not numeric"),
        ("d.csv", "a,b,y\n1,nan,0\n2,3,1\n", {}, "feature column 'b' has NaN/inf"),
        ("d.csv", "a,b,y\n1,inf,0\n", {}, "feature column 'b' has NaN/inf"),
        ("d.csv", "a,b,y\n", {}, "no data rows"),
        ("d.csv", "", {}, "empty file"),
        ("d.csv", "a,y\n1,0\n2\n", {}, "data row 2 has 1 fields"),
        ("d.csv", "y,g\n1,2\n", {"label_column": "y", "group_column": "g"}, "no feature"),
        ("d.csv", "a,y\n1,2\n", {"group_column": "client"}, "group column 'client'"),
        ("d.txt", "a,y\n1,2\n", {}, "unknown extension '.txt'"),
    ],
)
def test_load_arrays_rejects_bad_csv(
    tmp_path: Path, name: str, content: str, kwargs: dict[str, object], match: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        load_arrays(path, **kwargs)  # type: ignore[arg-type]
    assert name in str(info.value)


def test_load_arrays_rejects_bad_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with pytest.raises(DataError, match="d.npz does not exist"):
        load_arrays(path)
    np.savez(path, x=np.zeros((2, 2)))
    with pytest.raises(DataError, match="missing array 'y'"):
        load_arrays(path)
    np.savez(path, x=np.array([[1.0, np.inf]]), y=np.array([0]))
    with pytest.raises(DataError, match="NaN/inf"):
        load_arrays(path)
    np.savez(path, x=np.zeros((0, 3)), y=np.zeros(0, int))
    with pytest.raises(DataError, match="non-empty"):
        load_arrays(path)
    np.savez(path, x=np.zeros((2, 3)), y=np.zeros(3, int))
    with pytest.raises(DataError, match="'y' must be 1-D with 2 labels"):
        load_arrays(path)
    np.savez(path, x=np.zeros((2, 3)), y=np.zeros(2, int))
    with pytest.raises(DataError, match="group array 'writer'"):
        load_arrays(path, group_column="writer")
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="d.npz: cannot read"):
        load_arrays(path)


def toy(n: int = 50) -> ArrayDataset:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (n, 3))
    x[:, 2] = 7.0  # constant column
    return ArrayDataset(x, np.arange(n) % 2, 2, np.arange(n) % 5)


def test_train_test_split() -> None:
    data = toy()
    train, test = train_test_split(data, 0.2, np.random.default_rng(1))
    assert len(train) == 40 and len(test) == 10
    merged = np.sort(np.concatenate([train.x[:, 0], test.x[:, 0]]))
    np.testing.assert_array_equal(merged, np.sort(data.x[:, 0]))
    assert train.groups is not None and test.groups is not None
    again = train_test_split(data, 0.2, np.random.default_rng(1))[1]
    np.testing.assert_array_equal(again.x, test.x)
    with pytest.raises(DataError, match="test_fraction"):
        train_test_split(data, 1.0, np.random.default_rng(1))


def test_standardize_fits_on_train_only() -> None:
    train, test = train_test_split(toy(), 0.3, np.random.default_rng(2))
    std_train, std_test = standardize(train, test)
    assert std_train.x.dtype == np.float32
    np.testing.assert_allclose(std_train.x[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(std_train.x[:, :2].std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(std_train.x[:, 2], 0.0)  # zero std -> divided by 1
    mean, std = train.x.mean(axis=0, dtype=np.float64), train.x.std(axis=0, dtype=np.float64)
    np.testing.assert_allclose(std_test.x[:, :2], (test.x[:, :2] - mean[:2]) / std[:2], rtol=1e-5)
    np.testing.assert_array_equal(std_test.y, test.y)
    np.testing.assert_array_equal(std_test.groups, test.groups)
    with pytest.raises(DataError, match="dataset #1 has 2 features"):
        standardize(train, ArrayDataset(np.zeros((1, 2)), np.zeros(1, int), 2))
