"""An adversarial client over gRPC with mTLS: captured uploads replayed (again in the same
round, and into the next one), a payload with a flipped byte, a name claimed in metadata,
a certificate from another CA. Each is answered from the server's own records: a replay is
acknowledged as a duplicate and applied once, a stale or tampered upload is refused with
its typed reason and nothing of it is applied, and a client is only ever the client its
certificate names."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from test_hostile import first_task, live, refused, stub_for, upload  # noqa: F401 (fixture)

from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import fedloom_pb2_grpc as rpc
from fedloom.transport import wire
from fedloom.transport.certs import METADATA_CLIENT, init_ca, issue, load_identity

INVALID = grpc.StatusCode.INVALID_ARGUMENT
CLAIM = ((METADATA_CLIENT, "client-000001"),)  # client 0 claiming to be client 1


def header_for(task: pb.Task, payload: bytes, dim: int, **change: object) -> pb.UploadHeader:
    fields = dict(
        task_id=task.task_id,
        round=task.round,
        version=task.version,
        num_examples=10,
        dim=dim,
        dtype="float32",
        payload_bytes=len(payload),
        sha256=wire.digest(payload),
        steps=1,
        epochs=1.0,
    )
    return pb.UploadHeader(**{**fields, **change})


def send(stub: rpc.FedloomStub, header: pb.UploadHeader, payload: bytes) -> pb.UploadReply:
    chunks = [pb.UploadChunk(header=header, data=payload)]
    return stub.Upload(iter(chunks), metadata=CLAIM, timeout=30)


def next_task(stub: rpc.FedloomStub, after: pb.Task) -> pb.Task:
    task = stub.GetTask(pb.TaskRequest(wait_s=30), timeout=60)
    while task.kind != pb.Task.TRAIN or task.task_id == after.task_id:
        task = stub.GetTask(pb.TaskRequest(wait_s=30), timeout=60)
    return task


def rogue_stub(tmp_path: Path, certs: Path, port: int) -> rpc.FedloomStub:
    """A client that trusts the run's CA but presents ``client-000001`` issued by its own."""
    rogue = tmp_path / "rogue"
    init_ca(rogue)
    issue(rogue, "client-000001")
    identity = load_identity(rogue, "client-000001")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=identity.key_pem,
        certificate_chain=identity.cert_pem,
    )
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=wire.channel_options())
    return rpc.FedloomStub(channel)


def test_replayed_tampered_and_impersonating_uploads(live, tmp_path: Path) -> None:  # noqa: ANN001, F811
    server, certs, port, thread = live
    stub = stub_for(certs, "client-000000", port)
    joined = stub.Join(pb.JoinRequest(num_examples=1), metadata=CLAIM, timeout=60)
    assert joined.client_id == 0  # the certificate's name, not the metadata's claim
    dim = joined.dim
    task, silent = first_task(stub)

    # another CA's certificate for a client of the run: refused at the TLS handshake
    rogue = rogue_stub(tmp_path, certs, port)
    with pytest.raises(grpc.RpcError) as info:
        rogue.Join(pb.JoinRequest(num_examples=1), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    raw = wire.to_bytes(np.full(dim, 0.001, dtype=np.float32))
    captured = header_for(task, raw, dim)
    flipped = bytearray(raw)
    flipped[5] ^= 0x10
    why = refused(lambda: send(stub, captured, bytes(flipped)), INVALID)
    assert "sha256" in why

    first = send(stub, captured, raw)  # claiming client 1 in metadata changes nothing
    assert first.accepted and not first.duplicate
    again = send(stub, captured, raw)  # the same bytes again: acknowledged, not re-applied
    assert again.accepted and again.duplicate

    later = next_task(stub, task)
    assert later.round == task.round + 1
    # the captured upload once its round closed: acknowledged as that round's duplicate
    assert send(stub, captured, raw).duplicate
    # the captured update under the new round's task: refused as stale
    moved = header_for(later, raw, dim, round=task.round, version=task.version)
    assert "stale" in refused(lambda: send(stub, moved, raw), INVALID)
    fresh = wire.to_bytes(np.full(dim, 0.002, dtype=np.float32))
    assert send(stub, header_for(later, fresh, dim), fresh).accepted
    silent.set()
    thread.join(120)
    assert not thread.is_alive()

    assert dict(server.refused) == {"corrupt": 1, "stale_version": 1}
    rounds = [r for r in server.engine.run_dir.records() if r.get("event") == "round"]
    # each round applied one update per client: client 0's (never client 1's twice)
    assert [(r["completed"], r["rejected"], r["excluded"]) for r in rounds] == [
        (3, 0, []),
        (3, 1, []),
    ]
