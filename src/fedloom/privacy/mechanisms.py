"""Differential-privacy mechanisms over a cohort's ``[K, d]`` update matrix.

Clipping bounds each client's (or each example's) influence; calibrated noise then hides
any one contribution. Everything here is vectorized over rows, so the same call serves one
client or a stacked cohort. Randomness comes from a :class:`NoiseSource`: a seeded
:class:`GeneratorNoise` for reproducible simulations, or :class:`SecureNoise`, which reads
the operating system's CSPRNG, for deployments (DESIGN principle 5).

Accounting (turning noise multipliers into an (epsilon, delta) guarantee) lives in the
accountant and ledger modules; this module only releases noisy statistics.

References: McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018; Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private
Learning with Adaptive Clipping", NeurIPS 2021; Abadi et al., "Deep Learning with
Differential Privacy", CCS 2016; Balle and Wang, "Improving the Gaussian Mechanism for
Differential Privacy", ICML 2018; Mironov, "On Significance of the Least Significant Bits
for Differential Privacy", CCS 2012.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from fedloom.aggregation.mean import weighted_sum
from fedloom.errors import CheckpointError, ConfigError, FedloomError
from fedloom.privacy.calibration import analytic_gaussian_sigma

if TYPE_CHECKING:
    import torch

# Shrink applied to a row whose norm still exceeds the clip after rounding to float32: larger
# than the worst relative error of the scale-and-round step (a few times 6e-8), so one
# application always lands inside the ball.
_SHRINK = 1.0 - 1e-6
# Smallest accepted clip norm. Above it a clipped float32 row has no elements so deep in the
# subnormal range that their rounding (at most 2**-150 each) could outgrow the 1e-6 margin.
_MIN_CLIP = 1e-30
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------- clipping


def clip_rows(updates: np.ndarray, clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale each row of ``updates`` ``[K, d]`` to L2 norm at most ``clip_norm``.

    Returns ``(clipped, norms)``: the clipped rows as float32 ``[K, d]`` and the original
    row norms as float64 ``[K]``. A row already within the norm (a zero row included) is
    returned bit-for-bit unchanged; a longer row keeps its direction. The scale
    ``clip_norm / max(norm, clip_norm)`` is computed in float64 and applied in float32
    (in float64 for the rare rows whose scale float32 cannot represent, norms beyond
    about 1e38 times the clip); a scaled row whose norm, recomputed in float64 from the
    float32 values, still exceeds ``clip_norm`` is shrunk by a further ``1 - 1e-6``. So
    ``||row|| <= clip_norm``, which the privacy analysis relies on, holds for the values
    returned, not just up to rounding. ``clip_norm`` must lie in [1e-30, inf).

    References: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016;
    McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
    """
    return _clip(updates, clip_norm, "clip_norm", _l2_norms)


def _l2_norms(u: np.ndarray) -> np.ndarray:
    """Row L2 norms of float32 ``u`` accumulated in float64, without a float64 copy."""
    return np.sqrt(np.einsum("ij,ij->i", u, u, dtype=np.float64))


def _l1_norms(u: np.ndarray) -> np.ndarray:
    return np.add.reduce(np.abs(u), axis=1, dtype=np.float64)


def _clip(
    updates: np.ndarray,
    clip_norm: float,
    name: str,
    norms_of: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    _check_clip(name, clip_norm)
    u = _as_matrix(updates, "updates")
    norms = norms_of(u)
    bad = np.flatnonzero(~np.isfinite(norms))
    if bad.size:
        i = int(bad[0])
        raise FedloomError(f"updates[{i}] contains NaN or inf (norm {norms[i]}); cannot clip")
    scale = clip_norm / np.maximum(norms, clip_norm)
    clipped = u * scale.astype(np.float32)[:, None]
    tiny = np.flatnonzero(scale < _FLOAT32_TINY)
    clipped[tiny] = u[tiny] * scale[tiny, None]
    scaled = np.flatnonzero(scale < 1.0)
    over = scaled[norms_of(clipped[scaled]) > clip_norm]
    clipped[over] *= np.float32(_SHRINK)
    return clipped, norms


def per_sample_clip(grads: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Clip per-example gradients ``[..., B, d]`` to L2 norm ``clip_norm`` along the last dim.

    The DP-SGD building block: each example's gradient is scaled by
    ``clip_norm / max(norm, clip_norm)`` before the batch is summed and noised, so one
    example moves the sum by at most ``clip_norm``. Leading dimensions are free, so a
    whole cohort's per-example gradients ``[K, B, d]`` clip in one call, on any device.
    float32 or float64 only. Rows within the norm are returned unchanged, and the result
    is exactly within the norm as in :func:`clip_rows`: norms in float64, a scale too
    small for the dtype applied as two factors (its square root, then the rest), and a
    final ``1 - 1e-6`` shrink of rows that rounding leaves outside. Non-finite rows come
    out NaN: no device sync is spent checking them, so validate updates upstream. torch
    is imported only when this is called.

    References: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
    """
    import torch

    _check_clip("clip_norm", clip_norm)
    if grads.ndim < 1 or grads.dtype not in (torch.float32, torch.float64):
        raise FedloomError(
            f"grads must be a float32 or float64 tensor [..., B, d], got dtype {grads.dtype} "
            f"and shape {tuple(grads.shape)}"
        )
    norms = torch.linalg.vector_norm(grads, dim=-1, keepdim=True, dtype=torch.float64)
    scale = clip_norm / norms.clamp_min(clip_norm)
    tiny = scale < torch.finfo(grads.dtype).tiny
    first = torch.where(tiny, scale.sqrt(), scale).to(grads.dtype)
    rest = torch.where(tiny, scale / first.double(), 1.0).to(grads.dtype)
    clipped = grads * first * rest
    after = torch.linalg.vector_norm(clipped, dim=-1, keepdim=True, dtype=torch.float64)
    return torch.where(after > clip_norm, clipped * _SHRINK, clipped)


# ----------------------------------------------------------------------- noise sources


class NoiseSource(Protocol):
    """Where a mechanism's noise comes from: ``size`` float64 draws at ``scale``."""

    def normal(self, size: int, scale: float) -> np.ndarray:
        """``size`` draws of N(0, scale²) as float64."""
        ...

    def laplace(self, size: int, scale: float) -> np.ndarray:
        """``size`` draws of Laplace(0, scale) (density ∝ exp(-|x|/scale)) as float64."""
        ...

    def uniform(self, size: int) -> np.ndarray:
        """``size`` uniform draws in (0, 1] as float64, never 0 (for samplers that take logs)."""
        ...


class GeneratorNoise:
    """Noise from a seeded ``np.random.Generator``: fast and reproducible, for simulations.

    A run with the same seed draws the same noise on every executor, so a simulated DP
    experiment can be replayed exactly. Not for deployments: a generator's state is
    recoverable from its outputs, and whoever knows it can subtract the noise.

    References: O'Neill, "PCG: A Family of Simple Fast Space-Efficient Statistically Good
    Algorithms for Random Number Generation", 2014 (numpy's default bit generator).
    """

    def __init__(self, rng: np.random.Generator) -> None:
        if not isinstance(rng, np.random.Generator):
            raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self._rng = rng

    def normal(self, size: int, scale: float) -> np.ndarray:
        _check_draw(size, scale)
        return self._rng.normal(0.0, scale, size)

    def laplace(self, size: int, scale: float) -> np.ndarray:
        _check_draw(size, scale)
        return self._rng.laplace(0.0, scale, size)

    def uniform(self, size: int) -> np.ndarray:
        _check_draw(size, 0.0)
        return 1.0 - self._rng.random(size)  # (0, 1]; 1.0 has probability 2^-53


class SecureNoise:
    """Noise from the operating system's CSPRNG (``os.urandom``), for deployments.

    Each draw takes one 64-bit word: its top 53 bits give ``v = (k + 1/2) / 2**53``,
    uniform on the open interval (0, 1) and symmetric about 1/2, and its lowest bit gives
    the sign. A Gaussian is ``±Φ⁻¹(v / 2)`` (inverse CDF on the lower half, so both tails
    have the same fine resolution and reach ±8.37σ) and a Laplace is ``±(-ln v)``
    (an Exp(1) magnitude with a random sign), both times ``scale``. Nothing depends on
    numpy's global or seeded generators, so the noise cannot be replayed from a seed.

    Cost: about 3-5x slower than :class:`GeneratorNoise` (measured on 10^7 draws on one
    x86-64 core: Gaussian 1.1 s vs 0.21 s, Laplace 0.93 s vs 0.35 s), roughly half of it
    reading the kernel's CSPRNG; small next to a round of training.

    Floating-point caveat: this is the textbook real-valued sampler evaluated in
    floating point. Mironov (2012) showed that such Laplace samplers leak the true value
    through which doubles the noisy output can and cannot land on, breaking the DP
    guarantee for an adversary who sees the exact float; Jin et al. (2022) showed the
    same for floating-point Gaussian samplers. We do not implement the snapping mechanism
    or a discrete Gaussian, so this source protects against noise replay, not against that
    low-order-bit attack; releases that need it must use a discrete mechanism (e.g. over
    secure aggregation's integers).

    References: Mironov, "On Significance of the Least Significant Bits for Differential
    Privacy", CCS 2012; Jin, McMurtry, Rubinstein, Ohrimenko, "Are We There Yet? Timing
    and Floating-Point Attacks on Differential Privacy Systems", IEEE S&P 2022; Canonne,
    Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020.
    """

    def normal(self, size: int, scale: float) -> np.ndarray:
        _check_draw(size, scale)
        sign, v = self._signed_uniform(size)
        from scipy.special import ndtri  # lazy: the simulator's GPU path needs no scipy

        return sign * (scale * ndtri(0.5 * v))

    def laplace(self, size: int, scale: float) -> np.ndarray:
        _check_draw(size, scale)
        sign, v = self._signed_uniform(size)
        return sign * (scale * np.log(v))

    def uniform(self, size: int) -> np.ndarray:
        _check_draw(size, 0.0)
        return self._signed_uniform(size)[1]

    @staticmethod
    def _signed_uniform(size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(±1, v)`` per draw from one OS word each: v uniform on (0, 1) from 53 bits."""
        words = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
        v = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        sign = 1.0 - 2.0 * (words & np.uint64(1)).astype(np.float64)
        return sign, v


def _check_draw(size: int, scale: float) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ConfigError(f"noise size must be a non-negative integer, got {size!r}")
    if not (math.isfinite(scale) and scale >= 0):
        raise ConfigError(f"noise scale must be finite and non-negative, got {scale!r}")


# ------------------------------------------------------------------- adaptive clipping


@dataclass
class AdaptiveClipState:
    """The mutable part of :class:`QuantileClipper`: current clip norm and rounds done."""

    clip_norm: float
    round: int


class QuantileClipper:
    """Adaptive clipping to a target quantile of the update norms.

    Each round every client reports the bit ``b_i = 1[norm_i <= C]``. The server releases
    the noisy unclipped fraction ``b̃ = (Σ (b_i - 1/2) + N(0, σ_b²)) / m + 1/2`` and moves the
    clip geometrically, ``C ← C · exp(-η_C (b̃ - γ))``: too many unclipped updates shrink C,
    too few grow it, so C tracks the γ-quantile of the norms. ``m`` is the expected cohort
    size (default: the actual K, when it is public); centring the bits halves the count's
    sensitivity under add/remove, which is why :func:`split_noise_multiplier` has ``2σ_b``.
    With ``m = K`` this is exactly ``b̃ = (Σ b_i + N(0, σ_b²)) / K``.

    ``count_stddev`` is σ_b; ``None`` uses the paper's recommendation ``m / 20`` (a
    negligible share of the privacy budget), ``0.0`` turns the count noise off
    (non-private; for tests and analysis). ``min_clip`` floors C so it cannot collapse to
    zero when every norm is tiny.

    References: Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with
    Adaptive Clipping", NeurIPS 2021.
    """

    def __init__(
        self,
        initial_clip: float,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        count_stddev: float | None = None,
        min_clip: float = 1e-6,
    ) -> None:
        _check_positive("initial_clip", initial_clip)
        if not 0.0 < target_quantile < 1.0:
            raise ConfigError(f"target_quantile must be in (0, 1), got {target_quantile!r}")
        _check_positive("learning_rate", learning_rate)
        if count_stddev is not None and not (math.isfinite(count_stddev) and count_stddev >= 0):
            raise ConfigError(
                f"count_stddev must be None or finite and non-negative, got {count_stddev!r}"
            )
        _check_positive("min_clip", min_clip)
        if min_clip > initial_clip:
            raise ConfigError(f"min_clip {min_clip!r} exceeds initial_clip {initial_clip!r}")
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.count_stddev = None if count_stddev is None else float(count_stddev)
        self.min_clip = float(min_clip)
        self.state = AdaptiveClipState(clip_norm=float(initial_clip), round=0)

    @property
    def clip_norm(self) -> float:
        """The clip norm to use for the next round."""
        return self.state.clip_norm

    def update(
        self,
        norms: np.ndarray,
        noise: NoiseSource,
        expected_clients: float | None = None,
    ) -> float:
        """Fold one round's update norms ``[K]`` into the clip; return the new clip norm.

        ``expected_clients`` is m, the data-independent denominator; pass it whenever the
        realised cohort size K is itself private (Poisson sampling, add/remove DP).
        """
        n = np.asarray(norms, dtype=np.float64)
        if n.ndim != 1 or n.size == 0:
            raise FedloomError(f"norms must be a non-empty vector [K], got shape {n.shape}")
        bad = np.flatnonzero(~(np.isfinite(n) & (n >= 0)))
        if bad.size:
            i = int(bad[0])
            raise FedloomError(f"norms[{i}] is {n[i]}; norms must be finite and non-negative")
        unclipped = int(np.count_nonzero(n <= self.state.clip_norm))
        return self.update_from_count(unclipped, n.size, noise, expected_clients)

    def update_from_count(
        self,
        unclipped: float,
        received: int,
        noise: NoiseSource,
        expected_clients: float | None = None,
    ) -> float:
        """:meth:`update` from the count ``Σ b_i`` of the ``received`` updates within the clip.

        The form a real deployment uses: the bits are summed across shards or inside
        secure aggregation, and the server never sees an individual norm.
        """
        if isinstance(received, bool) or not isinstance(received, int | np.integer) or received < 0:
            raise FedloomError(f"received must be a non-negative integer, got {received!r}")
        if not 0 <= unclipped <= received:
            raise FedloomError(f"unclipped count {unclipped!r} is outside [0, {received}]")
        m = float(received) if expected_clients is None else float(expected_clients)
        _check_positive("expected_clients", m)
        sigma_b = m / 20.0 if self.count_stddev is None else self.count_stddev
        centred = unclipped - 0.5 * received
        fraction = (centred + float(noise.normal(1, sigma_b)[0])) / m + 0.5
        step = math.exp(-self.learning_rate * (fraction - self.target_quantile))
        self.state = AdaptiveClipState(
            clip_norm=max(self.state.clip_norm * step, self.min_clip),
            round=self.state.round + 1,
        )
        return self.state.clip_norm

    def state_dict(self) -> dict[str, float | int]:
        """The state as a JSON-serializable dict, for checkpoints."""
        return {"clip_norm": self.state.clip_norm, "round": self.state.round}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore the state written by :meth:`state_dict`."""
        if set(state) != {"clip_norm", "round"}:
            raise CheckpointError(
                f"adaptive clip state has keys {sorted(state)}, expected ['clip_norm', 'round']"
            )
        clip, rnd = state["clip_norm"], state["round"]
        if (
            isinstance(clip, bool)
            or not isinstance(clip, int | float)
            or not (math.isfinite(clip) and clip > 0)
        ):
            raise CheckpointError(f"adaptive clip state clip_norm is {clip!r}; need > 0")
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
            raise CheckpointError(f"adaptive clip state round is {rnd!r}; need an int >= 0")
        self.state = AdaptiveClipState(clip_norm=float(clip), round=rnd)


def split_noise_multiplier(total: float, count_stddev: float) -> float:
    """Noise multiplier z_Δ for the update sum so the (sum, count) pair has multiplier ``total``.

    Releasing the clipped sum with noise multiplier z_Δ and the centred unclipped count
    with stddev σ_b is, for privacy, one Gaussian query with multiplier
    ``z = (z_Δ⁻² + (2σ_b)⁻²)^(-1/2)``; solving for the sum's share gives
    ``z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2)``. Feasible only when ``z < 2σ_b``. With the paper's
    σ_b = m/20 the sum needs only slightly more noise (z = 1, m = 100: z_Δ ≈ 1.005).

    References: Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with
    Adaptive Clipping", NeurIPS 2021 (privacy analysis of the combined query).
    """
    _check_positive("total noise multiplier", total)
    _check_positive("count_stddev", count_stddev)
    if total >= 2.0 * count_stddev:
        raise ConfigError(
            f"count_stddev {count_stddev!r} is too small for total noise multiplier {total!r}: "
            f"the count alone would need more than the whole budget (need total < "
            f"2 * count_stddev = {2.0 * count_stddev!r})"
        )
    return (total**-2 - (2.0 * count_stddev) ** -2) ** -0.5


# --------------------------------------------------------------------- central and local


def gaussian_sum(
    clipped: np.ndarray,
    weights: np.ndarray | None,
    clip_norm: float,
    noise_multiplier: float,
    noise: NoiseSource,
) -> np.ndarray:
    """DP-FedAvg's noisy sum: ``Σ_k w_k u_k + N(0, (z·C)²)`` per coordinate, float64 ``[d]``.

    Rows of ``clipped`` must already have L2 norm at most ``clip_norm`` (checked: an
    unclipped row would void the guarantee) and weights must lie in [0, 1], so one client
    moves the sum by at most C and noise of stddev ``z·C`` gives noise multiplier z.

    The caller divides by the expected cohort weight (``q·W`` in the paper), a fixed,
    data-independent denominator. Dividing by the realised weight sum instead would make
    the estimate's scale depend on who took part: under add/remove neighbouring that sum
    is itself private, it changes when one client is added, and the sensitivity analysis
    above no longer applies.

    References: McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
    Language Models", ICLR 2018.
    """
    _check_positive("clip_norm", clip_norm)
    _check_positive("noise_multiplier", noise_multiplier)
    u = _as_matrix(clipped, "clipped")
    norms = _l2_norms(u)
    over = np.flatnonzero(~(norms <= clip_norm))
    if over.size:
        i = int(over[0])
        raise FedloomError(
            f"clipped[{i}] has L2 norm {norms[i]} > clip_norm {clip_norm!r}; clip the rows "
            "with clip_rows before adding noise"
        )
    if weights is None:
        w = np.ones(u.shape[0])
    else:
        w = np.asarray(weights, dtype=np.float64)
        bad = np.flatnonzero(~((w >= 0) & (w <= 1)))
        if bad.size:
            i = int(bad[0])
            raise FedloomError(f"weights[{i}] is {w[i]}; DP weights must lie in [0, 1]")
    total = weighted_sum(u, w)
    return total + noise.normal(total.size, noise_multiplier * clip_norm)


def local_gaussian(
    update: np.ndarray,
    clip_norm: float,
    epsilon: float,
    delta: float,
    noise: NoiseSource,
    neighbouring: Literal["add_remove", "replace_one"] = "replace_one",
) -> np.ndarray:
    """Local DP on the client: clip ``update`` to L2 ``clip_norm``, add analytic-Gaussian noise.

    The client releases an (epsilon, delta)-DP view of its own update, trusting no one.
    σ comes from the analytic Gaussian mechanism (tight, valid for every epsilon) with
    L2 sensitivity ``2·clip_norm`` under ``"replace_one"`` (any two updates of the client
    are neighbours: the standard local-DP notion) or ``clip_norm`` under ``"add_remove"``
    (neighbours are the client's update and no contribution, the zero vector).
    ``update`` is one client ``[d]`` or a stacked cohort ``[K, d]`` (each row its own
    release); the result is float32 of the same shape.

    References: Balle and Wang, "Improving the Gaussian Mechanism for Differential
    Privacy: Analytical Calibration and Optimal Denoising", ICML 2018.
    """
    sensitivity = _sensitivity("clip_norm", clip_norm, neighbouring)
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    return _local(update, clip_norm, "clip_norm", _l2_norms, noise.normal, sigma)


def local_laplace(
    update: np.ndarray, clip_norm_l1: float, epsilon: float, noise: NoiseSource
) -> np.ndarray:
    """Pure epsilon local DP: clip ``update`` to L1 ``clip_norm_l1``, add Laplace(Δ/ε) noise.

    Two L1-clipped updates differ by at most ``Δ = 2·clip_norm_l1`` in L1 (replace-one,
    the local-DP neighbouring), and the Laplace mechanism with scale Δ/ε per coordinate is
    epsilon-DP for L1 sensitivity Δ. Shapes as in :func:`local_gaussian`.

    References: Dwork, McSherry, Nissim, Smith, "Calibrating Noise to Sensitivity in
    Private Data Analysis", TCC 2006.
    """
    _check_positive("epsilon", epsilon)
    sensitivity = _sensitivity("clip_norm_l1", clip_norm_l1, "replace_one")
    return _local(
        update, clip_norm_l1, "clip_norm_l1", _l1_norms, noise.laplace, sensitivity / epsilon
    )


def _sensitivity(name: str, clip_norm: float, neighbouring: str) -> float:
    _check_clip(name, clip_norm)
    if neighbouring == "replace_one":
        return 2.0 * clip_norm
    if neighbouring == "add_remove":
        return float(clip_norm)
    raise ConfigError(f"neighbouring must be 'add_remove' or 'replace_one', got {neighbouring!r}")


def _local(
    update: np.ndarray,
    clip_norm: float,
    name: str,
    norms_of: Callable[[np.ndarray], np.ndarray],
    draw: Callable[[int, float], np.ndarray],
    scale: float,
) -> np.ndarray:
    u = np.asarray(update)
    if u.ndim not in (1, 2):
        raise FedloomError(f"update must be [d] or [K, d], got shape {u.shape}")
    clipped, _ = _clip(np.atleast_2d(u), clip_norm, name, norms_of)
    noisy = clipped + draw(clipped.size, scale).reshape(clipped.shape)
    return noisy.astype(np.float32).reshape(u.shape)


# ----------------------------------------------------------------------------- checks


def _as_matrix(updates: np.ndarray, name: str) -> np.ndarray:
    u = np.asarray(updates)
    if u.ndim != 2:
        raise FedloomError(f"{name} must be a [K, d] matrix, got shape {u.shape}")
    return u.astype(np.float32, copy=False)


def _check_clip(name: str, value: float) -> None:
    _check_positive(name, value)
    if value < _MIN_CLIP:
        raise ConfigError(f"{name} must be at least {_MIN_CLIP}, got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}")
