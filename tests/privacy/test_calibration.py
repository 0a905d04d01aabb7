"""Noise calibration: the analytic Gaussian mechanism (Balle & Wang) and the Laplace scale."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fedloom.errors import ConfigError
from fedloom.privacy import analytic_gaussian_sigma, gaussian_delta, laplace_scale


def classic_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Dwork & Roth's Theorem A.1 calibration, proven only for epsilon < 1."""
    return math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / epsilon


EPSILONS = st.sampled_from([0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0])
DELTAS = st.sampled_from([1e-10, 1e-7, 1e-5, 1e-3, 0.1])


@settings(max_examples=40, deadline=None)
@given(EPSILONS, DELTAS)
def test_analytic_sigma_meets_delta_exactly(epsilon, delta):
    sigma = analytic_gaussian_sigma(epsilon, delta)
    achieved = gaussian_delta(sigma, epsilon)
    assert achieved <= delta
    assert achieved >= delta * (1 - 1e-9)
    assert sigma == pytest.approx(dp_accounting.get_sigma_gaussian(epsilon, delta), rel=1e-9)


@settings(max_examples=20, deadline=None)
@given(EPSILONS, DELTAS, st.sampled_from([1e-3, 0.5, 2.0, 100.0]))
def test_sigma_scales_with_sensitivity(epsilon, delta, sensitivity):
    assert analytic_gaussian_sigma(epsilon, delta, sensitivity) == pytest.approx(
        sensitivity * analytic_gaussian_sigma(epsilon, delta), rel=1e-11
    )
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    assert gaussian_delta(sigma, epsilon, sensitivity) == pytest.approx(
        gaussian_delta(sigma / sensitivity, epsilon), rel=1e-12
    )


@pytest.mark.parametrize("epsilon", [0.05, 0.3, 0.9])
@pytest.mark.parametrize("delta", [1e-8, 1e-5, 1e-2])
def test_analytic_sigma_beats_the_classic_formula_below_one(epsilon, delta):
    classic = classic_sigma(epsilon, delta)
    assert gaussian_delta(classic, epsilon) <= delta  # valid there, but loose
    assert analytic_gaussian_sigma(epsilon, delta) < classic


@pytest.mark.parametrize("delta", [1e-8, 1e-5, 1e-2])
def test_classic_formula_fails_for_large_epsilon(delta):
    # At epsilon = 5 the classic sigma happens to still hold for these deltas (delta ratio
    # 0.07-0.4); by epsilon = 10 its delta exceeds the target, while the analytic one meets it.
    epsilon = 10.0
    assert gaussian_delta(classic_sigma(epsilon, delta), epsilon) > delta
    sigma = analytic_gaussian_sigma(epsilon, delta)
    assert gaussian_delta(sigma, epsilon) == pytest.approx(delta, rel=1e-9)
    assert gaussian_delta(sigma, epsilon) <= delta


def test_gaussian_delta_is_the_balle_wang_formula():
    for sigma, epsilon in [(1.0, 0.5), (2.0, 1.0), (0.7, 3.0), (5.0, 0.0)]:
        plain = norm.cdf(1 / (2 * sigma) - epsilon * sigma) - math.exp(epsilon) * norm.cdf(
            -1 / (2 * sigma) - epsilon * sigma
        )
        assert gaussian_delta(sigma, epsilon) == pytest.approx(plain, rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 20.0), st.floats(0.0, 20.0))
def test_gaussian_delta_falls_with_noise_and_epsilon(sigma, epsilon):
    d = gaussian_delta(sigma, epsilon)
    assert 0 <= d <= 1
    assert gaussian_delta(1.1 * sigma, epsilon) <= d
    assert gaussian_delta(sigma, epsilon + 0.5) <= d


def test_tiny_deltas_stay_accurate():
    # Far in the tail, where Phi differences would cancel to 0 in linear space.
    sigma = analytic_gaussian_sigma(1.0, 1e-300)
    assert gaussian_delta(sigma, 1.0) == pytest.approx(1e-300, rel=1e-9)


def test_laplace_scale():
    assert laplace_scale(0.5) == 2.0
    assert laplace_scale(2.0, sensitivity=3.0) == 1.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: analytic_gaussian_sigma(0.0, 1e-5), r"epsilon = 0\.0: must be finite and > 0"),
        (lambda: analytic_gaussian_sigma(math.inf, 1e-5), r"epsilon = inf"),
        (lambda: analytic_gaussian_sigma(1.0, 0.0), r"delta = 0\.0: must be in \(0, 1\)"),
        (lambda: analytic_gaussian_sigma(1.0, 1.0), r"delta = 1\.0"),
        (lambda: analytic_gaussian_sigma(1.0, 1e-5, -2.0), r"sensitivity = -2\.0"),
        (lambda: gaussian_delta(0.0, 1.0), r"sigma = 0\.0: must be finite and > 0"),
        (lambda: gaussian_delta(1.0, -1.0), r"epsilon = -1\.0: must be finite and >= 0"),
        (lambda: gaussian_delta(1.0, 1.0, 0.0), r"sensitivity = 0\.0"),
        (lambda: laplace_scale(-1.0), r"epsilon = -1\.0: must be finite and > 0"),
        (lambda: laplace_scale(1.0, math.nan), r"sensitivity = nan"),
    ],
)
def test_bad_parameters(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
