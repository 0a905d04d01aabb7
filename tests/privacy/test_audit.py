"""One-run privacy audit: the epsilon lower bound, canaries, and validity against the accountant."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import binom

from fedloom.errors import ConfigError, FedloomError
from fedloom.privacy import epsilon
from fedloom.privacy.audit import (
    EPSILON_SEARCH_MAX,
    AuditResult,
    audit,
    canary_directions,
    canary_scores,
    epsilon_lower_bound,
)

DELTA = 1e-5


def reference_p_value(eps: float, r: int, v: int, delta: float, m: int) -> float:
    """Theorem 5.2's p-value written term by term from the binomial CDF (no shared code)."""
    q = expit(eps)
    tail = 1 - binom.cdf(v - 1, r, q)
    spread = max((binom.cdf(v - 1, r, q) - binom.cdf(v - 1 - i, r, q)) / i for i in range(1, v + 1))
    return tail + 2 * m * delta * spread


def gaussian_run(
    noise: float, seed: int, m: int = 1000, dim: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Canary scores and inclusions of one simulated run.

    The released model delta is a fixed "training" update, plus the sum of the included unit
    canary directions (add/remove-one L2 sensitivity 1), plus N(0, noise^2 I): a Gaussian
    mechanism with noise multiplier ``noise``.
    """
    rng = np.random.default_rng(seed)
    directions = canary_directions(m, dim, rng)
    included = rng.random(m) < 0.5
    initial = rng.standard_normal(dim)
    update = 0.1 * rng.standard_normal(dim)
    canaries = directions[included].sum(axis=0, dtype=np.float64)
    final = initial + update + canaries + noise * rng.standard_normal(dim)
    return canary_scores(initial, final, directions), included


# --- epsilon_lower_bound ------------------------------------------------------------------------


@pytest.mark.parametrize("r", [2, 10, 1000])
def test_no_evidence_gives_zero(r):
    assert epsilon_lower_bound(r, r // 2) == 0.0
    assert epsilon_lower_bound(r, 0) == 0.0
    assert epsilon_lower_bound(0, 0) == 0.0
    assert epsilon_lower_bound(r, r // 2, delta=DELTA, num_canaries=2 * r) == 0.0


def test_all_correct_matches_closed_form():
    # v = r: the p-value is q^r, so eps = -log(expm1(log(1/alpha) / r)).
    for r, confidence in [(1000, 0.95), (100, 0.95), (500, 0.99), (20, 0.8)]:
        alpha = 1 - confidence
        expected = -math.log(math.expm1(math.log(1 / alpha) / r))
        assert epsilon_lower_bound(r, r, confidence=confidence) == pytest.approx(expected, 1e-9)
    assert epsilon_lower_bound(1000, 1000) > 5


def test_increases_with_fraction_correct():
    bounds = [epsilon_lower_bound(1000, v) for v in range(500, 1001, 25)]
    assert bounds[0] == 0.0
    assert all(a <= b for a, b in zip(bounds, bounds[1:], strict=False))
    positive = [b for b in bounds if b > 0]
    assert all(a < b for a, b in zip(positive, positive[1:], strict=False))
    assert len(positive) >= len(bounds) - 2


def test_decreases_with_confidence():
    for delta in (0.0, DELTA):
        bounds = [
            epsilon_lower_bound(1000, 900, delta=delta, confidence=c, num_canaries=2000)
            for c in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
        ]
        assert all(a > b for a, b in zip(bounds, bounds[1:], strict=False))


@pytest.mark.parametrize(("r", "v", "m"), [(500, 500, 1000), (1000, 900, 1000), (200, 150, 5000)])
def test_delta_bound_is_the_largest_rejected_epsilon(r, v, m):
    alpha = 0.05
    eps = epsilon_lower_bound(r, v, delta=DELTA, confidence=1 - alpha, num_canaries=m)
    assert 0 < eps < EPSILON_SEARCH_MAX
    assert reference_p_value(eps, r, v, DELTA, m) <= alpha
    assert reference_p_value(eps + 1e-6, r, v, DELTA, m) > alpha


def test_delta_and_more_canaries_lower_the_bound():
    pure = epsilon_lower_bound(1000, 1000)
    approx = epsilon_lower_bound(1000, 1000, delta=DELTA)
    more = epsilon_lower_bound(1000, 1000, delta=DELTA, num_canaries=10_000)
    assert pure > approx > more > 0
    assert epsilon_lower_bound(1000, 1000, delta=1e-3) < more


def test_bound_caps_at_search_max():
    # p-value at the cap: 1 - 2 e^-30 ~ 1 - 1.9e-13 <= alpha = 1 - 1e-14, so the bound saturates.
    assert epsilon_lower_bound(2, 2, confidence=1e-14) == EPSILON_SEARCH_MAX
    assert epsilon_lower_bound(2, 2, confidence=1e-9) < EPSILON_SEARCH_MAX
    assert epsilon_lower_bound(10**6, 10**6) < EPSILON_SEARCH_MAX


def test_pure_bound_has_at_most_alpha_false_positives():
    # Randomized response at exactly eps: each guess is right with probability e^eps/(1+e^eps).
    rng = np.random.default_rng(3)
    eps, r, alpha = 1.0, 400, 0.05
    correct = rng.binomial(r, expit(eps), size=4000)
    values, counts = np.unique(correct, return_counts=True)
    bounds = np.array([epsilon_lower_bound(r, int(v), confidence=1 - alpha) for v in values])
    false_positive_rate = counts[bounds > eps].sum() / counts.sum()
    assert false_positive_rate <= alpha + 0.01
    assert (bounds > 0).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_guesses": -1, "num_correct": 0}, "num_guesses = -1"),
        ({"num_guesses": 2.5, "num_correct": 0}, "num_guesses = 2.5"),
        ({"num_guesses": True, "num_correct": 0}, "num_guesses = True"),
        ({"num_guesses": 10, "num_correct": 11}, "num_correct = 11"),
        ({"num_guesses": 10, "num_correct": -2}, "num_correct = -2"),
        ({"num_guesses": 10, "num_correct": 9, "delta": 1.0}, "delta = 1.0"),
        ({"num_guesses": 10, "num_correct": 9, "delta": -0.1}, "delta = -0.1"),
        ({"num_guesses": 10, "num_correct": 9, "delta": math.nan}, "delta = nan"),
        ({"num_guesses": 10, "num_correct": 9, "confidence": 1.0}, "confidence = 1.0"),
        ({"num_guesses": 10, "num_correct": 9, "confidence": 0}, "confidence = 0"),
        ({"num_guesses": 10, "num_correct": 9, "num_canaries": 5}, "num_canaries = 5"),
        ({"num_guesses": 10, "num_correct": 9, "num_canaries": 20.0}, "num_canaries = 20.0"),
    ],
)
def test_epsilon_lower_bound_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        epsilon_lower_bound(**kwargs)


# --- canaries -----------------------------------------------------------------------------------


def test_canary_directions_are_unit_and_nearly_orthogonal():
    dim = 10_000
    directions = canary_directions(200, dim, np.random.default_rng(0))
    assert directions.shape == (200, dim)
    assert directions.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-5)
    cosines = directions.astype(np.float64) @ directions.T.astype(np.float64)
    off_diagonal = cosines[~np.eye(200, dtype=bool)]
    # Pairwise cosines have standard deviation 1/sqrt(dim) = 0.01.
    assert np.abs(off_diagonal).max() < 6 / math.sqrt(dim)
    assert np.std(off_diagonal) == pytest.approx(1 / math.sqrt(dim), rel=0.05)
    again = canary_directions(200, dim, np.random.default_rng(0))
    np.testing.assert_array_equal(directions, again)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 10), "num_canaries = 0"),
        ((3, 0), "dim = 0"),
        ((2.0, 10), "num_canaries = 2.0"),
    ],
)
def test_canary_directions_rejects_bad_arguments(args, match):
    with pytest.raises(ConfigError, match=match):
        canary_directions(*args, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="rng = 7"):
        canary_directions(2, 3, 7)


def test_canary_scores_by_hand():
    initial = np.array([1.0, 1.0, 1.0])
    final = np.array([4.0, 5.0, 1.0])  # delta (3, 4, 0), norm 5
    directions = np.array(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [-2, 0, 0]], dtype=np.float32
    )
    scores = canary_scores(initial, final, directions)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, [0.6, 0.8, 0.0, 7 / (5 * math.sqrt(2)), -0.6], atol=1e-15)
    # Any shape with dim elements: parameters as a matrix.
    matrix = canary_scores(np.zeros((2, 2)), np.array([[1.0, 0.0], [0.0, 1.0]]), np.eye(4))
    np.testing.assert_allclose(matrix, [1 / math.sqrt(2), 0, 0, 1 / math.sqrt(2)])


def test_canary_scores_rejects_bad_arguments():
    directions = np.eye(3)
    with pytest.raises(ConfigError, match=r"initial has shape \(3,\) but final has shape \(2,\)"):
        canary_scores(np.zeros(3), np.ones(2), directions)
    with pytest.raises(ConfigError, match="dim = 3"):
        canary_scores(np.zeros(4), np.ones(4), directions)
    with pytest.raises(ConfigError, match=r"directions has shape \(3,\)"):
        canary_scores(np.zeros(3), np.ones(3), np.ones(3))
    with pytest.raises(ConfigError, match="directions row 1 is the zero vector"):
        canary_scores(np.zeros(3), np.ones(3), np.array([[1.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ConfigError, match="final contains NaN"):
        canary_scores(np.zeros(3), np.array([1.0, math.nan, 0]), directions)
    with pytest.raises(FedloomError, match="zero vector"):
        canary_scores(np.ones(3), np.ones(3), directions)


# --- audit --------------------------------------------------------------------------------------


def test_audit_counts_guesses_by_hand():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.5, 0.4])
    included = np.array([True, False, False, True, True, False])
    # k = floor(2/3 * 6 / 2) = 2: guess in {0, 1} (one right), out {2, 3} (one right).
    result = audit(scores, included, guess_fraction=2 / 3)
    assert result == AuditResult(
        epsilon_lower=0.0,
        confidence=0.95,
        num_canaries=6,
        num_guesses=4,
        num_correct=2,
        scores_in_mean=pytest.approx((0.9 + 0.2 + 0.5) / 3),
        scores_out_mean=pytest.approx((0.8 + 0.1 + 0.4) / 3),
    )


def test_audit_perfect_separation_uses_all_canaries_for_delta():
    rng = np.random.default_rng(1)
    included = rng.random(400) < 0.5
    scores = included + 0.01 * rng.standard_normal(400)
    result = audit(scores, included.astype(int), delta=DELTA, guess_fraction=0.5)
    assert (result.num_guesses, result.num_correct) == (200, 200)
    expected = epsilon_lower_bound(200, 200, delta=DELTA, num_canaries=400)
    assert result.epsilon_lower == expected
    assert result.epsilon_lower < epsilon_lower_bound(200, 200, delta=DELTA)
    assert math.isnan(audit(scores[included], included[included]).scores_out_mean)


def test_audit_rejects_bad_arguments():
    scores, included = np.arange(6.0), np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    with pytest.raises(ConfigError, match=r"scores has shape \(2, 3\)"):
        audit(scores.reshape(2, 3), included.reshape(2, 3))
    with pytest.raises(ConfigError, match=r"included has shape \(5,\)"):
        audit(scores, included[:5])
    with pytest.raises(ConfigError, match=r"included\[2\] = .*2.*: must be booleans"):
        audit(scores, np.array([0, 1, 2, 0, 1, 0]))
    with pytest.raises(ConfigError, match="scores contains NaN"):
        audit(np.array([0.0, math.inf]), np.array([True, False]))
    for fraction in (0.0, 1.5, math.nan):
        with pytest.raises(ConfigError, match=f"guess_fraction = {fraction!r}"):
            audit(scores, included, guess_fraction=fraction)
    with pytest.raises(ConfigError, match="makes no guesses"):
        audit(scores, included, guess_fraction=0.3)
    with pytest.raises(ConfigError, match="delta = 2"):
        audit(scores, included, delta=2)


@pytest.mark.parametrize("noise", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_audit_never_exceeds_the_accountant(noise, seed):
    scores, included = gaussian_run(noise, seed)
    result = audit(scores, included, delta=DELTA)
    upper = epsilon(noise, 1.0, 1, DELTA)
    assert result.epsilon_lower < upper
    # ...and it is not vacuous: the canaries are seen through the noise.
    assert result.epsilon_lower > 0
    assert result.scores_in_mean > result.scores_out_mean


@pytest.mark.parametrize("delta", [0.0, DELTA])
def test_audit_of_memorized_canaries_is_large(delta):
    scores, included = gaussian_run(0.0, seed=5)
    result = audit(scores, included, delta=delta)
    assert result.epsilon_lower > 4
    assert result.num_correct == result.num_guesses == 500


def test_audit_catches_an_under_noised_run():
    # The run claims noise multiplier 2 but adds a tenth of it: the audit contradicts the claim.
    scores, included = gaussian_run(0.2, seed=7)
    claimed = epsilon(2.0, 1.0, 1, DELTA)
    assert audit(scores, included, delta=DELTA).epsilon_lower > claimed
