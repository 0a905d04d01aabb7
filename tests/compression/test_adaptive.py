"""The adaptive policy: per-client settings from upload rate, latency and time left."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.compression.adaptive import AdaptivePolicy, planned_length, time_left


class FakeCodec:
    """A top-k-like codec: 12-byte header and 8 bytes per kept value."""

    ladder = (0.1, 0.01, 0.001)
    default = 0.01

    def size_bound(self, dim: int, setting: float) -> int:
        return 12 + 8 * math.ceil(setting * dim)


CODEC = FakeCodec()
DIM = 10_000
BOUNDS = {s: CODEC.size_bound(DIM, s) for s in CODEC.ladder}  # 8012, 812, 92
RANK = {s: i for i, s in enumerate(CODEC.ladder)}  # 0 densest

rates = st.floats(min_value=1.0, max_value=1e7, allow_nan=False)
times = st.floats(min_value=-5.0, max_value=100.0, allow_nan=False)
latencies = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)
margins = st.floats(min_value=0.05, max_value=1.0)


def _choose(rate, latency, left, margin=0.8):
    return AdaptivePolicy(margin).choose(
        CODEC, DIM, np.asarray(rate, float), np.asarray(latency, float), np.asarray(left, float)
    )


def test_known_budgets_pick_the_densest_setting_that_fits():
    # budget = (0.8 * 10 - 0) * rate
    choice = _choose([1002.0, 102.0, 12.0, 1.0], [0.0] * 4, [10.0] * 4)
    np.testing.assert_array_equal(choice.settings, [0.1, 0.01, 0.001, 0.001])
    np.testing.assert_array_equal(choice.fits, [True, True, True, False])
    np.testing.assert_allclose(choice.budget_bytes, [8016.0, 816.0, 96.0, 8.0])
    assert choice.settings.dtype == np.float64 and choice.fits.dtype == bool


def test_latency_and_margin_shrink_the_budget():
    # 0.5 * 10 - 4 = 1 s at 1000 B/s: 1000 bytes, only the 812-byte rung fits
    choice = _choose([1000.0], [4.0], [10.0], margin=0.5)
    assert choice.budget_bytes[0] == pytest.approx(1000.0)
    assert choice.settings[0] == 0.01 and choice.fits[0]


@settings(max_examples=200, deadline=None)
@given(rates, rates, latencies, times, margins)
def test_faster_links_get_denser_or_equal_settings(r1, r2, latency, left, margin):
    slow, fast = sorted((r1, r2))
    choice = _choose([slow, fast], [latency] * 2, [left] * 2, margin)
    assert RANK[choice.settings[1]] <= RANK[choice.settings[0]]
    assert choice.fits[1] >= choice.fits[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(rates, latencies, times), min_size=1, max_size=8), margins)
def test_a_fitting_choice_is_within_its_budget_and_the_densest(clients, margin):
    rate, latency, left = (np.array(c, float) for c in zip(*clients, strict=True))
    choice = _choose(rate, latency, left, margin)
    for k in range(len(clients)):
        budget = choice.budget_bytes[k]
        assert budget == pytest.approx((margin * left[k] - latency[k]) * rate[k])
        s = choice.settings[k]
        if choice.fits[k]:
            assert BOUNDS[s] <= budget
            denser = CODEC.ladder[: RANK[s]]
            assert all(BOUNDS[d] > budget for d in denser)
        else:
            assert s == CODEC.ladder[-1]
            assert all(b > budget for b in BOUNDS.values())


@settings(max_examples=200, deadline=None)
@given(rates, latencies, times, margins)
def test_a_bandwidth_drop_gives_a_sparser_or_equal_setting(rate, latency, left, margin):
    before = _choose([rate], [latency], [left], margin)
    after = _choose([rate / 10], [latency], [left], margin)
    assert RANK[after.settings[0]] >= RANK[before.settings[0]]


def test_nothing_fits_gives_the_sparsest_setting():
    # no time left at all (deadline passed), or a link too slow for even the header
    choice = _choose([1e9, 1e9, 1.0], [0.0, 5.0, 0.0], [-1.0, 5.0, 10.0])
    np.testing.assert_array_equal(choice.settings, [0.001] * 3)
    np.testing.assert_array_equal(choice.fits, [False] * 3)
    assert (choice.budget_bytes[:2] < 0).all()


def test_unknown_rate_gets_the_default():
    choice = _choose([np.nan, 0.0, -3.0, 1e6], [0.0] * 4, [10.0] * 4)
    np.testing.assert_array_equal(choice.settings, [0.01, 0.01, 0.01, 0.1])
    np.testing.assert_array_equal(choice.fits, [False, False, False, True])
    assert np.isnan(choice.budget_bytes[:3]).all()


def test_unknown_time_left_gets_the_default():
    choice = _choose([1e6], [0.0], [np.nan])
    assert choice.settings[0] == CODEC.default and not choice.fits[0]


def test_no_deadline_gets_the_default_and_fits():
    left = time_left(None, np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert np.isposinf(left).all()
    choice = _choose([1.0, np.nan], [0.0, 0.0], left)
    np.testing.assert_array_equal(choice.settings, [CODEC.default] * 2)
    np.testing.assert_array_equal(choice.fits, [True, True])
    assert np.isposinf(choice.budget_bytes).all()


def test_nan_latency_counts_as_zero():
    assert _choose([102.0], [np.nan], [10.0]).settings[0] == 0.01


def test_infinite_rate_fits_the_densest_unless_no_time_is_left():
    choice = _choose([np.inf, np.inf], [0.0, 8.0], [10.0, 10.0])
    np.testing.assert_array_equal(choice.settings, [0.1, 0.001])
    np.testing.assert_array_equal(choice.fits, [True, False])


def test_time_left_subtracts_download_and_compute():
    left = time_left(30.0, np.array([1.0, 5.0, 20.0]), np.array([2.0, 10.0, 15.0]))
    np.testing.assert_allclose(left, [27.0, 15.0, -5.0])
    assert left.dtype == np.float64
    assert np.isnan(time_left(30.0, np.array([np.nan]), np.array([1.0]))).all()


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="margin"):
        AdaptivePolicy(0.0)
    with pytest.raises(ValueError, match="margin"):
        AdaptivePolicy(1.5)
    with pytest.raises(ValueError, match="dim"):
        AdaptivePolicy().choose(CODEC, 0, np.ones(1), np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="latency_s"):
        AdaptivePolicy().choose(CODEC, DIM, np.ones(2), np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match="deadline_s"):
        time_left(float("nan"), np.zeros(1), np.zeros(1))


def _planned(busy, rate, latency=0.0, deadline=None, margin=0.8, d=1000):
    """Settings of the fake codec for clients with ``busy`` seconds of download and
    training and ``rate`` bytes/s, under the round's planned length."""
    codec = FakeCodec()
    busy = np.asarray(busy, dtype=np.float64)
    rate = np.asarray(rate, dtype=np.float64)
    lat = np.full(busy.shape, latency)
    up = lat + codec.size_bound(d, codec.default) / rate
    length = planned_length(deadline, busy, np.zeros_like(busy), up, margin)
    left = time_left(length, busy, np.zeros_like(busy))
    return AdaptivePolicy(margin).choose(codec, d, rate, lat, left), length


def test_alike_clients_keep_the_default_setting() -> None:
    choice, _ = _planned([0.5] * 4, [1e4] * 4, latency=0.01)
    assert list(choice.settings) == [FakeCodec().default] * 4 and choice.fits.all()


def test_spare_time_buys_a_denser_setting_and_a_slow_link_a_sparser_one() -> None:
    # client 0 trains fast (it would wait for the others), client 3's link is 20x slower
    choice, length = _planned([0.05, 1.0, 1.0, 1.0], [1e4, 1e4, 1e4, 5e2])
    s = choice.settings
    default = FakeCodec().default
    assert s[0] > default and s[1] == s[2] == default and s[3] < default
    assert length < 2.0  # the slow link does not set the round's length


def test_the_planned_length_never_passes_the_deadline() -> None:
    _, length = _planned([0.5, 0.5], [1.0, 1.0], deadline=3.0)  # a default upload: minutes
    assert length == 3.0
    assert planned_length(None, np.array([np.nan]), np.array([0.0]), np.array([1.0]), 0.8) is None
