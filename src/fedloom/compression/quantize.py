"""Quantizing codecs: half precision, uniform b-bit, QSGD, TernGrad and scaled sign.

Each codec writes one :class:`~fedloom.compression.codec.Header` and a fixed layout body
(all multi-byte numbers little-endian, bit fields packed most significant bit first by
:mod:`fedloom.compression.bits`). ``encode`` returns, with the payloads, the exact rows
``decode`` gives back for them: both halves run the same elementwise dequantization, so the
two agree bit for bit. Rows given to ``encode`` must be finite (``ValueError`` otherwise).

None of these codecs is linear: each payload carries its own scales, so a sum of payloads
does not decode to the sum of the rows (``linear = False`` throughout).

Uniform, QSGD and TernGrad can rotate each row first (``rotate=True``): the row is padded
with zeros to the next power of two ``n``, multiplied by a random +-1 diagonal and by the
normalized Walsh-Hadamard matrix, which spreads large coordinates over all of them and so
shrinks the quantization scales. The rotation's 64-bit seed is drawn from the row's
generator and written at the start of the body (8 bytes); the header carries
``FLAG_ROTATED``. The rotation is orthonormal, so L2 errors in the rotated domain are the
L2 errors of the row.

References: Suresh et al., "Distributed Mean Estimation with Limited Communication",
ICML 2017 (randomized Hadamard rotation); the per-codec papers are named on each class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from fedloom.compression import bits
from fedloom.compression.codec import (
    FLAG_ROTATED,
    HEADER_BYTES,
    Header,
    PayloadError,
    State,
    check_finite,
    register_codec,
)

_F32 = np.dtype("<f4")
_SEED_BYTES = 8


# ----------------------------------------------------------------------------- helpers


def _next_pow2(d: int) -> int:
    return 1 << max(0, (d - 1).bit_length())


def _fwht(x: np.ndarray) -> np.ndarray:
    """Normalized fast Walsh-Hadamard transform of each row of ``x`` ``[K, n]`` (float64,
    ``n`` a power of two): log2(n) vectorized butterfly steps, then a scale by 1/sqrt(n).
    The transform is its own inverse."""
    k, n = x.shape
    src, dst = np.array(x, dtype=np.float64), np.empty((k, n), dtype=np.float64)
    h = 1
    while h < n:
        a = src.reshape(k, n // (2 * h), 2, h)
        b = dst.reshape(k, n // (2 * h), 2, h)
        np.add(a[:, :, 0, :], a[:, :, 1, :], out=b[:, :, 0, :])
        np.subtract(a[:, :, 0, :], a[:, :, 1, :], out=b[:, :, 1, :])
        src, dst = dst, src
        h *= 2
    src *= 1.0 / math.sqrt(n)
    return src


def _rotation_signs(seeds: Sequence[int], n: int) -> np.ndarray:
    """The random +-1 diagonals ``[K, n]`` (float64) for the given 64-bit seeds."""
    out = np.empty((len(seeds), n), dtype=np.float64)
    for i, seed in enumerate(seeds):
        out[i] = np.random.default_rng(int(seed)).integers(0, 2, n) * 2.0 - 1.0
    return out


def _rotate(rows: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``H D x`` for each row, zero-padded to ``n`` (the diagonals ``signs`` ``[K, n]``);
    float64 ``[K, n]``."""
    padded = np.zeros(signs.shape, dtype=np.float64)
    padded[:, : rows.shape[1]] = rows
    return _fwht(padded * signs)


def _unrotate(y: np.ndarray, signs: np.ndarray, dim: int) -> np.ndarray:
    """``D H y`` for each row, cut to ``dim``; float32 ``[K, dim]``."""
    return (_fwht(y.astype(np.float64)) * signs)[:, :dim].astype(np.float32)


def _buckets(n: int, bucket: int) -> tuple[int, int]:
    """(bucket length, number of buckets) for ``n`` values; ``bucket == 0`` means one."""
    size = n if bucket == 0 else min(bucket, n)
    return size, -(-n // size)


def _as_buckets(values: np.ndarray, size: int, count: int, fill: str) -> np.ndarray:
    """``[K, n]`` -> ``[K, count, size]``, padding the last bucket with zeros or with each
    row's last value (``fill`` = "zero" or "edge")."""
    k, n = values.shape
    extra = count * size - n
    if extra:
        pad = (
            np.zeros((k, extra), values.dtype)
            if fill == "zero"
            else np.repeat(values[:, -1:], extra, axis=1)
        )
        values = np.concatenate([values, pad], axis=1)
    return values.reshape(k, count, size)


def _check_int_param(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {span}, got {value}")
    return int(value)


def _check_bool_param(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def open_payload(payload: bytes, code: int, dim: int, flags: int = 0) -> tuple[Header, memoryview]:
    """The header (checked: codec id, row length, exactly ``flags``) and the body after it;
    the opening every quantizing and sparsifying codec's ``decode`` shares."""
    header, body = Header.unpack(payload)
    header.expect(code, dim)
    if header.flags != flags:
        raise PayloadError(f"payload flags {header.flags}, expected {flags}")
    return header, body


def _read(body: memoryview, off: int, nbytes: int, what: str) -> tuple[memoryview, int]:
    if len(body) < off + nbytes:
        raise PayloadError(f"payload body truncated in {what}: {len(body)} bytes")
    return body[off : off + nbytes], off + nbytes


def _floats(view: memoryview, what: str) -> np.ndarray:
    values = np.frombuffer(view, dtype=_F32).astype(np.float32)
    check_finite(values, what)
    return values


class _QuantCodec:
    """Shared plumbing: input and header checks, the bucket layout, and the optional
    rotation (seeds drawn, written and read; rows rotated and restored)."""

    name: ClassVar[str]
    code: ClassVar[int]
    linear: ClassVar[bool] = False
    unbiased: ClassVar[bool] = False
    _ladder: ClassVar[tuple[float, ...]]
    _default: ClassVar[float]
    rotate: bool = False

    @property
    def ladder(self) -> tuple[float, ...]:
        return self._ladder

    @property
    def default(self) -> float:
        return self._default

    def init(self, dim: int) -> State:
        return {}

    def _setting_problem(self, setting: float) -> str | None:
        """Why ``setting`` is not allowed, or None."""
        raise NotImplementedError

    def _flags(self) -> int:
        return FLAG_ROTATED if self.rotate else 0

    def _padded(self, dim: int) -> int:
        return _next_pow2(dim) if self.rotate else dim

    def _layout(self, dim: int) -> tuple[int, int, int]:
        """(values quantized ``n``, bucket length, number of buckets) for rows of ``dim``."""
        n = self._padded(dim)
        return (n, *_buckets(n, self.bucket))

    def _head_bytes(self) -> int:
        """Bytes before the per-bucket scales: the header and, when rotated, the seed."""
        return HEADER_BYTES + (_SEED_BYTES if self.rotate else 0)

    def _setting_param(self, name: str, value: object) -> float:
        """The constructor's default setting, given as parameter ``name``, checked."""
        setting = float(_check_int_param(name, value, 1))
        problem = self._setting_problem(setting)
        if problem:
            raise ValueError(f"{name} = {value!r}: {problem}")
        return setting

    def _check_encode(
        self, rows: np.ndarray, settings: np.ndarray, rngs: Sequence[np.random.Generator]
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] < 1:
            raise ValueError(f"rows must be [K, d] with d >= 1, got shape {rows.shape}")
        rows = rows.astype(np.float32, copy=False)
        if not np.all(np.isfinite(rows)):
            raise ValueError(f"{self.name}: rows contain non-finite values")
        settings = np.asarray(settings, dtype=np.float64).reshape(-1)
        if len(settings) != rows.shape[0] or len(rngs) != rows.shape[0]:
            raise ValueError(
                f"{self.name}: {rows.shape[0]} rows need as many settings and generators, "
                f"got {len(settings)} and {len(rngs)}"
            )
        for s in np.unique(settings):
            problem = self._setting_problem(float(s))
            if problem:
                raise ValueError(f"{self.name}: setting {float(s)!r}: {problem}")
        return rows, settings

    def encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        """See :meth:`fedloom.compression.codec.Codec.encode`."""
        rows, settings = self._check_encode(rows, settings, rngs)
        if rows.shape[0] == 0:
            return [], rows.copy(), state
        return self._encode(rows, settings, rngs, state)

    def _encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        raise NotImplementedError

    def _rotated(
        self, rows: np.ndarray, rngs: Sequence[np.random.Generator]
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(seeds, +-1 diagonals ``[K, n]``, the rotated rows ``[K, n]`` float64), a seed
        drawn from each row's generator; unrotated: zeros, ones ``[K, 1]`` and the rows."""
        k, d = rows.shape
        if not self.rotate:
            return [0] * k, np.ones((k, 1)), rows.astype(np.float64)
        seeds = [int(r.integers(0, 2**64, dtype=np.uint64)) for r in rngs]
        signs = _rotation_signs(seeds, self._padded(d))
        return seeds, signs, _rotate(rows, signs)

    def _restore(self, deq: np.ndarray, signs: np.ndarray | None, dim: int) -> np.ndarray:
        """Dequantized ``[K, n]`` values back in the rows' domain: ``[K, dim]`` float32."""
        return _unrotate(deq, signs, dim) if self.rotate else deq.astype(np.float32, copy=False)

    def _seed_bytes(self, seed: int) -> bytes:
        """The body's leading rotation seed (u64), or nothing when not rotated."""
        return np.uint64(seed).astype("<u8").tobytes() if self.rotate else b""

    def _read_seed(self, body: memoryview) -> tuple[int, int]:
        """The rotation seed at the start of ``body`` (0 when not rotated), and the offset
        after it."""
        if not self.rotate:
            return 0, 0
        raw, off = _read(body, 0, _SEED_BYTES, "rotation seed")
        return int(np.frombuffer(raw, dtype="<u8")[0]), off

    def _decoded(self, deq: np.ndarray, seed: int, dim: int) -> np.ndarray:
        """One payload's dequantized ``[1, n]`` values as its checked ``[dim]`` row."""
        signs = _rotation_signs([seed], deq.shape[1]) if self.rotate else None
        return check_finite(self._restore(deq, signs, dim)[0])

    def _open(self, payload: bytes, dim: int) -> tuple[Header, memoryview]:
        header, body = open_payload(payload, self.code, dim, self._flags())
        problem = self._setting_problem(header.setting)
        if problem:
            raise PayloadError(f"payload setting {header.setting!r}: {problem}")
        return header, body

    def _finish(
        self, payloads: list[bytes], recon: np.ndarray, state: State
    ) -> tuple[list[bytes], np.ndarray, State]:
        if not np.all(np.isfinite(recon)):
            raise ValueError(f"{self.name}: rows overflow float32 once quantized")
        return payloads, recon, state

    def _expect_body(self, body: memoryview, expected: int) -> None:
        if len(body) != expected:
            raise PayloadError(f"{self.name} body of {len(body)} bytes, expected {expected}")


# ----------------------------------------------------------------------------- half precision


class _Half(_QuantCodec):
    """A 16-bit float per value: payload ``12 + 2 d`` bytes, setting 16 (bits).

    References: the formats' own, named on :class:`Float16` and :class:`BFloat16`.
    """

    _ladder: ClassVar[tuple[float, ...]] = (16.0,)
    _default: ClassVar[float] = 16.0
    _wire: ClassVar[str]  # the payload's little-endian dtype of 16-bit words

    def _setting_problem(self, setting: float) -> str | None:
        return None if setting == 16.0 else "expected 16"

    def size_bound(self, dim: int, setting: float) -> int:
        return HEADER_BYTES + 2 * dim

    def _narrow(self, rows: np.ndarray) -> np.ndarray:
        """``[K, d]`` float32 -> the 16-bit words (``_wire`` dtype) sent for them."""
        raise NotImplementedError

    def _widen(self, half: np.ndarray) -> np.ndarray:
        """16-bit words -> the float32 values they stand for."""
        raise NotImplementedError

    def _encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        half = self._narrow(rows)
        head = Header(self.code, rows.shape[1], 16.0).pack()
        payloads = [head + h.tobytes() for h in half]
        return self._finish(payloads, self._widen(half), state)

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        _, body = self._open(payload, dim)
        self._expect_body(body, 2 * dim)
        return check_finite(self._widen(np.frombuffer(body, dtype=self._wire)))


@register_codec
class Float16(_Half):
    """IEEE half precision, round to nearest even; magnitudes above 65504 saturate to
    +-65504. Error: ``|x - x_hat| <= 2**-11 |x|`` for ``|x|`` in ``[2**-14, 65504]``,
    ``<= 2**-25`` below. Biased only by rounding; not linear (rounding each row).

    Payload: exactly ``12 + 2 d`` bytes (d little-endian float16). Setting: 16 (bits).

    References: IEEE 754-2008 binary16; Micikevicius et al., "Mixed Precision Training",
    ICLR 2018.
    """

    name: ClassVar[str] = "fp16"
    code: ClassVar[int] = 1
    _wire: ClassVar[str] = "<f2"
    _MAX = 65504.0

    def _narrow(self, rows: np.ndarray) -> np.ndarray:
        return np.clip(rows, -self._MAX, self._MAX).astype(self._wire)

    def _widen(self, half: np.ndarray) -> np.ndarray:
        return half.astype(np.float32)


@register_codec
class BFloat16(_Half):
    """bfloat16 (the top 16 bits of float32) rounded to nearest even from the float32 bits;
    values that would round past the largest finite bfloat16 saturate to it. Error:
    ``|x - x_hat| <= 2**-8 |x|`` for normal values and
    ``<= 2**-134`` for subnormal ones. Biased only by rounding; not linear.

    Payload: exactly ``12 + 2 d`` bytes (d little-endian bfloat16). Setting: 16 (bits).

    References: Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019.
    """

    name: ClassVar[str] = "bf16"
    code: ClassVar[int] = 2
    _wire: ClassVar[str] = "<u2"

    def _narrow(self, rows: np.ndarray) -> np.ndarray:
        u = rows.astype(np.float32).view(np.uint32)
        hi = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        hi = hi.astype(np.uint16)
        overflow = (hi & np.uint16(0x7F80)) == np.uint16(0x7F80)
        saturated = (hi & np.uint16(0x8000)) | np.uint16(0x7F7F)
        return np.where(overflow, saturated, hi).astype(self._wire)

    def _widen(self, half: np.ndarray) -> np.ndarray:
        return (half.astype(np.uint32) << np.uint32(16)).view(np.float32)


# ----------------------------------------------------------------------------- uniform


@register_codec
class Uniform(_QuantCodec):
    """b-bit uniform quantization (setting = b in 1..16) with a float32 minimum and step per
    bucket of ``bucket`` values (0: one per row). Each value becomes
    ``q = round((x - min) / step)`` in ``[0, 2**b - 1]``, with ``step = (max - min) /
    (2**b - 1)``; ``x_hat = min + q step``.

    Error: nearest rounding (default) gives ``|x - x_hat| <= step / 2`` per value (plus
    float32 rounding); ``stochastic=True`` rounds up with probability equal to the
    fractional part, which is unbiased (``E[x_hat] = x``) with ``|x - x_hat| < step``. With
    ``rotate=True`` the bounds hold in the rotated domain, so
    ``||x - x_hat||_2 <= sqrt(n) max(step) / 2`` (nearest).

    Payload: exactly ``12 + 8 r + 8 ceil(n / B) + ceil(n b / 8)`` bytes, where ``n = d``
    (or the next power of two when rotated, ``r = 1``; else ``r = 0``) and ``B`` the bucket
    length (``n`` when ``bucket`` is 0 or larger than ``n``). Body: [seed u64 if rotated]
    [minimums f32 x buckets][steps f32 x buckets][q, b bits each].

    References: Alistarh et al., "QSGD", NeurIPS 2017 (stochastic rounding); Suresh et al.,
    ICML 2017 (rotation).
    """

    name: ClassVar[str] = "uniform"
    code: ClassVar[int] = 3
    _ladder: ClassVar[tuple[float, ...]] = (8.0, 6.0, 4.0, 2.0)
    _default: ClassVar[float] = 8.0

    def __init__(
        self, bits: int = 8, bucket: int = 0, stochastic: bool = False, rotate: bool = False
    ):
        self._default = self._setting_param("bits", bits)  # type: ignore[misc]
        self.bucket = _check_int_param("bucket", bucket, 0)
        self.stochastic = _check_bool_param("stochastic", stochastic)
        self.rotate = _check_bool_param("rotate", rotate)
        self.unbiased = stochastic  # type: ignore[misc]

    def _setting_problem(self, setting: float) -> str | None:
        ok = setting == int(setting) and 1 <= setting <= 16
        return None if ok else "bits must be an integer in 1..16"

    def size_bound(self, dim: int, setting: float) -> int:
        n, _, count = self._layout(dim)
        return self._head_bytes() + 8 * count + -(-n * int(setting) // 8)

    @staticmethod
    def _dequant(q: np.ndarray, lo: np.ndarray, step: np.ndarray, size: int) -> np.ndarray:
        """``[K, n]`` levels, ``[K, buckets]`` minimums and steps -> ``[K, n]`` float32."""
        n = q.shape[1]
        qb = _as_buckets(q.astype(np.float32), size, lo.shape[1], "zero")
        out = lo[:, :, None] + qb * step[:, :, None]
        return out.reshape(q.shape[0], -1)[:, :n]

    def _encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        k, d = rows.shape
        n, size, count = self._layout(d)
        payloads: list[bytes] = [b""] * k
        recon = np.empty((k, d), dtype=np.float32)
        seeds, signs, y = self._rotated(rows, rngs)
        noise = np.stack([r.random(n) for r in rngs]) if self.stochastic else None
        for b in np.unique(settings):
            sel = np.flatnonzero(settings == b)
            levels = 2 ** int(b) - 1
            yb = _as_buckets(y[sel], size, count, "edge")
            lo = yb.min(axis=2).astype(np.float32)
            hi = yb.max(axis=2).astype(np.float32)
            step = ((hi.astype(np.float64) - lo) / levels).astype(np.float32)
            if not np.all(np.isfinite(step)):
                raise ValueError(f"{self.name}: row range overflows float32")
            t = (yb - lo[:, :, None]) / np.where(step > 0, step, 1.0)[:, :, None]
            t = t.reshape(len(sel), -1)[:, :n]
            if noise is None:
                q = np.rint(t)
            else:
                q = np.floor(t + noise[sel])
            q = np.clip(q, 0, levels).astype(np.int64)
            deq = self._dequant(q, lo, step, size)
            recon[sel] = self._restore(deq, signs[sel], d)
            head = Header(self.code, d, float(b), self._flags()).pack()
            for j, i in enumerate(sel):
                payloads[i] = (
                    head
                    + self._seed_bytes(seeds[i])
                    + lo[j].astype(_F32).tobytes()
                    + step[j].astype(_F32).tobytes()
                    + bits.pack_uint(q[j], int(b))
                )
        return self._finish(payloads, recon, state)

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        header, body = self._open(payload, dim)
        b = int(header.setting)
        self._expect_body(body, self.size_bound(dim, b) - HEADER_BYTES)
        n, size, count = self._layout(dim)
        seed, off = self._read_seed(body)
        raw, off = _read(body, off, 4 * count, "bucket minimums")
        lo = _floats(raw, "uniform bucket minimum")
        raw, off = _read(body, off, 4 * count, "bucket steps")
        step = _floats(raw, "uniform bucket step")
        if np.any(step < 0):
            raise PayloadError("uniform bucket step is negative")
        q = bits.unpack_uint(body[off:], b, n)
        deq = self._dequant(q[None, :], lo[None, :], step[None, :], size)
        return self._decoded(deq, seed, dim)


# ----------------------------------------------------------------------------- QSGD


def _gap_bits_bound(n: int) -> float:
    """Most Elias-gamma bits for the gaps of any index set in ``[0, n)``: with m gaps
    summing to at most n, Jensen gives ``m (2 log2(n / m) + 1)``, largest at
    ``m / n = 2**(1/2 - 1/ln 2)`` where it equals ``n 2**(1/2 - 1/ln 2) 2 / ln 2``."""
    inv_ln2 = 1.0 / math.log(2.0)
    return n * 2.0 ** (0.5 - inv_ln2) * 2.0 * inv_ln2


def _level_bits_bound(sizes: np.ndarray, s: int) -> float:
    """Most Elias-gamma bits for the levels of buckets of the given sizes: a level is at
    most ``s u + 1`` with ``sum u**2 <= 1`` per bucket, so by Jensen and Cauchy-Schwarz a
    bucket of B values costs at most ``B (2 log2(1 + s / sqrt(B)) + 1)`` bits, and never
    more than ``B (2 floor(log2 s) + 1)``."""
    sizes = sizes.astype(np.float64)
    per_value = np.minimum(
        2.0 * np.log2(1.0 + s / np.sqrt(sizes)) + 1.0, 2.0 * math.floor(math.log2(s)) + 1.0
    )
    return float((sizes * per_value).sum())


@register_codec
class QSGD(_QuantCodec):
    """QSGD with s levels (setting = s, an integer in 1..2**24) and one float32 L2 norm per
    bucket of ``bucket`` values: ``x_hat_i = norm sign(x_i) l_i / s`` where ``l_i`` is
    ``s |x_i| / norm`` rounded stochastically (up with probability equal to its fractional
    part). Unbiased: ``E[x_hat] = x``; variance at most ``min(B / s**2, sqrt(B) / s) ||x||^2``
    per bucket of B values (Alistarh et al., Lemma 3.1).

    Payload (Elias coding of the paper, Sec. 3.1): [seed u64 if rotated][norms f32 x
    buckets][nnz u32][nnz sign bits, 1 = negative, padded to a byte][Elias-gamma codes of
    the nnz position gaps (first position + 1, then differences) followed by the nnz
    levels, padded to a byte]. Size: ``12 + 8 r + 4 ceil(n / B) + 4 + ceil(nnz / 8) +
    ceil(G / 8)`` with G the gamma bits, at most :meth:`size_bound` (gaps: about 1.5 n bits
    at worst; levels: ``B (2 log2(1 + s / sqrt(B)) + 1)`` bits per bucket at worst).

    References: Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient
    Quantization and Encoding", NeurIPS 2017.
    """

    name: ClassVar[str] = "qsgd"
    code: ClassVar[int] = 4
    unbiased: ClassVar[bool] = True
    _ladder: ClassVar[tuple[float, ...]] = (256.0, 64.0, 16.0, 4.0, 1.0)
    _default: ClassVar[float] = 16.0
    _MAX_LEVELS = 2**24

    def __init__(self, levels: int = 16, bucket: int = 512, rotate: bool = False):
        self._default = self._setting_param("levels", levels)  # type: ignore[misc]
        self.bucket = _check_int_param("bucket", bucket, 0)
        self.rotate = _check_bool_param("rotate", rotate)

    def _setting_problem(self, setting: float) -> str | None:
        ok = setting == int(setting) and 1 <= setting <= self._MAX_LEVELS
        return None if ok else f"levels must be an integer in 1..{self._MAX_LEVELS}"

    def size_bound(self, dim: int, setting: float) -> int:
        n, size, count = self._layout(dim)
        sizes = np.full(count, size)
        sizes[-1] = n - size * (count - 1)
        gamma_bits = _gap_bits_bound(n) + _level_bits_bound(sizes, int(setting))
        fixed = self._head_bytes() + 4 * count + 4
        # + count + 8: slack for float rounding of the bound and of sum(u**2) <= 1
        return fixed + -(-n // 8) + math.ceil(gamma_bits * (1 + 1e-9) / 8) + count + 8

    @staticmethod
    def _dequant(
        levels: np.ndarray, neg: np.ndarray, norms: np.ndarray, s: int, size: int
    ) -> np.ndarray:
        """``[K, n]`` levels and signs, ``[K, buckets]`` norms -> ``[K, n]`` float64."""
        k, n = levels.shape
        lb = _as_buckets(levels.astype(np.float64), size, norms.shape[1], "zero")
        sb = _as_buckets(np.where(neg, -1.0, 1.0), size, norms.shape[1], "zero")
        return ((norms.astype(np.float64)[:, :, None] * lb) / s * sb).reshape(k, -1)[:, :n]

    def _encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        k, d = rows.shape
        n, size, count = self._layout(d)
        seeds, signs, y = self._rotated(rows, rngs)
        noise = np.stack([r.random(n) for r in rngs])
        yb = _as_buckets(y, size, count, "zero")
        norms = np.sqrt(np.einsum("kbi,kbi->kb", yb, yb)).astype(np.float32)
        if not np.all(np.isfinite(norms)):
            raise ValueError(f"{self.name}: bucket norm overflows float32")
        safe = np.where(norms > 0, norms, 1.0).astype(np.float64)[:, :, None]
        u = np.minimum(np.abs(yb) / safe, 1.0).reshape(k, -1)[:, :n]
        s = settings.astype(np.int64)[:, None]
        levels = np.minimum(np.floor(s * u + noise), s).astype(np.int64)
        neg = (y < 0) & (levels > 0)
        deq = np.empty((k, n), dtype=np.float64)
        for sv in np.unique(settings):
            sel = np.flatnonzero(settings == sv)
            deq[sel] = self._dequant(levels[sel], neg[sel], norms[sel], int(sv), size)
        recon = self._restore(deq, signs, d)
        # all rows' codes in one pass: per row, the position gaps then the levels
        row_of, cols = np.nonzero(levels)
        counts = np.bincount(row_of, minlength=k)
        first = np.cumsum(counts) - counts
        rank = np.arange(len(cols)) - first[row_of]
        prev = np.where(rank == 0, -1, np.roll(cols, 1))
        codes = np.empty(2 * len(cols), dtype=np.uint64)
        codes[2 * first[row_of] + rank] = cols - prev
        codes[2 * first[row_of] + counts[row_of] + rank] = levels[row_of, cols]
        gamma = bits.elias_gamma_encode_rows(codes, 2 * counts)
        sign_bits = bits.pack_bits_rows(neg[row_of, cols], counts)
        payloads = [
            b"".join(
                [
                    Header(self.code, d, float(settings[i]), self._flags()).pack(),
                    self._seed_bytes(seeds[i]),
                    norms[i].astype(_F32).tobytes(),
                    np.uint32(counts[i]).astype("<u4").tobytes(),
                    sign_bits[i],
                    gamma[i],
                ]
            )
            for i in range(k)
        ]
        return self._finish(payloads, recon, state)

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        header, body = self._open(payload, dim)
        s = int(header.setting)
        n, size, count = self._layout(dim)
        seed, off = self._read_seed(body)
        raw, off = _read(body, off, 4 * count, "bucket norms")
        norms = _floats(raw, "qsgd bucket norm")
        if np.any(norms < 0):
            raise PayloadError("qsgd bucket norm is negative")
        raw, off = _read(body, off, 4, "nonzero count")
        nnz = int(np.frombuffer(raw, dtype="<u4")[0])
        if nnz > n:
            raise PayloadError(f"qsgd nonzero count {nnz} exceeds {n} values")
        neg_bits = bits.unpack_uint(body[off:], 1, nnz)
        off += -(-nnz // 8)
        codes, used = bits.elias_gamma_decode(body[off:], 2 * nnz)
        gamma_bytes = -(-used // 8)
        if len(body) - off != gamma_bytes:
            raise PayloadError(
                f"qsgd body has {len(body) - off - gamma_bytes} trailing bytes after its codes"
            )
        tail = np.frombuffer(body[off:], dtype=np.uint8)
        if used % 8 and int(tail[-1]) & ((1 << (8 - used % 8)) - 1):
            raise PayloadError("qsgd padding bits are not zero")
        gaps, lv = codes[:nnz], codes[nnz:]
        if nnz and int(gaps.max()) > n:
            raise PayloadError("qsgd position gap out of range")
        idx = np.cumsum(gaps.astype(np.int64)) - 1
        if nnz and int(idx[-1]) >= n:
            raise PayloadError(f"qsgd position {int(idx[-1])} out of range [0, {n})")
        if nnz and int(lv.max()) > s:
            raise PayloadError(f"qsgd level {int(lv.max())} above {s}")
        levels = np.zeros((1, n), dtype=np.int64)
        levels[0, idx] = lv.astype(np.int64)
        neg = np.zeros((1, n), dtype=bool)
        neg[0, idx] = neg_bits.astype(bool)
        deq = self._dequant(levels, neg, norms[None, :], s, size)
        return self._decoded(deq, seed, dim)


# ----------------------------------------------------------------------------- TernGrad


@register_codec
class TernGrad(_QuantCodec):
    """TernGrad: per bucket of ``bucket`` values (0: one per row) the float32 scale
    ``s = max |x|``; each value becomes ``t = sign(x) b`` with ``b ~ Bernoulli(|x| / s)``
    and ``x_hat = s t``. Unbiased: ``E[x_hat] = x``; ``|x - x_hat| <= s``. (The paper's
    gradient clipping is left to the caller.)

    Payload: exactly ``12 + 8 r + 4 ceil(n / B) + ceil(n / 5)`` bytes: [seed u64 if
    rotated][scales f32 x buckets][ternary digits, five per byte in base 3 (1.6 bits per
    value), 0 -> 0, +1 -> 1, -1 -> 2, first value most significant, last byte padded with
    0 digits]. Setting: 3 (levels), the only one.

    References: Wen et al., "TernGrad: Ternary Gradients to Reduce Communication in
    Distributed Deep Learning", NeurIPS 2017.
    """

    name: ClassVar[str] = "terngrad"
    code: ClassVar[int] = 5
    unbiased: ClassVar[bool] = True
    _ladder: ClassVar[tuple[float, ...]] = (3.0,)
    _default: ClassVar[float] = 3.0
    _POW3 = np.array([81, 27, 9, 3, 1], dtype=np.int64)

    def __init__(self, bucket: int = 512, rotate: bool = False):
        self.bucket = _check_int_param("bucket", bucket, 0)
        self.rotate = _check_bool_param("rotate", rotate)

    def _setting_problem(self, setting: float) -> str | None:
        return None if setting == 3.0 else "expected 3"

    def size_bound(self, dim: int, setting: float) -> int:
        n, _, count = self._layout(dim)
        return self._head_bytes() + 4 * count + -(-n // 5)

    @staticmethod
    def _dequant(t: np.ndarray, scales: np.ndarray, size: int) -> np.ndarray:
        k, n = t.shape
        tb = _as_buckets(t.astype(np.float32), size, scales.shape[1], "zero")
        return (scales[:, :, None] * tb).reshape(k, -1)[:, :n]

    def _pack(self, t: np.ndarray) -> bytes:
        digits = np.where(t < 0, 2, t).astype(np.int64)
        digits = np.concatenate([digits, np.zeros(-len(digits) % 5, np.int64)])
        return (digits.reshape(-1, 5) @ self._POW3).astype(np.uint8).tobytes()

    def _encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        k, d = rows.shape
        n, size, count = self._layout(d)
        seeds, signs, y = self._rotated(rows, rngs)
        noise = np.stack([r.random(n) for r in rngs])
        yb = _as_buckets(np.abs(y), size, count, "zero")
        scales = yb.max(axis=2).astype(np.float32)
        safe = np.where(scales > 0, scales, 1.0).astype(np.float64)[:, :, None]
        p = (yb / safe).reshape(k, -1)[:, :n]
        t = np.where(noise < p, np.sign(y), 0.0).astype(np.int64)
        deq = self._dequant(t, scales, size)
        recon = self._restore(deq, signs, d)
        head = Header(self.code, d, 3.0, self._flags()).pack()
        payloads = [
            head + self._seed_bytes(seeds[i]) + scales[i].astype(_F32).tobytes() + self._pack(t[i])
            for i in range(k)
        ]
        return self._finish(payloads, recon, state)

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        _, body = self._open(payload, dim)
        self._expect_body(body, self.size_bound(dim, 3.0) - HEADER_BYTES)
        n, size, count = self._layout(dim)
        seed, off = self._read_seed(body)
        raw, off = _read(body, off, 4 * count, "bucket scales")
        scales = _floats(raw, "terngrad bucket scale")
        if np.any(scales < 0):
            raise PayloadError("terngrad bucket scale is negative")
        packed = np.frombuffer(body[off:], dtype=np.uint8).astype(np.int64)
        if np.any(packed >= 243):
            raise PayloadError("terngrad byte above 242 is not five ternary digits")
        digits = (packed[:, None] // self._POW3) % 3
        digits = digits.reshape(-1)
        if np.any(digits[n:]):
            raise PayloadError("terngrad padding digits are not zero")
        t = np.where(digits[:n] == 2, -1, digits[:n])
        deq = self._dequant(t[None, :], scales[None, :], size)
        return self._decoded(deq, seed, dim)


# ----------------------------------------------------------------------------- scaled sign


@register_codec
class ScaledSign(_QuantCodec):
    """Scaled sign: ``x_hat = (||x||_1 / d) sign(x)`` (zeros count as positive), the
    compressor of EF-signSGD. Biased (``unbiased = False``): use it with error feedback,
    under which it is a delta-approximate compressor with
    ``||x - x_hat||^2 <= (1 - ||x||_1^2 / (d ||x||_2^2)) ||x||^2``.

    Payload: exactly ``12 + 4 + ceil(d / 8)`` bytes: [scale f32][d sign bits, 1 = negative,
    padded with zeros]. Setting: 1 (bit per value), the only one.

    References: Karimireddy et al., "Error Feedback Fixes SignSGD and other Gradient
    Compression Schemes", ICML 2019.
    """

    name: ClassVar[str] = "sign"
    code: ClassVar[int] = 6
    _ladder: ClassVar[tuple[float, ...]] = (1.0,)
    _default: ClassVar[float] = 1.0

    def _setting_problem(self, setting: float) -> str | None:
        return None if setting == 1.0 else "expected 1"

    def size_bound(self, dim: int, setting: float) -> int:
        return HEADER_BYTES + 4 + -(-dim // 8)

    def _encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        k, d = rows.shape
        scales = (np.abs(rows.astype(np.float64)).sum(axis=1) / d).astype(np.float32)
        neg = rows < 0
        recon = np.where(neg, -scales[:, None], scales[:, None]).astype(np.float32)
        head = Header(self.code, d, 1.0).pack()
        packed = np.packbits(neg, axis=1)
        payloads = [head + scales[i].astype(_F32).tobytes() + packed[i].tobytes() for i in range(k)]
        return self._finish(payloads, recon, state)

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        _, body = self._open(payload, dim)
        self._expect_body(body, 4 + -(-dim // 8))
        scale = _floats(body[:4], "sign scale")
        if scale[0] < 0:
            raise PayloadError("sign scale is negative")
        neg = bits.unpack_uint(body[4:], 1, dim).astype(bool)
        return check_finite(np.where(neg, -scale[0], scale[0]).astype(np.float32))
