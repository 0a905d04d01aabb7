"""Shamir secret sharing over the prime field GF(p), p = 2**61 - 1, batched with numpy.

SecAgg clients split their mask seed and their X25519 private key into ``n`` shares so
that any ``t`` surviving clients let the server unmask the sum (removing a dropped
client's pairwise masks, or an alive client's self mask) while fewer than ``t`` learn
nothing. Secrets are field elements; 32-byte keys and seeds become five 56-bit elements
via :func:`bytes_to_field`.

Why hand-written: no well-kept Python library offers Shamir sharing over a fixed prime
field vectorized over many secrets, with the batch reconstruction SecAgg needs (one set
of Lagrange coefficients applied to every secret of a client at once). The arithmetic is
small enough to verify against Python integers, which the tests do.

Why p = 2**61 - 1: a Mersenne prime, so reduction is a shift and an add. Products of two
elements do not fit in 64 bits, so :func:`_mul` splits each operand into 31-bit halves
and folds the partial products with 2**61 = 1 (mod p); everything stays in ``uint64``.

References:
    Shamir, "How to Share a Secret", CACM 22(11), 1979.
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017, section 3 (secret sharing) and section 4 (round 4, unmasking).
"""

from __future__ import annotations

from collections.abc import Sequence
from secrets import randbelow

import numpy as np

from fedloom.secagg.crypto import SecAggError

PRIME = 2**61 - 1
ELEMENT_BYTES = 7  # 56-bit chunks: always below PRIME

_P = np.uint64(PRIME)
_LOW30 = np.uint64(2**30 - 1)
_LOW31 = np.uint64(2**31 - 1)


def _reduce(x: np.ndarray) -> np.ndarray:
    """x mod p for any uint64 x, using 2**61 = 1 (mod p)."""
    y = (x & _P) + (x >> np.uint64(61))  # < 2**61 + 8 < 2p
    return y - _P * (y >= _P).astype(np.uint64)


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b mod p for field elements (the sum is < 2**62, no overflow)."""
    return _reduce(a + b)


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b mod p for field elements, without leaving uint64.

    With a = a1*2**31 + a0 and b = b1*2**31 + b0 (a1, b1 < 2**30; a0, b0 < 2**31):
    a*b = a1*b1*2**62 + (a1*b0 + a0*b1)*2**31 + a0*b0, and 2**62 = 2, 2**61 = 1 (mod p).
    Writing mid = m1*2**30 + m0 gives mid*2**31 = m1 + m0*2**31 (mod p). The folded sum
    is below 2**61 + 2**32 + 2**61 + 2**62 < 2**64.
    """
    a1, a0 = a >> np.uint64(31), a & _LOW31
    b1, b0 = b >> np.uint64(31), b & _LOW31
    mid = a1 * b0 + a0 * b1
    folded = (
        ((a1 * b1) << np.uint64(1))
        + (mid >> np.uint64(30))
        + ((mid & _LOW30) << np.uint64(31))
        + a0 * b0
    )
    return _reduce(folded)


def _to_field(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    """Validated uint64 array of field elements in [0, PRIME)."""
    arr = np.asarray(values) if isinstance(values, np.ndarray) else np.asarray(values, object)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= PRIME):
            raise SecAggError(f"{name} must be field elements in [0, 2**61 - 1)")
        return arr.astype(np.uint64)
    flat = arr.ravel().tolist()
    for v in flat:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v < PRIME:
            raise SecAggError(f"{name} must be ints in [0, 2**61 - 1), got {v!r}")
    return np.array([int(v) for v in flat], dtype=np.uint64).reshape(arr.shape)


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise SecAggError(f"{name} must be an int, got {value!r}")
    return int(value)


def share(secrets: Sequence[int] | np.ndarray, n: int, t: int) -> np.ndarray:
    """Split each secret into ``n`` shares, any ``t`` of which reconstruct it.

    Returns an int64 array of shape ``[n, len(secrets)]`` whose row ``j`` holds
    ``f(j + 1)`` for every secret, where each secret gets its own polynomial
    ``f(x) = secret + c_1 x + ... + c_(t-1) x^(t-1)`` with coefficients drawn by
    ``secrets.randbelow(PRIME)``. Any ``t - 1`` shares are uniformly distributed whatever
    the secret, which is the privacy guarantee SecAgg relies on.

    References: Shamir 1979; Bonawitz et al. 2017, section 3.
    """
    n, t = _check_count(n, "n"), _check_count(t, "t")
    if not 1 <= t <= n:
        raise SecAggError(f"need 1 <= t <= n, got t={t}, n={n}")
    if n >= PRIME:
        raise SecAggError(f"n must be below 2**61 - 1, got {n}")
    values = _to_field(secrets, "secrets")
    if values.ndim != 1:
        raise SecAggError(f"secrets must be one-dimensional, got shape {values.shape}")
    m = values.size
    coefficients = [values] + [
        np.array([randbelow(PRIME) for _ in range(m)], dtype=np.uint64) for _ in range(t - 1)
    ]
    xs = np.arange(1, n + 1, dtype=np.uint64)[:, None]
    shares = np.zeros((n, m), dtype=np.uint64)
    for c in reversed(coefficients):  # Horner's rule, all secrets and share points at once
        shares = _add(_mul(shares, xs), c[None, :])
    return shares.astype(np.int64)


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Lagrange basis coefficients ``l_i(0) = prod_(j != i) x_j / (x_j - x_i)`` mod p.

    Computed once per set of surviving share holders and reused for every secret.

    References: Shamir 1979, section 2.
    """
    points = [_check_count(x, "share index") for x in xs]
    if not points:
        raise SecAggError("need at least one share to reconstruct")
    if any(not 1 <= x < PRIME for x in points):
        raise SecAggError(f"share indices must be in [1, 2**61 - 1), got {points}")
    if len(set(points)) != len(points):
        raise SecAggError(f"share indices must be distinct, got {points}")
    coefficients = []
    for i, xi in enumerate(points):
        numerator, denominator = 1, 1
        for j, xj in enumerate(points):
            if j != i:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return coefficients


def reconstruct(xs: Sequence[int], shares: np.ndarray) -> list[int]:
    """The secrets from shares ``shares[i]`` held at 1-based indices ``xs[i]``.

    ``shares`` has shape ``[len(xs), num_secrets]`` (rows of :func:`share`'s output).
    Lagrange interpolation at 0, batched: the coefficients are computed once, then one
    modular dot product per secret. Needs at least ``t`` shares; with fewer the result
    is a field element unrelated to the secret (no error: the field cannot tell).

    References: Shamir 1979; Bonawitz et al. 2017, section 4 (round 4).
    """
    coefficients = lagrange_at_zero(xs)
    values = _to_field(shares, "shares")
    if values.ndim != 2 or values.shape[0] != len(coefficients):
        raise SecAggError(
            f"shares must have shape [len(xs)={len(coefficients)}, num_secrets], got {values.shape}"
        )
    total = np.zeros(values.shape[1], dtype=np.uint64)
    for coefficient, row in zip(coefficients, values, strict=True):
        total = _add(total, _mul(np.uint64(coefficient), row))
    return [int(v) for v in total]


def bytes_to_field(b: bytes) -> list[int]:
    """Big-endian 7-byte (56-bit) chunks of ``b`` as field elements; 32 bytes -> 5.

    Every chunk is below 2**56 < p, so each is a valid secret; used to share X25519
    private keys and 32-byte mask seeds. The last chunk may be shorter.

    References: Bonawitz et al. 2017, section 4 (round 2 shares s_u^SK and b_u).
    """
    if not isinstance(b, bytes | bytearray):
        raise SecAggError(f"expected bytes, got {type(b).__name__}")
    return [
        int.from_bytes(b[i : i + ELEMENT_BYTES], "big") for i in range(0, len(b), ELEMENT_BYTES)
    ]


def field_to_bytes(elements: Sequence[int], length: int = 32) -> bytes:
    """Inverse of :func:`bytes_to_field` for a ``length``-byte original.

    Raises :class:`SecAggError` if an element does not fit its chunk, which is what a
    reconstruction from too few or corrupted shares usually produces.

    References: see :func:`bytes_to_field`.
    """
    length = _check_count(length, "length")
    if length < 0:
        raise SecAggError(f"length must be >= 0, got {length}")
    sizes = [min(ELEMENT_BYTES, length - i) for i in range(0, length, ELEMENT_BYTES)]
    values = list(elements)
    if len(values) != len(sizes):
        raise SecAggError(
            f"a {length}-byte value needs {len(sizes)} field elements, got {len(values)}"
        )
    out = bytearray()
    for k, (v, size) in enumerate(zip(values, sizes, strict=True)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v < 256**size:
            raise SecAggError(
                f"field element {k} ({v!r}) does not fit in {size} bytes: wrong or too few shares?"
            )
        out += int(v).to_bytes(size, "big")
    return bytes(out)
