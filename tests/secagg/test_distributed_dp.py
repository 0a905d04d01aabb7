"""Distributed discrete Gaussian: rotation, sampler, rounding, decoding error and accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

import fedloom.secagg.distributed_dp as ddg
from fedloom.errors import ConfigError
from fedloom.privacy import MechanismEvent, PrivacyLedger, compose_epsilon, epsilon
from fedloom.privacy.accounting import discrete_gaussian_sum_tau, distributed_discrete_gaussian_rdp
from fedloom.privacy.mechanisms import GeneratorNoise, clip_rows
from fedloom.secagg.distributed_dp import (
    DistributedDiscreteGaussian,
    conditional_round,
    discrete_gaussian,
    discrete_laplace,
    rotate,
    rotation_signs,
    unrotate,
)


def source(seed: int) -> GeneratorNoise:
    return GeneratorNoise(np.random.default_rng(seed))


def test_rotation_is_orthogonal_and_inverted_exactly_enough() -> None:
    x = np.random.default_rng(0).normal(size=(3, 64))
    signs = rotation_signs(64, [1, 2])
    y = rotate(x, signs)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-12)
    np.testing.assert_allclose(unrotate(y, signs), x, atol=1e-12)
    spike = np.zeros(64)
    spike[5] = 8.0
    np.testing.assert_allclose(np.abs(rotate(spike, signs)), 1.0)  # spread evenly
    assert ddg.padded_dim(2410) == 4096 and ddg.padded_dim(64) == 64 and ddg.padded_dim(1) == 1


@pytest.mark.parametrize("sigma", [0.6, 1.5, 4.0])
def test_discrete_gaussian_matches_its_probability_mass_function(sigma: float) -> None:
    n = 200_000
    draws = discrete_gaussian(sigma, n, source(int(sigma * 10)))
    support = np.arange(-40, 41)
    pmf = np.exp(-(support**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    freq = np.array([(draws == y).mean() for y in support])
    assert np.all(np.abs(freq - pmf) <= 5 * np.sqrt(pmf * (1 - pmf) / n) + 1e-6)
    assert draws.dtype == np.int64


def test_discrete_laplace_has_geometric_tails() -> None:
    draws = discrete_laplace(3, 300_000, source(5))
    p0, p1, p2 = ((np.abs(draws) == k).mean() for k in (0, 1, 2))
    # P(|y| = k) = 2 P(0) exp(-k / 3) for k >= 1
    assert p1 / p0 == pytest.approx(2 * math.exp(-1 / 3), rel=0.02)
    assert p2 / p1 == pytest.approx(math.exp(-1 / 3), rel=0.02)


def test_large_sigma_has_the_target_variance() -> None:
    draws = discrete_gaussian(2500.0, 100_000, source(3))
    assert draws.var() == pytest.approx(2500.0**2, rel=0.02)
    assert abs(draws.mean()) < 5 * 2500 / math.sqrt(draws.size)


def test_conditional_rounding_is_unbiased_and_within_its_bound() -> None:
    x = np.random.default_rng(1).uniform(-3, 3, size=256)
    free = np.stack([conditional_round(x, math.inf, source(i)) for i in range(400)])
    assert np.all(np.abs(free - x) < 1)
    # each draw is floor or ceil (stddev <= 1/2): the mean of 400 is within 5 stddevs
    assert np.abs(free.mean(axis=0) - x).max() < 5 * 0.5 / math.sqrt(400)
    bound = float(np.linalg.norm(x)) + 1.0  # tight: plain rounding exceeds it now and then
    assert np.mean(np.linalg.norm(free, axis=1) > bound) > 0.01
    tight = np.stack([conditional_round(x, bound, source(i)) for i in range(400)])
    assert np.all(np.linalg.norm(tight, axis=1) <= bound)


def test_decoding_error_without_noise_is_within_the_documented_bound(monkeypatch) -> None:
    monkeypatch.setattr(ddg, "discrete_gaussian", lambda sigma, size, src: np.zeros(size, int))
    n, d = 8, 300
    mech = DistributedDiscreteGaussian(1.0, d, n, 1.0, bits=16)
    direction = np.random.default_rng(2).normal(size=d)
    x = np.tile(direction / np.linalg.norm(direction) * 2.0, (n, 1))  # aligned, over the clip
    signs = rotation_signs(mech.padded, 7)
    encoded = mech.encode(x, signs, [source(i) for i in range(n)])
    assert encoded.dtype == np.uint16 and encoded.shape == (n, 512)
    decoded = mech.decode(encoded.sum(axis=0, dtype=np.uint16), signs)
    exact = clip_rows(x.astype(np.float32), 1.0)[0].sum(axis=0)
    bound = n * mech.granularity * math.sqrt(mech.padded)
    assert np.linalg.norm(decoded - exact) <= bound
    assert np.linalg.norm(exact) == pytest.approx(n, rel=1e-5)  # the worst case did not wrap


def test_summed_noise_has_the_target_variance_and_the_sum_decodes() -> None:
    n, d, z, clip = 5, 1000, 0.7, 0.5
    mech = DistributedDiscreteGaussian(clip, d, n, z, bits=16)
    rng = np.random.default_rng(4)
    x = rng.normal(scale=0.01, size=(n, d))
    residuals = []
    for r in range(16):
        signs = rotation_signs(mech.padded, [r])
        encoded = mech.encode(x, signs, [source(100 * r + i) for i in range(n)])
        decoded = mech.decode(encoded.sum(axis=0, dtype=mech.dtype), signs)
        residuals.append(decoded - x.sum(axis=0))
    residuals = np.concatenate(residuals)  # 16,000 draws: the variance is known to ~1.1%
    assert mech.granularity**2 * n / 4 < 1e-6 * (z * clip) ** 2  # rounding is negligible
    assert residuals.var() == pytest.approx((z * clip) ** 2, rel=0.06)
    assert abs(residuals.mean()) < 5 * z * clip / math.sqrt(residuals.size)


def test_accounted_noise_is_slightly_below_the_nominal_multiplier() -> None:
    mech = DistributedDiscreteGaussian(1.0, 2410, 10, 1.0, bits=16)
    event = mech.event(0.1)
    assert event.kind == "distributed_dg" and event.dim == 4096
    assert event.noise_multiplier == pytest.approx(
        math.sqrt(10) * mech.local_stddev / mech.norm_bound
    )
    assert 0.99 < event.noise_multiplier < 1.0
    assert event.tau == 0.0  # thousands of grid steps of noise: the sum is a discrete Gaussian
    assert mech.event(0.1, shares=5).noise_multiplier == pytest.approx(
        event.noise_multiplier / math.sqrt(2)
    )


def test_epsilon_falls_with_more_noise_and_with_fewer_rounds() -> None:
    eps = [
        DistributedDiscreteGaussian(1.0, 500, 20, z, bits=16).epsilon(0.1, 50, 1e-5)
        for z in (0.5, 1.0, 2.0)
    ]
    assert eps[0] > eps[1] > eps[2] > 0
    mech = DistributedDiscreteGaussian(1.0, 500, 20, 1.0, bits=16)
    assert mech.epsilon(0.1, 10, 1e-5) < mech.epsilon(0.1, 50, 1e-5)


def test_epsilon_matches_a_hand_computation() -> None:
    # Three unsampled releases, z = 2, tau = 0.01, d = 16 (Kairouz et al., Prop. 14):
    # RDP(a) = 3 min(a / 8 + 0.16, (a / 2) (1/2 + 0.04)^2); then the conversion of Canonne,
    # Kamath & Steinke (Prop. 12): eps = RDP(a) + log(1 - 1/a) - log(delta a) / (a - 1).
    delta = 1e-6
    best = math.inf
    for a in DEFAULT_RDP_ORDERS:
        rdp = 3 * min(a / 8 + 0.01 * 16, a / 2 * (0.5 + 0.01 * 4) ** 2)
        best = min(best, rdp + math.log(1 - 1 / a) - math.log(delta * a) / (a - 1))
    event = MechanismEvent("distributed_dg", 2.0, 1.0, 3, tau=0.01, dim=16)
    assert compose_epsilon([event], delta, "rdp") == pytest.approx(best, rel=1e-12)
    assert best == pytest.approx(4.8419, abs=1e-4)
    # no inflation: exactly the Gaussian's RDP accounting
    plain = MechanismEvent("distributed_dg", 2.0, 1.0, 3, tau=0.0, dim=16)
    assert compose_epsilon([plain], delta, "rdp") == pytest.approx(
        epsilon(2.0, 1.0, 3, delta, accountant="rdp"), rel=1e-12
    )


def test_subsampling_bound_at_order_two_is_zhu_and_wang() -> None:
    z, tau, d, q = 1.5, 0.02, 9, 0.05
    plain = min(2 / (2 * z**2) + tau * d, (1 / z + tau * 3) ** 2)
    expected = math.log(1 - q**2 + q**2 * math.exp(plain))  # Theorem 5 at alpha = 2
    got = distributed_discrete_gaussian_rdp([2.0, 1.5], z, tau, d, q)
    assert got[0] == pytest.approx(expected, rel=1e-12)
    assert got[1] == got[0]  # a fractional order uses the next integer's bound
    assert got[0] < plain  # sampling amplifies


def test_tau_follows_theorem_one() -> None:
    assert discrete_gaussian_sum_tau(0.5, 1) == 0.0
    assert discrete_gaussian_sum_tau(0.5, 2) == pytest.approx(10 * math.exp(-(math.pi**2) / 4))
    assert discrete_gaussian_sum_tau(0.5, 3) == pytest.approx(
        10 * (math.exp(-(math.pi**2) / 4) + math.exp(-(math.pi**2) / 3))
    )
    with pytest.raises(ConfigError, match="sigma >= 0.5"):
        discrete_gaussian_sum_tau(0.4, 3)


def test_calibration_meets_the_target_with_the_least_noise() -> None:
    args = (1e-5, 0.2, 20, 1.0, 800, 10)
    mech = DistributedDiscreteGaussian.for_epsilon(3.0, *args, bits=16)
    assert mech.epsilon(0.2, 20, 1e-5) <= 3.0
    less = DistributedDiscreteGaussian(1.0, 800, 10, mech.noise_multiplier * 0.99, bits=16)
    assert less.epsilon(0.2, 20, 1e-5) > 3.0
    with pytest.raises(ConfigError, match="cannot be met with bits = 16"):
        DistributedDiscreteGaussian.for_epsilon(1e-3, *args, bits=16)


def test_ledger_records_and_reloads_distributed_releases(tmp_path) -> None:
    path = tmp_path / "privacy.json"
    ledger = PrivacyLedger(path, None, "rdp", delta=1e-5)
    event = DistributedDiscreteGaussian(1.0, 100, 10, 1.0, bits=16).event(0.1)
    eps = ledger.record(1, event)
    assert PrivacyLedger.load(path).events == (event,)
    assert PrivacyLedger.load(path).epsilon() == eps
    with pytest.raises(ConfigError, match="use accountant = 'rdp'"):
        compose_epsilon([event], 1e-5, "pld")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 64}, "needs 16 or 32"),
        ({"noise_multiplier": 1e-4}, "below the 1/2"),
        ({"clip_norm": 0.0}, "clip_norm = 0.0"),
        ({"shares": 0}, "shares = 0"),
        ({"beta": 1.0}, "beta = 1.0"),
        ({"shares": 2**30, "bits": 16}, "cannot hold"),
    ],
)
def test_bad_parameters_name_the_setting(kwargs: dict, match: str) -> None:
    params = {"clip_norm": 1.0, "dim": 10, "shares": 5, "noise_multiplier": 1.0, "bits": 16}
    with pytest.raises(ConfigError, match=match):
        DistributedDiscreteGaussian(**(params | kwargs))


def test_distributed_events_need_poisson_sampling_and_a_dimension() -> None:
    with pytest.raises(ConfigError, match="Poisson sampling only"):
        MechanismEvent("distributed_dg", 1.0, 0.5, sampling="fixed", population=10, dim=4)
    with pytest.raises(ConfigError, match="dim >= 1"):
        MechanismEvent("distributed_dg", 1.0, 0.5)
