"""The distributed discrete Gaussian: differential privacy noise added by the clients.

Central DP trusts the server with the unmasked sum before it adds noise. Under secure
aggregation the server only ever sees the sum, so the clients can add the noise
themselves: each adds a share, and the sum carries the calibrated noise without anyone
seeing a noiseless aggregate. SecAgg sums in Z_(2^bits), so the noise must be an integer
(a discrete Gaussian) and each client's vector must be discretized in a way that costs
little accuracy and no privacy. Each client runs (Kairouz, Liu & Steinke, Algorithm 1):

1. clip to L2 norm ``c`` (as in DP-FedAvg);
2. rotate: ``x -> H S x / sqrt(D)``, with ``S`` random signs from a public per-round seed
   and ``H`` the Walsh-Hadamard matrix (zero padding to ``D = 2^ceil(log2 d)``): an
   orthogonal map that spreads the vector evenly over the coordinates, so none is much
   larger than ``c / sqrt(D)`` and the modular range can be tight;
3. scale by ``1 / gamma``, the step of the integer grid;
4. round randomly (each coordinate up with probability its fractional part), drawing
   again until the rounded vector's norm is at most ``B`` (conditional randomized
   rounding: with ``beta`` the bound's failure probability, ``B = min(c/gamma + sqrt(D),
   sqrt((c/gamma)^2 + D/4 + sqrt(2 ln(1/beta)) (c/gamma + sqrt(D)/2)))``, so the L2
   sensitivity is ``B`` for sure while the expected redraws stay below ``1 / (1 - beta)``);
5. add discrete Gaussian noise of variance ``sigma^2 / (n gamma^2)`` per coordinate, so
   the ``n`` shares sum to variance ``sigma^2`` (``sigma = z c``, ``z`` the noise
   multiplier), in original units;
6. wrap into Z_(2^bits).

The server reads the modular sum as signed integers, multiplies by ``gamma`` and rotates
back. ``gamma`` is the smallest grid step for which ``headroom`` standard deviations of a
summed coordinate (the worst-case signal ``n c / sqrt(D)``, rounding and noise) fit in
the signed range, their section 4.4: ``gamma = 2 k sqrt(c^2 n^2 / D + n sigma_local^2) /
sqrt(2^(2 bits) - n k^2)``; a larger sum wraps around and is garbled, which the headroom
makes unlikely.

Decoding error: rotation is orthogonal and every rounded coordinate is within one grid
step of its input, so ``decode(sum of encodings)`` differs from the sum of the clipped
inputs by the noise plus at most ``n * gamma * sqrt(D)`` in L2 (with no wrap-around).

Privacy (:meth:`DistributedDiscreteGaussian.event`): the sum of ``n`` discrete Gaussians
of variance ``s^2`` (grid units) behaves, up to ``tau`` (Theorem 1), like one of variance
``n s^2``; with L2 sensitivity ``B`` this gives the Renyi bound of their Proposition 14,
computed and composed in :func:`fedloom.privacy.accounting.distributed_discrete_gaussian_rdp`
with noise multiplier ``sqrt(n) s / B``, a little below ``z`` because rounding inflates
the norm. As in the paper, one client's data is what differs between neighbouring inputs
while the noise shares of the clients in the sum stay. A round splits the noise over the
clients it dispatches (:meth:`DistributedDiscreteGaussian.with_shares`) and is accounted
with the shares actually summed, so dropouts cost privacy.

The sampler is Canonne, Kamath & Steinke's: discrete Laplace proposals (the difference of
two geometric draws) accepted with probability ``exp(-(|y| - s^2/t)^2 / (2 s^2))``,
vectorized over a whole vector, in float64 ("exact-ish": exact but for the rounding of
logarithms and exponentials). Its uniforms come from a :class:`NoiseSource`; a deployment
uses :class:`~fedloom.privacy.mechanisms.SecureNoise` (the OS CSPRNG).

References:
    Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
    Learning with Secure Aggregation", ICML 2021 (Algorithm 1, Theorem 1, Proposition 14,
    section 4).
    Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS
    2020 (Algorithms 2 and 3).
    Ailon & Chazelle, "The Fast Johnson-Lindenstrauss Transform", STOC 2006 (randomized
    Hadamard rotation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fedloom.errors import ConfigError
from fedloom.privacy.accounting import (
    MAX_NOISE_MULTIPLIER,
    MechanismEvent,
    compose_epsilon,
    discrete_gaussian_sum_tau,
)
from fedloom.privacy.mechanisms import NoiseSource, clip_rows
from fedloom.secagg.crypto import SecAggError
from fedloom.secagg.encoding import signed, wrap

DEFAULT_BETA = math.exp(-0.5)
"""Failure probability of the rounding norm bound (the paper's choice)."""

DEFAULT_HEADROOM = 4.0
"""Standard deviations of a summed coordinate that must fit in the ring."""

_MAX_ROUNDING_DRAWS = 1000  # far beyond 1 / (1 - beta) draws: hitting it means a bug


def padded_dim(dim: int) -> int:
    """The Hadamard transform's length: the smallest power of two >= ``dim``."""
    return 1 << max(0, int(dim) - 1).bit_length()


def rotation_signs(padded: int, seed: int | Sequence[int]) -> np.ndarray:
    """The public random signs ``S`` of one round's rotation, from a seed all parties know."""
    return np.where(np.random.default_rng(seed).random(padded) < 0.5, -1.0, 1.0)


def _walsh_hadamard(x: np.ndarray) -> np.ndarray:
    """Unnormalized fast Walsh-Hadamard transform along the last axis (a power of two)."""
    y = np.asarray(x, dtype=np.float64)
    *lead, n = y.shape
    h = 1
    while h < n:
        pairs = y.reshape(*lead, n // (2 * h), 2, h)
        y = np.stack([pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]], -2)
        h *= 2
    return y.reshape(*lead, n)


def rotate(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``H S x / sqrt(D)`` along the last axis: orthogonal, so norms are kept."""
    return _walsh_hadamard(x * signs) / math.sqrt(signs.size)


def unrotate(y: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rotate`: ``S H y / sqrt(D)``."""
    return signs * _walsh_hadamard(y) / math.sqrt(signs.size)


def discrete_laplace(scale: float, size: int, source: NoiseSource) -> np.ndarray:
    """``size`` integers with ``P(y) ∝ exp(-|y| / scale)``: the difference of two geometrics.

    ``floor(-scale * ln U)`` is geometric with ``P(G >= k) = exp(-k / scale)``; the
    difference of two independent ones has the discrete Laplace distribution.

    References: Canonne, Kamath & Steinke 2020, section 5 (discrete Laplace).
    """
    u = source.uniform(2 * size).reshape(2, size)
    g = np.floor(-scale * np.log(u))
    return (g[0] - g[1]).astype(np.int64)


def discrete_gaussian(sigma: float, size: int, source: NoiseSource) -> np.ndarray:
    """``size`` draws of the discrete Gaussian ``N_Z(0, sigma^2)``, ``P(y) ∝ exp(-y^2/2s^2)``.

    Rejection sampling from discrete Laplace proposals of scale ``t = floor(sigma) + 1``,
    each accepted with probability ``exp(-(|y| - sigma^2 / t)^2 / (2 sigma^2))``; every
    round of proposals covers all positions still rejected.

    References: Canonne, Kamath & Steinke 2020, Algorithm 3.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be finite and > 0, got {sigma!r}")
    t = math.floor(sigma) + 1
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        y = discrete_laplace(t, todo.size, source)
        accept = source.uniform(todo.size) <= np.exp(
            -((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2)
        )
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


def conditional_round(x: np.ndarray, bound: float, source: NoiseSource) -> np.ndarray:
    """Round ``x`` randomly and unbiasedly to integers, again until ``||result|| <= bound``.

    References: Kairouz, Liu & Steinke 2021, Algorithm 1 (conditional randomized rounding).
    """
    low = np.floor(x)
    frac = x - low
    for _ in range(_MAX_ROUNDING_DRAWS):
        rounded = low + (source.uniform(x.size).reshape(x.shape) <= frac)
        if np.sqrt(np.sum(rounded * rounded)) <= bound:
            return rounded.astype(np.int64)
    raise SecAggError(f"randomized rounding missed the norm bound {bound:g} in every draw")


@dataclass(frozen=True)
class DistributedDiscreteGaussian:
    """One round's parameters: every client encodes with it; the server decodes the sum.

    ``clip_norm`` (c): L2 clip of each update. ``dim`` (d): update length. ``shares``
    (n): the clients per round the noise is calibrated for, one share each.
    ``noise_multiplier`` (z): the summed noise's stddev over ``c``. ``bits``: the ring,
    16 or 32. ``beta``, ``headroom``: see the module docstring. Derived: ``padded`` (D),
    ``granularity`` (gamma), ``local_stddev`` (each share's stddev in grid steps, at least
    1/2, which the privacy bound needs) and ``norm_bound`` (B, grid steps).

    References: see the module docstring.
    """

    clip_norm: float
    dim: int
    shares: int
    noise_multiplier: float
    bits: int = 32
    beta: float = DEFAULT_BETA
    headroom: float = DEFAULT_HEADROOM
    padded: int = field(init=False)
    granularity: float = field(init=False)
    local_stddev: float = field(init=False)
    norm_bound: float = field(init=False)

    def __post_init__(self) -> None:
        for name in ("clip_norm", "noise_multiplier", "headroom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} = {value!r}: must be a number")
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} = {value!r}: must be finite and > 0")
        for name in ("dim", "shares"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} = {value!r}: must be an int >= 1")
        if self.bits not in (16, 32):
            raise ConfigError(
                f"bits = {self.bits!r}: the distributed discrete Gaussian needs 16 or 32 "
                "(a 64-bit grid is finer than float64 can represent)"
            )
        if not 0 <= self.beta < 1:
            raise ConfigError(f"beta = {self.beta!r}: must be in [0, 1)")
        c, n, k, z = float(self.clip_norm), self.shares, float(self.headroom), self.noise_multiplier
        d = padded_dim(self.dim)
        slack = 2.0 ** (2 * self.bits) - n * k * k
        if slack <= 0:
            raise ConfigError(
                f"bits = {self.bits} cannot hold {n} shares with headroom {k:g} standard deviations"
            )
        gamma = 2 * k * math.sqrt(c * c * n * n / d + (z * c) ** 2) / math.sqrt(slack)
        local = z * c / math.sqrt(n) / gamma
        if local < 0.5:
            raise ConfigError(
                f"noise_multiplier = {z!r} with bits = {self.bits} and {n} shares gives each "
                f"client {local:.3g} grid steps of noise, below the 1/2 the privacy bound "
                "needs: raise the noise or the bits"
            )
        scaled = c / gamma
        bound = scaled + math.sqrt(d)
        if self.beta > 0:
            spread = math.sqrt(2 * math.log(1 / self.beta)) * (scaled + math.sqrt(d) / 2)
            bound = min(bound, math.sqrt(scaled**2 + d / 4 + spread))
        for name, value in (
            ("padded", d),
            ("granularity", gamma),
            ("local_stddev", local),
            ("norm_bound", bound),
        ):
            object.__setattr__(self, name, value)

    def with_shares(self, shares: int) -> DistributedDiscreteGaussian:
        """The same noise split over ``shares`` clients: a round's actual cohort, so that
        the noise adds up to the target whenever every dispatched client is in the sum."""
        return replace(self, shares=shares)

    @property
    def dtype(self) -> np.dtype:
        """``uint16`` or ``uint32``: the ring elements the protocol masks and sums."""
        return np.dtype(f"u{self.bits // 8}")

    def encode(
        self, x: np.ndarray, signs: np.ndarray, sources: Sequence[NoiseSource]
    ) -> np.ndarray:
        """Algorithm 1 for each row of ``x`` ``[K, d]``, row ``i`` drawing from
        ``sources[i]``: clip, rotate, scale, round, add a noise share, wrap. ``[K, D]``.

        References: Kairouz, Liu & Steinke 2021, Algorithm 1.
        """
        rows = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if rows.ndim != 2 or rows.shape[1] != self.dim or len(sources) != rows.shape[0]:
            raise SecAggError(
                f"x must be [K, {self.dim}] with one noise source per row, got shape "
                f"{rows.shape} and {len(sources)} sources"
            )
        self._check_signs(signs)
        clipped, _ = clip_rows(rows, self.clip_norm)
        padded = np.zeros((rows.shape[0], self.padded))
        padded[:, : self.dim] = clipped
        scaled = rotate(padded, signs) / self.granularity
        out = np.empty(scaled.shape, dtype=np.int64)
        for i, source in enumerate(sources):
            out[i] = conditional_round(scaled[i], self.norm_bound, source)
            out[i] += discrete_gaussian(self.local_stddev, self.padded, source)
        return wrap(out, self.bits)

    def decode(self, total: np.ndarray, signs: np.ndarray) -> np.ndarray:
        """The noisy float sum ``[d]`` from the modular sum of the encodings ``[D]``."""
        self._check_signs(signs)
        values = np.asarray(total)
        if values.shape != (self.padded,) or values.dtype.kind != "u":
            raise SecAggError(
                f"total must be an unsigned vector of length {self.padded}, got "
                f"{values.dtype} of shape {values.shape}"
            )
        grid = signed(values, self.bits).astype(np.float64) * self.granularity
        return unrotate(grid, signs)[: self.dim]

    def _check_signs(self, signs: np.ndarray) -> None:
        if np.shape(signs) != (self.padded,):
            raise SecAggError(
                f"rotation signs must have length {self.padded}, got {np.shape(signs)}"
            )

    def event(self, sampling_rate: float, shares: int | None = None) -> MechanismEvent:
        """One round as the accountant sees it, with ``shares`` noise shares in the sum
        (default: the ``shares`` it is calibrated for).

        References: Kairouz, Liu & Steinke 2021, Theorem 1 and Proposition 14.
        """
        m = self.shares if shares is None else shares
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
            raise ConfigError(f"shares = {m!r}: must be an int >= 1")
        z = math.sqrt(m) * self.local_stddev / self.norm_bound
        tau = discrete_gaussian_sum_tau(self.local_stddev, int(m))
        return MechanismEvent("distributed_dg", z, sampling_rate, tau=tau, dim=self.padded)

    def epsilon(self, sampling_rate: float, rounds: int, delta: float) -> float:
        """The epsilon at ``delta`` of ``rounds`` Poisson-sampled rounds (RDP accountant)."""
        event = replace(self.event(sampling_rate), count=rounds)
        return compose_epsilon([event], delta, "rdp")

    @classmethod
    def for_epsilon(
        cls,
        target_epsilon: float,
        delta: float,
        sampling_rate: float,
        rounds: int,
        clip_norm: float,
        dim: int,
        shares: int,
        bits: int = 32,
        beta: float = DEFAULT_BETA,
        headroom: float = DEFAULT_HEADROOM,
    ) -> DistributedDiscreteGaussian:
        """The least noise (noise multiplier to 0.1%) whose run meets ``target_epsilon``.

        Epsilon falls as the noise multiplier grows but levels off: a finite ring caps
        the noise-to-grid ratio, so a target beyond that cap is refused.
        """
        if not (math.isfinite(target_epsilon) and target_epsilon > 0):
            raise ConfigError(f"target_epsilon = {target_epsilon!r}: must be finite and > 0")

        def build(z: float) -> DistributedDiscreteGaussian:
            return cls(clip_norm, dim, shares, z, bits, beta, headroom)

        def meets(z: float) -> bool:
            try:
                mechanism = build(z)
            except ConfigError:  # too little noise for the grid
                return False
            return mechanism.epsilon(sampling_rate, rounds, delta) <= target_epsilon

        hi = 1.0
        while not meets(hi):
            if hi >= MAX_NOISE_MULTIPLIER:
                raise ConfigError(
                    f"target_epsilon = {target_epsilon!r} cannot be met with bits = {bits}: "
                    f"even noise_multiplier = {MAX_NOISE_MULTIPLIER:g} gives more"
                )
            hi *= 2
        lo = hi / 2
        while meets(lo):
            hi, lo = lo, lo / 2
        while hi - lo > 1e-3 * hi:
            mid = math.sqrt(lo * hi)
            hi, lo = (mid, lo) if meets(mid) else (hi, mid)
        return build(hi)
