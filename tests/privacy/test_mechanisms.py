"""Differential-privacy mechanisms: clipping, noise sources, adaptive clipping, releases."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats
from scipy.special import ndtri

from fedloom.errors import CheckpointError, ConfigError, FedloomError
from fedloom.privacy.calibration import analytic_gaussian_sigma
from fedloom.privacy.mechanisms import (
    AdaptiveClipState,
    GeneratorNoise,
    NoiseSource,
    QuantileClipper,
    SecureNoise,
    clip_rows,
    gaussian_sum,
    local_gaussian,
    local_laplace,
    per_sample_clip,
    split_noise_multiplier,
)

D = 200_000  # coordinates for the empirical noise checks: std error of a std ~0.16%


class RecordingNoise:
    """A noise source that returns a fixed value and records every request."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value
        self.calls: list[tuple[str, int, float]] = []

    def normal(self, size: int, scale: float) -> np.ndarray:
        self.calls.append(("normal", size, scale))
        return np.full(size, self.value)

    def laplace(self, size: int, scale: float) -> np.ndarray:
        self.calls.append(("laplace", size, scale))
        return np.full(size, self.value)


def norms64(rows: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(rows, dtype=np.float64), axis=-1)


def sources() -> list[NoiseSource]:
    return [GeneratorNoise(np.random.default_rng(7)), SecureNoise()]


# ----------------------------------------------------------------------------- clip_rows


@st.composite
def matrices(draw: st.DrawFn) -> np.ndarray:
    """Rows of mixed magnitude: zero, subnormal-tiny, ordinary, huge, any float32."""
    k = draw(st.integers(1, 6))
    d = draw(st.integers(1, 40))
    base = draw(hnp.arrays(np.float32, (k, d), elements=st.floats(-2, 2, width=32)))
    scales = draw(
        hnp.arrays(
            np.float64, (k,), elements=st.sampled_from([0.0, 1e-40, 1e-20, 1e-3, 1.0, 1e10, 1e37])
        )
    )
    rows = (base * scales[:, None]).astype(np.float32)
    wild = draw(
        hnp.arrays(
            np.float32, (1, d), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)
        )
    )
    return np.concatenate([rows, wild])


@given(matrices(), st.floats(1e-6, 1e6))
# A scale (2**-8 / 2e37) below float32's normal range: applied in float32 it is off by 30%.
@example(np.array([[2e37, 2e37], [0, 0]], dtype=np.float32), 0.00390625)
def test_clip_rows_never_exceeds_and_keeps_short_rows(u: np.ndarray, clip: float) -> None:
    clipped, norms = clip_rows(u, clip)
    assert clipped.dtype == np.float32 and clipped.shape == u.shape
    assert norms.dtype == np.float64
    np.testing.assert_allclose(norms, norms64(u), rtol=1e-12)
    assert (norms64(clipped) <= clip).all()
    short = norms <= clip
    np.testing.assert_array_equal(clipped[short], u[short])
    long = ~short
    # Clipped rows land on the sphere (up to the 1e-6 safety shrink) and keep direction.
    np.testing.assert_allclose(norms64(clipped[long]), clip, rtol=3e-6)
    expected = u[long].astype(np.float64) * (clip / norms[long])[:, None]
    np.testing.assert_allclose(clipped[long], expected, rtol=3e-6, atol=clip * 1e-6)


def test_clip_rows_float32_rounding_is_corrected() -> None:
    # Scaling by clip/norm and rounding to float32 overshoots the clip for about half of
    # these rows; every one must still come out inside the ball.
    rng = np.random.default_rng(0)
    u = rng.standard_normal((2000, 37)).astype(np.float32)
    clip = 0.731
    naive = (u * np.float32(clip) / norms64(u)[:, None].astype(np.float32)).astype(np.float32)
    assert (norms64(naive) > clip).sum() > 100  # the hazard is real
    clipped, _ = clip_rows(u, clip)
    assert (norms64(clipped) <= clip).all()
    assert (norms64(clipped) >= clip * (1 - 2e-6)).all()


def test_clip_rows_zero_rows_and_exact_boundary() -> None:
    u = np.array([[0.0, 0.0], [3.0, 4.0], [30.0, 40.0]], dtype=np.float32)
    clipped, norms = clip_rows(u, 5.0)
    np.testing.assert_array_equal(norms, [0.0, 5.0, 50.0])
    np.testing.assert_array_equal(clipped[:2], u[:2])
    np.testing.assert_allclose(clipped[2], [3.0, 4.0], rtol=2e-6)
    assert not np.shares_memory(clipped, u)


@pytest.mark.parametrize("clip", [0.0, -1.0, math.nan, math.inf, True, 1e-31])
def test_clip_rows_rejects_bad_clip_norm(clip: float) -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_rows(np.ones((2, 3), dtype=np.float32), clip)


def test_clip_rows_rejects_non_finite_rows_and_wrong_rank() -> None:
    u = np.ones((3, 4), dtype=np.float32)
    u[1, 2] = np.nan
    with pytest.raises(FedloomError, match=r"updates\[1\]"):
        clip_rows(u, 1.0)
    with pytest.raises(FedloomError, match=r"\[K, d\]"):
        clip_rows(np.ones(4, dtype=np.float32), 1.0)


# ------------------------------------------------------------------------- noise sources


@pytest.mark.parametrize("source", sources(), ids=["generator", "secure"])
def test_gaussian_sum_noise_std_matches_z_times_clip(source: NoiseSource) -> None:
    z, clip = 1.3, 0.7
    out = gaussian_sum(np.zeros((3, D), dtype=np.float32), None, clip, z, source)
    assert out.dtype == np.float64 and out.shape == (D,)
    assert abs(out.std() / (z * clip) - 1) < 0.02
    assert abs(out.mean()) < 5 * z * clip / math.sqrt(D)


@pytest.mark.parametrize("source", sources(), ids=["generator", "secure"])
def test_laplace_empirical_scale(source: NoiseSource) -> None:
    scale = 2.5
    x = source.laplace(D, scale)
    assert x.dtype == np.float64 and x.shape == (D,)
    assert abs(np.abs(x).mean() / scale - 1) < 0.02  # E|X| = b for Laplace(0, b)
    assert abs(x.mean()) < 5 * scale * math.sqrt(2) / math.sqrt(D)


def test_secure_noise_has_the_right_distribution() -> None:
    noise = SecureNoise()
    # Unseeded by design; the thresholds make a false failure a one-in-a-million event.
    assert stats.kstest(noise.normal(50_000, 3.0), stats.norm(scale=3.0).cdf).pvalue > 1e-6
    assert stats.kstest(noise.laplace(50_000, 0.5), stats.laplace(scale=0.5).cdf).pvalue > 1e-6
    assert (noise.normal(10, 0.0) == 0).all()


def test_secure_noise_ignores_numpy_seeds() -> None:
    np.random.seed(0)
    a = SecureNoise().normal(1000, 1.0)
    np.random.seed(0)
    b = SecureNoise().normal(1000, 1.0)
    assert not np.array_equal(a, b)
    seeded = [GeneratorNoise(np.random.default_rng(3)).normal(1000, 1.0) for _ in range(2)]
    np.testing.assert_array_equal(*seeded)


@pytest.mark.parametrize("source", sources(), ids=["generator", "secure"])
@pytest.mark.parametrize(("size", "scale"), [(-1, 1.0), (3, -1.0), (3, math.nan), (2.5, 1.0)])
def test_noise_sources_reject_bad_requests(source: NoiseSource, size: int, scale: float) -> None:
    with pytest.raises(ConfigError, match="noise"):
        source.normal(size, scale)
    with pytest.raises(ConfigError, match="noise"):
        source.laplace(size, scale)


def test_generator_noise_needs_a_generator() -> None:
    with pytest.raises(ConfigError, match="RandomState"):
        GeneratorNoise(np.random.RandomState(0))


# -------------------------------------------------------------------------- gaussian_sum


def test_gaussian_sum_adds_weighted_rows_and_asks_for_z_times_clip() -> None:
    rng = np.random.default_rng(1)
    clipped, _ = clip_rows(rng.standard_normal((5, 8)).astype(np.float32), 1.5)
    weights = np.array([1.0, 0.5, 0.0, 0.25, 1.0])
    noise = RecordingNoise()
    out = gaussian_sum(clipped, weights, 1.5, 0.8, noise)
    np.testing.assert_allclose(out, weights @ clipped.astype(np.float64), rtol=1e-6, atol=1e-6)
    assert noise.calls == [("normal", 8, pytest.approx(0.8 * 1.5))]
    unweighted = gaussian_sum(clipped, None, 1.5, 0.8, RecordingNoise())
    np.testing.assert_allclose(unweighted, clipped.sum(axis=0, dtype=np.float64), rtol=1e-6)


def test_gaussian_sum_rejects_unclipped_rows_and_bad_weights() -> None:
    # float32 (0.6, 0.8) has norm 1.0000000238 > 1: exactly the rounding clip_rows guards.
    u = np.array([[0.5, 0.5], [0.6, 0.8]], dtype=np.float32)
    with pytest.raises(FedloomError, match=r"clipped\[1\].*clip_rows"):
        gaussian_sum(u, None, 1.0, 1.0, RecordingNoise())
    ok = u[:1]
    for bad in (1.5, -0.1, math.nan):
        with pytest.raises(FedloomError, match=r"weights\[0\]"):
            gaussian_sum(ok, np.array([bad]), 1.0, 1.0, RecordingNoise())
    with pytest.raises(ConfigError, match="noise_multiplier"):
        gaussian_sum(ok, None, 1.0, 0.0, RecordingNoise())
    with pytest.raises(ConfigError, match="clip_norm"):
        gaussian_sum(ok, None, -1.0, 1.0, RecordingNoise())


# ------------------------------------------------------------------- adaptive clipping


def lognormal_quantile(mu: float, sigma: float, q: float) -> float:
    return float(np.exp(mu + sigma * ndtri(q)))


@pytest.mark.parametrize("gamma", [0.5, 0.8])
def test_quantile_clipper_converges_to_target_quantile(gamma: float) -> None:
    rng = np.random.default_rng(11)
    mu, sigma = math.log(2.0), 0.5
    clipper = QuantileClipper(0.1, target_quantile=gamma, count_stddev=0.0)
    for _ in range(300):
        clipper.update(rng.lognormal(mu, sigma, 1000), GeneratorNoise(rng))
    assert clipper.clip_norm == pytest.approx(lognormal_quantile(mu, sigma, gamma), rel=0.03)
    assert clipper.state.round == 300


def test_quantile_clipper_with_the_papers_count_noise_tracks_the_median() -> None:
    rng = np.random.default_rng(12)
    clipper = QuantileClipper(10.0)  # count_stddev None: m / 20
    history = [
        clipper.update(rng.lognormal(0.0, 1.0, 500), GeneratorNoise(rng)) for _ in range(300)
    ]
    assert np.mean(history[-100:]) == pytest.approx(1.0, rel=0.03)


def test_quantile_clipper_one_step_matches_the_geometric_rule() -> None:
    norms = np.array([0.5, 1.5, 0.9, 3.0])  # two of four within C = 1
    clipper = QuantileClipper(1.0, target_quantile=0.5, learning_rate=0.2, count_stddev=0.3)
    noise = RecordingNoise(0.4)
    new = clipper.update(norms, noise)
    assert noise.calls == [("normal", 1, 0.3)]
    assert new == pytest.approx(math.exp(-0.2 * ((2 + 0.4) / 4 - 0.5)))
    # With a public expected cohort size m, the centred count is divided by m instead.
    clipper = QuantileClipper(1.0, count_stddev=0.3)
    new = clipper.update(norms, RecordingNoise(0.4), expected_clients=8)
    assert new == pytest.approx(math.exp(-0.2 * ((2 - 2 + 0.4) / 8 + 0.5 - 0.5)))


def test_quantile_clipper_update_from_count_matches_update() -> None:
    rng = np.random.default_rng(6)
    by_norms, by_count = QuantileClipper(1.0), QuantileClipper(1.0)
    for _ in range(5):
        norms = rng.uniform(0, 2, 30)
        unclipped = int(np.count_nonzero(norms <= by_count.clip_norm))
        a = by_norms.update(norms, RecordingNoise(0.3), expected_clients=32)
        b = by_count.update_from_count(unclipped, 30, RecordingNoise(0.3), expected_clients=32)
        assert a == b
    assert by_norms.state == by_count.state
    with pytest.raises(FedloomError, match="unclipped count 31"):
        by_count.update_from_count(31, 30, RecordingNoise())
    with pytest.raises(FedloomError, match="received"):
        by_count.update_from_count(0, -1, RecordingNoise())


def test_quantile_clipper_default_count_noise_is_m_over_20() -> None:
    clipper = QuantileClipper(1.0)
    noise = RecordingNoise()
    clipper.update(np.ones(40), noise)
    clipper.update(np.ones(40), noise, expected_clients=100)
    assert [scale for _, _, scale in noise.calls] == [pytest.approx(2.0), pytest.approx(5.0)]


def test_quantile_clipper_respects_min_clip() -> None:
    clipper = QuantileClipper(1.0, learning_rate=5.0, count_stddev=0.0, min_clip=0.01)
    for _ in range(10):
        clipper.update(np.zeros(10), RecordingNoise())
    assert clipper.clip_norm == 0.01


def test_quantile_clipper_state_round_trips_through_json() -> None:
    rng = np.random.default_rng(5)
    a = QuantileClipper(1.0, count_stddev=0.0)
    for _ in range(3):
        a.update(rng.uniform(0, 2, 50), RecordingNoise())
    b = QuantileClipper(1.0, count_stddev=0.0)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state == a.state == AdaptiveClipState(clip_norm=a.clip_norm, round=3)
    norms = rng.uniform(0, 2, 50)
    assert a.update(norms, RecordingNoise()) == b.update(norms, RecordingNoise())


@pytest.mark.parametrize(
    "state",
    [{"clip_norm": 1.0}, {"clip_norm": -1.0, "round": 0}, {"clip_norm": 1.0, "round": True}],
)
def test_quantile_clipper_rejects_bad_state(state: dict[str, object]) -> None:
    with pytest.raises(CheckpointError, match="adaptive clip state"):
        QuantileClipper(1.0).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_clip": 0.0}, "initial_clip"),
        ({"initial_clip": 1.0, "target_quantile": 1.0}, "target_quantile"),
        ({"initial_clip": 1.0, "learning_rate": -0.1}, "learning_rate"),
        ({"initial_clip": 1.0, "count_stddev": -1.0}, "count_stddev"),
        ({"initial_clip": 1.0, "min_clip": 2.0}, "min_clip"),
    ],
)
def test_quantile_clipper_rejects_bad_config(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        QuantileClipper(**kwargs)


def test_quantile_clipper_rejects_bad_norms() -> None:
    clipper = QuantileClipper(1.0)
    with pytest.raises(FedloomError, match=r"norms\[1\]"):
        clipper.update(np.array([1.0, np.nan]), RecordingNoise())
    with pytest.raises(FedloomError, match="non-empty vector"):
        clipper.update(np.array([]), RecordingNoise())
    with pytest.raises(ConfigError, match="expected_clients"):
        clipper.update(np.ones(3), RecordingNoise(), expected_clients=0)


def test_split_noise_multiplier_hand_computed_values() -> None:
    # z = 1 with the paper's sigma_b = m / 20 for m = 100: z_delta = sqrt(100 / 99).
    assert split_noise_multiplier(1.0, 5.0) == pytest.approx(math.sqrt(100 / 99), rel=1e-12)
    # z = 2, sigma_b = 1.5: (1/4 - 1/9) ** -0.5 = 6 / sqrt(5).
    assert split_noise_multiplier(2.0, 1.5) == pytest.approx(6 / math.sqrt(5), rel=1e-12)


@given(st.floats(0.05, 20), st.floats(1.01, 100))
def test_split_noise_multiplier_recombines_to_the_total(total: float, ratio: float) -> None:
    count_stddev = ratio * total / 2  # feasible: total < 2 * count_stddev
    z_delta = split_noise_multiplier(total, count_stddev)
    assert z_delta > total
    assert (z_delta**-2 + (2 * count_stddev) ** -2) ** -0.5 == pytest.approx(total, rel=1e-9)


@pytest.mark.parametrize(
    ("total", "count_stddev"), [(1.0, 0.5), (3.0, 1.0), (0.0, 1.0), (1.0, 0.0)]
)
def test_split_noise_multiplier_rejects_infeasible(total: float, count_stddev: float) -> None:
    with pytest.raises(ConfigError, match="count_stddev|total"):
        split_noise_multiplier(total, count_stddev)


# ----------------------------------------------------------------------------- local DP


def test_local_gaussian_noise_std_is_the_analytic_sigma_for_replace_one() -> None:
    clip, eps, delta = 0.5, 2.0, 1e-5
    sigma = analytic_gaussian_sigma(eps, delta, 2 * clip)
    out = local_gaussian(
        np.zeros(D, dtype=np.float32), clip, eps, delta, GeneratorNoise(np.random.default_rng(2))
    )
    assert out.dtype == np.float32 and out.shape == (D,)
    assert abs(out.std() / sigma - 1) < 0.02
    noise = RecordingNoise()
    local_gaussian(np.zeros(4), clip, eps, delta, noise, neighbouring="add_remove")
    local_gaussian(np.zeros(4), clip, eps, delta, noise)
    assert [scale for _, _, scale in noise.calls] == [
        pytest.approx(analytic_gaussian_sigma(eps, delta, clip)),
        pytest.approx(sigma),
    ]


def test_local_gaussian_clips_each_row_of_a_cohort() -> None:
    rng = np.random.default_rng(4)
    u = (rng.standard_normal((6, 20)) * np.array([0.01, 0.1, 1, 10, 100, 0])[:, None]).astype(
        np.float32
    )
    out = local_gaussian(u, 1.0, 1.0, 1e-6, RecordingNoise())
    assert out.shape == u.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, clip_rows(u, 1.0)[0])
    with pytest.raises(ConfigError, match="neighbouring"):
        local_gaussian(u, 1.0, 1.0, 1e-6, RecordingNoise(), neighbouring="swap")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="clip_norm"):
        local_gaussian(u, 0.0, 1.0, 1e-6, RecordingNoise())


def test_local_laplace_clips_in_l1_and_scales_noise_by_two_clip_over_epsilon() -> None:
    u = np.array([[3.0, -4.0, 1.0], [0.1, 0.2, -0.3]], dtype=np.float32)
    noise = RecordingNoise()
    out = local_laplace(u, 2.0, 0.5, noise)
    assert noise.calls == [("laplace", 6, pytest.approx(2 * 2.0 / 0.5))]
    np.testing.assert_allclose(np.abs(out[0]).sum(), 2.0, rtol=2e-6)
    assert np.abs(out[0].astype(np.float64)).sum() <= 2.0
    np.testing.assert_allclose(out[0], u[0] * 2.0 / 8.0, rtol=2e-6)
    np.testing.assert_array_equal(out[1], u[1])
    x = local_laplace(np.zeros(D), 1.0, 4.0, GeneratorNoise(np.random.default_rng(9)))
    assert abs(np.abs(x.astype(np.float64)).mean() / 0.5 - 1) < 0.02
    with pytest.raises(ConfigError, match="epsilon"):
        local_laplace(u, 1.0, 0.0, noise)


# ------------------------------------------------------------------------ per-sample clip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_sample_clip_cohort_of_batches(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(3, 5, 64, generator=gen, dtype=dtype)
    scales = torch.tensor([0.0, 1e-3, 0.05, 1.0, 1e4], dtype=dtype)
    grads = grads * scales[None, :, None]
    clip = 0.9
    out = per_sample_clip(grads, clip)
    assert out.shape == grads.shape and out.dtype == dtype
    before = torch.linalg.vector_norm(grads.double(), dim=-1)
    after = torch.linalg.vector_norm(out.double(), dim=-1)
    assert (after <= clip).all()
    short = before <= clip
    assert torch.equal(out[short], grads[short])
    long = ~short
    assert long.any()
    torch.testing.assert_close(after[long], torch.full_like(after[long], clip), rtol=3e-6, atol=0)
    cosine = (out[long].double() * grads[long].double()).sum(-1) / (after[long] * before[long])
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_per_sample_clip_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        per_sample_clip(torch.ones(2, 3), 0.0)
    with pytest.raises(FedloomError, match="float32 or float64"):
        per_sample_clip(torch.ones(2, 3, dtype=torch.int64), 1.0)
    with pytest.raises(FedloomError, match="float32 or float64"):
        per_sample_clip(torch.ones(2, 3, dtype=torch.bfloat16), 1.0)


def test_per_sample_clip_scale_below_float32_range() -> None:
    grads = torch.tensor([[[3e37, -2e37, 1e30], [1e-20, 0.0, 0.0]]])
    clip = 2.0**-8
    out = per_sample_clip(grads, clip)
    after = torch.linalg.vector_norm(out.double(), dim=-1)
    assert (after <= clip).all()
    assert after[0, 0].item() == pytest.approx(clip, rel=3e-6)
    expected = grads[0, 0].double() * clip / torch.linalg.vector_norm(grads[0, 0].double())
    torch.testing.assert_close(out[0, 0].double(), expected, rtol=3e-6, atol=1e-12)
    assert torch.equal(out[0, 1], grads[0, 1])


def test_module_imports_without_torch() -> None:
    code = (
        "import sys, fedloom.privacy.mechanisms\n"
        "assert 'torch' not in sys.modules, 'torch imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
