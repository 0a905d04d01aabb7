"""Noise scales for single releases: the analytic Gaussian and the Laplace mechanism.

The textbook Gaussian calibration ``sigma = sqrt(2 ln(1.25/delta)) * sensitivity / epsilon``
is only proven for ``epsilon < 1`` and is loose even there. Balle & Wang give the exact
``delta`` of the Gaussian mechanism at every ``epsilon``; the smallest ``sigma`` meeting it is
found by bisection, valid for any ``epsilon > 0`` and never larger than the textbook one.

References: Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy:
Analytical Calibration and Optimal Denoising", ICML 2018; Dwork & Roth, "The Algorithmic
Foundations of Differential Privacy", 2014 (Laplace mechanism, classic Gaussian bound).
"""

from __future__ import annotations

import math

from fedloom.errors import ConfigError
from fedloom.privacy.accounting import _check_delta, _check_finite_positive

_RTOL = 1e-13


def _log_gaussian_delta(s: float, epsilon: float) -> float:
    """``log delta(epsilon)`` of the Gaussian mechanism with noise ``s`` x sensitivity.

    Balle & Wang, Theorem 8: ``delta = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s)``,
    evaluated as ``log Phi(a) + log1p(-exp(eps + log Phi(b) - log Phi(a)))`` so that neither
    the tiny tail probabilities nor their difference lose precision.
    """
    from scipy.special import log_ndtr

    log_a = log_ndtr(1 / (2 * s) - epsilon * s)
    log_b = epsilon + log_ndtr(-1 / (2 * s) - epsilon * s)
    if log_b >= log_a:  # rounding: the difference is 0 (or a hair below)
        return -math.inf
    return float(log_a + math.log1p(-math.exp(log_b - log_a)))


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """The exact ``delta`` at ``epsilon`` of adding N(0, sigma^2) noise to an L2-``sensitivity``
    statistic: the tightest (epsilon, delta) the single release satisfies, for audits and tests.

    References: Balle & Wang, ICML 2018, Theorem 8.
    """
    _check_finite_positive("sigma", sigma)
    if not 0 <= epsilon < math.inf:
        raise ConfigError(f"epsilon = {epsilon!r}: must be finite and >= 0")
    _check_finite_positive("sensitivity", sensitivity)
    return math.exp(_log_gaussian_delta(sigma / sensitivity, epsilon))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest Gaussian noise std giving (epsilon, delta)-DP to an L2-``sensitivity``
    statistic, for any ``epsilon > 0`` (bisection on the exact condition, 1e-13 relative).

    The returned sigma always meets the target (the bisection keeps the feasible end).

    References: Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy:
    Analytical Calibration and Optimal Denoising", ICML 2018, Algorithm 1.
    """
    _check_finite_positive("epsilon", epsilon)
    _check_delta(delta)
    _check_finite_positive("sensitivity", sensitivity)
    log_delta = math.log(delta)

    def fits(s: float) -> bool:
        return _log_gaussian_delta(s, epsilon) <= log_delta

    # Bracket around the textbook value, in units of the sensitivity (delta depends on s only).
    hi = math.sqrt(2 * math.log(1.25 / delta)) / epsilon
    while not fits(hi):
        hi *= 2
    lo = hi / 2
    while fits(lo):
        hi, lo = lo, lo / 2
    while hi - lo > _RTOL * hi:
        mid = math.sqrt(lo * hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return sensitivity * hi


def laplace_scale(epsilon: float, sensitivity: float = 1.0) -> float:
    """The Laplace noise scale ``sensitivity / epsilon`` giving pure epsilon-DP to a statistic
    of L1 ``sensitivity``.

    References: Dwork, McSherry, Nissim & Smith, "Calibrating Noise to Sensitivity in
    Private Data Analysis", TCC 2006.
    """
    _check_finite_positive("epsilon", epsilon)
    _check_finite_positive("sensitivity", sensitivity)
    return sensitivity / epsilon
