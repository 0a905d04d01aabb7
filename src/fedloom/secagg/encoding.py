"""Fixed-point encoding of float updates into Z_(2^bits) for masked summation.

SecAgg adds masked vectors modulo 2^bits, so client updates must become integers
first. :class:`FixedPoint` clips each value to ``[-clip, clip]``, multiplies by a scale
and rounds; negative values wrap (two's complement). The scale leaves headroom so that the
sum of ``num_clients`` encodings stays within ``(-2^(bits-1), 2^(bits-1))`` and can be read
back as a signed integer after the masks cancel.

The scale is a power of two (the largest with ``(clip * scale + 1) * num_clients <=
2^(bits-1) - 1``: the ``+ 1`` is room for rounding up), not the plain floor of that ratio:
multiplying and dividing floats by a power of two is exact, so the only encoding error is
the rounding to an integer.

Rounding is to the nearest integer, or stochastic (``floor(v + U)`` with ``U`` uniform in
[0, 1)): unbiased, so the errors of many clients average out instead of adding up, which is
what makes a small ring (``bits = 16``, half the upload of float32) usable for training.

Error bound: each encoded value is off by at most ``0.5 / scale`` (nearest) or less than
``1 / scale`` (stochastic) from its clipped input, so a decoded sum of ``count`` encodings
is off by at most ``count * error_bound`` from the exact sum of the clipped inputs, plus
the float64 rounding of the result itself (relative 2^-53, which only matters for
``bits=64``).

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017, section 3 (inputs in Z_R).
    Kairouz et al., "The Distributed Discrete Gaussian Mechanism for Federated Learning
    with Secure Aggregation", ICML 2021, section 4 (clipping, scaling, modular wrap).
    Suresh et al., "Distributed Mean Estimation with Limited Communication", ICML 2017
    (unbiased stochastic rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np

from fedloom.secagg.crypto import SecAggError

BITS = (16, 32, 64)
"""The supported ring widths: the encodings are ``uint16``, ``uint32`` or ``uint64``."""


def _power_of_two_scale(clip: float, num_clients: int, bits: int) -> float:
    """Largest 2^k with ``(clip * 2^k + 1) * num_clients <= 2^(bits-1) - 1``, exactly."""
    limit = Fraction(2 ** (bits - 1) - 1 - num_clients)
    bound = Fraction(clip) * num_clients
    if limit <= 0:
        raise SecAggError(
            f"bits={bits} leaves no room for the sum of num_clients={num_clients} encodings"
        )
    k = math.floor(math.log2(limit) - math.log2(clip) - math.log2(num_clients))
    while Fraction(2) ** k * bound > limit:
        k -= 1
    while Fraction(2) ** (k + 1) * bound <= limit:
        k += 1
    try:
        return math.ldexp(1.0, k)
    except OverflowError as exc:
        raise SecAggError(f"clip={clip} is too small to encode: scale 2^{k} overflows") from exc


@dataclass(frozen=True)
class FixedPoint:
    """Clip, scale and round floats into Z_(2^bits); decode sums of up to ``num_clients``.

    ``clip``: values are clipped to ``[-clip, clip]`` (finite, > 0).
    ``num_clients``: most encodings that will be summed; sets the headroom.
    ``bits``: modulus 2^bits, 16, 32 or 64 (``uint16``, ``uint32``, ``uint64``).
    ``rounding``: ``"nearest"`` or ``"stochastic"`` (unbiased; needs a generator to encode).
    ``scale``: derived, see the module docstring; per-value error <= :attr:`error_bound`.

    References: see the module docstring.
    """

    clip: float
    num_clients: int
    bits: int = 32
    rounding: Literal["nearest", "stochastic"] = "nearest"
    scale: float = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.clip, bool) or not isinstance(self.clip, int | float):
            raise SecAggError(f"clip must be a number, got {self.clip!r}")
        if not math.isfinite(self.clip) or self.clip <= 0:
            raise SecAggError(f"clip must be finite and > 0, got {self.clip!r}")
        if (
            isinstance(self.num_clients, bool)
            or not isinstance(self.num_clients, int)
            or self.num_clients < 1
        ):
            raise SecAggError(f"num_clients must be an int >= 1, got {self.num_clients!r}")
        if self.bits not in BITS:
            raise SecAggError(f"bits must be 16, 32 or 64, got {self.bits!r}")
        if self.rounding not in ("nearest", "stochastic"):
            raise SecAggError(f"rounding must be 'nearest' or 'stochastic', got {self.rounding!r}")
        object.__setattr__(
            self, "scale", _power_of_two_scale(float(self.clip), self.num_clients, self.bits)
        )

    @property
    def dtype(self) -> np.dtype:
        """``uint16``, ``uint32`` or ``uint64``: the dtype of encodings and masks."""
        return np.dtype(f"u{self.bits // 8}")

    @property
    def error_bound(self) -> float:
        """Worst-case rounding error of one encoded value: ``0.5 / scale`` (nearest) or
        ``1 / scale`` (stochastic, a strict bound)."""
        return (0.5 if self.rounding == "nearest" else 1.0) / self.scale

    def encode(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Clip, scale, round and wrap into Z_(2^bits) (negatives wrap).

        Stochastic rounding draws its uniforms from ``rng`` (required then). Non-finite
        inputs are refused rather than clipped: a NaN or inf in an update is a bug
        upstream, not a large value.

        References: Bonawitz et al. 2017, section 3; Suresh et al. 2017 (stochastic).
        """
        values = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise SecAggError("cannot encode NaN or inf values")
        scaled = np.clip(values, -self.clip, self.clip) * self.scale
        if self.rounding == "nearest":
            rounded = np.rint(scaled)
        elif isinstance(rng, np.random.Generator):
            rounded = np.floor(scaled + rng.random(scaled.shape))
        else:
            raise SecAggError("stochastic rounding needs a numpy Generator as rng")
        return wrap(rounded.astype(np.int64), self.bits)

    def decode_sum(self, s: np.ndarray, count: int) -> np.ndarray:
        """The float sum of ``count`` inputs from the modular sum of their encodings.

        ``s`` is the sum mod 2^bits (any unsigned integer array; it is reduced mod
        2^bits). It is read as a signed integer, which is unambiguous only while
        ``count <= num_clients``, then divided by ``scale``.

        References: Bonawitz et al. 2017, section 3.
        """
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise SecAggError(f"count must be a non-negative int, got {count!r}")
        if count > self.num_clients:
            raise SecAggError(
                f"cannot decode a sum of {count} encodings: the headroom covers "
                f"num_clients={self.num_clients}, so the sum may have wrapped"
            )
        total = np.asarray(s)
        if total.dtype.kind != "u":
            raise SecAggError(f"s must be an unsigned integer array, got dtype {total.dtype}")
        return signed(total, self.bits).astype(np.float64) / self.scale


def wrap(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers (int64) reduced into Z_(2^bits), as ``uint{bits}`` (two's complement)."""
    unsigned = np.asarray(values, dtype=np.int64).view(np.uint64) & np.uint64(2**bits - 1)
    return unsigned.astype(np.dtype(f"u{bits // 8}"))


def signed(total: np.ndarray, bits: int) -> np.ndarray:
    """Elements of Z_(2^bits) read as signed integers in [-2^(bits-1), 2^(bits-1)), int64."""
    width = bits // 8
    return np.asarray(total).astype(np.dtype(f"u{width}")).view(f"i{width}").astype(np.int64)
