"""Model downloads serialized once and read without protobuf copies: the bytes stay valid
``DownloadChunk`` messages, and the client still checks size, sha256 and deltas."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from inprocess import serve_in_thread

from fedloom.data.storage import client_dir
from fedloom.transport import download, wire
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import fedloom_pb2_grpc as rpc
from fedloom.transport.certs import METADATA_CLIENT
from fedloom.transport.client import DeploymentClient
from fedloom.transport.server import DeploymentServer, ServerOptions


def _by_protobuf(message: bytes) -> tuple[pb.DownloadHeader | None, bytes]:
    chunk = pb.DownloadChunk.FromString(message)
    return (chunk.header if chunk.HasField("header") else None), chunk.data


def _by_parse(message: bytes) -> tuple[pb.DownloadHeader | None, bytes]:
    header, data = download.parse(message)
    assert isinstance(data, memoryview)
    return header, bytes(data)


def _header(payload: bytes) -> pb.DownloadHeader:
    return pb.DownloadHeader(
        version=3,
        base_version=-1,
        encoding="raw",
        payload_bytes=len(payload),
        dim=len(payload) // 4,
        sha256=hashlib.sha256(payload).digest(),
    )


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5000), chunk=st.integers(1, 2000), seed=st.integers(0, 2**32 - 1))
def test_encoded_chunks_read_the_same_by_protobuf_and_parse(size: int, chunk: int, seed: int):
    payload = np.random.default_rng(seed).bytes(size)
    messages = download.encode(_header(payload), payload, chunk)
    read = [_by_parse(m) for m in messages]
    assert read == [_by_protobuf(m) for m in messages]
    assert read[0][0] == _header(payload)
    assert all(header is None for header, _ in read[1:])
    assert b"".join(data for _, data in read) == payload


def test_other_layouts_of_a_valid_message_are_left_to_protobuf() -> None:
    header = _header(b"abcd").SerializeToString()
    tag_header, tag_data = bytes([0x0A, len(header)]), b"\x12\x03"
    layouts = [
        b"",
        tag_data + b"xyz" + tag_header + header,  # data before the header
        tag_header + header + tag_data + b"xyz" + tag_data + b"uvw",  # data twice: last wins
        tag_header + header + tag_header + header,  # header twice: merged
        tag_data + b"xyz" + b"\x18\x07",  # an unknown varint field 3
        b"\x12\x83\x00xyz",  # a length varint longer than needed
    ]
    for message in layouts:
        assert _by_parse(message) == _by_protobuf(message), message


@pytest.mark.parametrize(
    "message",
    [
        b"\x12\x05abc",  # data shorter than its length
        b"\x12\x80",  # length varint cut off
        b"\x12" + b"\xff" * 11,  # length varint too long
        b"\x0a\x02\x08",  # header shorter than its length
        b"\x0a\x01\xff" + b"\x12\x01a",  # header bytes that are no DownloadHeader
    ],
)
def test_malformed_messages_are_refused(message: bytes) -> None:
    with pytest.raises(DecodeError):
        download.parse(message)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"\x0a", b"\x12", b"\x0a\x00\x12"]),
    rest=st.binary(max_size=40),
)
def test_parse_agrees_with_protobuf_on_arbitrary_bytes(prefix: bytes, rest: bytes) -> None:
    message = prefix + rest
    try:
        expected = _by_protobuf(message)
    except DecodeError:
        with pytest.raises(DecodeError):
            download.parse(message)
    else:
        assert _by_parse(message) == expected


# live: a deployment server in this process, and a stand-in server for bad streams -------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DeploymentServer, Path]]:
    root = tmp_path_factory.mktemp("download")
    options = ServerOptions(port=0, insecure=True, chunk_bytes=4096, linger_s=0)
    server, port, thread = serve_in_thread(root, ["model.hidden=[40]"], options)
    yield server, root
    server.stop()
    thread.join(60)


def _client(target: str, root: Path, dim: int) -> DeploymentClient:
    client = DeploymentClient(target, client_dir(root / "data", 0), insecure=True)
    client.dim = dim  # as Join would tell it
    return client


def test_the_generated_stub_still_reads_the_servers_download_stream(live) -> None:  # noqa: ANN001
    server, _ = live
    version = server.engine.server.version
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=wire.channel_options())
    chunks = list(
        rpc.FedloomStub(channel).Download(
            pb.DownloadRequest(version=version, base_version=-1),
            metadata=((METADATA_CLIENT, "client-000000"),),
            timeout=30,
        )
    )
    channel.close()
    payload = b"".join(c.data for c in chunks)
    assert len(chunks) > 1 and chunks[0].header.encoding == "raw"
    assert not any(c.HasField("header") for c in chunks[1:])
    assert payload == wire.to_bytes(server.engine.server.params)
    assert chunks[0].header.sha256 == hashlib.sha256(payload).digest()


def test_client_downloads_whole_models_and_exact_deltas(live) -> None:  # noqa: ANN001
    server, root = live
    srv = server.engine.server
    client = _client(f"127.0.0.1:{server.port}", root, srv.dim)
    version = srv.version
    whole = client._download(version)
    assert whole.tobytes() == wire.to_bytes(srv.params)
    rng = np.random.default_rng(0)
    newer = (srv.params + 1e-3 * rng.normal(size=srv.dim)).astype(np.float32)
    with server._cond:  # a next version, as a round would leave it
        server._models[version + 1] = newer
    got = client._download(version + 1)
    assert got.tobytes() == newer.tobytes()
    assert client.stats.bytes_down < 2 * 4 * srv.dim  # the second came as a compressed delta
    client.channel.close()


class _Stream:
    """A stand-in Download endpoint that streams whatever messages a test sets."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        handler = grpc.method_handlers_generic_handler(
            download.SERVICE, {"Download": download.handler(lambda _r, _c: iter(self.messages))}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(2), options=wire.channel_options())
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_client_refuses_damaged_or_oversized_downloads(live) -> None:  # noqa: ANN001
    _, root = live
    dim = 1000
    stream = _Stream()
    client = _client(f"127.0.0.1:{stream.port}", root, dim)
    payload = wire.to_bytes(np.arange(dim, dtype=np.float32))
    header = _header(payload)
    stream.messages = download.encode(header, payload, 1000)
    assert client._download(3).tobytes() == payload
    client.held = None

    def refused(messages: list[bytes], match: str) -> None:
        stream.messages = messages
        with pytest.raises(wire.WireError, match=match):
            client._download(3)

    wrong = pb.DownloadHeader()
    wrong.CopyFrom(header)
    wrong.sha256 = b"\0" * 32
    refused(download.encode(wrong, payload, 1000), "sha256")
    refused(download.encode(header, payload, 1000)[:-1], "truncated")
    refused(download.encode(header, payload, 1000) + [b"\x12\x01x"], "exceeds")
    refused(download.encode(header, payload, 1000)[1:], "header")
    refused([], "truncated")
    wrong.CopyFrom(header)
    wrong.payload_bytes = 4 * dim + (1 << 20) + 1
    refused(download.encode(wrong, payload, 1000), "declares")
    wrong.payload_bytes = -1
    refused(download.encode(wrong, payload, 1000), "declares")
    client.channel.close()
    stream.server.stop(None)
