"""Example-weighted mean of a cohort's updates (FedAvg aggregation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedloom.aggregation import weighted_mean
from fedloom.errors import FedloomError


@st.composite
def cohorts(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    k = draw(st.integers(1, 8))
    d = draw(st.integers(1, 16))
    values = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
    updates = draw(hnp.arrays(np.float32, (k, d), elements=values))
    counts = st.floats(0, 1e4, allow_subnormal=False)
    weights = draw(hnp.arrays(np.float64, (k,), elements=counts))
    assume(weights.sum() > 0)
    return updates, weights


def tolerance(updates: np.ndarray) -> float:
    """float32 rounding bound for a convex combination of these rows."""
    return 1e-5 * max(1.0, float(np.abs(updates).max()))


def test_weights_one_and_three() -> None:
    updates = np.array([[1.0, 2.0], [5.0, -2.0]], dtype=np.float32)
    out = weighted_mean(updates, np.array([1, 3]))
    assert out.dtype == np.float32 and out.shape == (2,)
    np.testing.assert_allclose(out, [(1 * 1 + 3 * 5) / 4, (1 * 2 + 3 * -2) / 4], rtol=1e-6)


def test_zero_weight_client_is_ignored() -> None:
    updates = np.array([[100.0, 100.0], [0.5, -0.25], [1.5, 0.25]], dtype=np.float32)
    out = weighted_mean(updates, np.array([0.0, 2.0, 2.0]))
    np.testing.assert_allclose(out, [1.0, 0.0], atol=1e-7)


def test_single_client_returns_its_update() -> None:
    updates = np.array([[0.1, -0.2, 0.3]], dtype=np.float32)
    np.testing.assert_array_equal(weighted_mean(updates, np.array([7])), updates[0])


def test_float64_updates_come_back_float32() -> None:
    out = weighted_mean(np.array([[1.0], [2.0]]), np.array([1.0, 1.0]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.5])


@given(cohorts())
def test_matches_np_average(cohort: tuple[np.ndarray, np.ndarray]) -> None:
    updates, weights = cohort
    expected = np.average(updates.astype(np.float64), axis=0, weights=weights)
    np.testing.assert_allclose(
        weighted_mean(updates, weights), expected, rtol=1e-5, atol=tolerance(updates)
    )


@given(cohorts(), st.data())
def test_permutation_invariant(cohort: tuple[np.ndarray, np.ndarray], data: st.DataObject) -> None:
    updates, weights = cohort
    order = data.draw(st.permutations(range(len(weights))))
    np.testing.assert_allclose(
        weighted_mean(updates[order], weights[order]),
        weighted_mean(updates, weights),
        rtol=1e-5,
        atol=tolerance(updates),
    )


@given(cohorts(), st.floats(1e-3, 1e6))
def test_equal_weights_is_plain_mean(cohort: tuple[np.ndarray, np.ndarray], w: float) -> None:
    updates, _ = cohort
    out = weighted_mean(updates, np.full(len(updates), w))
    np.testing.assert_allclose(
        out, updates.mean(axis=0, dtype=np.float64), rtol=1e-5, atol=tolerance(updates)
    )


@pytest.mark.parametrize(
    ("updates", "weights", "message"),
    [
        (np.empty((0, 3), dtype=np.float32), np.empty(0), "K == 0"),
        (np.zeros(3, dtype=np.float32), np.ones(3), r"\[K, d\] matrix"),
        (np.zeros((2, 3), dtype=np.float32), np.ones(3), r"weights has shape \(3,\)"),
        (np.zeros((2, 3), dtype=np.float32), np.ones((2, 1)), r"weights has shape \(2, 1\)"),
        (np.zeros((2, 3), dtype=np.float32), np.array([1.0, -1.0]), r"weights\[1\] is -1.0"),
        (np.zeros((2, 3), dtype=np.float32), np.array([math.nan, 1.0]), r"weights\[0\] is nan"),
        (np.zeros((2, 3), dtype=np.float32), np.array([1.0, math.inf]), r"weights\[1\] is inf"),
        (np.zeros((2, 3), dtype=np.float32), np.zeros(2), "all zero"),
    ],
)
def test_invalid_inputs(updates: np.ndarray, weights: np.ndarray, message: str) -> None:
    with pytest.raises(FedloomError, match=message):
        weighted_mean(updates, weights)
