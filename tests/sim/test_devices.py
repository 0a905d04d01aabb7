"""Device populations and availability models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.sim.availability import DAY_S, AlwaysAvailable, Diurnal, IntervalTrace
from fedloom.sim.devices import (
    DEFAULT_TIERS,
    DeviceTier,
    lognormal_population,
    tiered_population,
    uniform_population,
)

# populations ------------------------------------------------------------------


def test_tier_shares_are_roughly_honoured():
    pop = tiered_population(20_000, np.random.default_rng(0))
    shares = np.bincount(pop.tier, minlength=len(DEFAULT_TIERS)) / len(pop)
    np.testing.assert_allclose(shares, [t.share for t in DEFAULT_TIERS], atol=0.015)


def test_tier_jitter_is_lognormal_around_the_tier_median():
    tiers = [DeviceTier("only", 1.0, 40.0, 1024.0, 2000.0, 8000.0, 50.0, 0.01, 0.05)]
    pop = tiered_population(20_000, np.random.default_rng(1), tiers=tiers, sigma=0.3)
    assert np.median(pop.compute_ms_per_sample) == pytest.approx(40.0, rel=0.02)
    assert np.std(np.log(pop.up_kbps)) == pytest.approx(0.3, rel=0.05)
    assert (pop.failure_prob == 0.05).all() and (pop.loss_rate == 0.01).all()
    flat = tiered_population(10, np.random.default_rng(1), tiers=tiers, sigma=0.0)
    assert (flat.down_kbps == 8000.0).all()


def test_generators_are_seeded():
    a = tiered_population(500, np.random.default_rng(7), availability="diurnal")
    b = tiered_population(500, np.random.default_rng(7), availability="diurnal")
    np.testing.assert_array_equal(a.up_kbps, b.up_kbps)
    np.testing.assert_array_equal(
        a.availability.available(np.arange(500), 3600.0),
        b.availability.available(np.arange(500), 3600.0),
    )
    c = lognormal_population(500, np.random.default_rng(7))
    assert np.median(c.compute_ms_per_sample) == pytest.approx(40.0, rel=0.15)
    assert (c.tier == -1).all() and isinstance(c.availability, AlwaysAvailable)


def test_compute_and_transfer_time_by_hand():
    pop = uniform_population(4, compute_ms_per_sample=50.0, up_kbps=1000.0, down_kbps=4000.0)
    clients = np.array([0, 3])
    # 300 samples at 50 ms/sample = 15 s
    np.testing.assert_allclose(pop.compute_time(clients, np.array([300, 30])), [15.0, 1.5])
    # 1 MB = 8,000 kbit at 1000 kbps = 8 s; down at 4000 kbps = 2 s
    np.testing.assert_allclose(pop.transfer_time(clients, 1_000_000, "up"), [8.0, 8.0])
    np.testing.assert_allclose(pop.transfer_time(clients, 1_000_000, "down"), [2.0, 2.0])
    lossy = uniform_population(1, up_kbps=1000.0, latency_ms=40.0, loss_rate=0.2)
    # 0.04 s latency + 8 s / (1 - 0.2)
    np.testing.assert_allclose(lossy.transfer_time(np.array([0]), 1_000_000, "up"), [10.04])
    with pytest.raises(ConfigError, match="direction"):
        pop.transfer_time(clients, 1, "sideways")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("up_kbps", 0.0),
        ("compute_ms_per_sample", np.nan),
        ("latency_ms", -1.0),
        ("loss_rate", 1.0),
        ("failure_prob", -0.1),
        ("memory_mb", np.nan),
    ],
)
def test_validation_names_field_client_and_value(field, value):
    pop = uniform_population(5)
    bad = getattr(pop, field).copy()
    bad[3] = value
    with pytest.raises(ConfigError, match=rf"'{field}' of client 3 .*got {value}"):
        replace(pop, **{field: bad})


def test_validation_of_shapes_and_tier():
    pop = uniform_population(5)
    with pytest.raises(ConfigError, match="'down_kbps' has shape"):
        replace(pop, down_kbps=np.ones(4))
    with pytest.raises(ConfigError, match="availability covers 3"):
        replace(pop, availability=AlwaysAvailable(3))
    with pytest.raises(ConfigError, match="'tier' of client 0"):
        replace(pop, tier=np.array([-2, 0, 0, 0, 0]))


def test_subset_keeps_rows_and_ids():
    pop = tiered_population(50, np.random.default_rng(2), availability="diurnal")
    idx = np.array([40, 3, 17])
    sub = pop.subset(idx)
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.ids, idx)
    np.testing.assert_array_equal(sub.compute_ms_per_sample, pop.compute_ms_per_sample[idx])
    for t in (0.0, 30_000.0, 70_000.0):
        np.testing.assert_array_equal(
            sub.availability.available(np.arange(3), t), pop.availability.available(idx, t)
        )


def test_population_of_100k_clients_is_small():
    pop = tiered_population(100_000, np.random.default_rng(0), availability="diurnal")
    assert len(pop) == 100_000
    assert pop.nbytes < 20 * 2**20


# availability -----------------------------------------------------------------


def test_diurnal_online_fraction_over_a_day():
    rng = np.random.default_rng(3)
    diurnal = Diurnal(rng.uniform(0, 24, 200), rng.uniform(0, 1, 200))
    clients = np.arange(200)
    grid = np.arange(0, DAY_S, 60.0)  # one-minute steps over day 1
    online = np.mean([diurnal.available(clients, DAY_S + t) for t in grid], axis=0)
    np.testing.assert_allclose(online, diurnal.fraction, atol=1 / 1440 + 1e-9)


def test_diurnal_window_wraps_midnight_and_next_change():
    d = Diurnal(np.array([22.0, 6.0, 0.0, 3.0]), np.array([0.25, 0.5, 0.0, 1.0]))
    c = np.arange(4)
    h = 3600.0
    # client 0 online 22:00-04:00, client 1 06:00-18:00
    np.testing.assert_array_equal(d.available(c, 1 * h), [True, False, False, True])
    np.testing.assert_array_equal(d.available(c, 12 * h), [False, True, False, True])
    np.testing.assert_array_equal(d.available(c, 23 * h), [True, False, False, True])
    np.testing.assert_allclose(d.next_change(c, 1 * h), [4 * h, 6 * h, np.inf, np.inf])
    np.testing.assert_allclose(d.next_change(c, 12 * h), [22 * h, 18 * h, np.inf, np.inf])
    with pytest.raises(ConfigError, match="fraction of client 1"):
        Diurnal(np.zeros(2), np.array([0.5, 1.5]))


def test_interval_trace_hand_example():
    trace = IntervalTrace.from_intervals([[(10, 20), (30, 40)], [(0, 5)], [], [(5, np.inf)]])
    c = np.arange(4)
    np.testing.assert_array_equal(trace.available(c, 0.0), [False, True, False, False])
    np.testing.assert_array_equal(trace.available(c, 10.0), [True, False, False, True])
    np.testing.assert_array_equal(trace.available(c, 20.0), [False, False, False, True])
    np.testing.assert_array_equal(trace.available(c, 35.0), [True, False, False, True])
    np.testing.assert_array_equal(trace.available(c, 99.0), [False, False, False, True])
    np.testing.assert_allclose(trace.next_change(c, 0.0), [10, 5, np.inf, 5])
    np.testing.assert_allclose(trace.next_change(c, 25.0), [30, np.inf, np.inf, np.inf])
    np.testing.assert_allclose(trace.next_change(c, 40.0), [np.inf] * 4)
    # a client without intervals is never available
    assert not trace.available(np.array([2]), 1e9)[0]


def test_interval_trace_with_period_wraps():
    day = DAY_S
    trace = IntervalTrace.from_intervals(
        [[(0, 3600), (82800, day)], [(100, 200)], [(0, day)]], period=day
    )
    c = np.arange(3)
    t = 3 * day + 86_000.0  # late on day 3
    np.testing.assert_array_equal(trace.available(c, t), [True, False, True])
    # 23:00-01:00 is one stretch: the flip is at 01:00 next day, not at midnight
    np.testing.assert_allclose(trace.next_change(c, t), [4 * day + 3600, 4 * day + 100, np.inf])
    np.testing.assert_array_equal(trace.available(c, 5 * day + 150), [True, True, True])
    np.testing.assert_allclose(
        trace.next_change(c, 5 * day + 150), [5 * day + 3600, 5 * day + 200, np.inf]
    )
    np.testing.assert_allclose(
        trace.next_change(c, 5 * day + 4000)[:2], [5 * day + 82800, 6 * day + 100]
    )


def test_interval_trace_matches_brute_force_on_random_traces():
    rng = np.random.default_rng(4)
    intervals = []
    for _ in range(150):
        b = np.sort(rng.choice(1000, size=2 * rng.integers(0, 5), replace=False)).astype(float)
        intervals.append(list(zip(b[::2], b[1::2], strict=True)))
    period = np.where(rng.random(150) < 0.5, 1000.0, np.inf)
    trace = IntervalTrace.from_intervals(intervals, period)
    c = rng.permutation(150)
    for t in rng.uniform(0, 3000, 12):
        got_on = trace.available(c, t)
        got_next = trace.next_change(c, t)
        for k, i in enumerate(c):

            def on(x: float, i: int = i) -> bool:
                local = x % period[i] if np.isfinite(period[i]) else x
                return any(s <= local < e for s, e in intervals[i])

            assert got_on[k] == on(t)
            if np.isfinite(got_next[k]):
                assert got_next[k] > t and on(got_next[k]) != on(t)
                assert on(got_next[k] - 1e-6) == on(t)
            else:
                assert all(on(x) == on(t) for x in t + np.linspace(0, 3000, 61))


def test_interval_trace_validation_and_subset():
    with pytest.raises(ConfigError, match="client 1: interval boundary 5.0 must be strictly"):
        IntervalTrace.from_intervals([[(0, 1)], [(10, 20), (5, 30)]])
    with pytest.raises(ConfigError, match="client 0: interval boundary 90.0 must lie within"):
        IntervalTrace.from_intervals([[(0, 90)]], period=60.0)
    with pytest.raises(ConfigError, match="inf only as the last end"):
        IntervalTrace.from_intervals([[(0, np.inf)]], period=60.0)
    merged = IntervalTrace.from_intervals([[(0, 10), (10, 20)], [(5, 6)]])
    assert merged.intervals(0) == [(0.0, 20.0)]
    sub = merged.subset(np.array([1]))
    assert len(sub) == 1 and sub.intervals(0) == [(5.0, 6.0)]


def test_always_available_and_interval_conversion():
    a = AlwaysAvailable(3)
    assert a.available(np.array([0, 2]), 1e9).all()
    assert np.isinf(a.next_change(np.array([1]), 0.0)).all()
    assert a.to_intervals().intervals(2) == [(0.0, np.inf)]
    d = Diurnal(np.array([22.0, 1.0]), np.array([0.25, 0.5]))
    as_trace = d.to_intervals()
    assert as_trace.intervals(0) == [(0.0, 4 * 3600.0), (22 * 3600.0, DAY_S)]
    c = np.arange(2)
    for t in np.arange(0, 3 * DAY_S, 1800.0):
        np.testing.assert_array_equal(as_trace.available(c, t), d.available(c, t))
        np.testing.assert_allclose(as_trace.next_change(c, t), d.next_change(c, t))
