"""Top-k (fp32, fp16 and ternary values), random-k and PowerSGD: round trips, sizes,
unbiasedness, low-rank recovery, error feedback with ternary top-k, and refusal of
malformed payloads."""

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
from fedloom.compression.feedback import ErrorFeedback
from fedloom.compression.sparse import PowerSGD, RandomK, TopK, kept_count
from fedloom.transforms.base import stack_states, unstack_states

FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=32)
VALUES = ("fp32", "fp16", "sign")


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


def _values_bytes(values: str, k: int) -> int:
    return {"fp32": 4 * k, "fp16": 2 * k, "sign": 4 + math.ceil(k / 8)}[values]


def _sign_parts(payload: bytes, dim: int) -> tuple[np.ndarray, np.float32, np.ndarray]:
    """A ternary top-k payload's kept indices, its mu and its sign bits (1: negative)."""
    k, idx, used = _topk_parts(payload, dim)
    rest = Header.unpack(payload)[1][4 + used :]
    mu = np.frombuffer(rest[:4], "<f4")[0]
    neg = np.unpackbits(np.frombuffer(rest[4:], np.uint8))[:k].astype(bool)
    return idx, mu, neg


@settings(max_examples=90, deadline=None)
@given(rows=_rows(), fraction=st.floats(0.0005, 1.0), values=st.sampled_from(VALUES))
def test_topk_keeps_exactly_the_k_largest_magnitudes(rows, fraction, values):
    n, d = rows.shape
    codec = TopK(fraction, values=values)
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
        if values == "fp16":
            expect = np.clip(expect, -65504, 65504).astype(np.float16).astype(np.float32)
        elif values == "sign":
            _, mu, neg = _sign_parts(payload, d)
            # mu is the mean kept magnitude (to float32 rounding), every kept value +-mu
            mean = np.abs(rows[i, idx].astype(np.float64)).mean()
            assert np.isfinite(mu) and not np.signbit(mu)
            assert abs(float(mu) - mean) <= np.spacing(np.float32(mean))
            np.testing.assert_array_equal(neg, rows[i, idx] < 0)
            expect = np.where(neg, -mu, mu).astype(np.float32)
            assert set(np.abs(recon[i, idx]).tolist()) == {float(mu)}
            # ||x - C(x)||^2 = ||x||^2 - k mu^2 (float32 rounding of mu aside)
            x = rows[i].astype(np.float64)
            err = np.sum((x - recon[i]) ** 2)
            assert err == pytest.approx(np.sum(x**2) - k * float(mu) ** 2, rel=1e-5, abs=1e-3)
        assert _same_bits(recon[i, idx], expect)
        assert not np.any(recon[i, ~kept])
        if k < d:
            assert np.abs(rows[i, kept]).min() >= np.abs(rows[i, ~kept]).max()
        size = HEADER_BYTES + 4 + index_size(idx, d) + _values_bytes(values, k)
        assert len(payload) == size <= codec.size_bound(d, fraction)


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


@pytest.mark.parametrize("values", VALUES)
def test_topk_size_bound_is_reached_by_the_worst_index_set(values):
    d, k = 100_000, 50
    codec = TopK(k / d, values=values)
    # the budget of d - k allows every delta two varint bytes (>= 128) and five of them a
    # third (>= 128**2): the most bytes any 50 indices can take
    deltas = np.array([128**2] * 5 + [128] * 45)
    idx = np.cumsum(deltas + 1) - 1
    assert idx[-1] < d and index_size(idx, d) == 1 + 5 * 3 + 45 * 2
    row = np.zeros((1, d), dtype=np.float32)
    row[0, idx] = 1 + np.arange(k)
    (payload,), _, _ = codec.encode(row, np.array([k / d]), _rngs(1), {})
    assert len(payload) == codec.size_bound(d, k / d)
    kept, sent, _ = _topk_parts(payload, d)  # float32(k / d) * d keeps one index more
    assert kept == kept_count(k / d, d) == k + 1
    exact = HEADER_BYTES + 4 + index_size(sent, d) + _values_bytes(values, kept)
    assert codec.size_bound(d, k / d) == exact
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


def _topk_payload(d: int = 64, fraction: float = 0.05, values: str = "fp32"):
    codec = TopK(fraction, values=values)
    row = np.random.default_rng(3).standard_normal((1, d)).astype(np.float32)
    (payload,), _, _ = codec.encode(row, np.array([fraction]), _rngs(1), {})
    return codec, payload


@pytest.mark.parametrize("values", VALUES)
def test_topk_refuses_malformed_payloads(values):
    codec, p = _topk_payload(values=values)
    d = 64
    k, idx, used = _topk_parts(p, d)
    body = Header.unpack(p)[1].tobytes()
    vals = body[4 + used :]
    if values == "sign":
        non_finite = struct.pack("<f", np.nan) + vals[4:]
    else:
        non_finite = np.full(k, np.nan, "<f2" if values == "fp16" else "<f4").tobytes()
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
            p, body[:4] + bytes([0]) + varint_encode(np.array([0] * (k - 1) + [d])) + vals
        ),
        "tag": _with_body(p, body[:4] + b"\7" + body[5:]),
        "non-finite": _with_body(p, body[: 4 + used] + non_finite),
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
    # a payload of one value encoding is not one of another (the sizes always differ)
    for other in VALUES:
        if other != values:
            with pytest.raises(PayloadError, match="values"):
                TopK(0.05, values=other).decode(p, d)


@pytest.mark.parametrize("k", [1, 3, 8, 9, 16, 20])
def test_topk_value_encodings_never_share_a_size(k):
    sizes = {_values_bytes(v, k) for v in VALUES}
    assert len(sizes) == 3
    d = 64
    assert len({TopK(k / d, values=v).size_bound(d, k / d) for v in VALUES}) == 3


def test_ternary_topk_refuses_malformed_sign_parts():
    d = 64
    codec, p = _topk_payload(d, fraction=0.2, values="sign")  # k = 13: 3 padding bits
    k, _, used = _topk_parts(p, d)
    assert k == 13
    body = Header.unpack(p)[1].tobytes()
    head, mu, signs = body[: 4 + used], body[4 + used : 8 + used], body[8 + used :]
    assert len(signs) == 2 and signs[-1] & 0b111 == 0
    assert _same_bits(codec.decode(_with_body(p, head + mu + signs), d), codec.decode(p, d))
    cases = {
        "sign bits one byte short": (head + mu + signs[:-1], "truncated"),
        "sign bits one byte long": (head + mu + signs + b"\0", "trailing"),
        "no sign bits": (head + mu, "truncated"),
        "no mu": (head + signs, "truncated"),
        "padding bit": (head + mu + signs[:-1] + bytes([signs[-1] | 1]), "padding"),
        "negative mu": (head + struct.pack("<f", -1.5) + signs, "mu"),
        "negative zero mu": (head + struct.pack("<f", -0.0) + signs, "mu"),
        "infinite mu": (head + struct.pack("<f", np.inf) + signs, "mu"),
        "NaN mu": (head + struct.pack("<f", np.nan) + signs, "mu"),
    }
    for what, (bad, match) in cases.items():
        with pytest.raises(PayloadError, match=match):
            codec.decode(_with_body(p, bad), d)
            pytest.fail(f"a payload with {what} was accepted")
    # any finite mu >= 0 with clean padding decodes to +-mu on the kept indices
    ok = codec.decode(_with_body(p, head + struct.pack("<f", 2.5) + signs), d)
    assert np.count_nonzero(ok) == k and set(np.abs(ok[ok != 0]).tolist()) == {2.5}


def test_ternary_topk_edge_rows():
    codec = TopK(0.5, values="sign")
    tiny = np.float32(1e-45)  # the smallest subnormal: the mean of 4 rounds mu to 0
    rows = np.array(
        [[0, 0, 0, 0, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0, -2], [-tiny, 0, 0, 0, 0, 0, 0, 0]],
        dtype=np.float32,
    )
    payloads, recon, _ = codec.encode(rows, np.full(3, 0.5), _rngs(3), {})
    for i, p in enumerate(payloads):
        assert _same_bits(codec.decode(p, 8), recon[i])
        assert len(p) == HEADER_BYTES + 4 + index_size(_topk_parts(p, 8)[1], 8) + 4 + 1
    assert not np.any(recon[0])
    # kept zeros (fewer than k nonzeros) are sent as +mu; mu = (4 + 2 + 0 + 0) / 4
    idx, mu, neg = _sign_parts(payloads[1], 8)
    assert mu == 1.5 and neg.tolist() == [i == 7 for i in idx]
    assert recon[1, 0] == 1.5 and recon[1, 7] == -1.5 and np.count_nonzero(recon[1]) == 4
    # mu rounds to 0 under a negative kept value: the sign survives as -0.0 on both sides
    assert _sign_parts(payloads[2], 8)[1] == 0 and not np.any(recon[2])
    assert np.signbit(recon[2, 0]) and np.signbit(codec.decode(payloads[2], 8)[0])


def _ternary_least_squares(feedback: bool, steps: int = 1500) -> tuple[float, float]:
    """Gradient descent on 0.5 ||A w - b||^2 (d = 200) sending each step as ternary top-1%
    (STC), with or without error feedback."""
    rng = np.random.default_rng(0)
    n, d = 400, 200
    a = rng.standard_normal((n, d)) / np.sqrt(n)
    b = a @ rng.standard_normal(d)
    lr = 0.03 / np.linalg.eigvalsh(a.T @ a).max()
    ef = ErrorFeedback(TopK(0.01, values="sign"), enabled=feedback)
    state = stack_states([ef.init(d)])
    w = np.zeros(d)
    for t in range(steps):
        step = (-lr * (a.T @ (a @ w - b))).astype(np.float32)[None]
        payloads, recon, state = ef.encode(step, np.array([0.01]), _rngs(1, t), state)
        if t % 100 == 0:
            assert _same_bits(ef.decode(payloads[0], d), recon[0])
        w += recon[0]
    return 0.5 * float(np.sum((a @ w - b) ** 2)), 0.5 * float(np.sum(b**2))


def test_feedback_makes_ternary_top_k_gradient_descent_converge_much_further():
    with_ef, start = _ternary_least_squares(True)
    without, _ = _ternary_least_squares(False)
    # measured: about 0.011 with feedback against 36 without, from 94
    assert with_ef < 0.01 * start
    assert without > 50 * with_ef


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
