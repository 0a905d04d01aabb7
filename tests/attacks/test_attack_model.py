"""Update attacks against their definitions, ALIE's z, the min-max / min-sum search, and
the checks of ``build_attack``."""

import math

import numpy as np
import pytest

from fedloom.attacks import (
    ATTACK_TYPES,
    Alie,
    Backdoor,
    MinMax,
    alie_z,
    build_attack,
    min_max_gamma,
    min_sum_gamma,
    perturbation,
)
from fedloom.attacks.model import max_pairwise_sq_distance, max_sum_sq_distance
from fedloom.errors import ConfigError


def rows(seed: int, m: int = 3, h: int = 7, d: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    own = rng.normal(0.5, 1.0, size=(m, d)).astype(np.float32)
    honest = rng.normal(0.5, 1.0, size=(h, d)).astype(np.float32)
    return own, honest


def craft(kind: str, own, honest, **params) -> np.ndarray:
    out = build_attack(kind, params).craft(own, honest, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == own.shape
    return out


def test_sign_flip_scaling_and_backdoor_boost_scale_the_own_rows():
    own, honest = rows(0)
    np.testing.assert_allclose(craft("sign_flip", own, honest), -own)
    np.testing.assert_allclose(craft("sign_flip", own, honest, scale=2.5), -2.5 * own, rtol=1e-6)
    np.testing.assert_allclose(craft("scaling", own, honest), 10 * own, rtol=1e-6)
    np.testing.assert_allclose(craft("scaling", own, honest, factor=3), 3 * own, rtol=1e-6)
    # the backdoor boosts by n = M + H (server learning rate 1) unless told otherwise
    np.testing.assert_allclose(craft("backdoor", own, honest), 10 * own, rtol=1e-6)
    np.testing.assert_allclose(craft("backdoor", own, honest, boost=4), 4 * own, rtol=1e-6)


def test_gaussian_rows_are_fresh_noise_of_the_given_std():
    own = np.zeros((40, 500), dtype=np.float32)
    out = craft("gaussian", own, own[:0], std=3.0)
    assert abs(out.mean()) < 0.05 and abs(out.std() - 3.0) < 0.05
    assert not np.array_equal(out[0], out[1])


def test_alie_z_follows_the_papers_formula():
    # s = floor(n/2 + 1) - f supporters, z = Phi^-1((n - s) / n), computed by hand
    assert alie_z(50, 12) == pytest.approx(0.582842, abs=1e-6)  # s = 14, Phi^-1(0.72)
    assert alie_z(100, 20) == pytest.approx(0.495850, abs=1e-6)  # s = 31, Phi^-1(0.69)
    assert alie_z(10, 2) == pytest.approx(0.253347, abs=1e-6)  # s = 4, Phi^-1(0.6)
    from statistics import NormalDist

    for n in range(2, 60):
        for f in range(1, n // 2):
            s = math.floor(n / 2 + 1) - f
            assert alie_z(n, f) == pytest.approx(NormalDist().inv_cdf((n - s) / n))
    # outside the paper's setting z stays finite and >= 0
    assert alie_z(1, 1) == 0.0 and math.isfinite(alie_z(5, 5)) and alie_z(5, 5) > 0
    with pytest.raises(ValueError):
        alie_z(3, 4)


def test_alie_sends_mean_minus_z_std_of_the_honest_rows():
    own, honest = rows(1)
    h = honest.astype(np.float64)
    expected = h.mean(0) - alie_z(10, 3) * h.std(0)
    out = craft("alie", own, honest)
    np.testing.assert_allclose(out, np.tile(expected, (3, 1)), rtol=1e-5, atol=1e-6)
    fixed = craft("alie", own, honest, z=1.5)
    np.testing.assert_allclose(fixed[0], h.mean(0) - 1.5 * h.std(0), rtol=1e-5, atol=1e-6)


def test_omniscient_attacks_fall_back_to_the_own_rows_with_fewer_than_two_honest():
    own, honest = rows(2)
    o = own.astype(np.float64)
    out = craft("ipm", own, honest[:1], epsilon=0.5)
    np.testing.assert_allclose(out[1], -0.5 * o.mean(0), rtol=1e-5, atol=1e-6)
    out = craft("alie", own, honest[:0], z=1.0)
    np.testing.assert_allclose(out[0], o.mean(0) - o.std(0), rtol=1e-5, atol=1e-6)


def test_ipm_sends_minus_epsilon_times_the_honest_mean():
    own, honest = rows(3)
    out = craft("ipm", own, honest)
    np.testing.assert_allclose(out[0], -0.1 * honest.astype(np.float64).mean(0), rtol=1e-5)
    assert (out == out[0]).all()


@pytest.mark.parametrize("kind", ["unit", "std", "sign"])
def test_perturbations(kind):
    _, honest = rows(4)
    h = honest.astype(np.float64)
    p = perturbation(h, kind)
    mean = h.mean(0)
    want = {"unit": -mean / np.linalg.norm(mean), "std": -h.std(0), "sign": -np.sign(mean)}
    np.testing.assert_allclose(p, want[kind])


def _max_distance(row, h):
    return float((((h - row) ** 2).sum(1)).max())


def _sum_distance(row, h):
    return float((((h - row) ** 2).sum(1)).sum())


@pytest.mark.parametrize("kind", ["unit", "std", "sign"])
@pytest.mark.parametrize("seed", [5, 6])
def test_min_max_gamma_is_the_largest_that_keeps_within_the_honest_spread(kind, seed):
    _, honest = rows(seed, h=9, d=30)
    h = honest.astype(np.float64)
    bound = max(((h[:, None] - h[None]) ** 2).sum(-1).ravel())
    assert max_pairwise_sq_distance(h) == pytest.approx(bound)
    p = perturbation(h, kind)
    gamma = min_max_gamma(h, p, 10.0, 1e-5)
    assert 0 < gamma < 19  # found inside the search range, not at its cap
    assert _max_distance(h.mean(0) + gamma * p, h) <= bound
    assert _max_distance(h.mean(0) + (gamma + 1e-3) * p, h) > bound
    # the attack sends exactly that row
    out = MinMax(perturbation=kind).craft(honest[:2], honest, np.random.default_rng(0))
    np.testing.assert_allclose(out[0], h.mean(0) + gamma * p, rtol=1e-5, atol=1e-6)
    assert _max_distance(out[0].astype(np.float64), h) <= bound * (1 + 1e-5)


@pytest.mark.parametrize("kind", ["unit", "std", "sign"])
def test_min_sum_gamma_is_the_largest_that_keeps_the_sum_of_distances(kind):
    _, honest = rows(7, h=9, d=30)
    h = honest.astype(np.float64)
    bound = max(((h[:, None] - h[None]) ** 2).sum(-1).sum(1))
    assert max_sum_sq_distance(h) == pytest.approx(bound)
    p = perturbation(h, kind)
    gamma = min_sum_gamma(h, p, 10.0, 1e-5)
    assert 0 < gamma < 19
    assert _sum_distance(h.mean(0) + gamma * p, h) <= bound
    assert _sum_distance(h.mean(0) + (gamma + 1e-3) * p, h) > bound
    out = build_attack("min_sum", {"perturbation": kind}).craft(
        honest[:1], honest, np.random.default_rng(0)
    )
    np.testing.assert_allclose(out[0], h.mean(0) + gamma * p, rtol=1e-5, atol=1e-6)


def test_min_max_search_reaches_above_gamma_init_and_stops_at_zero():
    _, honest = rows(8, h=6, d=5)
    h = honest.astype(np.float64)
    p = perturbation(h, "unit")
    big = min_max_gamma(h, p, 0.01, 1e-7)  # the boundary lies beyond 2 * gamma_init
    assert big == pytest.approx(0.02, rel=1e-4)
    same = np.tile(h[:1], (4, 1))  # no spread: only the mean itself is allowed
    assert min_max_gamma(same, np.ones(5), 10.0, 1e-5) == 0.0


def test_build_attack_defaults_and_types():
    assert set(ATTACK_TYPES) == {
        "sign_flip",
        "scaling",
        "gaussian",
        "label_flip",
        "alie",
        "ipm",
        "min_max",
        "min_sum",
        "backdoor",
    }
    from fedloom.config import ATTACKS

    assert set(ATTACK_TYPES) == set(ATTACKS) - {"none"}  # every [attack] kind is built here
    assert build_attack("alie", {}) == Alie(z=None)
    backdoor = build_attack("backdoor", {"trigger_size": 2.0, "target": 3})
    assert isinstance(backdoor, Backdoor)
    assert backdoor.trigger_size == 2 and isinstance(backdoor.trigger_size, int)
    assert backdoor.target == 3 and backdoor.poison_fraction == 0.5


@pytest.mark.parametrize(
    ("kind", "params", "fragment"),
    [
        ("scaling", {"scale": 2}, "attack.params.scale = 2: 'scaling' has no parameter"),
        ("scaling", {"scale": 2}, "accepted: factor"),
        ("label_flip", {"x": 1}, "accepted: none"),
        ("scaling", {"factor": -1.0}, "attack.params.factor = -1.0: must be > 0"),
        ("scaling", {"factor": "big"}, "attack.params.factor = 'big': expected a number"),
        ("gaussian", {"std": float("inf")}, "attack.params.std = inf: expected a finite"),
        ("alie", {"z": -0.5}, "attack.params.z = -0.5: must be >= 0"),
        ("ipm", {"epsilon": 0}, "attack.params.epsilon = 0: must be > 0"),
        ("min_max", {"perturbation": "up"}, "attack.params.perturbation = 'up': expected one"),
        ("min_sum", {"tau": 0.0}, "attack.params.tau = 0.0"),
        ("min_max", {"gamma_init": True}, "attack.params.gamma_init = True"),
        ("backdoor", {"trigger": "cross"}, "attack.params.trigger = 'cross'"),
        ("backdoor", {"trigger_size": 1.5}, "attack.params.trigger_size = 1.5: expected an int"),
        ("backdoor", {"poison_fraction": 1.5}, "attack.params.poison_fraction = 1.5: must be <="),
        ("backdoor", {"target": -1}, "attack.params.target = -1"),
        ("backdoor", {"boost": 0}, "attack.params.boost = 0"),
        ("flood", {}, "attack.kind = 'flood': expected one of sign_flip"),
    ],
)
def test_build_attack_refuses_bad_params(kind, params, fragment):
    with pytest.raises(ConfigError) as err:
        build_attack(kind, params)
    assert fragment in str(err.value)
