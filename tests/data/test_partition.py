"""Partitioner properties: exact cover, client counts, min_size, determinism, skew."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.data import ArrayDataset, dirichlet, iid, natural, partition, shards
from fedloom.errors import DataError

FAST = settings(max_examples=40, deadline=None)


def assert_exact_cover(parts: list[np.ndarray], n: int, num_clients: int, min_size: int) -> None:
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    assert min(p.size for p in parts) >= min_size
    allidx = np.concatenate(parts)
    assert allidx.size == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p, q)


def differs(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return any(p.size != q.size or not np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def digits_like(n: int = 1437, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes)


@st.composite
def pools(draw: st.DrawFn) -> tuple[int, int, int]:
    """(num_samples, num_clients, min_size) with num_clients * min_size <= num_samples."""
    n = draw(st.integers(1, 400))
    k = draw(st.integers(1, min(n, 60)))
    m = draw(st.integers(0, n // k))
    return n, k, m


@FAST
@given(pools(), st.integers(0, 2**32 - 1))
def test_iid_properties(pool: tuple[int, int, int], seed: int) -> None:
    n, k, m = pool
    parts = iid(n, k, np.random.default_rng(seed), min_size=m)
    assert_exact_cover(parts, n, k, m)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert_same(parts, iid(n, k, np.random.default_rng(seed), min_size=m))


@FAST
@given(
    pools(),
    st.integers(1, 12),
    st.sampled_from([0.01, 0.1, 0.5, 1.0, 100.0]),
    st.integers(0, 2**32 - 1),
)
def test_dirichlet_properties(
    pool: tuple[int, int, int], num_classes: int, alpha: float, seed: int
) -> None:
    n, k, m = pool
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    parts = dirichlet(labels, k, alpha, np.random.default_rng(seed), min_size=m)
    assert_exact_cover(parts, n, k, m)
    assert_same(parts, dirichlet(labels, k, alpha, np.random.default_rng(seed), min_size=m))


@FAST
@given(
    st.integers(1, 8),
    st.integers(1, 6),
    st.integers(1, 5),
    st.data(),
    st.integers(0, 2**32 - 1),
)
def test_shards_properties(
    num_classes: int, shards_per_class: int, shard_size: int, data: st.DataObject, seed: int
) -> None:
    # Balanced labels whose class boundaries coincide with shard boundaries.
    num_shards = num_classes * shards_per_class
    divisors = [d for d in range(1, num_classes + 1) if num_shards % d == 0]
    per_client = data.draw(st.sampled_from(divisors))
    k = num_shards // per_client
    labels = np.random.default_rng(seed).permutation(
        np.repeat(np.arange(num_classes), shards_per_class * shard_size)
    )
    parts = shards(labels, k, per_client, np.random.default_rng(seed), min_size=shard_size)
    assert_exact_cover(parts, labels.size, k, per_client * shard_size)
    assert all(np.unique(labels[p]).size <= per_client for p in parts)
    assert_same(parts, shards(labels, k, per_client, np.random.default_rng(seed)))


@FAST
@given(st.lists(st.integers(-5, 30), min_size=1, max_size=300))
def test_natural_properties(values: list[int]) -> None:
    groups = np.array(values)
    parts = natural(groups)
    distinct = np.unique(groups)
    assert_exact_cover(parts, groups.size, distinct.size, 1)
    for value, p in zip(distinct, parts, strict=True):
        assert np.all(groups[p] == value)


def test_different_seeds_give_different_partitions() -> None:
    labels = digits_like(500)
    a, b = np.random.default_rng(1), np.random.default_rng(2)
    assert differs(iid(500, 10, a), iid(500, 10, b))
    assert differs(dirichlet(labels, 10, 0.5, a), dirichlet(labels, 10, 0.5, b))
    assert differs(shards(labels, 10, 2, a), shards(labels, 10, 2, b))


def mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    hist = np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
    prob = hist / hist.sum(axis=1, keepdims=True)
    logs = np.log(np.where(prob > 0, prob, 1.0))
    return float(-(prob * logs).sum(axis=1).mean())


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    labels = digits_like()
    rng = np.random.default_rng(7)
    skewed = mean_label_entropy(labels, dirichlet(labels, 20, 0.05, rng, min_size=10), 10)
    uniform = mean_label_entropy(labels, dirichlet(labels, 20, 100.0, rng, min_size=10), 10)
    assert skewed < uniform - 0.5
    assert uniform > 0.9 * np.log(10)


def test_dirichlet_many_clients_terminates_with_min_size() -> None:
    labels = digits_like(1437)
    for alpha in (0.1, 0.5, 10.0):
        parts = dirichlet(labels, 1000, alpha, np.random.default_rng(0), min_size=1)
        assert_exact_cover(parts, 1437, 1000, 1)
    parts = dirichlet(labels[:1000], 1000, 0.1, np.random.default_rng(0), min_size=1)
    assert all(p.size == 1 for p in parts)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: iid(1437, 1000, r, min_size=5), "min_size=5 with num_clients=1000 needs 5000"),
        (lambda r: iid(10, 0, r), "num_clients"),
        (lambda r: dirichlet(digits_like(100), 5, 0.0, r), "alpha"),
        (lambda r: dirichlet(digits_like(100), 5, 0.5, r, min_size=-1), "min_size"),
        (lambda r: dirichlet(np.zeros((2, 2), int), 1, 0.5, r), "labels"),
        (lambda r: shards(digits_like(100), 5, 0, r), "classes_per_client"),
        (lambda r: shards(digits_like(100), 5, 11, r), "classes_per_client=11"),
        (lambda r: shards(digits_like(100), 40, 3, r), "120 shards"),
        (lambda r: shards(digits_like(100), 5, 2, r, min_size=30), "min_size=30"),
        (lambda r: natural(np.array([1, 1, 2, 3, 3]), min_size=2), "group 2 has 1 samples"),
    ],
)
def test_partitioners_reject_bad_arguments(
    call: Callable[[np.random.Generator], object], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        call(np.random.default_rng(0))


def dataset(groups: np.ndarray | None = None) -> ArrayDataset:
    labels = digits_like(120)
    return ArrayDataset(np.zeros((120, 3)), labels, 10, groups)


def test_partition_dispatch() -> None:
    data = dataset(np.arange(120) % 4)
    rng = np.random.default_rng(0)
    for method in ("iid", "dirichlet", "shards"):
        assert_exact_cover(partition(method, data, 6, rng, min_size=2), 120, 6, 2)
    assert len(partition("natural", data, 0, rng)) == 4
    assert len(partition("natural", data, 4, rng)) == 4
    expected = iid(120, 6, np.random.default_rng(5))
    assert_same(partition("iid", data, 6, np.random.default_rng(5)), expected)


def test_partition_dispatch_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="'bogus'.*iid, dirichlet, shards, natural"):
        partition("bogus", dataset(), 3, rng)
    with pytest.raises(DataError, match="natural.*groups"):
        partition("natural", dataset(), 0, rng)
    with pytest.raises(DataError, match="num_clients=3 but the dataset has 4"):
        partition("natural", dataset(np.arange(120) % 4), 3, rng)
