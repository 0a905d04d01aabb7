"""Sparsifying and low-rank codecs: top-k, random-k and PowerSGD.

Top-k and random-k keep ``k = max(1, ceil(f * d))`` values of each row, ``f`` being the
setting (the kept fraction, stored in the header as float32; both sides compute ``k``
from that float32 value). PowerSGD sends rank-``r`` factors of each weight matrix.
All three are built for cohorts: the ``[K, d]`` rows are encoded together, vectorized
over rows, and each payload is checked in full when decoded.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from fedloom.compression.bits import index_decode, index_encode, pack_bits_rows, unpack_uint
from fedloom.compression.codec import (
    HEADER_BYTES,
    Header,
    PayloadError,
    State,
    check_finite,
    register_codec,
)
from fedloom.compression.quantize import open_payload

FRACTION_LADDER = (0.1, 0.03, 0.01, 0.003, 0.001)
RANK_LADDER = (8, 4, 2, 1)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FP16_MAX = float(np.finfo(np.float16).max)
_VALUE_DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}
_VALUE_ENCODINGS = (*_VALUE_DTYPES, "sign")


# ----------------------------------------------------------------------------- helpers


def _as_rows(rows: np.ndarray, settings: np.ndarray, rngs: Sequence[np.random.Generator]):
    """``rows`` as finite ``[K, d]`` float32 (d >= 1) and ``settings`` as ``[K]`` float64;
    a mismatch is a ``ValueError``."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] < 1:
        raise ValueError(f"rows must be [K, d] with d >= 1, got shape {rows.shape}")
    settings = np.broadcast_to(np.asarray(settings, dtype=np.float64), (rows.shape[0],))
    if len(rngs) != rows.shape[0]:
        raise ValueError(f"{len(rngs)} generators for {rows.shape[0]} rows")
    if not np.all(np.isfinite(rows)):
        raise ValueError("rows hold non-finite values")
    return rows, settings


def _fractions(settings: np.ndarray) -> np.ndarray:
    """Kept fractions as the header stores them (float32), each checked to lie in (0, 1]."""
    f = settings.astype(np.float32).astype(np.float64)
    bad = ~((f > 0) & (f <= 1))
    if np.any(bad):
        raise ValueError(f"setting {settings[bad][0]!r}: the kept fraction must be in (0, 1]")
    return f


def kept_count(fraction: float | np.ndarray, dim: int) -> int | np.ndarray:
    """``k = max(1, ceil(f * d))``: how many values a row of ``dim`` keeps at fraction ``f``
    (``f`` as the float32 header stores it)."""
    f = np.asarray(fraction, dtype=np.float32).astype(np.float64)
    k = np.maximum(1, np.ceil(f * dim)).astype(np.int64)
    return int(k) if k.ndim == 0 else k


def _check_fraction(setting: float) -> float:
    if not 0 < setting <= 1:
        raise PayloadError(f"payload setting {setting!r}: the kept fraction must be in (0, 1]")
    return setting


def _check_size(view: memoryview, need: int, what: str) -> None:
    """Refuse ``view`` unless it is exactly ``need`` bytes long."""
    if len(view) != need:
        how = "truncated" if len(view) < need else "has trailing bytes"
        raise PayloadError(f"{what} {how}: {len(view)} bytes, expected {need}")


def _max_varint_bytes(count: int, budget: int) -> int:
    """The most bytes ``count`` LEB128 varints whose values sum to at most ``budget`` take
    (upgrading every value one byte at a time, cheapest first, is optimal)."""
    total, level = count, 1
    while True:
        cost = 128**level - (128 ** (level - 1) if level > 1 else 0)
        n = min(count, budget // cost)
        total += n
        budget -= n * cost
        if n < count or level >= 9:
            return total
        level += 1


def _fraction_param(name: str, value: float) -> float:
    value = float(value)
    if not 0 < value <= 1:
        raise ValueError(f"{name} = {value!r}: expected a kept fraction in (0, 1]")
    return value


class _KeptFraction:
    """What top-k and random-k share: the fraction ladder, no state, the kept count ``k``
    of each row of a cohort and of each payload (its header checked)."""

    code: ClassVar[int]
    linear: ClassVar[bool] = False
    fraction: float

    @property
    def ladder(self) -> tuple[float, ...]:
        return FRACTION_LADDER

    @property
    def default(self) -> float:
        return self.fraction

    def init(self, dim: int) -> State:
        return {}

    @staticmethod
    def _kept(
        rows: np.ndarray, settings: np.ndarray, rngs: Sequence[np.random.Generator]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows checked as ``[K, d]`` float32, their kept fractions as float32 stores them,
        their kept counts ``k``)."""
        rows, settings = _as_rows(rows, settings, rngs)
        f = _fractions(settings)
        return rows, f, kept_count(f, rows.shape[1])

    def _open_kept(self, payload: bytes, dim: int) -> tuple[Header, memoryview, int]:
        """A payload's checked header, its body and the ``k`` its setting keeps."""
        header, body = open_payload(payload, self.code, dim)
        return header, body, kept_count(_check_fraction(header.setting), dim)


# ----------------------------------------------------------------------------- top-k


@register_codec
class TopK(_KeptFraction):
    """Top-k sparsification: each row keeps its ``k = max(1, ceil(f * d))`` entries of
    largest magnitude (ties broken arbitrarily), the rest are sent as zeros.

    The kept values are sent as float32 (``values="fp32"``), as float16 clipped to the
    float16 range (``"fp16"``), or ternary (``"sign"``, sparse ternary compression): every
    kept entry becomes ``mu * sign(x_i)``, ``mu`` being the mean magnitude of the row's kept
    entries (float32); a kept zero (a row with fewer than ``k`` nonzeros) is sent as ``+mu``.

    Error: with ``"fp32"``, ``||x - C(x)||^2 <= (1 - k / d) ||x||^2`` (a
    ``k/d``-contraction); with ``"sign"``, ``||x - C(x)||^2 = ||x||^2 - k mu^2 <=
    (1 - 1 / d) ||x||^2``. Biased in every encoding, so pair it with error feedback
    (:class:`fedloom.compression.feedback.ErrorFeedback`); top-k with ``"sign"`` and error
    feedback is STC as its paper uses it. Not linear (the kept set depends on the row).

    Payload: header (12) + ``k`` (u32, 4) + :func:`~fedloom.compression.bits.index_encode`
    of the kept indices (``index_size``: 1 + the smaller of the varint deltas and
    ``ceil(d / 8)``) + the values: ``4 k`` bytes with ``"fp32"``, ``2 k`` with ``"fp16"``,
    ``4 + ceil(k / 8)`` with ``"sign"`` (``mu`` as float32, then one bit per kept entry in
    index order, set for a negative value, packed by
    :func:`~fedloom.compression.bits.pack_bits_rows`). The header's setting is the kept
    fraction whatever the encoding; the decoder knows its encoding, and the three value
    sizes differ for every ``k``, so a payload of another encoding is refused by its length.

    References: Aji & Heafield, "Sparse Communication for Distributed Gradient Descent",
    EMNLP 2017; Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018;
    Sattler, Wiedemann, Müller & Samek, "Robust and Communication-Efficient Federated
    Learning from Non-IID Data", IEEE TNNLS 2019 (sparse ternary compression).
    """

    name: ClassVar[str] = "topk"
    code: ClassVar[int] = 10
    unbiased: ClassVar[bool] = False

    def __init__(self, fraction: float = 0.01, values: str = "fp32") -> None:
        self.fraction = _fraction_param("fraction", fraction)
        if values not in _VALUE_ENCODINGS:
            raise ValueError(f"values = {values!r}: expected one of {sorted(_VALUE_ENCODINGS)}")
        self.values = values
        self._dtype = _VALUE_DTYPES.get(values)

    def _values_bytes(self, k: int) -> int:
        """Bytes the values of a payload keeping ``k`` entries take."""
        if self._dtype is None:  # "sign": mu, then one sign bit per kept entry
            return 4 + -(-k // 8)
        return k * self._dtype.itemsize

    @staticmethod
    def _ternary(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Kept values ``[n, k]`` -> (their ``[n]`` float32 ``mu`` = mean magnitude, the
        ``[n, k]`` float32 ``mu * sign``, each row's packed sign bits)."""
        mu = np.abs(vals.astype(np.float64)).mean(axis=1).astype(np.float32)
        neg = vals < 0
        ternary = np.where(neg, -mu[:, None], mu[:, None]).astype(np.float32)
        return mu, ternary, pack_bits_rows(neg.ravel(), np.full(len(vals), vals.shape[1]))

    def encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        rows, f, ks = self._kept(rows, settings, rngs)
        n_rows, d = rows.shape
        payloads: list[bytes] = [b""] * n_rows
        recon = np.zeros_like(rows)
        for k in np.unique(ks):
            sel = np.flatnonzero(ks == k)
            block = rows[sel]
            if k < d:
                idx = np.argpartition(-np.abs(block), k - 1, axis=1)[:, :k]
                idx.sort(axis=1)
            else:
                idx = np.broadcast_to(np.arange(d), block.shape).copy()
            vals = np.take_along_axis(block, idx, axis=1)
            if self._dtype is None:
                mu, sent, sign_bits = self._ternary(vals)
                wire = [mu[j].astype("<f4").tobytes() + sign_bits[j] for j in range(len(sel))]
            else:
                if self.values == "fp16":
                    vals = np.clip(vals, -_FP16_MAX, _FP16_MAX)
                typed = vals.astype(self._dtype)
                sent = typed.astype(np.float32)
                wire = [typed[j].tobytes() for j in range(len(sel))]
            sub = np.zeros_like(block)
            np.put_along_axis(sub, idx, sent, axis=1)
            recon[sel] = sub
            count = _U32.pack(int(k))
            for j, row in enumerate(sel):
                head = Header(self.code, d, float(f[row])).pack()
                payloads[row] = head + count + index_encode(idx[j], d) + wire[j]
        return payloads, recon, {}

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        header, body, k = self._open_kept(payload, dim)
        if len(body) < _U32.size:
            raise PayloadError(f"top-k payload body of {len(body)} bytes has no count")
        (count,) = _U32.unpack(body[: _U32.size])
        if count != k:
            raise PayloadError(f"top-k count {count}, expected {k} for setting {header.setting}")
        idx, used = index_decode(body[_U32.size :], dim, k)  # sorted, unique, in range
        rest = body[_U32.size + used :]
        _check_size(rest, self._values_bytes(k), f"top-k {self.values} values")
        if self._dtype is None:
            mu = np.frombuffer(rest[:4], dtype="<f4").astype(np.float32)[0]
            if not np.isfinite(mu) or np.signbit(mu):
                raise PayloadError(
                    f"top-k sign scale mu = {float(mu)!r}: expected finite and >= +0.0"
                )
            neg = unpack_uint(rest[4:], 1, k).astype(bool)  # refuses set padding bits
            vals = np.where(neg, -mu, mu).astype(np.float32)
        else:
            vals = check_finite(np.frombuffer(rest, dtype=self._dtype).astype(np.float32))
        out = np.zeros(dim, dtype=np.float32)
        out[idx] = vals
        return out

    def size_bound(self, dim: int, setting: float) -> int:
        k = kept_count(setting, dim)
        index = 1 + min(-(-dim // 8), _max_varint_bytes(k, dim - k))
        return HEADER_BYTES + _U32.size + index + self._values_bytes(k)


# ----------------------------------------------------------------------------- random-k


@register_codec
class RandomK(_KeptFraction):
    """Random-k sparsification: each row keeps ``k = max(1, ceil(f * d))`` coordinates
    drawn uniformly without replacement, scaled by ``d / k``.

    Unbiased: ``E[C(x)] = x``, variance ``E||C(x) - x||^2 = (d / k - 1) ||x||^2``. The
    coordinates come from a 64-bit seed drawn from the row's generator and sent in the
    payload (``numpy.random.default_rng(seed).choice(d, k, replace=False)``, sorted), so no
    index bytes are sent. With ``shared_seed`` every row (and every client) uses the
    coordinates of that seed, which makes the codec linear (encodings with the same setting
    can be summed before decoding, as secure aggregation needs); the coordinates are then
    the same in every round.

    Payload: header (12) + seed (u64, 8) + ``4 k`` (float32 values): exactly
    ``20 + 4 k`` bytes.

    References: Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018;
    Wangni et al., "Gradient Sparsification for Communication-Efficient Distributed
    Optimization", NeurIPS 2018.
    """

    name: ClassVar[str] = "randomk"
    code: ClassVar[int] = 11
    unbiased: ClassVar[bool] = True

    def __init__(self, fraction: float = 0.01, shared_seed: int | None = None) -> None:
        self.fraction = _fraction_param("fraction", fraction)
        if shared_seed is not None:
            shared_seed = int(shared_seed)
            if not 0 <= shared_seed < 2**64:
                raise ValueError(f"shared_seed = {shared_seed}: expected 0 <= seed < 2**64")
            self.linear = True  # type: ignore[misc]  (all rows share their coordinates)
        self.shared_seed = shared_seed

    @staticmethod
    def indices(seed: int, dim: int, k: int) -> np.ndarray:
        """The sorted coordinates a payload with ``seed`` keeps."""
        return np.sort(np.random.default_rng(seed).choice(dim, k, replace=False))

    def encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        rows, f, ks = self._kept(rows, settings, rngs)
        n_rows, d = rows.shape
        if self.shared_seed is None:
            seeds = [int(g.integers(0, 2**64, dtype=np.uint64)) for g in rngs]
        else:
            seeds = [self.shared_seed] * n_rows
        payloads: list[bytes] = [b""] * n_rows
        recon = np.zeros_like(rows)
        for k in np.unique(ks):
            sel = np.flatnonzero(ks == k)
            if self.shared_seed is None:
                idx = np.stack([self.indices(seeds[r], d, int(k)) for r in sel])
            else:
                idx = np.broadcast_to(self.indices(self.shared_seed, d, int(k)), (len(sel), k))
            scale = np.float32(d / k)
            vals = np.take_along_axis(rows[sel], idx, axis=1) * scale
            sub = np.zeros((len(sel), d), dtype=np.float32)
            np.put_along_axis(sub, idx, vals, axis=1)
            recon[sel] = sub
            wire = vals.astype("<f4")
            for j, row in enumerate(sel):
                head = Header(self.code, d, float(f[row])).pack()
                payloads[row] = head + _U64.pack(seeds[row]) + wire[j].tobytes()
        return payloads, recon, {}

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        header, body, k = self._open_kept(payload, dim)
        _check_size(body, _U64.size + 4 * k, "random-k payload body")
        (seed,) = _U64.unpack(body[: _U64.size])
        if self.shared_seed is not None and seed != self.shared_seed:
            raise PayloadError(f"random-k seed {seed}, expected the shared seed")
        vals = check_finite(np.frombuffer(body[_U64.size :], dtype="<f4").astype(np.float32))
        out = np.zeros(dim, dtype=np.float32)
        out[self.indices(seed, dim, k)] = vals
        return out

    def size_bound(self, dim: int, setting: float) -> int:
        return HEADER_BYTES + _U64.size + 4 * kept_count(setting, dim)


# ----------------------------------------------------------------------------- PowerSGD


class _Layer:
    """One parameter tensor of the layout: its place in the row and its matrix view."""

    def __init__(self, shape: tuple[int, ...], offset: int, min_compression: float) -> None:
        self.shape = shape
        self.min_compression = min_compression
        self.offset = offset
        self.size = math.prod(shape)
        self.matrix = len(shape) >= 2
        self.n = shape[0] if self.matrix else 0
        self.m = math.prod(shape[1:]) if self.matrix else 0
        self.q_offset = -1  # where its warm-start Q lives in the state (-1: none)

    def compressed(self, rank: int) -> bool:
        sent = rank * (self.n + self.m)
        return (
            self.matrix
            and sent < self.n * self.m
            and sent * self.min_compression <= self.n * self.m
        )

    def wire(self, rank: int) -> int:
        """float32 values this tensor takes in a payload of ``rank``."""
        return rank * (self.n + self.m) if self.compressed(rank) else self.size


@register_codec
class PowerSGD:
    """PowerSGD: every weight matrix of the update is sent as rank-``r`` factors found by
    one step of subspace (power) iteration, warm-started from the client's previous ``Q``.

    The row is split by the model's parameter shapes (layout order). A tensor of
    ``ndim >= 2`` is viewed as ``M`` = ``[shape[0], prod(shape[1:])]`` (``n x m``); when
    ``r (n + m) < n m`` it is compressed: ``P = orth(M Q)``, ``Q' = M^T P``, sent as
    ``P`` and ``Q'`` and reconstructed as ``P Q'^T`` (the projection of ``M`` on the span
    of ``P``); other tensors are sent raw. ``Q'`` is the client's next warm start (its
    state; a row whose rank differs from its state's restarts from a fixed seeded
    normal ``Q``). Repeated on the same matrix this is subspace iteration, converging to
    the best rank-``r`` approximation; a matrix of rank ``<= r`` is reconstructed exactly.

    Error: ``||M - P P^T M||_F`` >= the best rank-``r`` error; biased (use error
    feedback); not linear.

    Payload: header (12) + ``4 * (sum of r (n + m) over compressed matrices + sum of the
    sizes of the other tensors)`` bytes: exact for a rank.

    References: Vogels, Karimireddy & Jaggi, "PowerSGD: Practical Low-Rank Gradient
    Compression for Distributed Optimization", NeurIPS 2019.
    """

    name: ClassVar[str] = "powersgd"
    code: ClassVar[int] = 12
    linear: ClassVar[bool] = False
    unbiased: ClassVar[bool] = False
    takes_shapes: ClassVar[bool] = True
    INIT_SEED: ClassVar[int] = 0x9057_5C_D0

    def __init__(
        self, shapes: Sequence[Sequence[int]], rank: int = 2, min_compression: float = 1.0
    ) -> None:
        shapes = [tuple(int(n) for n in s) for s in shapes]
        if not shapes:
            raise ValueError("shapes = (): PowerSGD needs the model's parameter shapes")
        if any(n < 0 for s in shapes for n in s):
            raise ValueError(f"shapes = {shapes}: sizes must be >= 0")
        if int(rank) != rank or rank < 1:
            raise ValueError(f"rank = {rank!r}: expected an integer >= 1")
        if not min_compression >= 1:
            raise ValueError(f"min_compression = {min_compression!r}: expected >= 1")
        self.rank = int(rank)
        self.max_rank = max(max(RANK_LADDER), self.rank)
        self.min_compression = float(min_compression)
        self.layers: list[_Layer] = []
        offset = 0
        for s in shapes:
            self.layers.append(_Layer(s, offset, self.min_compression))
            offset += self.layers[-1].size
        self.dim = offset
        q_offset = 0
        for layer in self.layers:
            if layer.compressed(1):
                layer.q_offset = q_offset
                q_offset += layer.m * self.max_rank
        self.q_size = q_offset
        self._q0 = np.random.default_rng(self.INIT_SEED).standard_normal(q_offset)
        self._q0 = self._q0.astype(np.float32)

    @property
    def ladder(self) -> tuple[float, ...]:
        return tuple(float(r) for r in RANK_LADDER if r <= self.max_rank)

    @property
    def default(self) -> float:
        return float(self.rank)

    def _wire(self, rank: int) -> int:
        return sum(layer.wire(rank) for layer in self.layers)

    def _check_dim(self, dim: int) -> None:
        if dim != self.dim:
            raise ValueError(
                f"row length {dim}, but the shapes given to PowerSGD sum to {self.dim}"
            )

    def init(self, dim: int) -> State:
        """The warm-start ``Q`` of every matrix (``[m, max_rank]`` each, concatenated) and
        the rank it was computed for."""
        self._check_dim(dim)
        return {"q": self._q0.copy(), "rank": np.int64(self.rank)}

    def _ranks(self, settings: np.ndarray) -> np.ndarray:
        ranks = np.rint(settings).astype(np.int64)
        bad = (ranks != settings) | (ranks < 1) | (ranks > self.max_rank)
        if np.any(bad):
            raise ValueError(
                f"setting {settings[bad][0]!r}: the rank must be an integer in 1..{self.max_rank}"
            )
        return ranks

    def _slot(self, q: np.ndarray, layer: _Layer) -> np.ndarray:
        """``[..., m, max_rank]`` view of a layer's Q in (stacked) state ``q``."""
        flat = q[..., layer.q_offset : layer.q_offset + layer.m * self.max_rank]
        return flat.reshape(*q.shape[:-1], layer.m, self.max_rank)

    def _reconstruct(self, body: np.ndarray, rank: int) -> np.ndarray:
        """The ``[d]`` row a payload body (float32 values) stands for; the one routine both
        :meth:`encode` and :meth:`decode` use, so their results agree bit for bit."""
        out = np.empty(self.dim, dtype=np.float32)
        pos = 0
        for layer in self.layers:
            if layer.compressed(rank):
                n, m = layer.n, layer.m
                p = body[pos : pos + n * rank].reshape(n, rank)
                q = body[pos + n * rank : pos + rank * (n + m)].reshape(m, rank)
                out[layer.offset : layer.offset + layer.size] = (p @ q.T).ravel()
            else:
                out[layer.offset : layer.offset + layer.size] = body[pos : pos + layer.size]
            pos += layer.wire(rank)
        return out

    def encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        rows, settings = _as_rows(rows, settings, rngs)
        n_rows, d = rows.shape
        self._check_dim(d)
        ranks = self._ranks(settings)
        q_state = np.asarray(state["q"], dtype=np.float32).reshape(n_rows, self.q_size)
        state_rank = np.asarray(state["rank"]).reshape(n_rows)
        new_q = q_state.copy()
        payloads: list[bytes] = [b""] * n_rows
        recon = np.empty_like(rows)
        for rank in np.unique(ranks):
            r = int(rank)
            sel = np.flatnonzero(ranks == r)
            warm = state_rank[sel] == r
            body = np.empty((len(sel), self._wire(r)), dtype=np.float32)
            pos = 0
            for layer in self.layers:
                seg = rows[sel, layer.offset : layer.offset + layer.size]
                width = layer.wire(r)
                if not layer.compressed(r):
                    body[:, pos : pos + width] = seg
                    pos += width
                    continue
                n, m = layer.n, layer.m
                mat = seg.reshape(len(sel), n, m)
                q0 = self._slot(self._q0, layer)[:, :r]
                q = self._slot(q_state[sel], layer)[:, :, :r]
                # a fresh start where the rank changed or the warm start collapsed to zero
                restart = ~warm | ~np.any(q, axis=(1, 2)) | ~np.all(np.isfinite(q), axis=(1, 2))
                q = np.where(restart[:, None, None], q0, q)
                p = np.linalg.qr(mat @ q)[0].astype(np.float32)  # [s, n, r], orthonormal
                q = np.swapaxes(mat, 1, 2) @ p  # [s, m, r]
                body[:, pos : pos + n * r] = p.reshape(len(sel), -1)
                body[:, pos + n * r : pos + width] = q.reshape(len(sel), -1)
                pos += width
                slot = np.zeros((len(sel), m, self.max_rank), dtype=np.float32)
                slot[:, :, :r] = q
                lo = layer.q_offset
                new_q[sel, lo : lo + m * self.max_rank] = slot.reshape(len(sel), -1)
            head = Header(self.code, d, float(r)).pack()
            for j, row in enumerate(sel):
                values = np.array(body[j], dtype="<f4")  # the same fresh array decode builds
                recon[row] = self._reconstruct(values, r)
                payloads[row] = head + values.tobytes()
        return payloads, recon, {"q": new_q, "rank": ranks}

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        header, body = open_payload(payload, self.code, dim)
        self._check_dim(dim)
        setting = header.setting
        if setting != int(setting) or not 1 <= setting <= self.max_rank:
            raise PayloadError(
                f"payload setting {setting!r}: the rank must be an integer in 1..{self.max_rank}"
            )
        r = int(setting)
        _check_size(body, 4 * self._wire(r), "PowerSGD payload body")
        values = check_finite(np.array(np.frombuffer(body, dtype="<f4")), "PowerSGD factors")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below
            out = self._reconstruct(values, r)
        return check_finite(out, "PowerSGD reconstruction")

    def size_bound(self, dim: int, setting: float) -> int:
        self._check_dim(dim)
        return HEADER_BYTES + 4 * self._wire(int(setting))
