"""Fixed-point encoding into Z_(2^bits): sums decode within the bound, masks cancel exactly."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.secagg import FixedPoint, SecAggError, prg, simulate_encoded


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_decoded_sum_is_within_the_documented_bound(data: st.DataObject) -> None:
    bits = data.draw(st.sampled_from([16, 32, 64]), label="bits")
    clip = data.draw(st.floats(min_value=1e-3, max_value=1e3), label="clip")
    num_clients = data.draw(st.integers(min_value=1, max_value=200), label="num_clients")
    rounding = data.draw(st.sampled_from(["nearest", "stochastic"]), label="rounding")
    fp = FixedPoint(clip, num_clients, bits, rounding)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    count = data.draw(st.integers(min_value=0, max_value=min(num_clients, 20)), label="count")
    value = st.one_of(
        st.sampled_from([clip, -clip, 0.0, 2 * clip, -1e9]),
        st.floats(min_value=-2 * clip, max_value=2 * clip),
    )
    inputs = np.array(
        [data.draw(st.lists(value, min_size=3, max_size=3)) for _ in range(count)]
    ).reshape(count, 3)
    encoded = [fp.encode(row, rng) for row in inputs]
    assert all(e.dtype == fp.dtype for e in encoded)
    total = np.zeros(3, dtype=fp.dtype)
    for e in encoded:
        total += e  # unsigned numpy arithmetic wraps: this is the sum mod 2^bits
    decoded = fp.decode_sum(total, count)
    clipped = np.clip(inputs, -clip, clip)
    for k in range(3):
        exact = math.fsum(clipped[:, k])
        bound = count * fp.error_bound + abs(exact) * 2**-52
        assert abs(decoded[k] - exact) <= bound


def test_scale_is_the_largest_power_of_two_with_headroom() -> None:
    cases = [(1.0, 10, 32), (1.0, 1, 64), (0.3, 1000, 32), (7.5, 3, 64), (0.1, 10, 16)]
    for clip, num_clients, bits in cases:
        fp = FixedPoint(clip, num_clients, bits)
        assert math.log2(fp.scale).is_integer()
        room = 2 ** (bits - 1) - 1 - num_clients  # each value may round up by one step
        assert clip * num_clients * fp.scale <= room
        assert clip * num_clients * fp.scale * 2 > room
        assert fp.error_bound == 0.5 / fp.scale
        assert FixedPoint(clip, num_clients, bits, "stochastic").error_bound == 1 / fp.scale


def test_extremes_and_negatives_wrap_into_the_modulus() -> None:
    fp = FixedPoint(1.0, 1, 32)  # scale 2^30
    np.testing.assert_array_equal(
        fp.encode(np.array([1.0, -1.0, 5.0, 0.0])),
        np.array([2**30, 2**32 - 2**30, 2**30, 0], dtype=np.uint32),
    )
    full = FixedPoint(1.0, 1, 64)  # scale 2^62: clip * scale fills the signed range
    encoded = full.encode(np.array([1.0, -1.0]))
    np.testing.assert_array_equal(full.decode_sum(encoded, 1), [1.0, -1.0])
    assert full.encode(np.ones((2, 3))).shape == (2, 3)


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_masks_cancel_exactly(bits: int) -> None:
    fp = FixedPoint(2.0, 3, bits)
    rng = np.random.default_rng(0)  # data only; masks come from the AES-CTR PRG
    updates = rng.uniform(-2, 2, size=(3, 1000))
    encoded = [fp.encode(u) for u in updates]
    mask = prg(os.urandom(32), 1000, bits)
    np.testing.assert_array_equal(encoded[0] + mask - mask, encoded[0])
    # Pairwise masks: client i adds m_ij for j > i and subtracts m_ji for j < i.
    masks = {(i, j): prg(os.urandom(32), 1000, bits) for i in range(3) for j in range(i + 1, 3)}
    masked = []
    for i, e in enumerate(encoded):
        y = e.copy()
        for (a, b), m in masks.items():
            if a == i:
                y += m
            elif b == i:
                y -= m
        masked.append(y)
    total = masked[0] + masked[1] + masked[2]
    np.testing.assert_array_equal(total, encoded[0] + encoded[1] + encoded[2])
    decoded = fp.decode_sum(total, 3)
    assert np.max(np.abs(decoded - updates.sum(axis=0))) <= 3 * fp.error_bound


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip": 0.0, "num_clients": 2}, "clip must be finite and > 0"),
        ({"clip": -1.0, "num_clients": 2}, "clip must be finite and > 0"),
        ({"clip": math.inf, "num_clients": 2}, "clip must be finite and > 0"),
        ({"clip": "1", "num_clients": 2}, "clip must be a number"),
        ({"clip": 1.0, "num_clients": 0}, "num_clients must be an int >= 1"),
        ({"clip": 1.0, "num_clients": 2.0}, "num_clients must be an int >= 1"),
        ({"clip": 1.0, "num_clients": 2, "bits": 8}, "bits must be 16, 32 or 64"),
        ({"clip": 1.0, "num_clients": 2, "rounding": "up"}, "rounding must be"),
        ({"clip": 1.0, "num_clients": 40_000, "bits": 16}, "no room"),
        ({"clip": 5e-324, "num_clients": 1, "bits": 64}, "too small"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(SecAggError, match=match):
        FixedPoint(**kwargs)


def test_encode_and_decode_errors() -> None:
    fp = FixedPoint(1.0, 4)
    with pytest.raises(SecAggError, match="NaN or inf"):
        fp.encode(np.array([0.0, np.nan]))
    with pytest.raises(SecAggError, match="NaN or inf"):
        fp.encode(np.array([np.inf]))
    total = fp.encode(np.zeros(2))
    with pytest.raises(SecAggError, match="headroom covers num_clients=4"):
        fp.decode_sum(total, 5)
    with pytest.raises(SecAggError, match="non-negative int"):
        fp.decode_sum(total, -1)
    with pytest.raises(SecAggError, match="unsigned integer"):
        fp.decode_sum(total.astype(np.int64), 1)


def test_extreme_sums_never_wrap_even_when_every_value_rounds_up() -> None:
    for rounding in ("nearest", "stochastic"):
        fp = FixedPoint(0.1, 10, 16, rounding)  # 0.1 * scale is not an integer
        rng = np.random.default_rng(0)
        for sign in (1.0, -1.0):
            rows = np.full((10, 50), sign * 0.1)
            total = np.stack([fp.encode(r, rng) for r in rows]).sum(axis=0, dtype=fp.dtype)
            decoded = fp.decode_sum(total, 10)
            assert np.all(np.abs(decoded - sign * 1.0) <= 10 * fp.error_bound)


def test_stochastic_rounding_is_unbiased_where_nearest_is_not() -> None:
    value = 0.3 / FixedPoint(1.0, 4, 16).scale  # 0.3 of one grid step
    nearest = FixedPoint(1.0, 4, 16)
    stochastic = FixedPoint(1.0, 4, 16, "stochastic")
    x = np.full(100_000, value)
    assert nearest.decode_sum(nearest.encode(x), 1).mean() == 0.0  # always rounds down
    mean = stochastic.decode_sum(stochastic.encode(x, np.random.default_rng(1)), 1).mean()
    step = 1 / stochastic.scale  # one draw is 0 or one step: stddev <= step / 2
    assert abs(mean - value) <= 5 * (step / 2) / np.sqrt(x.size)
    with pytest.raises(SecAggError, match="needs a numpy Generator"):
        stochastic.encode(x)


def test_a_16_bit_round_halves_the_upload_and_sums_exactly() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.uniform(-1, 1, size=(6, 500))
    sums = {}
    for bits in (16, 32):
        fp = FixedPoint(1.0, 6, bits, "stochastic")
        encoded = np.stack([fp.encode(v, rng) for v in vectors])
        total, report = simulate_encoded(encoded, fp, 3, None, {"masked_input": [4]}, seed=0)
        np.testing.assert_array_equal(total, encoded[report.included].sum(axis=0, dtype=fp.dtype))
        decoded = fp.decode_sum(total, len(report.included))
        exact = vectors[report.included].sum(axis=0)
        assert np.all(np.abs(decoded - exact) <= len(report.included) * fp.error_bound)
        sums[bits] = report.upload_bytes_per_client
    # everything but the masked input (sent by 5 of the 6 clients) is the same size
    assert sums[32] - sums[16] == pytest.approx(2 * 500 * 5 / 6)
