"""Models and updates on the wire: float32 bytes in chunks, and exact model deltas.

gRPC refuses messages over 4 MiB by default, so every payload travels as a stream of
chunks (1 MiB by default) behind a header that states its size and SHA-256; the
receiver refuses a stream that grows past the stated size before buffering more.

A client that already holds an older model version downloads only the difference: the
XOR of the two versions' float32 bit patterns, zlib-compressed. XOR is exact (the client
rebuilds the new model bit for bit, which float subtraction would not guarantee), and
after a round most parameters keep their sign, exponent and leading mantissa bits, so
the XOR is mostly zero bytes and compresses well.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator

import numpy as np

from fedloom.errors import FedloomError

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 8 << 20  # gRPC message limit on both ends; chunks stay far below it


class WireError(FedloomError):
    """A payload is malformed: wrong size, bad checksum, undecodable delta."""


ENCODED = "encoded"  # UploadHeader.dtype of a codec payload (compressed uploads)


def to_bytes(vector: np.ndarray) -> bytes:
    """A 1-D float32 vector as little-endian bytes."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def as_float32(data: bytes | np.ndarray, dim: int, what: str) -> np.ndarray:
    """The ``dim`` float32 values in ``data`` as a view, no copy (read-only over bytes)."""
    size = len(data) if isinstance(data, bytes) else data.nbytes
    if size != 4 * dim:
        raise WireError(f"{what} has {size} bytes, expected {4 * dim} ({dim} float32)")
    return np.frombuffer(data, dtype="<f4")


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def chunks(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """``data`` cut into pieces of at most ``size`` bytes (one empty piece if empty)."""
    view = memoryview(data)
    for start in range(0, max(len(data), 1), size):
        yield bytes(view[start : start + size])


def xor_delta(new: np.ndarray, base: np.ndarray) -> bytes:
    """The compressed XOR of two float32 vectors' bit patterns."""
    bits = np.bitwise_xor(
        np.ascontiguousarray(new, dtype="<f4").view("<u4"),
        np.ascontiguousarray(base, dtype="<f4").view("<u4"),
    )
    return zlib.compress(bits.tobytes(), level=1)


def apply_xor_delta(payload: bytes | memoryview, base: np.ndarray) -> np.ndarray:
    """The vector ``xor_delta(new, base)`` was made from; refuses oversized output."""
    expected = 4 * base.shape[0]
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(payload, expected + 1)
    except zlib.error as err:
        raise WireError(f"model delta does not decompress: {err}") from None
    if len(raw) != expected or inflater.unconsumed_tail or not inflater.eof:
        raise WireError(f"model delta decodes to the wrong size (expected {expected} bytes)")
    bits = np.frombuffer(raw, dtype="<u4") ^ np.ascontiguousarray(base, dtype="<f4").view("<u4")
    return bits.view("<f4").astype(np.float32)


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """gRPC options for both ends: message limits, and keepalive pings every 5 s that
    find a dead or black-holed connection within about 10 s (the server must accept
    pings that often, or it closes the connection for "too many pings")."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 5_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 1_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ]
