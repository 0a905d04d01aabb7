"""Top-k, random-k and PowerSGD: round trips, sizes, unbiasedness, low-rank recovery and
refusal of malformed payloads."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedloom.compression import codec as codec_mod
from fedloom.compression.bits import index_decode, index_encode, index_size, varint_encode
from fedloom.compression.codec import HEADER_BYTES, Header, PayloadError
from fedloom.compression.sparse import PowerSGD, RandomK, TopK, kept_count
from fedloom.transforms.base import stack_states, unstack_states

FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def _rows(max_k: int = 4, max_d: int = 300):
    return st.integers(1, max_k).flatmap(
        lambda k: st.integers(1, max_d).flatmap(
            lambda d: hnp.arrays(np.float32, (k, d), elements=FINITE)
        )
    )


def _rngs(k: int, seed: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, i]) for i in range(k)]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _with_body(payload: bytes, body: bytes, **header) -> bytes:
    h, _ = Header.unpack(payload)
    fields = {"codec": h.codec, "dim": h.dim, "setting": h.setting, "flags": h.flags} | header
    return Header(**fields).pack() + body


def test_codecs_are_registered_by_name_with_distinct_codes():
    for cls, name, code in (
        (TopK, "topk", 10),
        (RandomK, "randomk", 11),
        (PowerSGD, "powersgd", 12),
    ):
        assert cls.name == name and cls.code == code
        assert codec_mod._CODECS[name] is cls
    assert PowerSGD.takes_shapes
    assert not TopK.unbiased and RandomK.unbiased and not PowerSGD.unbiased
    assert isinstance(TopK(), codec_mod.Codec)
    assert isinstance(RandomK(), codec_mod.Codec)
    assert isinstance(PowerSGD([(4, 4)]), codec_mod.Codec)


def test_kept_count_uses_the_float32_setting():
    assert kept_count(0.01, 100) == 1  # float32(0.01) * 100 is just below 1
    assert kept_count(0.01, 101) == 2
    assert kept_count(1e-9, 10) == 1
    assert kept_count(1.0, 7) == 7
    np.testing.assert_array_equal(kept_count(np.array([0.5, 0.25]), 8), [4, 2])


# ----------------------------------------------------------------------------- top-k


def _topk_parts(payload: bytes, dim: int) -> tuple[int, np.ndarray, int]:
    _, body = Header.unpack(payload)
    (k,) = struct.unpack("<I", body[:4])
    idx, used = index_decode(body[4:], dim, k)
    return k, idx, used


@settings(max_examples=60, deadline=None)
@given(rows=_rows(), fraction=st.floats(0.0005, 1.0), fp16=st.booleans())
def test_topk_keeps_exactly_the_k_largest_magnitudes(rows, fraction, fp16):
    n, d = rows.shape
    codec = TopK(fraction, values="fp16" if fp16 else "fp32")
    settings_ = np.full(n, fraction)
    payloads, recon, state = codec.encode(rows, settings_, _rngs(n), codec.init(d))
    assert state == {} and recon.dtype == np.float32 and recon.shape == rows.shape
    k = kept_count(fraction, d)
    for i, payload in enumerate(payloads):
        assert _same_bits(codec.decode(payload, d), recon[i])
        count, idx, _ = _topk_parts(payload, d)
        assert count == k == len(idx) == len(set(idx.tolist()))
        kept = np.zeros(d, dtype=bool)
        kept[idx] = True
        expect = rows[i, idx]
        if fp16:
            expect = np.clip(expect, -65504, 65504).astype(np.float16).astype(np.float32)
        assert _same_bits(recon[i, idx], expect)
        assert not np.any(recon[i, ~kept])
        if k < d:
            assert np.abs(rows[i, kept]).min() >= np.abs(rows[i, ~kept]).max()
        width = 2 if fp16 else 4
        assert len(payload) == HEADER_BYTES + 4 + index_size(idx, d) + k * width
        assert len(payload) <= codec.size_bound(d, fraction)


def test_topk_per_row_settings_and_error_bound():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((6, 500)).astype(np.float32)
    fr = np.array([0.1, 0.03, 0.01, 0.003, 0.001, 1.0])
    codec = TopK()
    payloads, recon, _ = codec.encode(rows, fr, _rngs(6), {})
    for i in range(6):
        k = kept_count(fr[i], 500)
        assert np.count_nonzero(recon[i]) == k
        err = np.sum((rows[i] - recon[i]) ** 2)
        assert err <= (1 - k / 500) * np.sum(rows[i] ** 2) + 1e-6
        assert Header.unpack(payloads[i])[0].setting == np.float32(fr[i])
    np.testing.assert_array_equal(recon[5], rows[5])


def test_topk_size_bound_is_reached_by_the_worst_index_set():
    d, k = 100_000, 50
    codec = TopK(k / d)
    # the budget of d - k allows every delta two varint bytes (>= 128) and five of them a
    # third (>= 128**2): the most bytes any 50 indices can take
    deltas = np.array([128**2] * 5 + [128] * 45)
    idx = np.cumsum(deltas + 1) - 1
    assert idx[-1] < d and index_size(idx, d) == 1 + 5 * 3 + 45 * 2
    row = np.zeros((1, d), dtype=np.float32)
    row[0, idx] = 1 + np.arange(k)
    (payload,), _, _ = codec.encode(row, np.array([k / d]), _rngs(1), {})
    assert len(payload) == codec.size_bound(d, k / d)
    assert TopK().ladder == (0.1, 0.03, 0.01, 0.003, 0.001) and TopK().default == 0.01
    assert TopK(fraction=0.2).default == 0.2


def test_topk_refuses_bad_parameters():
    for bad in ({"fraction": 0}, {"fraction": 1.5}, {"values": "int8"}):
        with pytest.raises(ValueError):
            TopK(**bad)
    with pytest.raises(ValueError, match="non-finite"):
        TopK().encode(np.array([[np.nan, 1.0]], np.float32), np.array([0.5]), _rngs(1), {})
    with pytest.raises(ValueError, match="kept fraction"):
        TopK().encode(np.ones((1, 4), np.float32), np.array([0.0]), _rngs(1), {})


def _topk_payload(d: int = 64, fraction: float = 0.05, fp16: bool = False):
    codec = TopK(fraction, values="fp16" if fp16 else "fp32")
    row = np.random.default_rng(3).standard_normal((1, d)).astype(np.float32)
    (payload,), _, _ = codec.encode(row, np.array([fraction]), _rngs(1), {})
    return codec, payload


@pytest.mark.parametrize("fp16", [False, True])
def test_topk_refuses_malformed_payloads(fp16):
    codec, p = _topk_payload(fp16=fp16)
    d = 64
    k, idx, used = _topk_parts(p, d)
    body = Header.unpack(p)[1].tobytes()
    values = body[4 + used :]
    cases = {
        "shorter than its header": p[:5],
        "truncated": p[:-1],
        "trailing": p + b"\0",
        "codec id": _with_body(p, body, codec=RandomK.code),
        "row length": _with_body(p, body, dim=d + 1),
        "flags": _with_body(p, body, flags=1),
        "kept fraction": _with_body(p, body, setting=0.0),
        "no count": _with_body(p, b"\1\0"),
        "count": _with_body(p, struct.pack("<I", k + 1) + body[4:]),
        "out of range": _with_body(
            p, body[:4] + bytes([0]) + varint_encode(np.array([0] * (k - 1) + [d])) + values
        ),
        "tag": _with_body(p, body[:4] + b"\7" + body[5:]),
        "non-finite": _with_body(
            p, body[: 4 + used] + np.full(k, np.nan, "<f2" if fp16 else "<f4").tobytes()
        ),
    }
    for what, bad in cases.items():
        try:
            codec.decode(bad, d)
        except PayloadError:
            continue
        pytest.fail(f"a payload with a bad {what} was accepted")
    # a bitmap holding another count than the header's
    wide = TopK(0.5)
    row = np.arange(1, 17, dtype=np.float32)[None]
    (q,), _, _ = wide.encode(row, np.array([0.5]), _rngs(1), {})
    qb = Header.unpack(q)[1].tobytes()
    assert qb[4:7] == b"\1\0\xff"  # the 8 largest of 16 values: a bitmap of indices 8..15
    with pytest.raises(PayloadError, match="bitmap"):
        wide.decode(_with_body(q, qb[:6] + b"\x7f" + qb[7:]), 16)
    # an fp32 payload is not an fp16 one
    other = TopK(0.05, values="fp32" if fp16 else "fp16")
    with pytest.raises(PayloadError, match="values"):
        other.decode(p, d)


def test_topk_index_sets_can_not_repeat_an_index():
    # varint deltas are gaps minus one, so a repeated index has no encoding; the index set
    # that is written is always sorted and unique
    idx = np.array([1, 4, 9])
    assert index_decode(index_encode(idx, 10), 10, 3)[0].tolist() == [1, 4, 9]
    with pytest.raises(ValueError):
        index_encode(np.array([2, 2]), 10)


# ----------------------------------------------------------------------------- random-k


@settings(max_examples=60, deadline=None)
@given(rows=_rows(), fraction=st.floats(0.0005, 1.0), seed=st.integers(0, 2**32))
def test_randomk_decode_is_exact_on_the_kept_coordinates(rows, fraction, seed):
    n, d = rows.shape
    codec = RandomK(fraction)
    payloads, recon, state = codec.encode(rows, np.full(n, fraction), _rngs(n, seed), {})
    assert state == {}
    k = kept_count(fraction, d)
    scale = np.float32(d / k)
    for i, payload in enumerate(payloads):
        assert _same_bits(codec.decode(payload, d), recon[i])
        (s,) = struct.unpack("<Q", Header.unpack(payload)[1][:8])
        idx = RandomK.indices(s, d, k)
        assert len(np.unique(idx)) == k
        assert _same_bits(recon[i, idx], rows[i, idx] * scale)
        mask = np.ones(d, dtype=bool)
        mask[idx] = False
        assert not np.any(recon[i, mask])
        assert len(payload) == HEADER_BYTES + 8 + 4 * k == codec.size_bound(d, fraction)


def test_randomk_is_unbiased():
    d, n = 64, 10_000
    x = np.random.default_rng(5).standard_normal(d).astype(np.float32)
    codec = RandomK()
    _, recon, _ = codec.encode(np.tile(x, (n, 1)), np.full(n, 0.75), _rngs(n, 7), {})
    mean = recon.astype(np.float64).mean(axis=0)
    assert np.linalg.norm(mean - x) / np.linalg.norm(x) < 0.01
    # without the d / k scaling the mean would be 3/4 of x
    assert np.linalg.norm(mean * 0.75 - x) / np.linalg.norm(x) > 0.2


def test_randomk_draws_its_seeds_from_the_rows_generators():
    rows = np.ones((3, 50), dtype=np.float32)
    a, _, _ = RandomK(0.1).encode(rows, np.full(3, 0.1), _rngs(3, 1), {})
    b, _, _ = RandomK(0.1).encode(rows, np.full(3, 0.1), _rngs(3, 1), {})
    c, _, _ = RandomK(0.1).encode(rows, np.full(3, 0.1), _rngs(3, 2), {})
    assert a == b and a != c and len(set(a)) == 3


def test_randomk_with_a_shared_seed_is_linear():
    d = 40
    codec = RandomK(0.25, shared_seed=123)
    assert codec.linear and not RandomK.linear and not RandomK(0.25).linear
    rows = np.random.default_rng(2).standard_normal((5, d)).astype(np.float32)
    payloads, recon, _ = codec.encode(rows, np.full(5, 0.25), _rngs(5), {})
    k = kept_count(0.25, d)
    # sum the value vectors (what secure aggregation would do) and decode once
    total = sum(np.frombuffer(p[HEADER_BYTES + 8 :], "<f4").astype(np.float64) for p in payloads)
    summed = payloads[0][: HEADER_BYTES + 8] + total.astype("<f4").tobytes()
    np.testing.assert_allclose(codec.decode(summed, d), recon.sum(axis=0), rtol=1e-5, atol=1e-5)
    assert len({p[HEADER_BYTES : HEADER_BYTES + 8] for p in payloads}) == 1
    assert len(payloads[0]) == HEADER_BYTES + 8 + 4 * k
    (other,), _, _ = RandomK(0.25).encode(rows[:1], np.array([0.25]), _rngs(1), {})
    with pytest.raises(PayloadError, match="shared seed"):
        codec.decode(other, d)
    with pytest.raises(ValueError):
        RandomK(shared_seed=-1)


def test_randomk_refuses_malformed_payloads():
    d = 64
    codec = RandomK(0.1)
    row = np.random.default_rng(3).standard_normal((1, d)).astype(np.float32)
    (p,), _, _ = codec.encode(row, np.array([0.1]), _rngs(1), {})
    body = Header.unpack(p)[1].tobytes()
    k = kept_count(0.1, d)
    for bad in (
        p[:-1],
        p + b"\0",
        p[:HEADER_BYTES],
        _with_body(p, body, codec=TopK.code),
        _with_body(p, body, dim=d - 1),
        _with_body(p, body, flags=1),
        _with_body(p, body, setting=1.5),
        _with_body(p, body, setting=-0.1),
        _with_body(p, body[:8] + np.full(k, np.inf, "<f4").tobytes()),
    ):
        with pytest.raises(PayloadError):
            codec.decode(bad, d)


# ----------------------------------------------------------------------------- PowerSGD

SHAPES = [(20, 30), (30,), (5, 4, 3), (2, 2), ()]  # the [2, 2] matrix is too small to factor
DIM = sum(math.prod(s) for s in SHAPES)


def _psgd_size(codec: PowerSGD, r: int) -> int:
    total = 0
    for s in SHAPES:
        if len(s) >= 2 and r * (s[0] + math.prod(s[1:])) < s[0] * math.prod(s[1:]):
            total += r * (s[0] + math.prod(s[1:]))
        else:
            total += math.prod(s)
    return HEADER_BYTES + 4 * total


def _low_rank_rows(k: int, r: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((k, DIM)).astype(np.float32)
    for i in range(k):
        a = rng.standard_normal((20, r)) @ rng.standard_normal((r, 30))
        b = rng.standard_normal((5, r)) @ rng.standard_normal((r, 12))
        rows[i, :600] = a.ravel()
        rows[i, 630:690] = b.ravel()
    return rows


@settings(max_examples=30, deadline=None)
@given(
    rows=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.just(DIM)), elements=FINITE),
    ranks=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=4, max_size=4),
)
def test_powersgd_reconstruction_is_what_decode_returns(rows, ranks):
    n = rows.shape[0]
    codec = PowerSGD(SHAPES, rank=2)
    state = stack_states([codec.init(DIM) for _ in range(n)])
    r = np.array(ranks[:n], dtype=np.float64)
    for _ in range(2):  # a fresh start, then a warm start
        payloads, recon, state = codec.encode(rows, r, _rngs(n), state)
        for i, p in enumerate(payloads):
            assert _same_bits(codec.decode(p, DIM), recon[i])
            assert len(p) == _psgd_size(codec, int(r[i])) == codec.size_bound(DIM, r[i])
        # tensors that are not factored arrive exactly
        np.testing.assert_array_equal(recon[:, 600:630], rows[:, 600:630])
        np.testing.assert_array_equal(recon[:, 690:], rows[:, 690:])
        np.testing.assert_array_equal(state["rank"], r)
        assert state["q"].shape == (n, codec.q_size)


@pytest.mark.parametrize("r", [1, 2, 4])
def test_powersgd_recovers_a_low_rank_matrix(r):
    codec = PowerSGD(SHAPES, rank=r)
    rows = _low_rank_rows(3, r, seed=r)
    state = stack_states([codec.init(DIM)] * 3)
    for _ in range(2):
        _, recon, state = codec.encode(rows, np.full(3, r), _rngs(3), state)
    err = np.linalg.norm(recon - rows, axis=1) / np.linalg.norm(rows, axis=1)
    assert err.max() < 1e-4


def test_powersgd_warm_start_converges_to_the_best_rank_r_approximation():
    rng = np.random.default_rng(4)
    u, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 20)))
    sv = 0.6 ** np.arange(20)
    mat = (u * sv) @ v.T
    row = np.zeros((1, DIM), dtype=np.float32)
    row[0, :600] = mat.ravel()
    codec = PowerSGD(SHAPES, rank=2)
    state = stack_states([codec.init(DIM)])
    errors = []
    for _ in range(12):
        _, recon, state = codec.encode(row, np.array([2.0]), _rngs(1), state)
        errors.append(np.linalg.norm(recon[0, :600] - row[0, :600]))
    best = np.sqrt(np.sum(sv[2:] ** 2))
    assert errors[-1] <= errors[0] + 1e-6
    assert errors[-1] < best * 1.01
    assert all(e >= best * (1 - 1e-4) for e in errors)


def test_powersgd_rank_changes_restart_from_the_fixed_normal():
    codec = PowerSGD(SHAPES, rank=2)
    rows = _low_rank_rows(2, 2, seed=9)
    fresh = stack_states([codec.init(DIM)] * 2)
    _, _, state = codec.encode(rows, np.array([2.0, 2.0]), _rngs(2), fresh)
    # row 1 switches to rank 4: it starts again as a fresh client with rank 4 would
    p_switch, r_switch, state2 = codec.encode(rows, np.array([2.0, 4.0]), _rngs(2), state)
    one = stack_states([codec.init(DIM)])  # a fresh client of rank 2 asked for rank 4
    p_fresh, r_fresh, _ = codec.encode(rows[1:], np.array([4.0]), _rngs(1), one)
    assert p_switch[1] == p_fresh[0] and _same_bits(r_switch[1], r_fresh[0])
    np.testing.assert_array_equal(state2["rank"], [2, 4])
    assert state2["q"].shape == state["q"].shape
    restacked = stack_states(unstack_states(state2, 2))
    np.testing.assert_array_equal(restacked["q"], state2["q"])
    assert codec.init(DIM)["q"].tolist() == PowerSGD(SHAPES).init(DIM)["q"].tolist()


def test_powersgd_refuses_bad_parameters_and_rows():
    with pytest.raises(ValueError, match="shapes"):
        PowerSGD([])
    with pytest.raises(ValueError, match="rank"):
        PowerSGD(SHAPES, rank=0)
    with pytest.raises(ValueError, match="min_compression"):
        PowerSGD(SHAPES, min_compression=0.5)
    codec = PowerSGD(SHAPES)
    with pytest.raises(ValueError, match="sum to"):
        codec.init(DIM + 1)
    state = stack_states([codec.init(DIM)])
    with pytest.raises(ValueError, match="sum to"):
        codec.encode(np.ones((1, DIM + 1), np.float32), np.array([2.0]), _rngs(1), state)
    for bad in (0.0, 1.5, 9.0):
        with pytest.raises(ValueError, match="rank"):
            codec.encode(np.ones((1, DIM), np.float32), np.array([bad]), _rngs(1), state)
    assert codec.ladder == (8.0, 4.0, 2.0, 1.0) and codec.default == 2.0
    # min_compression leaves matrices that would shrink too little unfactored
    strict = PowerSGD(SHAPES, rank=2, min_compression=4)
    assert strict.size_bound(DIM, 2) == HEADER_BYTES + 4 * (2 * 50 + 30 + 60 + 4 + 1)
    assert codec.size_bound(DIM, 2) == HEADER_BYTES + 4 * (2 * 50 + 30 + 2 * 17 + 4 + 1)


def test_powersgd_refuses_malformed_payloads():
    codec = PowerSGD(SHAPES, rank=2)
    rows = _low_rank_rows(1, 2, seed=1)
    (p,), _, _ = codec.encode(rows, np.array([2.0]), _rngs(1), stack_states([codec.init(DIM)]))
    body = Header.unpack(p)[1].tobytes()
    nan_body = np.frombuffer(body, "<f4").copy()
    nan_body[3] = np.nan
    huge = np.frombuffer(body, "<f4").copy()
    huge[: 2 * 20] = 3e38  # finite factors whose product overflows
    huge[2 * 20 : 2 * 50] = 3e38
    for bad in (
        p[:-4],
        p + b"\0\0\0\0",
        _with_body(p, body, codec=TopK.code),
        _with_body(p, body, dim=DIM + 1),
        _with_body(p, body, flags=2),
        _with_body(p, body, setting=1.5),
        _with_body(p, body, setting=16.0),
        _with_body(p, body, setting=4.0),  # the body of rank 2 under a rank-4 header
        _with_body(p, nan_body.tobytes()),
        _with_body(p, huge.tobytes()),
    ):
        with pytest.raises(PayloadError):
            codec.decode(bad, DIM)
