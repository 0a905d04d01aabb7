"""Wire helpers: round trips, exact sizes, malformed input refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.compression import bits
from fedloom.compression.codec import PayloadError

U64_MAX = 2**64 - 1


@st.composite
def uint_arrays(draw, nbits: int | None = None):
    width = draw(st.integers(1, 32)) if nbits is None else nbits
    vals = draw(st.lists(st.integers(0, 2**width - 1), max_size=200))
    return np.array(vals, dtype=np.uint64), width


@st.composite
def index_sets(draw):
    dim = draw(st.integers(1, 3000))
    idx = draw(st.sets(st.integers(0, dim - 1), max_size=min(dim, 400)))
    return np.array(sorted(idx), dtype=np.int64), dim


@settings(max_examples=200, deadline=None)
@given(uint_arrays())
def test_pack_uint_round_trip_and_size(arg):
    vals, width = arg
    data = bits.pack_uint(vals, width)
    assert len(data) == math.ceil(len(vals) * width / 8)
    np.testing.assert_array_equal(bits.unpack_uint(data, width, len(vals)), vals)
    # more bytes after the packed values are left alone
    np.testing.assert_array_equal(bits.unpack_uint(data + b"\xff", width, len(vals)), vals)


def test_pack_uint_bit_order_is_big_endian():
    assert bits.pack_uint(np.array([1, 0, 1, 1]), 1) == bytes([0b10110000])
    assert bits.pack_uint(np.array([5, 3]), 3) == bytes([0b10101100])
    assert bits.pack_uint(np.array([0x1234]), 16) == b"\x12\x34"


def test_pack_uint_refuses_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        bits.pack_uint(np.array([1]), 0)
    with pytest.raises(ValueError, match="bits"):
        bits.pack_uint(np.array([1]), 33)
    with pytest.raises(ValueError, match="below"):
        bits.pack_uint(np.array([8]), 3)
    with pytest.raises(ValueError, match="non-negative"):
        bits.pack_uint(np.array([-1]), 3)


def test_unpack_uint_refuses_short_data_and_set_padding():
    data = bits.pack_uint(np.array([1, 2, 3]), 5)
    with pytest.raises(PayloadError, match="need"):
        bits.unpack_uint(data[:-1], 5, 3)
    with pytest.raises(PayloadError, match="padding"):
        bits.unpack_uint(data[:-1] + bytes([data[-1] | 1]), 5, 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, U64_MAX), max_size=100))
def test_varint_round_trip_and_size(vals):
    arr = np.array(vals, dtype=np.uint64)
    data = bits.varint_encode(arr)
    expected = sum(max(1, math.ceil(v.bit_length() / 7)) for v in vals)
    assert len(data) == expected == int(bits.varint_sizes(arr).sum())
    out, used = bits.varint_decode(data + b"\x07\x80", len(vals))
    assert used == len(data)
    np.testing.assert_array_equal(out, arr)


def test_varint_known_bytes():
    assert bits.varint_encode(np.array([0, 1, 127, 128, 300], dtype=np.uint64)) == bytes(
        [0, 1, 127, 0x80, 1, 0xAC, 2]
    )
    assert bits.varint_encode(np.array([U64_MAX], dtype=np.uint64)) == b"\xff" * 9 + b"\x01"


def test_varint_refuses_malformed():
    with pytest.raises(PayloadError, match="truncated"):
        bits.varint_decode(b"\x80\x80", 1)
    with pytest.raises(PayloadError, match="truncated"):
        bits.varint_decode(b"\x01", 2)
    with pytest.raises(PayloadError, match="longer than 10"):
        bits.varint_decode(b"\xff" * 10 + b"\x01", 1)
    with pytest.raises(PayloadError, match="exceeds"):
        bits.varint_decode(b"\xff" * 9 + b"\x02", 1)
    with pytest.raises(PayloadError, match="over-long"):
        bits.varint_decode(b"\x81\x00", 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, U64_MAX), max_size=100))
def test_elias_gamma_round_trip_and_size(vals):
    arr = np.array(vals, dtype=np.uint64)
    data = bits.elias_gamma_encode(arr)
    nbits = sum(2 * (v.bit_length() - 1) + 1 for v in vals)
    assert nbits == bits.elias_gamma_bits(arr)
    assert len(data) == math.ceil(nbits / 8)
    out, used = bits.elias_gamma_decode(data + b"\x55", len(vals))
    assert used == nbits
    np.testing.assert_array_equal(out, arr)


def test_elias_gamma_known_bits():
    # 1 -> 1, 2 -> 010, 3 -> 011, 4 -> 00100
    assert bits.elias_gamma_encode(np.array([1, 2, 3, 4])) == bytes([0b10100110, 0b01000000])


def test_elias_gamma_refuses_malformed():
    with pytest.raises(ValueError, match=">= 1"):
        bits.elias_gamma_encode(np.array([0, 1]))
    data = bits.elias_gamma_encode(np.array([5, 9]))
    with pytest.raises(PayloadError, match="truncated"):
        bits.elias_gamma_decode(data, 3)
    with pytest.raises(PayloadError, match="truncated"):
        bits.elias_gamma_decode(b"\x00\x00", 1)
    with pytest.raises(PayloadError, match="truncated"):
        bits.elias_gamma_decode(b"\x00\x80", 1)  # 8 zeros, then a 1 with no 8 bits after it
    with pytest.raises(PayloadError, match="above"):
        bits.elias_gamma_decode(b"\x00" * 8 + b"\x80" + b"\xff" * 8, 1)


@settings(max_examples=200, deadline=None)
@given(index_sets())
def test_bitmap_round_trip_and_size(arg):
    idx, dim = arg
    data = bits.bitmap_encode(idx, dim)
    assert len(data) == math.ceil(dim / 8)
    np.testing.assert_array_equal(bits.bitmap_decode(data + b"\xff", dim), idx)


def test_bitmap_refuses_short_data_and_set_padding():
    with pytest.raises(PayloadError, match="needs"):
        bits.bitmap_decode(b"\x00", 9)
    with pytest.raises(PayloadError, match="padding"):
        bits.bitmap_decode(b"\x00\x01", 9)


@settings(max_examples=300, deadline=None)
@given(index_sets())
def test_index_round_trip_and_size(arg):
    idx, dim = arg
    data = bits.index_encode(idx, dim)
    deltas = np.diff(np.concatenate([[-1], idx])) - 1
    varint_bytes = sum(max(1, math.ceil(int(v).bit_length() / 7)) for v in deltas)
    assert len(data) == bits.index_size(idx, dim) == 1 + min(varint_bytes, math.ceil(dim / 8))
    out, used = bits.index_decode(data + b"\x01\x02", dim, len(idx))
    assert used == len(data)
    np.testing.assert_array_equal(out, idx)


def test_index_encode_refuses_bad_indices():
    with pytest.raises(ValueError, match="sorted"):
        bits.index_encode(np.array([3, 1]), 10)
    with pytest.raises(ValueError, match="sorted"):
        bits.index_encode(np.array([1, 1]), 10)
    with pytest.raises(ValueError, match="lie in"):
        bits.index_encode(np.array([10]), 10)


def test_index_decode_refuses_malformed():
    dim = 1000
    data = bits.index_encode(np.array([5, 900]), dim)
    assert data[0] == bits.TAG_VARINT
    with pytest.raises(PayloadError, match="tag"):
        bits.index_decode(b"\x07" + data[1:], dim, 2)
    with pytest.raises(PayloadError, match="truncated"):
        bits.index_decode(data[:-1], dim, 2)
    with pytest.raises(PayloadError, match="missing"):
        bits.index_decode(b"", dim, 0)
    # deltas running past the end
    over = b"\x00" + bits.varint_encode(np.array([500, 600], dtype=np.uint64))
    with pytest.raises(PayloadError, match="out of range"):
        bits.index_decode(over, dim, 2)
    # a bitmap with the wrong count, and a bitmap where varints are smaller
    dense = np.arange(0, 64, 2)
    bm = bits.index_encode(dense, 64)
    assert bm[0] == bits.TAG_BITMAP
    with pytest.raises(PayloadError, match="expected 31"):
        bits.index_decode(bm, 64, 31)
    sparse_bm = b"\x01" + bits.bitmap_encode(np.array([5]), 64)
    with pytest.raises(PayloadError, match="not larger"):
        bits.index_decode(sparse_bm, 64, 1)
    # varints where a bitmap is smaller
    long_varints = b"\x00" + bits.varint_encode(np.zeros(20, dtype=np.uint64))
    with pytest.raises(PayloadError, match="more than a bitmap"):
        bits.index_decode(long_varints, 64, 20)


def test_empty_inputs():
    assert bits.pack_uint(np.zeros(0, dtype=np.uint64), 7) == b""
    assert len(bits.unpack_uint(b"", 7, 0)) == 0
    assert bits.varint_encode(np.zeros(0, dtype=np.uint64)) == b""
    assert bits.varint_decode(b"", 0)[1] == 0
    assert bits.elias_gamma_encode(np.zeros(0, dtype=np.uint64)) == b""
    assert bits.elias_gamma_decode(b"", 0)[1] == 0
    out, used = bits.index_decode(bits.index_encode(np.zeros(0, dtype=np.int64), 50), 50, 0)
    assert len(out) == 0 and used == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(1, 2**40), max_size=30), max_size=6))
def test_grouped_encoders_match_one_group_at_a_time(groups):
    counts = np.array([len(g) for g in groups], dtype=np.int64)
    flat = np.array([v for g in groups for v in g], dtype=np.uint64)
    gamma = bits.elias_gamma_encode_rows(flat, counts)
    flags = flat % 3 == 0
    packed = bits.pack_bits_rows(flags, counts)
    start = 0
    for g, code, pb in zip(groups, gamma, packed, strict=True):
        part = np.array(g, dtype=np.uint64)
        assert code == bits.elias_gamma_encode(part)
        assert pb == bits.pack_uint((part % 3 == 0).astype(np.uint64), 1)
        assert len(pb) == math.ceil(len(g) / 8)
        start += len(g)
    with pytest.raises(ValueError, match="sum to"):
        bits.pack_bits_rows(flags, np.append(counts, 1))


def test_elias_gamma_decode_stops_inside_a_run_of_ones():
    vals = np.array([1] * 50 + [3] + [1] * 10 + [2**60], dtype=np.uint64)
    data = bits.elias_gamma_encode(vals)
    for count in (1, 20, 50, 51, 55, 61, 62):
        out, used = bits.elias_gamma_decode(data, count)
        np.testing.assert_array_equal(out, vals[:count])
        assert used == bits.elias_gamma_bits(vals[:count])
