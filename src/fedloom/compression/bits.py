"""Vectorized wire helpers for codec payloads: fixed-width bit packing, LEB128 varints,
Elias-gamma codes, bitmaps and sorted index sets.

Encoders take numpy arrays and return ``bytes``; decoders take ``bytes``-like data (a
payload body or any slice of it) and raise :class:`~fedloom.compression.codec.PayloadError`
for anything the matching encoder would not have written (truncation, nonzero padding bits,
over-long or non-canonical codes, unsorted or out-of-range indices). Every encoder states
its exact output size so that codecs can document exact payload sizes.

References: Elias, "Universal codeword sets and representations of the integers", IEEE
Trans. Inf. Theory 1975 (gamma codes); the DWARF/LEB128 varint format.
"""

from __future__ import annotations

import numpy as np

from fedloom.compression.codec import PayloadError

Data = bytes | bytearray | memoryview

_U64 = np.uint64
_VARINT_MAX_BYTES = 10  # ceil(64 / 7)
TAG_VARINT = 0
TAG_BITMAP = 1


def _as_u8(data: Data) -> np.ndarray:
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def _as_u64(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "ui":
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise ValueError(f"{what} must be non-negative, got minimum {int(arr.min())}")
    return arr.astype(_U64, copy=False)


def _bits_param(bits: int) -> int:
    if not 1 <= int(bits) <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    return int(bits)


def _count_param(count: int) -> int:
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return count


def _split_groups(bitarr: np.ndarray, group_bytes: np.ndarray) -> list[bytes]:
    """``bitarr`` packed into bytes and cut into consecutive groups of ``group_bytes``."""
    byte_starts = np.cumsum(group_bytes) - group_bytes
    packed = np.packbits(bitarr).tobytes()
    return [
        packed[a : a + n] for a, n in zip(byte_starts.tolist(), group_bytes.tolist(), strict=True)
    ]


def _floor_log2(values: np.ndarray) -> np.ndarray:
    """floor(log2(v)) for uint64 values >= 1, exactly (no float rounding)."""
    if values.size and int(values.max()) < 2**53:  # exact as float64: read the exponent
        return (np.frexp(values.astype(np.float64))[1] - 1).astype(_U64)
    out = np.zeros(values.shape, dtype=_U64)
    for shift in (32, 16, 8, 4, 2, 1):
        step = (values >> (out + _U64(shift))) != 0
        out += step.astype(_U64) * _U64(shift)
    return out


def _place_binary(bitarr: np.ndarray, ends: np.ndarray, values: np.ndarray, nlog: np.ndarray):
    """Write each value's ``nlog + 1`` low bits so that its last bit is at ``ends - 1``;
    each pass only touches the values that still have bits left."""
    active = np.arange(len(values))
    k = 0
    while active.size:
        bitarr[ends[active] - 1 - k] = ((values[active] >> _U64(k)) & _U64(1)).astype(np.uint8)
        k += 1
        active = active[nlog[active] >= k]


def _read_binary(bitarr: np.ndarray, ends: np.ndarray, nlog: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_place_binary`: the ``nlog + 1`` bits ending at ``ends - 1``."""
    out = np.zeros(len(ends), dtype=_U64)
    active = np.arange(len(ends))
    k = 0
    while active.size:
        out[active] |= bitarr[ends[active] - 1 - k].astype(_U64) << _U64(k)
        k += 1
        active = active[nlog[active] >= k]
    return out


def _check_padding(u8: np.ndarray, nbits: int, what: str) -> None:
    """Refuse nonzero bits after the first ``nbits`` bits of the last used byte."""
    rem = nbits % 8
    if rem and int(u8[nbits // 8]) & ((1 << (8 - rem)) - 1):
        raise PayloadError(f"{what}: padding bits after bit {nbits} are not zero")


# ----------------------------------------------------------------------------- fixed width


def pack_uint(values: np.ndarray, bits: int) -> bytes:
    """``n`` unsigned integers in ``[0, 2**bits)``, each in ``bits`` bits (1..32), most
    significant bit first, concatenated and zero-padded to a byte.

    Size: exactly ``ceil(n * bits / 8)`` bytes.
    """
    bits = _bits_param(bits)
    arr = _as_u64(values, "values")
    if arr.size and int(arr.max()) >> bits:
        raise ValueError(f"values must be below 2**{bits}, got maximum {int(arr.max())}")
    if bits == 8:
        return arr.astype(np.uint8).tobytes()
    if bits == 16:
        return arr.astype(">u2").tobytes()
    if bits == 32:
        return arr.astype(">u4").tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=_U64)
    bitarr = ((arr[:, None] >> shifts) & _U64(1)).astype(np.uint8)
    return np.packbits(bitarr.ravel()).tobytes()


def pack_bits_rows(flags: np.ndarray, counts: np.ndarray) -> list[bytes]:
    """:func:`pack_uint` with ``bits=1`` of consecutive groups of ``flags`` (``counts[r]``
    for group r) in one vectorized pass; group r takes exactly ``ceil(counts[r] / 8)``
    bytes."""
    arr = np.asarray(flags).astype(bool).astype(np.uint8)
    counts = np.asarray(counts, dtype=np.int64)
    if arr.ndim != 1 or np.any(counts < 0) or int(counts.sum()) != len(arr):
        raise ValueError(f"counts must be >= 0 and sum to {len(arr)} flags")
    group_bytes = -(-counts // 8)
    byte_starts = np.cumsum(group_bytes) - group_bytes
    first = np.cumsum(counts) - counts
    pos = 8 * np.repeat(byte_starts, counts) + np.arange(len(arr)) - np.repeat(first, counts)
    bitarr = np.zeros(8 * int(group_bytes.sum()), dtype=np.uint8)
    bitarr[pos] = arr
    return _split_groups(bitarr, group_bytes)


def unpack_uint(data: Data, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`: ``count`` values of ``bits`` bits from the start of
    ``data`` as uint64. Reads ``ceil(count * bits / 8)`` bytes; more may follow. Shorter
    data or nonzero padding bits in the last byte read are a ``PayloadError``."""
    bits, count = _bits_param(bits), _count_param(count)
    nbits = count * bits
    need = -(-nbits // 8)
    u8 = _as_u8(data)
    if len(u8) < need:
        raise PayloadError(f"{count} values of {bits} bits need {need} bytes, got {len(u8)}")
    u8 = u8[:need]
    if bits == 8:
        return u8.astype(_U64)
    if bits == 16:
        return u8.view(">u2").astype(_U64)
    if bits == 32:
        return u8.view(">u4").astype(_U64)
    _check_padding(u8, nbits, "packed values")
    bitarr = np.unpackbits(u8)[:nbits].reshape(count, bits).astype(_U64)
    shifts = np.arange(bits - 1, -1, -1, dtype=_U64)
    return np.bitwise_or.reduce(bitarr << shifts, axis=1) if count else np.zeros(0, _U64)


# ----------------------------------------------------------------------------- varints


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes each value takes as a LEB128 varint: ``max(1, ceil(bit_length(v) / 7))``."""
    arr = _as_u64(values, "values")
    nb = np.ones(arr.shape, dtype=np.int64)
    for k in range(1, _VARINT_MAX_BYTES):
        nb += (arr >> _U64(7 * k)) != 0
    return nb


def varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, high bit set on
    every byte but a value's last.

    Size: exactly ``sum(max(1, ceil(bit_length(v) / 7)))`` bytes (see :func:`varint_sizes`).
    """
    arr = _as_u64(values, "values")
    nb = varint_sizes(arr)
    starts = np.cumsum(nb) - nb
    out = np.zeros(int(nb.sum()), dtype=np.uint8)
    for k in range(int(nb.max()) if nb.size else 0):
        sel = nb > k
        group = (arr[sel] >> _U64(7 * k)) & _U64(0x7F)
        cont = (nb[sel] > k + 1).astype(_U64) << _U64(7)
        out[starts[sel] + k] = (group | cont).astype(np.uint8)
    return out.tobytes()


def varint_decode(data: Data, count: int) -> tuple[np.ndarray, int]:
    """``count`` LEB128 varints from the start of ``data`` -> (uint64 values, bytes
    consumed). Truncation, a value longer than 10 bytes or above 2**64 - 1, and non-canonical
    (over-long) encodings are a ``PayloadError``."""
    count = _count_param(count)
    if count == 0:
        return np.zeros(0, dtype=_U64), 0
    u8 = _as_u8(data)[: count * _VARINT_MAX_BYTES + 1]
    ends = np.flatnonzero(u8 < 0x80)[:count]
    if len(ends) < count:
        raise PayloadError(f"varints truncated: {len(ends)} of {count} complete")
    starts = np.empty(count, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > _VARINT_MAX_BYTES:
        raise PayloadError(f"varint longer than {_VARINT_MAX_BYTES} bytes")
    multi = lengths > 1
    if np.any(u8[ends[multi]] == 0):
        raise PayloadError("varint is over-long (non-canonical final zero byte)")
    ten = lengths == _VARINT_MAX_BYTES
    if np.any(u8[ends[ten]] > 1):
        raise PayloadError("varint value exceeds 2**64 - 1")
    out = np.zeros(count, dtype=_U64)
    for k in range(int(lengths.max())):
        sel = lengths > k
        out[sel] |= (u8[starts[sel] + k].astype(_U64) & _U64(0x7F)) << _U64(7 * k)
    return out, int(ends[-1]) + 1


# ----------------------------------------------------------------------------- Elias gamma


def elias_gamma_bits(values: np.ndarray) -> int:
    """Bits :func:`elias_gamma_encode` writes before padding: ``sum(2 * floor(log2 v) + 1)``."""
    arr = _as_u64(values, "values")
    if arr.size and int(arr.min()) < 1:
        raise ValueError("Elias-gamma values must be >= 1")
    return int((2 * _floor_log2(arr) + 1).sum()) if arr.size else 0


def elias_gamma_encode(values: np.ndarray) -> bytes:
    """Elias gamma codes of integers ``v >= 1``: ``floor(log2 v)`` zero bits, then ``v`` in
    binary (``floor(log2 v) + 1`` bits, most significant first); codes concatenated and
    zero-padded to a byte.

    Size: exactly ``ceil(sum(2 * floor(log2 v) + 1) / 8)`` bytes.
    """
    arr = _as_u64(values, "values")
    return elias_gamma_encode_rows(arr, np.array([len(arr)]))[0]


def elias_gamma_encode_rows(values: np.ndarray, counts: np.ndarray) -> list[bytes]:
    """:func:`elias_gamma_encode` of consecutive groups of ``values`` (``counts[r]`` values
    for group r) in one vectorized pass; group r's bytes are exactly
    ``ceil(sum(2 * floor(log2 v) + 1) / 8)`` over its values."""
    arr = _as_u64(values, "values")
    counts = np.asarray(counts, dtype=np.int64)
    if np.any(counts < 0) or int(counts.sum()) != len(arr):
        raise ValueError(f"counts must be >= 0 and sum to {len(arr)} values")
    if arr.size and int(arr.min()) < 1:
        raise ValueError(f"Elias-gamma values must be >= 1, got minimum {int(arr.min())}")
    nlog = _floor_log2(arr)
    lengths = (2 * nlog + 1).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(lengths)])
    ends = np.cumsum(counts)
    group_first = ends - counts
    group_bits = cum[ends] - cum[group_first]
    group_bytes = -(-group_bits // 8)
    byte_starts = np.cumsum(group_bytes) - group_bytes
    group_of = np.repeat(np.arange(len(counts)), counts)
    # each code's first bit: its group's first bit, plus the bits before it in the group
    starts = 8 * byte_starts[group_of] + cum[:-1] - cum[group_first][group_of]
    bitarr = np.zeros(8 * int(group_bytes.sum()), dtype=np.uint8)
    # a code is v itself written in 2 nlog + 1 bits: its binary part ends the code
    _place_binary(bitarr, starts + lengths, arr, nlog.astype(np.int64))
    return _split_groups(bitarr, group_bytes)


def elias_gamma_decode(data: Data, count: int) -> tuple[np.ndarray, int]:
    """``count`` Elias gamma codes from the start of ``data`` -> (uint64 values, bits
    consumed). The caller checks what follows (padding, trailing bytes). Truncation and codes
    for values above 2**64 - 1 are a ``PayloadError``."""
    count = _count_param(count)
    if count == 0:
        return np.zeros(0, dtype=_U64), 0
    bitarr = np.unpackbits(_as_u8(data))
    nbits = len(bitarr)
    idx_t = np.int32 if nbits < 2**30 else np.int64
    pos = np.arange(nbits, dtype=idx_t)
    # index of the first 1 (and the first 0) at or after each position, nbits if none
    next_one = np.minimum.accumulate(np.where(bitarr == 1, pos, nbits)[::-1])[::-1]
    next_zero = np.minimum.accumulate(np.where(bitarr == 0, pos, nbits)[::-1])[::-1]
    zeros_run = next_one - pos
    # a code's length from its first bit; past the data when no 1 ends its zero run
    code_len = np.where(next_one < nbits, 2 * zeros_run + 1, nbits + 1).astype(idx_t)
    ones_run = (next_zero - pos).astype(idx_t)
    del pos, next_one, next_zero
    lens, ones = memoryview(code_len), memoryview(ones_run)
    run_at: list[int] = []
    run_len: list[int] = []
    p = i = 0
    while i < count:  # one step per code, or per run of one-bit codes (value 1)
        if p >= nbits:
            raise PayloadError(f"Elias-gamma codes truncated: {i} of {count} complete")
        step = lens[p]
        run = min(ones[p], count - i) if step == 1 else 1
        run_at.append(p)
        run_len.append(run)
        p += step if run == 1 else run
        i += run
    if p > nbits:
        raise PayloadError(f"Elias-gamma codes truncated: {count - 1} of {count} complete")
    at = np.array(run_at, dtype=np.int64)
    rl = np.array(run_len, dtype=np.int64)
    starts = np.repeat(at - (np.cumsum(rl) - rl), rl) + np.arange(count)
    nlog = zeros_run[starts].astype(np.int64)
    if int(nlog.max()) > 63:
        raise PayloadError("Elias-gamma code for a value above 2**64 - 1")
    return _read_binary(bitarr, starts + 2 * nlog + 1, nlog), int(p)


# ----------------------------------------------------------------------------- index sets


def _check_indices(indices: np.ndarray, dim: int) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "ui"):
        raise ValueError(f"indices must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (int(arr[0]) < 0 or int(arr[-1]) >= dim):
        raise ValueError(f"indices must lie in [0, {dim}), got {int(arr[0])}..{int(arr[-1])}")
    if arr.size > 1 and np.any(np.diff(arr) <= 0):
        raise ValueError("indices must be sorted and unique")
    return arr


def bitmap_encode(indices: np.ndarray, dim: int) -> bytes:
    """Bit ``i`` (most significant bit first within each byte) set for every index.

    Size: exactly ``ceil(dim / 8)`` bytes.
    """
    arr = _check_indices(indices, dim)
    bitarr = np.zeros(dim, dtype=np.uint8)
    bitarr[arr] = 1
    return np.packbits(bitarr).tobytes()


def bitmap_decode(data: Data, dim: int) -> np.ndarray:
    """The sorted int64 indices of a bitmap of ``ceil(dim / 8)`` bytes at the start of
    ``data``; short data or set padding bits are a ``PayloadError``."""
    need = -(-dim // 8)
    u8 = _as_u8(data)
    if len(u8) < need:
        raise PayloadError(f"bitmap of {dim} bits needs {need} bytes, got {len(u8)}")
    u8 = u8[:need]
    _check_padding(u8, dim, "bitmap")
    return np.flatnonzero(np.unpackbits(u8)[:dim]).astype(np.int64)


def _deltas(arr: np.ndarray) -> np.ndarray:
    """First index, then gaps minus one (all >= 0 for sorted unique indices)."""
    out = np.empty(arr.shape, dtype=np.int64)
    if arr.size:
        out[0] = arr[0]
        out[1:] = np.diff(arr) - 1
    return out


def index_size(indices: np.ndarray, dim: int) -> int:
    """Exact bytes of :func:`index_encode`:
    ``1 + min(sum(varint_sizes(deltas)), ceil(dim / 8))``, where ``deltas`` are the first
    index followed by each gap minus one."""
    arr = _check_indices(indices, dim)
    return 1 + min(int(varint_sizes(_deltas(arr)).sum()), -(-dim // 8))


def index_encode(indices: np.ndarray, dim: int) -> bytes:
    """Sorted unique indices in ``[0, dim)``: a 1-byte tag, then either varint deltas
    (tag 0; the first index, then each gap minus one) or a bitmap (tag 1), whichever is
    smaller (the varints on a tie). The count is not stored: the caller knows it.

    Size: exactly :func:`index_size` bytes.
    """
    arr = _check_indices(indices, dim)
    deltas = _deltas(arr)
    if int(varint_sizes(deltas).sum()) <= -(-dim // 8):
        return bytes([TAG_VARINT]) + varint_encode(deltas)
    return bytes([TAG_BITMAP]) + bitmap_encode(arr, dim)


def index_decode(data: Data, dim: int, count: int) -> tuple[np.ndarray, int]:
    """``count`` indices written by :func:`index_encode` at the start of ``data`` ->
    (sorted int64 indices, bytes consumed). An unknown tag, truncation, indices out of
    ``[0, dim)``, a bitmap with another count, or the encoding :func:`index_encode` would
    not have chosen are a ``PayloadError``."""
    u8 = _as_u8(data)
    if len(u8) < 1:
        raise PayloadError("index set is missing its tag byte")
    tag = int(u8[0])
    bitmap_bytes = -(-dim // 8)
    if tag == TAG_VARINT:
        deltas, used = varint_decode(u8[1:], count)
        if used > bitmap_bytes:
            raise PayloadError(f"index varints take {used} bytes, more than a bitmap's")
        if count and int(deltas.max()) >= dim:
            raise PayloadError(f"index out of range [0, {dim})")
        idx = np.cumsum(deltas.astype(np.int64) + 1) - 1
        if count and int(idx[-1]) >= dim:
            raise PayloadError(f"index {int(idx[-1])} out of range [0, {dim})")
        return idx, 1 + used
    if tag == TAG_BITMAP:
        idx = bitmap_decode(u8[1:], dim)
        if len(idx) != count:
            raise PayloadError(f"index bitmap holds {len(idx)} indices, expected {count}")
        if int(varint_sizes(_deltas(idx)).sum()) <= bitmap_bytes:
            raise PayloadError("index bitmap where varints are not larger")
        return idx, 1 + bitmap_bytes
    raise PayloadError(f"index set tag {tag}, expected {TAG_VARINT} or {TAG_BITMAP}")
