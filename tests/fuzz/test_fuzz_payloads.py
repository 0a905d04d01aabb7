"""Every registered codec's decoder, and the wire's byte helpers, fed hostile payloads:
random bytes, random bodies behind a well-formed header, truncated, extended and
bit-flipped valid payloads, and headers naming another row length. A decoder answers
with a finite ``[d]`` float32 row or refuses with ``PayloadError`` (``WireError`` for
the wire helpers; protobuf's ``DecodeError`` for a download chunk protobuf cannot read);
nothing else escapes, and a refused payload never reaches the model."""

from __future__ import annotations

import zlib
from functools import cache

import numpy as np
import pytest
from budget import fuzz
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from fedloom.compression.codec import Codec, Header, PayloadError, codec_names, make_codec
from fedloom.compression.download import ModelBroadcast, apply_chain
from fedloom.transforms.base import stack_states
from fedloom.transport import download, wire
from fedloom.transport import fedloom_pb2 as pb

SHAPES = [(8, 4), (4,)]  # a weight matrix and its bias: PowerSGD has a matrix to factor
DIM = 36
CODECS = codec_names()


@cache
def codec(name: str) -> Codec:
    return make_codec(name, {}, SHAPES)


@cache
def valid_payloads(name: str) -> tuple[bytes, ...]:
    """Payloads the codec wrote, one per setting of its ladder."""
    c = codec(name)
    rows = np.random.default_rng(0).normal(size=(1, DIM)).astype(np.float32)
    out = []
    for setting in c.ladder:
        state = stack_states([c.init(DIM)])
        rng = np.random.default_rng(1)
        payloads, _, _ = c.encode(rows, np.array([setting]), [rng], state)
        out.append(payloads[0])
    return tuple(out)


def decoded_or_refused(name: str, payload: bytes, dim: int = DIM) -> np.ndarray | None:
    """The decoded row (checked: finite, ``[dim]`` float32) or None after PayloadError."""
    try:
        row = codec(name).decode(payload, dim)
    except PayloadError:
        return None
    assert row.shape == (dim,) and row.dtype == np.float32
    assert np.all(np.isfinite(row))
    return row


@pytest.mark.parametrize("name", CODECS)
def test_random_bytes_are_refused(name: str) -> None:
    @fuzz()
    @given(st.binary(max_size=400))
    def check(data: bytes) -> None:
        decoded_or_refused(name, data)

    check()


@pytest.mark.parametrize("name", CODECS)
def test_a_random_body_behind_a_well_formed_header_is_decoded_or_refused(name: str) -> None:
    c = codec(name)

    @fuzz()
    @given(
        st.sampled_from(c.ladder) | st.floats(width=32),
        st.integers(0, 7),
        st.binary(max_size=300),
    )
    def check(setting: float, flags: int, body: bytes) -> None:
        decoded_or_refused(name, Header(c.code, DIM, setting, flags).pack() + body)

    check()


@pytest.mark.parametrize("name", CODECS)
def test_tampered_valid_payloads_are_decoded_or_refused(name: str) -> None:
    payloads = valid_payloads(name)

    @fuzz()
    @given(st.data())
    def check(data: st.DataObject) -> None:
        payload = bytearray(data.draw(st.sampled_from(payloads)))
        how = data.draw(st.sampled_from(["truncate", "flip", "append", "overwrite"]))
        if how == "truncate":
            payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
        elif how == "flip":
            for at in data.draw(st.lists(st.integers(0, len(payload) * 8 - 1), max_size=4)):
                payload[at // 8] ^= 1 << (at % 8)
        elif how == "append":
            payload += data.draw(st.binary(min_size=1, max_size=16))
        else:
            at = data.draw(st.integers(0, len(payload) - 1))
            piece = data.draw(st.binary(min_size=1, max_size=8))
            payload[at : at + len(piece)] = piece
        decoded_or_refused(name, bytes(payload))

    check()


@pytest.mark.parametrize("name", CODECS)
def test_truncated_extended_and_misdimensioned_payloads_are_refused(name: str) -> None:
    for payload in valid_payloads(name):
        assert decoded_or_refused(name, payload) is not None
        for cut in range(len(payload)):  # every truncation
            with pytest.raises(PayloadError):
                codec(name).decode(payload[:cut], DIM)
        with pytest.raises(PayloadError):  # trailing bytes
            codec(name).decode(payload + b"\0", DIM)
        for dim in (DIM - 1, DIM + 1, 1):  # a header for another row length
            with pytest.raises(PayloadError):
                codec(name).decode(payload, dim)


@pytest.mark.parametrize("name", CODECS)
def test_a_compressed_download_chain_is_applied_or_refused(name: str) -> None:
    c = codec(name)
    held = np.zeros(DIM, dtype=np.float32)
    broadcast = ModelBroadcast(c, held, seed=3)
    chain_payload = broadcast.advance(np.ones(DIM, dtype=np.float32), 1)
    good = len(chain_payload).to_bytes(4, "little") + chain_payload

    @fuzz(0.5)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        chain = bytearray(good)
        at = data.draw(st.integers(0, len(chain) - 1))
        chain[at] ^= data.draw(st.integers(1, 255))
        chain = chain[: data.draw(st.integers(0, len(chain)))]
        try:
            model = apply_chain(c, held, bytes(chain))
        except PayloadError:
            return
        assert model.shape == (DIM,) and np.all(np.isfinite(model))

    check()
    assert np.array_equal(held, np.zeros(DIM, dtype=np.float32))  # never written in place


# -- the wire's helpers --------------------------------------------------------------------
@fuzz()
@given(st.binary(max_size=64), st.integers(0, 20))
def test_as_float32_refuses_any_other_length(data: bytes, dim: int) -> None:
    if len(data) == 4 * dim:
        assert wire.as_float32(data, dim, "x").shape == (dim,)
    else:
        with pytest.raises(wire.WireError):
            wire.as_float32(data, dim, "x")


BASE = np.linspace(-1, 1, 64, dtype=np.float32)
NEW = (BASE + 0.01).astype(np.float32)
DELTA = wire.xor_delta(NEW, BASE)


@fuzz()
@given(st.data())
def test_a_corrupted_model_delta_is_refused_or_exact_in_size(data: st.DataObject) -> None:
    payload = bytearray(DELTA)
    how = data.draw(st.sampled_from(["flip", "truncate", "append", "random", "bomb"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
    elif how == "append":
        payload += data.draw(st.binary(min_size=1, max_size=32))
    elif how == "random":
        payload = bytearray(data.draw(st.binary(max_size=300)))
    else:  # a delta that inflates far past the model (a zip bomb)
        payload = bytearray(zlib.compress(bytes(data.draw(st.integers(1, 64)) << 20)))
    base = BASE.copy()
    try:
        out = wire.apply_xor_delta(bytes(payload), base)
    except wire.WireError:
        return
    finally:
        assert np.array_equal(base, BASE)  # the held model is never touched
    assert how != "bomb" and out.shape == BASE.shape and out.dtype == np.float32
    if how == "append":  # bytes after the zlib stream's end are ignored: the model is exact
        assert np.array_equal(out, NEW)


def test_the_intact_model_delta_is_exact() -> None:
    assert np.array_equal(wire.apply_xor_delta(DELTA, BASE), NEW)


# -- download chunk framing -----------------------------------------------------------------
HEADER = pb.DownloadHeader(version=3, payload_bytes=768, dim=192, sha256=b"\1" * 32, encoding="raw")
FRAMES = download.encode(HEADER, bytes(range(256)) * 3, 300)


def reference(message: bytes) -> tuple[pb.DownloadHeader | None, bytes] | None:
    """protobuf's own reading of ``message`` (None: protobuf refuses it)."""
    try:
        chunk = pb.DownloadChunk.FromString(message)
    except DecodeError:
        return None
    return (chunk.header if chunk.HasField("header") else None), chunk.data


@fuzz(2)
@given(st.data())
def test_the_copy_free_chunk_parser_agrees_with_protobuf(data: st.DataObject) -> None:
    frame = bytearray(data.draw(st.sampled_from(FRAMES)))
    how = data.draw(st.sampled_from(["flip", "truncate", "append", "random", "splice"]))
    if how == "flip":
        at = data.draw(st.integers(0, min(len(frame), 80) - 1))  # the framing is up front
        frame[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        frame = frame[: data.draw(st.integers(0, len(frame)))]
    elif how == "append":
        frame += data.draw(st.binary(min_size=1, max_size=16))
    elif how == "random":
        frame = bytearray(data.draw(st.binary(max_size=120)))
    else:
        frame = frame[:8] + bytearray(data.draw(st.binary(max_size=12))) + frame[8:]
    expected = reference(bytes(frame))
    if expected is None:
        with pytest.raises(DecodeError):
            download.parse(bytes(frame))
        return
    header, view = download.parse(bytes(frame))
    assert (header, bytes(view)) == expected
