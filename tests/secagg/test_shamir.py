"""Shamir sharing over GF(2**61 - 1): field arithmetic, t-of-n reconstruction, privacy, bytes."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.errors import FedloomError
from fedloom.secagg import (
    PRIME,
    SecAggError,
    bytes_to_field,
    field_to_bytes,
    lagrange_at_zero,
    reconstruct,
    share,
)
from fedloom.secagg.shamir import _add, _mul

field_elements = st.integers(min_value=0, max_value=PRIME - 1)
edge_elements = st.sampled_from([0, 1, 2, 2**31 - 1, 2**31, 2**60, PRIME - 2, PRIME - 1])


elements = st.one_of(field_elements, edge_elements)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(elements, elements), min_size=1, max_size=20))
def test_mul_and_add_match_python_ints(pairs: list[tuple[int, int]]) -> None:
    x = np.array([a for a, _ in pairs], dtype=np.uint64)
    y = np.array([b for _, b in pairs], dtype=np.uint64)
    assert [int(v) for v in _mul(x, y)] == [a * b % PRIME for a, b in pairs]
    assert [int(v) for v in _add(x, y)] == [(a + b) % PRIME for a, b in pairs]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_t_of_n_shares_reconstruct(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=12), label="n")
    t = data.draw(st.integers(min_value=1, max_value=n), label="t")
    secrets = data.draw(st.lists(elements, max_size=8))
    holders = data.draw(st.lists(st.integers(0, n - 1), min_size=t, max_size=n, unique=True))
    shares = share(secrets, n, t)
    assert shares.shape == (n, len(secrets))
    assert shares.dtype == np.int64
    xs = [j + 1 for j in holders]
    assert reconstruct(xs, shares[holders]) == secrets


def test_shares_accept_numpy_and_object_inputs() -> None:
    secrets = np.array([3, PRIME - 1], dtype=np.uint64)
    shares = share(secrets, 4, 2)
    assert reconstruct([2, 4], shares[[1, 3]].astype(object)) == [3, PRIME - 1]
    assert reconstruct(np.array([4, 2]), shares[[3, 1]]) == [3, PRIME - 1]


def test_fewer_than_t_shares_reveal_nothing_about_the_secret() -> None:
    n, t = 7, 4
    secrets = [random.randrange(PRIME) for _ in range(500)]
    shares = share(secrets, n, t)
    guess = reconstruct([1, 2, 3], shares[:3])
    # Interpolating t - 1 points gives an unrelated value; a hit has probability 1/p each.
    assert not any(g == s for g, s in zip(guess, secrets, strict=True))


def test_t_minus_one_shares_are_consistent_with_every_secret() -> None:
    # Perfect privacy: whatever secret is assumed, the t - 1 observed shares extend to a
    # degree t - 1 polynomial, so a t-th share exists that reconstructs that secret.
    observed = share([123], 5, 3)[[1, 4]]
    for candidate in (0, 1, 123, PRIME - 1):
        # the polynomial through (0, candidate) and the observed shares, evaluated at x = 3
        points = [(0, candidate), (2, int(observed[0, 0])), (5, int(observed[1, 0]))]
        y3 = sum(y * _basis_at(3, x, [p for p, _ in points]) for x, y in points) % PRIME
        completed = np.array([[points[1][1]], [y3], [points[2][1]]])
        assert reconstruct([2, 3, 5], completed) == [candidate]


def _basis_at(at: int, xi: int, xs: list[int]) -> int:
    value = 1
    for xj in xs:
        if xj != xi:
            value = value * (at - xj) * pow(xi - xj, -1, PRIME) % PRIME
    return value


def test_sharing_is_randomized() -> None:
    assert not np.array_equal(share([42], 5, 3), share([42], 5, 3))
    assert np.all(share([42], 5, 1) == 42)  # t = 1: every share is the secret itself


@pytest.mark.parametrize("length", [0, 1, 7, 8, 31, 32, 33])
def test_bytes_round_trip(length: int) -> None:
    value = os.urandom(length)
    elements = bytes_to_field(value)
    assert all(0 <= e < 2**56 < PRIME for e in elements)
    assert field_to_bytes(elements, length) == value


def test_key_survives_sharing() -> None:
    key = os.urandom(32)
    elements = bytes_to_field(key)
    assert len(elements) == 5
    shares = share(elements, 5, 3)
    assert field_to_bytes(reconstruct([1, 4, 5], shares[[0, 3, 4]])) == key
    with pytest.raises(SecAggError, match="does not fit"):
        field_to_bytes(reconstruct([1, 4], shares[[0, 3]]))


@pytest.mark.parametrize(
    ("secrets", "n", "t", "match"),
    [
        ([1], 3, 0, "1 <= t <= n"),
        ([1], 3, 4, "1 <= t <= n"),
        ([1], True, 1, "n must be an int"),
        ([-1], 3, 2, "secrets must be"),
        ([PRIME], 3, 2, "secrets must be"),
        (np.array([PRIME], dtype=np.uint64), 3, 2, "secrets must be"),
        ([1.5], 3, 2, "secrets must be"),
        ([[1, 2]], 3, 2, "one-dimensional"),
    ],
)
def test_share_errors(secrets: object, n: int, t: int, match: str) -> None:
    with pytest.raises(SecAggError, match=match):
        share(secrets, n, t)  # type: ignore[arg-type]


def test_lagrange_coefficients_sum_to_one() -> None:
    # Interpolating the constant polynomial 1 must give 1 at zero.
    assert sum(lagrange_at_zero([3, 9, 17, 40])) % PRIME == 1


def test_reconstruct_errors() -> None:
    shares = share([1, 2], 4, 2)
    with pytest.raises(SecAggError, match="distinct"):
        reconstruct([1, 1], shares[:2])
    with pytest.raises(SecAggError, match="at least one"):
        reconstruct([], shares[:0])
    with pytest.raises(SecAggError, match=r"\[1, 2\*\*61 - 1\)"):
        reconstruct([0, 1], shares[:2])
    with pytest.raises(SecAggError, match="shape"):
        reconstruct([1, 2, 3], shares[:2])
    with pytest.raises(SecAggError, match="shares must be"):
        reconstruct([1, 2], np.full((2, 2), -1))
    assert issubclass(SecAggError, FedloomError)


def test_bytes_errors() -> None:
    with pytest.raises(SecAggError, match="expected bytes"):
        bytes_to_field("not bytes")  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="needs 5 field elements"):
        field_to_bytes([1, 2, 3])
    with pytest.raises(SecAggError, match="does not fit"):
        field_to_bytes([0, 0, 0, 0, 2**32])  # last chunk of 32 bytes holds 4 bytes
    with pytest.raises(SecAggError, match="length"):
        field_to_bytes([], -1)
