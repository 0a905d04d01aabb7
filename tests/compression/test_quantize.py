"""Quantizing codecs: documented error bounds, exact sizes, unbiasedness, refusals."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedloom.compression import codec as codec_mod
from fedloom.compression.codec import FLAG_ROTATED, HEADER_BYTES, Codec, PayloadError
from fedloom.compression.quantize import QSGD, BFloat16, Float16, ScaledSign, TernGrad, Uniform


def _configs():
    return {
        "fp16": Float16(),
        "bf16": BFloat16(),
        "uniform": Uniform(),
        "uniform-b5": Uniform(bucket=5),
        "uniform-sto": Uniform(bucket=8, stochastic=True),
        "uniform-rot": Uniform(bucket=16, rotate=True),
        "qsgd": QSGD(),
        "qsgd-b4": QSGD(bucket=4),
        "qsgd-rot": QSGD(bucket=0, rotate=True),
        "terngrad": TernGrad(),
        "terngrad-b3": TernGrad(bucket=3),
        "terngrad-rot": TernGrad(bucket=8, rotate=True),
        "sign": ScaledSign(),
    }


CONFIGS = _configs()


@st.composite
def cohorts(draw, max_d: int = 70):
    k = draw(st.integers(1, 3))
    d = draw(st.integers(1, max_d))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    elems = st.floats(-1, 1, width=32, allow_subnormal=False)
    rows = draw(hnp.arrays(np.float32, (k, d), elements=elems)) * np.float32(scale)
    seed = draw(st.integers(0, 2**32 - 1))
    return rows.astype(np.float32), seed


def _encode(c: Codec, rows: np.ndarray, seed: int, setting: float | None = None):
    k = rows.shape[0]
    rngs = [np.random.default_rng([seed, i]) for i in range(k)]
    sets = np.full(k, c.default if setting is None else setting)
    payloads, recon, state = c.encode(rows, sets, rngs, c.init(rows.shape[1]))
    assert state == {}
    assert recon.dtype == np.float32 and recon.shape == rows.shape
    return payloads, recon


def _pow2(d: int) -> int:
    return 1 << max(0, (d - 1).bit_length())


def _expected_size(c: Codec, d: int, setting: float) -> int | None:
    """The documented exact size, or None for QSGD (bounded only)."""
    n = _pow2(d) if getattr(c, "rotate", False) else d
    r = 8 if getattr(c, "rotate", False) else 0
    bucket = getattr(c, "bucket", 0)
    size = n if bucket == 0 or bucket > n else bucket
    nb = math.ceil(n / size)
    if isinstance(c, (Float16, BFloat16)):
        return 12 + 2 * d
    if isinstance(c, Uniform):
        return 12 + r + 8 * nb + math.ceil(n * int(setting) / 8)
    if isinstance(c, TernGrad):
        return 12 + r + 4 * nb + math.ceil(n / 5)
    if isinstance(c, ScaledSign):
        return 12 + 4 + math.ceil(d / 8)
    return None


def _buckets(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def _check_bound(c: Codec, x: np.ndarray, xh: np.ndarray, setting: float) -> None:
    """The class docstring's error bound for one row."""
    d = len(x)
    x64, xh64 = x.astype(np.float64), xh.astype(np.float64)
    err = np.abs(x64 - xh64)
    norm = float(np.linalg.norm(x64))
    eps = 1e-5 * (float(np.abs(x64).max()) + 1e-30)
    if isinstance(c, Float16):
        assert np.all(err <= 2.0**-11 * np.abs(x64) + 2.0**-25)
    elif isinstance(c, BFloat16):
        assert np.all(err <= 2.0**-8 * np.abs(x64) + 2.0**-134)
    elif isinstance(c, ScaledSign):
        scale = np.abs(x64).mean()
        assert np.allclose(np.abs(xh64), scale, rtol=1e-6, atol=0)
        assert np.all((xh < 0) == (x < 0))
    elif getattr(c, "rotate", False):
        n = _pow2(d)
        if isinstance(c, Uniform):
            bound = math.sqrt(n) * 2 * norm / (2 ** int(setting) - 1) / 2
        elif isinstance(c, QSGD):
            bound = math.sqrt(n) * norm / setting
        else:
            bound = math.sqrt(n) * norm
        assert np.linalg.norm(x64 - xh64) <= bound * (1 + 1e-4) + math.sqrt(n) * eps
    else:
        size = d if c.bucket == 0 or c.bucket > d else c.bucket
        for xb, eb in zip(_buckets(x64, size), _buckets(err, size), strict=True):
            if isinstance(c, Uniform):
                step = (xb.max() - xb.min()) / (2 ** int(setting) - 1)
                bound = step if c.stochastic else step / 2
            elif isinstance(c, QSGD):
                bound = np.linalg.norm(xb) / setting
            else:
                bound = np.abs(xb).max()
            assert np.all(eb <= bound * (1 + 1e-5) + eps)


@pytest.mark.parametrize("key", sorted(CONFIGS))
@settings(max_examples=25, deadline=None)
@given(data=cohorts())
def test_round_trip_bound_and_size(key, data):
    c = CONFIGS[key]
    rows, seed = data
    d = rows.shape[1]
    for setting in c.ladder:
        payloads, recon = _encode(c, rows, seed, setting)
        expected = _expected_size(c, d, setting)
        for i, p in enumerate(payloads):
            out = c.decode(p, d)
            assert out.dtype == np.float32
            assert np.array_equal(out.view(np.uint32), recon[i].view(np.uint32))
            if expected is None:
                assert len(p) <= c.size_bound(d, setting)
            else:
                assert len(p) == expected == c.size_bound(d, setting)
            _check_bound(c, rows[i], recon[i], setting)


def test_encode_rows_with_mixed_settings():
    rows = np.random.default_rng(1).normal(size=(4, 33)).astype(np.float32)
    for c in (Uniform(bucket=8), QSGD(bucket=8), Uniform(rotate=True, stochastic=True)):
        sets = np.array(c.ladder[:2] * 2)
        rngs = [np.random.default_rng(i) for i in range(4)]
        payloads, recon, _ = c.encode(rows, sets, rngs, {})
        for i, p in enumerate(payloads):
            assert struct.unpack_from("<f", p, 8)[0] == sets[i]
            assert np.array_equal(c.decode(p, 33), recon[i])


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 600), s=st.sampled_from([1, 4, 16, 256, 4096]), seed=st.integers(0, 99))
def test_qsgd_size_bound_holds_for_adversarial_rows(d, s, seed):
    """Flat rows maximize the level bits, dense rows the gap bits."""
    rng = np.random.default_rng(seed)
    rows = np.stack([np.ones(d), -np.ones(d), rng.normal(size=d), np.eye(1, d, d - 1)[0]]).astype(
        np.float32
    )
    for c in (QSGD(bucket=64), QSGD(bucket=0), QSGD(bucket=7, rotate=True)):
        payloads, _ = _encode(c, rows, seed, s)
        assert max(len(p) for p in payloads) <= c.size_bound(d, s)


def test_qsgd_payload_is_smaller_than_float32_for_few_levels():
    d = 4096
    rows = np.random.default_rng(0).normal(size=(1, d)).astype(np.float32)
    c = QSGD()
    payloads, _ = _encode(c, rows, 0, 4)
    assert len(payloads[0]) < d  # under 2 bits per value
    assert c.size_bound(d, 4) < 4 * d


def test_bf16_rounds_to_nearest_even():
    one = 1.0
    ulp = 2.0**-7  # bfloat16 spacing just above 1
    xs = np.array(
        [one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2.0**-20, -(one + 3 * ulp / 2)],
        dtype=np.float32,
    )
    want = np.array([one, one + 2 * ulp, one + ulp, -(one + 2 * ulp)], dtype=np.float32)
    _, recon = _encode(BFloat16(), xs[None, :], 0)
    np.testing.assert_array_equal(recon[0], want)


def test_half_precision_saturates_instead_of_overflowing():
    big = np.array([[1e6, -1e6, 3.4e38, -3.4e38]], dtype=np.float32)
    payloads, recon = _encode(Float16(), big, 0)
    np.testing.assert_array_equal(recon[0], [65504, -65504, 65504, -65504])
    payloads, recon = _encode(BFloat16(), big, 0)
    assert np.all(np.isfinite(BFloat16().decode(payloads[0], 4)))
    assert recon[0, 2] > 3.3e38 and recon[0, 3] < -3.3e38


@pytest.mark.parametrize(
    "c",
    [
        QSGD(bucket=16, rotate=False),
        QSGD(bucket=0, rotate=True),
        TernGrad(bucket=16),
        TernGrad(bucket=0, rotate=True),
        Uniform(bucket=16, stochastic=True),
        Uniform(bucket=0, stochastic=True, rotate=True),
    ],
    ids=lambda c: f"{c.name}-rot{int(c.rotate)}",
)
def test_stochastic_codecs_are_unbiased(c):
    assert c.unbiased
    d, copies = 64, 10_000
    rng = np.random.default_rng(7)
    row = (rng.uniform(0.5, 1.0, d) * rng.choice([-1.0, 1.0], d)).astype(np.float32)
    rows = np.repeat(row[None, :], copies, axis=0)
    setting = {"qsgd": 4.0, "uniform": 2.0}.get(c.name, c.default)
    payloads, recon = _encode(c, rows, 11, setting)
    for i in (0, copies // 2, copies - 1):
        assert np.array_equal(c.decode(payloads[i], d).view(np.uint32), recon[i].view(np.uint32))
    mean = recon.astype(np.float64).mean(axis=0)
    assert np.linalg.norm(mean - row) <= 0.01 * np.linalg.norm(row)
    # and the encodings really are random (not the row itself)
    assert np.linalg.norm(recon[0] - row) > 0.01 * np.linalg.norm(row)


def test_unbiased_flags():
    assert not Float16.unbiased and not BFloat16.unbiased and not ScaledSign.unbiased
    assert not Uniform().unbiased and Uniform(stochastic=True).unbiased
    assert QSGD.unbiased and TernGrad.unbiased
    assert not any(type(c).linear for c in CONFIGS.values())


# ----------------------------------------------------------------------------- refusals


def _sample_payload(c: Codec, d: int = 37) -> bytes:
    rows = np.random.default_rng(3).normal(size=(1, d)).astype(np.float32)
    payloads, _ = _encode(c, rows, 5)
    return payloads[0]


def _first_float_offset(c: Codec) -> int:
    return HEADER_BYTES + (8 if getattr(c, "rotate", False) else 0)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_malformed_payloads_are_refused(key):
    c = CONFIGS[key]
    d = 37
    p = _sample_payload(c, d)
    c.decode(p, d)
    with pytest.raises(PayloadError):
        c.decode(p[:-1], d)
    with pytest.raises(PayloadError):
        c.decode(p[:HEADER_BYTES], d)
    with pytest.raises(PayloadError, match="header"):
        c.decode(p[:5], d)
    with pytest.raises(PayloadError):
        c.decode(p + b"\x00", d)
    with pytest.raises(PayloadError, match="codec id"):
        c.decode(p[:1] + bytes([(c.code % 250) + 1]) + p[2:], d)
    with pytest.raises(PayloadError, match="row length"):
        c.decode(p, d + 1)
    with pytest.raises(PayloadError, match="version"):
        c.decode(b"\x09" + p[1:], d)
    with pytest.raises(PayloadError, match="flags"):
        c.decode(p[:2] + struct.pack("<H", FLAG_ROTATED ^ p[2] ^ 4) + p[4:], d)
    with pytest.raises(PayloadError, match="setting"):
        c.decode(p[:8] + struct.pack("<f", 17.5) + p[12:], d)
    # a NaN or infinite scale (or value, for the half-precision codecs)
    off = _first_float_offset(c)
    if isinstance(c, Float16):
        patches = [b"\x00\x7e", b"\x00\x7c"]
    elif isinstance(c, BFloat16):
        patches = [b"\xc0\x7f", b"\x80\xff"]
    else:
        patches = [struct.pack("<f", math.nan), struct.pack("<f", -math.inf)]
    for patch in patches:
        bad = p[:off] + patch + p[off + len(patch) :]
        with pytest.raises(PayloadError, match="non-finite"):
            c.decode(bad, d)


@pytest.mark.parametrize("c", [Uniform(), QSGD(), TernGrad(), ScaledSign()], ids=lambda c: c.name)
def test_negative_scale_is_refused(c):
    p = _sample_payload(c)
    # uniform's second float block is the steps; the others' first is their scale/norm
    off = HEADER_BYTES + (4 if isinstance(c, Uniform) else 0)
    bad = p[:off] + struct.pack("<f", -1.0) + p[off + 4 :]
    with pytest.raises(PayloadError, match="negative"):
        c.decode(bad, 37)


def test_qsgd_refuses_bad_codes():
    c = QSGD(bucket=0)
    d = 40
    rows = np.random.default_rng(2).normal(size=(1, d)).astype(np.float32)
    p = _encode(c, rows, 1, 4)[0][0]
    nnz_off = HEADER_BYTES + 4
    nnz = struct.unpack_from("<I", p, nnz_off)[0]
    assert 0 < nnz <= d
    # a count above the row length, and one code too many
    with pytest.raises(PayloadError, match="exceeds"):
        c.decode(p[:nnz_off] + struct.pack("<I", d + 1) + p[nnz_off + 4 :], d)
    with pytest.raises(PayloadError):
        c.decode(p[:nnz_off] + struct.pack("<I", nnz + 1) + p[nnz_off + 4 :], d)
    # the same codes read with fewer levels: some level exceeds s
    with pytest.raises(PayloadError, match="above 1"):
        c.decode(p[:8] + struct.pack("<f", 1.0) + p[12:], d)
    # a set padding bit after the codes
    if p[-1] & 1 == 0:
        with pytest.raises(PayloadError):
            c.decode(p[:-1] + bytes([p[-1] | 1]), d)


def test_terngrad_refuses_bad_digits():
    c = TernGrad(bucket=0)
    p = _sample_payload(c, 37)  # 37 values: 8 bytes of digits, 3 padding digits
    with pytest.raises(PayloadError, match="above 242"):
        c.decode(p[:-1] + b"\xf3", 37)
    last_digits = p[-1] - p[-1] % 9  # keep the two real digits, then add padding
    with pytest.raises(PayloadError, match="padding"):
        c.decode(p[:-1] + bytes([last_digits + 1]), 37)


def test_encode_refuses_bad_inputs():
    rows = np.ones((2, 5), dtype=np.float32)
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    with pytest.raises(ValueError, match="setting"):
        Uniform().encode(rows, np.array([8.0, 17.0]), rngs, {})
    with pytest.raises(ValueError, match="setting"):
        QSGD().encode(rows, np.array([0.5, 4.0]), rngs, {})
    with pytest.raises(ValueError, match="setting"):
        Float16().encode(rows, np.array([8.0, 16.0]), rngs, {})
    with pytest.raises(ValueError, match="non-finite"):
        QSGD().encode(np.array([[1.0, np.nan]], np.float32), np.array([4.0]), rngs[:1], {})
    with pytest.raises(ValueError, match="generators"):
        TernGrad().encode(rows, np.array([3.0, 3.0]), rngs[:1], {})


@pytest.mark.parametrize(
    ("factory", "params", "field"),
    [
        (Uniform, {"bucket": -1}, "bucket"),
        (Uniform, {"bucket": 2.5}, "bucket"),
        (Uniform, {"stochastic": 1}, "stochastic"),
        (Uniform, {"rotate": "yes"}, "rotate"),
        (QSGD, {"bucket": -4}, "bucket"),
        (QSGD, {"rotate": 0}, "rotate"),
        (TernGrad, {"bucket": True}, "bucket"),
    ],
)
def test_constructor_params_are_validated(factory, params, field):
    with pytest.raises(ValueError, match=field):
        factory(**params)


def test_codecs_are_registered_with_unique_codes():
    classes = [Float16, BFloat16, Uniform, QSGD, TernGrad, ScaledSign]
    for cls in classes:
        assert codec_mod._CODECS[cls.name] is cls
        assert cls.__doc__ and "References:" in cls.__doc__
    assert [cls.code for cls in classes] == [1, 2, 3, 4, 5, 6]
    for c in CONFIGS.values():
        assert isinstance(c, Codec)
        assert c.default in c.ladder
        assert list(c.ladder) == sorted(c.ladder, reverse=True)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_empty_cohort(key):
    c = CONFIGS[key]
    payloads, recon, state = c.encode(np.zeros((0, 9), np.float32), np.zeros(0), [], {})
    assert payloads == [] and recon.shape == (0, 9) and state == {}


def test_rotation_must_match_the_decoder():
    for cls in (Uniform, QSGD, TernGrad):
        rotated = _sample_payload(cls(rotate=True))
        plain = _sample_payload(cls())
        with pytest.raises(PayloadError, match="flags"):
            cls().decode(rotated, 37)
        with pytest.raises(PayloadError, match="flags"):
            cls(rotate=True).decode(plain, 37)
        assert len(rotated) > len(plain) or cls is QSGD
