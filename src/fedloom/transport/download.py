"""Model downloads as protobuf bytes serialized once, read without a protobuf copy.

Every client that downloads a model version receives the same ``DownloadChunk`` messages,
so the server serializes them once per version (``encode``) and streams those bytes
through an identity response serializer (``handler``) instead of serializing a message
per chunk and client. The client reads each chunk's protobuf framing itself (``parse``):
the payload comes back as a view of the received message rather than as a parsed message
whose ``data`` field copies it once more. The bytes on the wire are ordinary
``DownloadChunk`` messages, so ``fedloom.proto`` stays the truth and a client using the
generated stub reads them as before; ``parse`` takes its fast path only for the exact
layout ``encode`` writes (an optional header, then the data, each field once) and leaves
any other valid encoding, and every malformed one, to protobuf.

Why: per-chunk protobuf serialization on the server and parsing and copying on the client
were the part of a download's cost that checks nothing. On the 2-core development machine,
10 MB in plaintext went from 0.71-0.75x to 0.81-0.88x the throughput of a raw gRPC byte
stream (docs/benchmarks.md, "Model download throughput"); most of the rest is the sha256.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import wire

SERVICE = pb.DESCRIPTOR.services_by_name["Fedloom"].full_name  # "fedloom.v1.Fedloom"
METHOD = f"/{SERVICE}/Download"
CODEC_CHAIN = "codec-chain"  # DownloadHeader.encoding of compressed downloads
_HEADER_TAG = 0x0A  # field 1 (header), wire type 2 (length-delimited)
_DATA_TAG = 0x12  # field 2 (data), wire type 2

Chunk = tuple[pb.DownloadHeader | None, memoryview]


def encode(header: pb.DownloadHeader, payload: bytes, chunk_bytes: int) -> list[bytes]:
    """The serialized ``DownloadChunk`` messages of ``payload``, ``header`` in the first."""
    return [
        pb.DownloadChunk(header=header if i == 0 else None, data=piece).SerializeToString()
        for i, piece in enumerate(wire.chunks(payload, chunk_bytes))
    ]


def handler(
    download: Callable[[Any, grpc.ServicerContext], Iterator[bytes]],
) -> grpc.RpcMethodHandler:
    """The ``Download`` RPC handler for a servicer method that yields ``encode``'s bytes."""
    return grpc.unary_stream_rpc_method_handler(
        download,
        request_deserializer=pb.DownloadRequest.FromString,
        response_serializer=None,  # the messages are serialized already
    )


def _field(message: bytes, at: int) -> tuple[int, int] | None:
    """Where the length-delimited field whose tag is at ``at`` starts and ends, or None
    when its length varint is malformed or runs past the message."""
    size, shift = 0, 0
    at += 1
    while at < len(message) and shift < 64:
        byte = message[at]
        at += 1
        size |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (at, at + size) if at + size <= len(message) else None
        shift += 7
    return None


def parse(message: bytes) -> Chunk:
    """A received ``DownloadChunk``: its header (None when absent) and its data as a view
    of ``message``. Any layout but ``encode``'s goes through protobuf (which raises
    ``DecodeError`` on a malformed message; gRPC then fails the call)."""
    view = memoryview(message)
    header, data, at = None, view[:0], 0
    if at < len(message) and message[at] == _HEADER_TAG:
        span = _field(message, at)
        if span is None:
            return _parse_with_protobuf(message)
        header, at = pb.DownloadHeader.FromString(view[span[0] : span[1]]), span[1]
    if at < len(message) and message[at] == _DATA_TAG:
        span = _field(message, at)
        if span is None:
            return _parse_with_protobuf(message)
        data, at = view[span[0] : span[1]], span[1]
    if at != len(message):  # fields in another order, repeated, unknown or malformed
        return _parse_with_protobuf(message)
    return header, data


def _parse_with_protobuf(message: bytes) -> Chunk:
    chunk = pb.DownloadChunk.FromString(message)
    return (chunk.header if chunk.HasField("header") else None), memoryview(chunk.data)
