"""Privacy accounting against dp-accounting itself, its monotonicity, calibration, errors."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.errors import ConfigError
from fedloom.privacy import MechanismEvent, compose_epsilon, epsilon, noise_multiplier_for
from fedloom.privacy.accounting import PLD_COARSE_INTERVAL, pld_interval

DELTA = 1e-5
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def direct(
    accountant: str, events, relation=ADD_REMOVE, delta: float = DELTA, interval: float = 0.0
) -> float:
    """dp-accounting's epsilon for (event, count) pairs, RDP with its default orders; PLD
    with grid spacing ``interval`` (0: the spacing fedloom picks from a coarse pass)."""
    if accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    else:
        if not interval:
            coarse = direct("pld", events, relation, delta, PLD_COARSE_INTERVAL)
            interval = min(pld_interval(coarse), PLD_COARSE_INTERVAL)
        acc = dp_accounting.pld.PLDAccountant(
            neighboring_relation=relation, value_discretization_interval=interval
        )
    for event, count in events:
        acc.compose(event, count)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    ("z", "q", "steps"),
    [(3.0, 1e-3, 1000), (1.0, 1e-3, 5000), (10.0, 1e-3, 5000), (1.0, 0.01, 1000)],
)
def test_pld_is_within_its_measured_error_of_dp_accounting_defaults(z, q, steps):
    # dp-accounting's default PLD spacing (1e-4) is itself pessimistic; at small sampling
    # rates it over-states epsilon by up to ~1%, the old 1e-3 spacing by up to ~57%.
    default = dp_accounting.pld.PLDAccountant()
    default.compose(poisson_gaussian(z, q), steps)
    ours = epsilon(z, q, steps, DELTA, "pld")
    assert ours <= default.get_epsilon(DELTA) * (1 + 2e-3)
    fine = direct("pld", [(poisson_gaussian(z, q), steps)], interval=pld_interval(ours) / 10)
    assert fine <= ours <= fine * (1 + 2e-3)  # an upper bound, within 0.2% of a finer grid


def poisson_gaussian(z: float, q: float):
    g = dp_accounting.GaussianDpEvent(z)
    return g if q == 1 else dp_accounting.PoissonSampledDpEvent(q, g)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize(("z", "q", "steps"), [(1.0, 0.01, 100), (0.8, 0.1, 20), (2.0, 1.0, 10)])
def test_epsilon_matches_dp_accounting(accountant, z, q, steps):
    expected = direct(accountant, [(poisson_gaussian(z, q), steps)])
    assert epsilon(z, q, steps, DELTA, accountant) == pytest.approx(expected, rel=1e-6)


def test_unsampled_gaussian_pld_is_the_exact_gaussian_epsilon():
    # 16 rounds of z = 2 are one Gaussian with z = 2/sqrt(16); the PLD accountant agrees.
    exact = dp_accounting.get_epsilon_gaussian(0.5, DELTA)
    assert epsilon(2.0, 1.0, 16, DELTA, "pld") == pytest.approx(exact, rel=1e-12)
    assert exact == pytest.approx(direct("pld", [(poisson_gaussian(2.0, 1.0), 16)]), rel=1e-6)


def test_fixed_size_sampling_is_rdp_without_replacement_under_replace_one():
    # Replacing one participant moves a clipped sum by 2C: the accountant sees z / 2.
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        1000, 10, dp_accounting.GaussianDpEvent(0.5)
    )
    expected = direct("rdp", [(event, 50)], REPLACE_ONE)
    got = epsilon(1.0, 0.01, 50, DELTA, "rdp", "fixed", population=1000)
    assert got == pytest.approx(expected, rel=1e-6)
    # Everyone every round: the Gaussian mechanism at twice the sensitivity.
    everyone = epsilon(2.0, 1.0, 5, DELTA, "rdp", "fixed", population=10)
    assert everyone == pytest.approx(epsilon(1.0, 1.0, 5, DELTA, "rdp"), rel=1e-12)
    assert epsilon(2.0, 1.0, 5, DELTA, "pld", "fixed", population=10) == pytest.approx(
        epsilon(1.0, 1.0, 5, DELTA, "pld"), rel=1e-12
    )


def test_population_is_informational_with_poisson_sampling():
    assert epsilon(1.0, 0.1, 10, DELTA, "rdp", population=40) == epsilon(1.0, 0.1, 10, DELTA, "rdp")


def test_pld_refuses_fixed_size_sampling():
    with pytest.raises(ConfigError, match="accountant = 'pld' does not support.*'rdp'"):
        epsilon(1.0, 0.01, 10, DELTA, "pld", "fixed", population=1000)


def test_rdp_refuses_subsampled_laplace():
    with pytest.raises(ConfigError, match="accountant = 'rdp' does not support.*'pld'"):
        compose_epsilon([MechanismEvent("laplace", 1.0, 0.1)], DELTA, "rdp")
    fixed = MechanismEvent("laplace", 1.0, 0.1, sampling="fixed", population=10)
    with pytest.raises(ConfigError, match="no accountant supports it"):
        compose_epsilon([fixed], DELTA, "rdp")


def test_to_dp_event():
    assert MechanismEvent("gaussian", 1.5, 0.1, 4).to_dp_event() == (
        dp_accounting.SelfComposedDpEvent(poisson_gaussian(1.5, 0.1), 4)
    )
    assert MechanismEvent("laplace", 2.0).to_dp_event() == dp_accounting.LaplaceDpEvent(2.0)
    fixed = MechanismEvent("gaussian", 3.0, 0.25, sampling="fixed", population=8)
    assert fixed.to_dp_event() == dp_accounting.SampledWithoutReplacementDpEvent(
        8, 2, dp_accounting.GaussianDpEvent(1.5)
    )
    assert MechanismEvent("gaussian", 0.0).to_dp_event() == dp_accounting.NonPrivateDpEvent()
    assert MechanismEvent("gaussian", math.inf).to_dp_event() == dp_accounting.NoOpDpEvent()


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_compose_heterogeneous_matches_dp_accounting(accountant):
    # DP-FedAvg rounds at two noise levels, plus adaptive clipping's noisy count release.
    events = [
        MechanismEvent("gaussian", 1.2, 0.05, 10),
        MechanismEvent("gaussian", 0.9, 0.05, 5),
        MechanismEvent("gaussian", 8.0, 0.05, 15),
        MechanismEvent("laplace", 20.0, count=2),
    ]
    expected = direct(
        accountant,
        [
            (poisson_gaussian(1.2, 0.05), 10),
            (poisson_gaussian(0.9, 0.05), 5),
            (poisson_gaussian(8.0, 0.05), 15),
            (dp_accounting.LaplaceDpEvent(20.0), 2),
        ],
    )
    assert compose_epsilon(events, DELTA, accountant) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_identical_events_group_into_counts(accountant):
    one = MechanismEvent("gaussian", 1.0, 0.05)
    grouped = compose_epsilon([replace(one, count=7)], DELTA, accountant)
    assert compose_epsilon([one] * 7, DELTA, accountant) == grouped
    assert compose_epsilon([replace(one, count=3), replace(one, count=4)], DELTA, accountant) == (
        grouped
    )


def test_unsampled_gaussians_compose_by_precision():
    events = [MechanismEvent("gaussian", 1.0, count=3), MechanismEvent("gaussian", 2.0, count=4)]
    sigma = (3 / 1.0**2 + 4 / 2.0**2) ** -0.5  # = 0.5
    assert compose_epsilon(events, DELTA, "pld") == pytest.approx(
        dp_accounting.get_epsilon_gaussian(sigma, DELTA), rel=1e-12
    )
    assert compose_epsilon(events, DELTA, "rdp") == pytest.approx(
        direct("rdp", [(dp_accounting.GaussianDpEvent(sigma), 1)]), rel=1e-9
    )


def test_free_and_non_private_releases():
    assert epsilon(math.inf, 0.1, 10, DELTA) == 0.0
    assert epsilon(1.0, 0.1, 0, DELTA) == 0.0
    assert compose_epsilon([], DELTA) == 0.0
    assert compose_epsilon([MechanismEvent("gaussian", 1.0, count=0)], DELTA) == 0.0
    for accountant in ("rdp", "pld"):
        assert epsilon(0.0, 0.1, 10, DELTA, accountant) == math.inf
    assert noise_multiplier_for(math.inf, 0.1, 10, DELTA) == 0.0
    assert noise_multiplier_for(1.0, 0.1, 0, DELTA) == 0.0


def test_one_composition_needs_one_adjacency():
    events = [
        MechanismEvent("gaussian", 1.0, 0.1),
        MechanismEvent("gaussian", 1.0, 0.1, sampling="fixed", population=10),
    ]
    with pytest.raises(ConfigError, match="mix sampling = 'poisson'.*'fixed'"):
        compose_epsilon(events, DELTA, "rdp")


GRID_Z = st.sampled_from([0.6, 0.8, 1.0, 1.5, 2.0, 4.0])
GRID_Q = st.sampled_from([0.01, 0.05, 0.2, 1.0])
GRID_STEPS = st.sampled_from([1, 10, 100, 1000])


@settings(max_examples=25, deadline=None)
@given(GRID_Z, GRID_Q, GRID_STEPS)
def test_more_noise_less_epsilon_more_steps_more_epsilon(z, q, steps):
    eps = epsilon(z, q, steps, DELTA, "rdp")
    assert 0 < eps < math.inf
    assert epsilon(1.25 * z, q, steps, DELTA, "rdp") < eps
    assert epsilon(z, q, 2 * steps, DELTA, "rdp") > eps
    assert epsilon(z, q, steps, DELTA / 10, "rdp") > eps


@settings(max_examples=10, deadline=None)
@given(GRID_Z, GRID_Q, GRID_STEPS)
def test_noise_multiplier_for_inverts_epsilon(z, q, steps):
    target = epsilon(z, q, steps, DELTA, "rdp")
    found = noise_multiplier_for(target, q, steps, DELTA, "rdp")
    assert found == pytest.approx(z, rel=2e-3)
    assert epsilon(found, q, steps, DELTA, "rdp") <= target
    assert epsilon(found * (1 - 2e-3), q, steps, DELTA, "rdp") > target  # minimal


@pytest.mark.parametrize(
    ("accountant", "sampling", "population"),
    [("pld", "poisson", None), ("rdp", "fixed", 40)],
)
def test_noise_multiplier_for_meets_the_target(accountant, sampling, population):
    z = noise_multiplier_for(2.0, 0.1, 20, DELTA, accountant, sampling, population)
    assert epsilon(z, 0.1, 20, DELTA, accountant, sampling, population) <= 2.0
    assert epsilon(0.995 * z, 0.1, 20, DELTA, accountant, sampling, population) > 2.0


def test_noise_multiplier_for_pld_inverts_epsilon():
    target = epsilon(1.3, 0.1, 20, DELTA, "pld")
    assert noise_multiplier_for(target, 0.1, 20, DELTA, "pld") == pytest.approx(1.3, rel=2e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta": 0.0}, r"delta = 0\.0: must be in \(0, 1\)"),
        ({"delta": 1.0}, r"delta = 1\.0: must be in \(0, 1\)"),
        ({"delta": math.nan}, r"delta = nan"),
        ({"sampling_rate": 0.0}, r"sampling_rate = 0\.0: must be in \(0, 1\]"),
        ({"sampling_rate": 1.5}, r"sampling_rate = 1\.5: must be in \(0, 1\]"),
        ({"steps": -1}, r"steps = -1: must be an integer >= 0"),
        ({"steps": 2.5}, r"steps = 2\.5: must be an integer >= 0"),
        ({"noise_multiplier": -1.0}, r"noise_multiplier = -1\.0: must be >= 0"),
        ({"accountant": "moments"}, r"accountant = 'moments': must be 'rdp' or 'pld'"),
        ({"sampling": "shuffle"}, r"sampling = 'shuffle': must be 'poisson' or 'fixed'"),
        ({"sampling": "fixed"}, r"population = None: sampling = 'fixed' needs"),
        (
            {"sampling": "fixed", "population": 25},
            r"sampling_rate = 0\.1: with sampling = 'fixed' it must be m / population",
        ),
        ({"population": 0}, r"population = 0: must be an integer >= 1"),
    ],
)
def test_epsilon_rejects_bad_parameters(kwargs, message):
    args = {"noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": 10, "delta": DELTA}
    with pytest.raises(ConfigError, match=message):
        epsilon(**(args | kwargs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0}, r"target_epsilon = 0\.0: must be > 0"),
        ({"target_epsilon": -1.0}, r"target_epsilon = -1\.0: must be > 0"),
        ({"delta": 2.0}, r"delta = 2\.0: must be in \(0, 1\)"),
        ({"steps": -3}, r"steps = -3: must be an integer >= 0"),
        ({"sampling_rate": 0.0}, r"sampling_rate = 0\.0"),
        ({"accountant": "gdp"}, r"accountant = 'gdp'"),
        (
            {"target_epsilon": 1e-6, "sampling_rate": 1.0, "steps": 1000, "accountant": "rdp"},
            r"target_epsilon = 1e-06 cannot be met: even noise_multiplier = 10000",
        ),
    ],
)
def test_noise_multiplier_for_rejects_bad_parameters(kwargs, message):
    args = {"target_epsilon": 1.0, "sampling_rate": 0.1, "steps": 10, "delta": DELTA}
    with pytest.raises(ConfigError, match=message):
        noise_multiplier_for(**(args | kwargs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "exponential"}, r"kind = 'exponential': must be 'gaussian' or 'laplace'"),
        ({"count": -1}, r"count = -1: must be an integer >= 0"),
        ({"count": True}, r"count = True"),
        ({"noise_multiplier": math.nan}, r"noise_multiplier = nan"),
    ],
)
def test_mechanism_event_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MechanismEvent(**({"kind": "gaussian", "noise_multiplier": 1.0} | kwargs))


def test_compose_epsilon_validates_delta_and_accountant():
    with pytest.raises(ConfigError, match=r"delta = -1"):
        compose_epsilon([], -1)
    with pytest.raises(ConfigError, match=r"accountant = 'x'"):
        compose_epsilon([], DELTA, "x")


def test_import_is_cheap():
    code = (
        "import sys, fedloom.privacy\n"
        "heavy = [m for m in ('dp_accounting', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
