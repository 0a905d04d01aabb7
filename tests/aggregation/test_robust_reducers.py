"""Byzantine-robust aggregation rules: each against its definition, their resistance
to outlying rows, the Reducer wrappers and build_reducer's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedloom.aggregation import (
    Bucketed,
    ReduceContext,
    WeightedMean,
    bucketing,
    build_reducer,
    bulyan,
    centered_clip,
    fltrust,
    geometric_median,
    krum,
    median,
    norm_bound,
    trimmed_mean,
)
from fedloom.errors import ConfigError, FedloomError


def ctx(seed: int = 0, **kw: np.ndarray | None) -> ReduceContext:
    return ReduceContext(client_ids=np.arange(0), rng=np.random.default_rng(seed), **kw)


def rows_of(*values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


# ---------------------------------------------------------------- rules by definition


def test_median_of_known_rows() -> None:
    assert median(rows_of([1, 5], [2, 0], [10, 3])).tolist() == [2, 3]
    assert median(rows_of([1, 5], [2, 0], [10, 3], [4, 1])).tolist() == [3, 2]
    assert median(rows_of([1, 5])).dtype == np.float32


def test_trimmed_mean_drops_floor_beta_k_each_side() -> None:
    x = rows_of([1, -50], [2, 0], [3, 1], [4, 2], [100, 3])
    assert trimmed_mean(x, 0.2).tolist() == [3, 1]  # floor(1.0) = 1 dropped each side
    assert trimmed_mean(x, 0.39).tolist() == [3, 1]  # floor(1.95) = 1
    assert trimmed_mean(x, 0.4).tolist() == [3, 1]  # floor(2.0) = 2: the median
    np.testing.assert_allclose(trimmed_mean(x, 0.0), x.mean(axis=0), rtol=1e-6)
    assert trimmed_mean(x, 0.1).tolist() == pytest.approx(x.mean(axis=0).tolist())


@pytest.mark.parametrize("beta", [0.5, -0.1, 0.7])
def test_trimmed_mean_rejects_beta_outside_range(beta: float) -> None:
    with pytest.raises(ConfigError, match=rf"aggregation\.params\.beta = {beta}"):
        trimmed_mean(rows_of([1.0]), beta)


def test_krum_picks_the_row_computed_by_hand() -> None:
    # K = 5, f = 1: each score sums the squared distances to the 2 nearest others:
    # 0 -> 1 + 4 = 5, 1 -> 1 + 1 = 2, 2 -> 1 + 4 = 5, 10 -> 1 + 64, 11 -> 1 + 81.
    x = rows_of([0, 7], [1, 7], [2, 7], [10, 7], [11, 7])
    assert krum(x, 1).tolist() == [1, 7]
    assert krum(x, 1, m=3).tolist() == [1, 7]  # the mean of 0, 1, 2
    assert krum(x, 1, m=4).tolist() == pytest.approx([3.25, 7])


def test_krum_needs_more_than_2f_plus_2_rows() -> None:
    with pytest.raises(ConfigError, match=r"f = 1 needs more than 2f \+ 2 = 4 rows, got K = 4"):
        krum(np.zeros((4, 3), np.float32), 1)
    with pytest.raises(ConfigError, match=r"aggregation\.params\.m = 6"):
        krum(np.zeros((5, 3), np.float32), 1, m=6)


def reference_krum_scores(x: np.ndarray, neighbours: int) -> np.ndarray:
    x = x.astype(np.float64)
    scores = []
    for i in range(len(x)):
        d = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(len(x)) if j != i)
        scores.append(sum(d[:neighbours]))
    return np.asarray(scores)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(5, 9), st.integers(1, 6)),
        elements=st.integers(-20, 20).map(float),
    ),
    st.integers(0, 1),
)
def test_krum_matches_a_loop_over_pairs(x: np.ndarray, f: int) -> None:
    scores = reference_krum_scores(x, len(x) - f - 2)
    got = krum(x, f)
    # Any row attaining the least score is a correct Krum output.
    winners = x[np.isclose(scores, scores.min(), rtol=1e-9, atol=1e-6)]
    assert any(np.array_equal(got, w) for w in winners)


def reference_bulyan(x: np.ndarray, f: int) -> np.ndarray:
    remaining = list(range(len(x)))
    chosen = []
    for _ in range(len(x) - 2 * f):
        n = len(remaining)
        if n == 1:
            chosen.append(remaining.pop())
            continue
        scores = reference_krum_scores(x[remaining], min(max(n - f - 2, 1), n - 1))
        chosen.append(remaining.pop(int(np.argmin(scores))))
    sel = x[chosen].astype(np.float64)
    beta = len(chosen) - 2 * f
    out = []
    for c in range(x.shape[1]):
        col = sel[:, c]
        med = np.median(col)
        out.append(np.mean(sorted(col, key=lambda v: abs(v - med))[:beta]))
    return np.asarray(out)


def test_bulyan_on_seven_rows_with_f_one() -> None:
    # theta = 5 rows by iterated Krum (-100 and 100 are never chosen), then the
    # beta = 3 values closest to the median 2: 1, 2, 3.
    x = rows_of([-100], [0], [1], [2], [3], [4], [100])
    assert bulyan(x, 1).tolist() == [2]
    rng = np.random.default_rng(5)
    y = rng.integers(-9, 9, (7, 4)).astype(np.float32)
    np.testing.assert_allclose(bulyan(y, 1), reference_bulyan(y, 1), rtol=1e-6)
    z = rng.normal(size=(11, 6)).astype(np.float32)
    np.testing.assert_allclose(bulyan(z, 2), reference_bulyan(z, 2), rtol=1e-5)


def test_bulyan_needs_4f_plus_3_rows() -> None:
    with pytest.raises(ConfigError, match=r"f = 1 needs at least 4f \+ 3 = 7 rows, got K = 6"):
        bulyan(np.zeros((6, 2), np.float32), 1)


def test_geometric_median_of_symmetric_and_weighted_points() -> None:
    square = rows_of([1, 1], [1, -1], [-1, 1], [-1, -1])
    np.testing.assert_allclose(geometric_median(square + 3), [3, 3], atol=1e-5)
    # On a line the geometric median is the median; weights make it the weighted one.
    np.testing.assert_allclose(geometric_median(rows_of([0], [1], [100])), [1], atol=1e-3)
    np.testing.assert_allclose(
        geometric_median(rows_of([0], [1]), np.array([3.0, 1.0])), [0], atol=1e-3
    )


def test_centered_clip_fixed_point_and_step_bound() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    mean = x.mean(axis=0)
    # The mean is a fixed point when every row lies within tau of it ...
    np.testing.assert_allclose(centered_clip(x, 100.0, 5, mean), mean, atol=1e-6)
    # ... and one step from anywhere within tau of every row lands on the mean.
    np.testing.assert_allclose(centered_clip(x, 100.0, 1, np.zeros(5)), mean, atol=1e-6)
    # Far from every row, each step moves by at most tau.
    far = np.full(5, 1e3, np.float32)
    assert np.linalg.norm(centered_clip(x, 0.5, 1, far) - far) <= 0.5 + 1e-4
    np.testing.assert_allclose(centered_clip(x, 100.0, 1), mean, atol=1e-6)  # from the median


def test_norm_bound_scales_rows_then_weighted_mean() -> None:
    x = rows_of([3, 4], [0, 0.5], [0, 0])
    got = norm_bound(x, np.array([1.0, 3.0, 0.0]), 1.0)
    np.testing.assert_allclose(got, [0.15, 0.575], rtol=1e-6)


def test_fltrust_trust_scores_and_rescaling() -> None:
    g0 = np.array([2.0, 0.0])
    got = fltrust(rows_of([1, 1], [3, 0], [-5, 1], [0, 0]), g0)
    expected = (np.array([1.0, 1.0]) + np.array([2.0, 0.0])) / (1 + 1 / math.sqrt(2))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Rows pointing away from the reference (or zero) earn no trust: zeros.
    assert fltrust(rows_of([-1, 0], [-3, -1], [0, 0]), g0).tolist() == [0, 0]
    assert fltrust(rows_of([1, 0]), np.zeros(2)).tolist() == [0, 0]


def test_bucketing_averages_each_row_once() -> None:
    x = (np.eye(6, dtype=np.float32) * np.arange(1, 7, dtype=np.float32))[:, :, None]
    x = x.reshape(6, 6)
    means = bucketing(x, 2, np.random.default_rng(3))
    assert means.shape == (3, 6)
    np.testing.assert_allclose(means.mean(axis=0), x.mean(axis=0), rtol=1e-6)
    # Each bucket holds two distinct rows, each row lands in exactly one bucket.
    assert ((means > 0).sum(axis=1) == 2).all() and ((means > 0).sum(axis=0) == 1).all()
    uneven = bucketing(np.eye(7, dtype=np.float32), 3, np.random.default_rng(0))
    assert sorted((uneven > 0).sum(axis=1).tolist()) == [1, 3, 3]
    np.testing.assert_allclose(np.sort(uneven.max(axis=1)), [1 / 3, 1 / 3, 1])


# ------------------------------------------------------------------------ robustness

HONEST = np.random.default_rng(42).normal(1.0, 0.1, (20, 50)).astype(np.float32)
ATTACKED = np.vstack([HONEST, np.full((4, 50), 1e6, np.float32)])
HONEST_MEAN = HONEST.mean(axis=0)

ROBUST = [
    ("median", {}, 0),
    ("trimmed_mean", {"beta": 0.2}, 0),
    ("krum", {"f": 4}, 0),
    ("multi_krum", {"f": 4}, 0),
    ("bulyan", {"f": 4}, 0),
    ("geometric_median", {}, 0),
    ("centered_clip", {"tau": 1.0}, 0),
    ("norm_bound", {"max_norm": 8.0}, 0),
    ("fltrust", {}, 0),
    ("median", {}, 2),
    ("trimmed_mean", {"beta": 0.4}, 2),
    ("krum", {"f": 4}, 2),
]


@pytest.mark.parametrize(("rule", "params", "s"), ROBUST)
def test_robust_rules_resist_huge_rows(rule: str, params: dict, s: int) -> None:
    weights = np.ones(len(ATTACKED))
    reducer = build_reducer(rule, params, s, rows=len(ATTACKED))
    c = ctx(7, reference=HONEST_MEAN + np.float32(0.01))
    got = reducer.finish(reducer.partial(ATTACKED, weights, c), weights.sum())
    assert np.linalg.norm(got - HONEST_MEAN) < 1.0
    plain = WeightedMean()
    dragged = plain.finish(plain.partial(ATTACKED, weights), weights.sum())
    assert np.linalg.norm(dragged - HONEST_MEAN) > 1e5


# ---------------------------------------------------------------- reducers and builder

X = np.random.default_rng(9).normal(size=(11, 7)).astype(np.float32)
W = np.random.default_rng(10).uniform(1, 50, 11)
PREV = np.random.default_rng(11).normal(size=7).astype(np.float32)
REF = np.random.default_rng(12).normal(size=7)

AGREES = [
    ("median", {}, lambda x: median(x)),
    ("trimmed_mean", {}, lambda x: trimmed_mean(x, 0.1)),
    ("trimmed_mean", {"beta": 0.3}, lambda x: trimmed_mean(x, 0.3)),
    ("krum", {"f": 2}, lambda x: krum(x, 2)),
    ("multi_krum", {"f": 2}, lambda x: krum(x, 2, len(x) - 2)),
    ("multi_krum", {"f": 1, "m": 3}, lambda x: krum(x, 1, 3)),
    ("bulyan", {"f": 2}, lambda x: bulyan(x, 2)),
    ("geometric_median", {"iters": 50}, lambda x: geometric_median(x, iters=50)),
    ("centered_clip", {"tau": 0.5}, lambda x: centered_clip(x, 0.5, 3, PREV)),
    ("norm_bound", {"max_norm": 2.0}, lambda x: norm_bound(x, W, 2.0)),
    ("fltrust", {}, lambda x: fltrust(x, REF)),
]


@pytest.mark.parametrize(("rule", "params", "fn"), AGREES)
def test_reducer_partial_finish_equals_the_function(rule: str, params: dict, fn) -> None:  # noqa: ANN001
    reducer = build_reducer(rule, params)
    assert reducer.decomposable is False
    assert reducer.needs_reference is (rule == "fltrust")
    total = reducer.partial(X, W, ctx(previous=PREV, reference=REF))
    assert total.dtype == np.float64
    got = reducer.finish(total, W.sum())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, fn(X), rtol=1e-5, atol=1e-6)


def test_bucketed_reducer_runs_the_rule_on_bucket_means() -> None:
    reducer = build_reducer("median", {}, bucketing=3)
    assert isinstance(reducer, Bucketed) and reducer.decomposable is False
    got = reducer.finish(reducer.partial(X, W, ctx(4)), W.sum())
    np.testing.assert_allclose(got, median(bucketing(X, 3, np.random.default_rng(4))), rtol=1e-6)
    mean = build_reducer("mean", {}, bucketing=2)
    got = mean.finish(mean.partial(X[:10], W[:10], ctx(4)), W[:10].sum())
    np.testing.assert_allclose(got, X[:10].mean(axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(FedloomError, match="rng"):
        reducer.partial(X, W)


def test_mean_without_bucketing_is_fedavg() -> None:
    assert isinstance(build_reducer("mean", {}), WeightedMean)
    assert isinstance(build_reducer("mean", {}, bucketing=1), WeightedMean)


def test_fltrust_without_reference_is_refused() -> None:
    reducer = build_reducer("fltrust", {})
    with pytest.raises(FedloomError, match="ReduceContext.reference"):
        reducer.partial(X, W, ctx())
    with pytest.raises(FedloomError, match="ReduceContext.reference"):
        reducer.partial(X, W)


def test_centered_clip_reducer_starts_from_the_median_without_previous() -> None:
    reducer = build_reducer("centered_clip", {"tau": 0.5, "iters": 2})
    got = reducer.finish(reducer.partial(X, W), W.sum())
    np.testing.assert_allclose(got, centered_clip(X, 0.5, 2, None), rtol=1e-6)


MIN_ROWS = [
    ("median", {}, 0, 1),
    ("trimmed_mean", {"beta": 0.4}, 0, 1),
    ("krum", {}, 0, 5),
    ("krum", {"f": 3}, 0, 9),
    ("multi_krum", {"f": 1, "m": 8}, 0, 8),
    ("bulyan", {"f": 2}, 0, 11),
    ("fltrust", {}, 0, 1),
    ("krum", {"f": 1}, 3, 13),  # 5 buckets of 3: ceil(13 / 3) = 5
    ("bulyan", {"f": 1}, 2, 13),  # 7 buckets of 2
]


@pytest.mark.parametrize(("rule", "params", "s", "least"), MIN_ROWS)
def test_min_rows_is_enforced_by_the_rows_check(
    rule: str, params: dict, s: int, least: int
) -> None:
    reducer = build_reducer(rule, params, s, rows=least)
    assert reducer.min_rows == least
    if least > 1:
        with pytest.raises(ConfigError, match=f"aggregation.rule = '{rule}'"):
            build_reducer(rule, params, s, rows=least - 1)
    # The reducer runs on exactly min_rows rows.
    x = np.random.default_rng(2).normal(size=(least, 4)).astype(np.float32)
    w = np.ones(least)
    out = reducer.finish(reducer.partial(x, w, ctx(reference=np.ones(4))), w.sum())
    assert out.shape == (4,) and np.isfinite(out).all()


def test_rows_check_names_the_bound() -> None:
    with pytest.raises(
        ConfigError,
        match=r"aggregation\.rule = 'krum' with f = 5 needs more than 2f \+ 2 = 12 rows; "
        r"a round holds 10 \(server\.clients_per_round\)",
    ):
        build_reducer("krum", {"f": 5}, rows=10)
    with pytest.raises(ConfigError, match=r"ceil\(10 / 3\) = 4 with aggregation\.bucketing = 3"):
        build_reducer("krum", {"f": 1}, 3, rows=10)
    with pytest.raises(ConfigError, match=r"at least 4f \+ 3 = 7 rows; a round holds 6 \(async"):
        build_reducer("bulyan", {}, rows=6, rows_field="async.buffer_size")


@pytest.mark.parametrize(
    ("rule", "params", "match"),
    [
        ("krum", {"beta": 0.1}, r"aggregation\.params\.beta = 0\.1 .*accepted: f\)"),
        ("median", {"f": 1}, r"aggregation\.params\.f .*accepted: none"),
        ("krum", {"f": 1.5}, r"aggregation\.params\.f = 1\.5 must be an integer"),
        ("krum", {"f": -1}, r"aggregation\.params\.f = -1 must be >= 0"),
        ("multi_krum", {"m": 0}, r"aggregation\.params\.m = 0 must be >= 1"),
        ("trimmed_mean", {"beta": 0.5}, r"aggregation\.params\.beta = 0\.5"),
        ("centered_clip", {"tau": 0}, r"aggregation\.params\.tau = 0 must be > 0"),
        ("geometric_median", {"iters": 0}, r"aggregation\.params\.iters = 0"),
        ("norm_bound", {"max_norm": math.inf}, r"aggregation\.params\.max_norm = inf"),
        ("huber", {}, r"aggregation\.rule = 'huber' is unknown"),
    ],
)
def test_invalid_settings_raise_config_error(rule: str, params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_reducer(rule, params)


def test_negative_bucketing_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"aggregation\.bucketing = -1"):
        build_reducer("median", {}, -1)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 12), st.integers(1, 5)),
        elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False),
    ),
    st.floats(0, 0.49),
)
def test_trimmed_mean_and_median_match_sorted_columns(x: np.ndarray, beta: float) -> None:
    k = len(x)
    b = math.floor(beta * k)
    cols = np.sort(x.astype(np.float64), axis=0)
    np.testing.assert_allclose(
        trimmed_mean(x, beta), cols[b : k - b].mean(axis=0), rtol=1e-5, atol=1e-3
    )
    np.testing.assert_allclose(median(x), np.median(cols, axis=0), rtol=1e-6)
    lo, hi = x.min(axis=0), x.max(axis=0)
    for stat in (trimmed_mean(x, beta), median(x), geometric_median(x)):
        assert ((stat >= lo - 1e-3) & (stat <= hi + 1e-3)).all()
