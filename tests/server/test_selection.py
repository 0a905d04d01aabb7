"""Client selectors: cohort contract, determinism, resume, and each algorithm's preferences."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.errors import CheckpointError, ConfigError, FedloomError
from fedloom.server.selection import (
    AvailabilitySelector,
    DataQualitySelector,
    FairnessGuard,
    OortSelector,
    PowerOfChoiceSelector,
    ReliabilitySelector,
    Selector,
    UniformSelector,
    make_selector,
)
from fedloom.server.stats import HOURS, ClientStats

N = 100
ALL = np.arange(N, dtype=np.int64)


def population() -> ClientStats:
    """100 clients with known, varied signals; a quarter have never reported anything.

    ids 0-49 have reliability 0.9, ids 50-99 reliability 0.3; ids 0-19 are never online
    during hours 0-11; ids 75-99 have unknown loss and duration (never trained).
    """
    i = np.arange(N)
    online = np.full((N, HOURS), 0.8, dtype=np.float32)
    online[:20, :12] = 0.0
    loss = 0.5 + (i % 10) / 10
    duration = 100.0 + 10.0 * (i % 7)
    unknown = i >= 75
    return ClientStats(
        data_size=(50 + 10 * (i % 13)).astype(np.int64),
        label_entropy=np.log(2 + i % 9).astype(np.float64),
        selected=np.where(unknown, 0, 1 + i % 4).astype(np.int64),
        completed=np.where(unknown, 0, 1 + i % 3).astype(np.int64),
        reliability=np.where(i < 50, 0.9, 0.3),
        last_round=np.where(unknown, 0, 1 + i % 5).astype(np.int64),
        loss=np.where(unknown, np.nan, loss),
        loss_sq=np.where(unknown, np.nan, loss**2 * 1.1),
        duration=np.where(unknown, np.nan, duration),
        online_prob=online,
        flags=np.zeros(N, dtype=np.int32),
    )


def fresh_population() -> ClientStats:
    """100 clients nobody knows anything about yet (equal data, no history)."""
    return ClientStats(
        data_size=np.full(N, 100, dtype=np.int64),
        label_entropy=np.full(N, math.log(10)),
        selected=np.zeros(N, dtype=np.int64),
        completed=np.zeros(N, dtype=np.int64),
        reliability=np.full(N, 0.5),
        last_round=np.zeros(N, dtype=np.int64),
        loss=np.full(N, np.nan),
        loss_sq=np.full(N, np.nan),
        duration=np.full(N, np.nan),
        online_prob=np.ones((N, HOURS), dtype=np.float32),
        flags=np.zeros(N, dtype=np.int32),
    )


def train(stats: ClientStats, cohort: np.ndarray, rnd: int, duration: np.ndarray) -> None:
    """What the registry records after a round in which ``cohort`` trained (in place)."""
    stats.selected[cohort] += 1
    stats.completed[cohort] += 1
    stats.last_round[cohort] = rnd
    stats.loss[cohort] = 1.0
    stats.loss_sq[cohort] = 1.0
    stats.duration[cohort] = duration[cohort]


FACTORIES: dict[str, Callable[[], Selector]] = {
    "uniform": UniformSelector,
    "availability": AvailabilitySelector,
    "data_quality": DataQualitySelector,
    "reliability": ReliabilitySelector,
    "power_of_choice": PowerOfChoiceSelector,
    "oort": OortSelector,
    "oort_blacklist": lambda: OortSelector(blacklist_rounds=2, preferred_duration=110.0),
    "fair_reliability": lambda: FairnessGuard(ReliabilitySelector(power=4.0), max_share=0.1),
    "fair_oort": lambda: FairnessGuard(OortSelector(), max_share=0.2),
}


def counts(selector: Selector, stats: ClientStats, k: int, draws: int, **kw) -> np.ndarray:
    """How often each client was picked over ``draws`` independently seeded selections."""
    hits = np.zeros(stats.num_clients, dtype=np.int64)
    for seed in range(draws):
        hits[selector.select(ALL, k, 1, np.random.default_rng(seed), stats, **kw)] += 1
    return hits


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("kind", list(FACTORIES))
@settings(max_examples=60, deadline=None)
@given(
    mask=st.lists(st.booleans(), min_size=N, max_size=N),
    k=st.integers(0, 40),
    rnd=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_cohort_contract(kind: str, mask: list[bool], k: int, rnd: int, seed: int) -> None:
    available = ALL[np.array(mask)]
    cohort = FACTORIES[kind]().select(
        available, k, rnd, np.random.default_rng(seed), population(), now=3600.0 * (rnd % 24)
    )
    assert cohort.dtype == np.int64
    assert len(cohort) == min(k, len(available))
    assert np.all(np.diff(cohort) > 0)  # sorted and distinct
    assert np.isin(cohort, available).all()


@pytest.mark.parametrize("kind", list(FACTORIES))
@pytest.mark.parametrize("available", [ALL[:0], ALL[7:8], ALL[[3, 60, 90]]])
def test_tiny_availability_returns_everyone(kind: str, available: np.ndarray) -> None:
    cohort = FACTORIES[kind]().select(available, 5, 3, np.random.default_rng(0), population())
    np.testing.assert_array_equal(cohort, available)


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_same_seed_same_cohort(kind: str) -> None:
    stats = population()
    cohorts = [
        FACTORIES[kind]().select(ALL, 10, 5, np.random.default_rng(42), stats) for _ in range(2)
    ]
    np.testing.assert_array_equal(cohorts[0], cohorts[1])
    others = {
        tuple(FACTORIES[kind]().select(ALL, 10, 5, np.random.default_rng(s), stats))
        for s in range(20)
    }
    assert len(others) > 1  # the generator, not a fixed rule, decides


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_state_round_trip_through_json_repeats_selections(kind: str) -> None:
    stats = population()
    duration = 100.0 + 900.0 * (ALL % 5 == 0)
    original, rng = FACTORIES[kind](), np.random.default_rng(7)
    for rnd in range(1, 13):
        train(stats, original.select(ALL, 10, rnd, rng, stats), rnd, duration)

    resumed = FACTORIES[kind]()
    resumed.load_state_dict(json.loads(json.dumps(original.state_dict())))
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = rng.bit_generator.state
    for rnd in range(13, 40):
        a = original.select(ALL, 10, rnd, rng, stats)
        b = resumed.select(ALL, 10, rnd, resumed_rng, stats)
        np.testing.assert_array_equal(a, b)
        train(stats, a, rnd, duration)
    assert original.state_dict() == resumed.state_dict()


@pytest.mark.parametrize("kind", [k for k in FACTORIES if k != "uniform"])
def test_selectors_need_stats(kind: str) -> None:
    selector = FACTORIES[kind]()
    with pytest.raises(FedloomError, match=re.escape(f"{selector.name!r} selector needs")):
        selector.select(ALL, 3, 1, np.random.default_rng(0))


@pytest.mark.parametrize("kind", [k for k in FACTORIES if k != "uniform"])
def test_unregistered_ids_are_rejected(kind: str) -> None:
    with pytest.raises(FedloomError, match="client id 100 is not registered"):
        FACTORIES[kind]().select(np.array([1, 100]), 1, 1, np.random.default_rng(0), population())


def test_negative_k_is_rejected() -> None:
    with pytest.raises(FedloomError, match="k = -1"):
        ReliabilitySelector().select(ALL, -1, 4, np.random.default_rng(0), population())


def test_state_of_another_selector_is_refused() -> None:
    with pytest.raises(CheckpointError, match="oort"):
        OortSelector().load_state_dict(UniformSelector().state_dict())
    with pytest.raises(CheckpointError, match="uniform"):
        UniformSelector().load_state_dict(OortSelector().state_dict())
    guard = FairnessGuard(UniformSelector(), 0.5)
    with pytest.raises(CheckpointError, match="uniform\\+fair"):
        guard.load_state_dict({"name": "oort+fair", "inner": OortSelector().state_dict()})


# --------------------------------------------------------------------------- uniform


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [0, 1, 7, 30])
@pytest.mark.parametrize(
    "available", [np.arange(40, 80), np.random.default_rng(99).permutation(N)[:31]]
)
def test_uniform_draws_exactly_as_before(seed: int, k: int, available: np.ndarray) -> None:
    old = np.sort(np.random.default_rng(seed).choice(available, size=k, replace=False))
    new = UniformSelector().select(available, k, 1, np.random.default_rng(seed))
    np.testing.assert_array_equal(new, old)


def test_uniform_old_call_and_short_supply() -> None:
    rng_old, rng_new = np.random.default_rng(3), np.random.default_rng(3)
    available = np.arange(5)
    old = np.sort(rng_old.choice(available, size=5, replace=False))
    np.testing.assert_array_equal(UniformSelector().select(available, 9, 2, rng_new), old)
    assert rng_old.bit_generator.state == rng_new.bit_generator.state


# --------------------------------------------------------------------------- proportional


def test_reliability_frequency_ratio_follows_the_power() -> None:
    hits = counts(ReliabilitySelector(power=2.0), population(), k=1, draws=6000)
    ratio = hits[:50].mean() / hits[50:].mean()
    assert ratio == pytest.approx((0.9 / 0.3) ** 2, rel=0.15)


def test_reliability_power_zero_is_uniform_over_groups() -> None:
    hits = counts(ReliabilitySelector(power=0.0), population(), k=1, draws=4000)
    assert hits[:50].sum() / hits.sum() == pytest.approx(0.5, abs=0.04)


def test_data_quality_weights_formula() -> None:
    stats = population()
    ids = np.array([0, 10, 80])
    w = DataQualitySelector(size_power=1.0, entropy_power=2.0, loss_power=0.5).weights(
        ids, stats, 0.0
    )
    mean_loss = np.nanmean(stats.loss)  # client 80 never reported a loss
    loss = np.array([stats.loss[0], stats.loss[10], mean_loss])
    entropy = stats.label_entropy[ids] / stats.label_entropy.max()
    expected = stats.data_size[ids] * entropy**2 * np.sqrt(1 + loss)
    np.testing.assert_allclose(w, expected)
    no_loss = replace(stats, loss=np.full(N, np.nan))
    np.testing.assert_allclose(
        DataQualitySelector(size_power=0, entropy_power=0).weights(ids, no_loss, 0.0), 2.0
    )


def test_data_quality_prefers_larger_and_more_diverse_clients() -> None:
    base = fresh_population()
    bigger = replace(base, data_size=np.where(ALL < 50, 400, 100).astype(np.int64))
    hits = counts(DataQualitySelector(), bigger, k=1, draws=4000)
    assert hits[:50].mean() / hits[50:].mean() == pytest.approx(4.0, rel=0.15)

    diverse = replace(base, label_entropy=np.where(ALL < 50, math.log(10), math.log(10) / 4))
    hits = counts(DataQualitySelector(), diverse, k=1, draws=4000)
    assert hits[:50].mean() / hits[50:].mean() == pytest.approx(4.0, rel=0.15)

    single_label = replace(base, label_entropy=np.where(ALL < 90, math.log(10), 0.0))
    hits = counts(DataQualitySelector(), single_label, k=10, draws=300)
    assert hits[90:].sum() == 0  # weight 0: only when nobody else is left


def test_availability_avoids_clients_predicted_offline() -> None:
    stats = population()  # ids 0-19 are offline at hours 0-11
    night = counts(AvailabilitySelector(round_s=600), stats, k=10, draws=300, now=2 * 3600.0)
    assert night[:20].sum() == 0
    assert night[20:].min() > 0
    day = counts(AvailabilitySelector(round_s=600), stats, k=10, draws=300, now=14 * 3600.0)
    assert day[:20].sum() / day.sum() == pytest.approx(0.2, abs=0.04)


def test_availability_takes_offline_clients_only_when_nobody_else_is_left() -> None:
    available = np.arange(15, 25)  # 15-19 offline, 20-24 online at hour 2
    cohort = AvailabilitySelector(round_s=60).select(
        available, 7, 1, np.random.default_rng(0), population(), now=7200.0
    )
    assert set(range(20, 25)) <= set(cohort.tolist())


def test_availability_round_length_defaults_to_the_median_duration() -> None:
    online = np.ones((N, HOURS), dtype=np.float32)
    online[:50, 12] = 0.0  # ids 0-49 go offline at noon
    stats = replace(population(), online_prob=online)  # median known duration: 130 s
    now = 12 * 3600.0 - 100.0
    ids = np.array([0, 60])
    np.testing.assert_allclose(AvailabilitySelector().weights(ids, stats, now), [0.0, 1.0])
    np.testing.assert_allclose(
        AvailabilitySelector(round_s=50).weights(ids, stats, now), [1.0, 1.0]
    )
    unknown = replace(stats, duration=np.full(N, np.nan))  # 600 s by default
    np.testing.assert_allclose(
        AvailabilitySelector().weights(ids, unknown, 12 * 3600.0 - 500), [0.0, 1.0]
    )


# --------------------------------------------------------------------------- power of choice


def test_power_of_choice_with_every_client_as_candidate_takes_the_highest_losses() -> None:
    stats = replace(population(), loss=np.linspace(0.1, 2.0, N))
    cohort = PowerOfChoiceSelector(candidates=N).select(ALL, 8, 1, np.random.default_rng(0), stats)
    np.testing.assert_array_equal(cohort, np.arange(92, 100))


def test_power_of_choice_explores_clients_without_a_loss_first() -> None:
    stats = population()  # 75-99 never reported a loss
    cohort = PowerOfChoiceSelector(candidates=N).select(ALL, 10, 1, np.random.default_rng(1), stats)
    assert (cohort >= 75).all()


def test_power_of_choice_picks_the_highest_loss_among_its_candidates() -> None:
    stats = replace(population(), loss=np.random.default_rng(9).random(N))
    selector = PowerOfChoiceSelector(factor=2.0)
    for seed in range(50):
        rng = np.random.default_rng(seed)
        cohort = selector.select(ALL, 5, 1, rng, stats)
        # Replay the candidate draw: the cohort is the top 5 of those 10 by loss.
        replay = np.random.default_rng(seed)
        clocks = replay.exponential(size=N)
        candidates = np.argsort(clocks / stats.data_size)[:10]
        top = candidates[np.argsort(-stats.loss[candidates])[:5]]
        np.testing.assert_array_equal(cohort, np.sort(top))
    uniform = counts(UniformSelector(), stats, 5, 400)
    biased = counts(selector, stats, 5, 400)
    assert stats.loss @ biased / biased.sum() > stats.loss @ uniform / uniform.sum() + 0.1


def test_power_of_choice_breaks_ties_at_random() -> None:
    stats = replace(fresh_population(), loss=np.ones(N))
    hits = counts(PowerOfChoiceSelector(candidates=N), stats, 10, 300)
    assert hits.min() > 0


# --------------------------------------------------------------------------- oort


def test_oort_exploration_factor_decays_to_its_floor() -> None:
    selector, stats, rng = OortSelector(), population(), np.random.default_rng(0)
    used = {}
    for rnd in range(1, 61):
        used[rnd] = selector.epsilon
        selector.select(ALL, 10, rnd, rng, stats)
    assert used[1] == 0.9
    assert used[10] == pytest.approx(0.9 * 0.98**9)
    assert used[60] == 0.3
    assert selector.state_dict()["epsilon"] == 0.3


def test_oort_first_round_explores_and_fills_from_either_group() -> None:
    stats = population()  # 75 explored, 25 unexplored
    fresh = np.arange(75, 100)
    cohort = OortSelector().select(ALL, 10, 1, np.random.default_rng(0), stats)
    assert np.isin(cohort, fresh).sum() == 9  # eps = 0.9: one exploited, nine explored
    cohort = OortSelector().select(ALL, 40, 1, np.random.default_rng(0), stats)
    assert np.isin(fresh, cohort).all()  # 36 to explore, only 25 unexplored: rest exploited
    cohort = OortSelector(exploration=0.3).select(ALL, 90, 1, np.random.default_rng(0), stats)
    assert len(cohort) == 90 and np.isin(fresh, cohort).all()


def simulate_oort(selector: Selector, rounds: int, seed: int = 0) -> tuple[np.ndarray, ClientStats]:
    """Rounds over fresh clients; ids 80-99 take 10x longer, every loss is equal."""
    stats, rng = fresh_population(), np.random.default_rng(seed)
    duration = np.where(ALL >= 80, 1000.0, 100.0)
    picks = np.zeros((rounds, N), dtype=bool)
    for rnd in range(1, rounds + 1):
        cohort = selector.select(ALL, 10, rnd, rng, stats)
        picks[rnd - 1, cohort] = True
        train(stats, cohort, rnd, duration)
    return picks, stats


def test_oort_avoids_slow_clients_after_exploring_them() -> None:
    oort, _ = simulate_oort(OortSelector(), 100)
    uniform, _ = simulate_oort(UniformSelector(), 100)
    late = slice(60, 100)
    oort_slow = oort[late, 80:].sum() / oort[late].sum()
    uniform_slow = uniform[late, 80:].sum() / uniform[late].sum()
    assert uniform_slow == pytest.approx(0.2, abs=0.05)
    assert oort_slow < 0.05
    assert oort[:, 80:].any(axis=0).all()  # every slow client was explored once


def test_oort_explores_every_client() -> None:
    picks, stats = simulate_oort(OortSelector(), 25)
    assert (stats.selected > 0).all()
    assert np.isfinite(stats.loss_sq).all()


def test_oort_exploits_high_utility_clients() -> None:
    stats = population()
    stats.loss_sq[:75] = 0.01
    stats.loss_sq[:5] = 100.0  # five explored clients with far larger loss
    selector = OortSelector(exploration=0.0, min_exploration=0.0, clip_quantile=1.0)
    hits = counts(selector, stats, k=5, draws=100)
    assert hits[:5].sum() / hits.sum() > 0.9


def test_oort_preferred_duration_starts_at_a_duration_quantile() -> None:
    selector = OortSelector(duration_quantile=0.5)
    selector.select(ALL, 10, 1, np.random.default_rng(0), fresh_population())
    assert selector.preferred_duration is None  # nothing known yet
    stats = population()
    selector.select(ALL, 10, 2, np.random.default_rng(0), stats)
    median = float(np.median(stats.duration[np.isfinite(stats.duration)]))
    assert selector.preferred_duration == median
    assert selector.pacer_step == median


def pacer_run(losses: list[float]) -> list[float]:
    """Preferred duration after each round, with every client's loss set per round."""
    selector = OortSelector(preferred_duration=100.0, pacer_step=50.0, pacer_window=2)
    stats, rng, seen = fresh_population(), np.random.default_rng(0), []
    for rnd, loss in enumerate(losses, start=1):
        stats.loss_sq[:] = loss
        stats.duration[:] = 100.0
        selector.select(ALL, 10, rnd, rng, stats)
        seen.append(selector.preferred_duration)
    return seen


def test_oort_pacer_relaxes_the_preferred_duration_when_utility_falls() -> None:
    falling = pacer_run([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert falling == [100.0, 100.0, 100.0, 150.0, 150.0, 200.0, 200.0]
    flat = pacer_run([1.0] * 7)
    assert flat == [100.0] * 7
    rising = pacer_run([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert rising == [100.0] * 6


def test_oort_blacklist_only_uses_overselected_clients_as_a_last_resort() -> None:
    stats = population()
    stats.selected[:] = 0
    stats.selected[:70] = 9  # 70 of the 75 explored clients are over-selected
    selector = OortSelector(exploration=0.0, min_exploration=0.0, blacklist_rounds=5)
    cohort = selector.select(ALL[:75], 5, 1, np.random.default_rng(0), stats)
    np.testing.assert_array_equal(cohort, np.arange(70, 75))
    cohort = selector.select(ALL[:75], 8, 2, np.random.default_rng(0), stats)
    assert np.isin(np.arange(70, 75), cohort).all()


# --------------------------------------------------------------------------- fairness


def test_fairness_guard_caps_participation() -> None:
    def run(selector: Selector) -> np.ndarray:
        stats = replace(fresh_population(), reliability=np.where(ALL < 5, 0.99, 0.05))
        rng, worst = np.random.default_rng(0), np.zeros(50)
        for rnd in range(1, 51):
            cohort = selector.select(ALL, 10, rnd, rng, stats)
            assert len(cohort) == 10
            stats.selected[cohort] += 1
            worst[rnd - 1] = stats.selected.max() - (0.2 * rnd + 1)
        return worst

    inner = ReliabilitySelector(power=4.0)
    assert run(inner).max() > 10  # unguarded, the five favourites are picked every round
    guard = FairnessGuard(ReliabilitySelector(power=4.0), max_share=0.2)
    assert guard.name == "reliability+fair"
    assert run(guard).max() <= 1e-9


def test_fairness_guard_adds_back_the_least_selected_when_short() -> None:
    stats = population()
    stats.selected[[3, 60, 90]] = [5, 2, 4]
    cohort = FairnessGuard(UniformSelector(), max_share=0.1).select(
        np.array([3, 60, 90]), 2, 1, np.random.default_rng(0), stats
    )
    np.testing.assert_array_equal(cohort, [60, 90])


# --------------------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("uniform", UniformSelector),
        ("availability", AvailabilitySelector),
        ("data_quality", DataQualitySelector),
        ("reliability", ReliabilitySelector),
        ("power_of_choice", PowerOfChoiceSelector),
        ("oort", OortSelector),
    ],
)
def test_make_selector_builds_each_selector(name: str, cls: type) -> None:
    selector = make_selector(name)
    assert isinstance(selector, cls)
    assert selector.name == name
    guarded = make_selector(name, max_share=0.3)
    assert isinstance(guarded, FairnessGuard)
    assert isinstance(guarded.inner, cls)
    assert guarded.name == f"{name}+fair"


def test_make_selector_passes_parameters() -> None:
    selector = make_selector("oort", exploration=0.5, min_exploration=0.1, pacer_window=5)
    assert isinstance(selector, OortSelector)
    assert selector.epsilon == 0.5 and selector.pacer_window == 5
    assert make_selector("reliability", power=3.0).power == 3.0


def test_make_selector_rejects_unknown_names_and_parameters() -> None:
    with pytest.raises(ConfigError, match="'random'.*uniform, availability.*oort"):
        make_selector("random")
    with pytest.raises(ConfigError, match="'exploraton'"):
        make_selector("oort", exploraton=0.5)
    with pytest.raises(ConfigError, match="'power'"):
        make_selector("uniform", power=2.0)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: OortSelector(exploration=1.5), "oort.exploration = 1.5"),
        (lambda: OortSelector(min_exploration=0.95), "oort.min_exploration = 0.95"),
        (lambda: OortSelector(exploration_decay=0.0), "oort.exploration_decay = 0.0"),
        (lambda: OortSelector(cutoff=0.0), "oort.cutoff = 0.0"),
        (lambda: OortSelector(pacer_window=0), "oort.pacer_window = 0"),
        (lambda: OortSelector(preferred_duration=-1.0), "oort.preferred_duration = -1.0"),
        (lambda: OortSelector(blacklist_rounds=0), "oort.blacklist_rounds = 0"),
        (lambda: ReliabilitySelector(power=-1.0), "reliability.power = -1.0"),
        (lambda: DataQualitySelector(loss_power=math.nan), "data_quality.loss_power = nan"),
        (lambda: AvailabilitySelector(round_s=0.0), "availability.round_s = 0.0"),
        (lambda: PowerOfChoiceSelector(candidates=0), "power_of_choice.candidates = 0"),
        (lambda: PowerOfChoiceSelector(factor=0.5), "power_of_choice.factor = 0.5"),
        (lambda: make_selector("uniform", max_share=0.0), "max_share = 0.0"),
    ],
)
def test_bad_parameters_name_field_and_value(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", "\\.")):
        build()
