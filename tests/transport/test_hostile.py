"""Hostile messages on a live mTLS server: each is refused with a clear status on that
client's stream and counted, and the round still completes for everyone else."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from inprocess import client_threads, serve_in_thread

from fedloom.secagg.protocol import SecAggClient
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import fedloom_pb2_grpc as rpc
from fedloom.transport import wire
from fedloom.transport.certs import channel_credentials, init_ca, issue, load_identity
from fedloom.transport.secagg_wire import client_to_pb, server_from_pb
from fedloom.transport.secure_round import SecureTaskSpec
from fedloom.transport.server import DeploymentServer, ServerOptions

Live = tuple[DeploymentServer, Path, int, threading.Thread]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A server for 3 clients; clients 1 and 2 are honest processes' stand-ins (threads)."""
    yield from serve_with_honest_clients(tmp_path, [])


@pytest.fixture
def live_secagg(tmp_path: Path) -> Iterator[Live]:
    """The same, one round under secure aggregation (threshold 2 of 3)."""
    yield from serve_with_honest_clients(tmp_path, ["rounds=1", "secagg.enabled=true"])


def serve_with_honest_clients(tmp_path: Path, overrides: list[str]) -> Iterator[Live]:
    certs = tmp_path / "certs"
    init_ca(certs)
    issue(certs, "server", kind="server")
    for name in ("client-000000", "client-000001", "client-000002", "client-000007", "mallory"):
        issue(certs, name)
    options = ServerOptions(port=0, certs=certs, linger_s=0.5, client_timeout_s=3)
    server, port, thread = serve_in_thread(tmp_path, overrides, options)
    client_threads(port, tmp_path, [1, 2], certs)
    yield server, certs, port, thread
    server.stop()  # ends the round loop too if the test failed half-way
    thread.join(60)


def stub_for(certs: Path, name: str, port: int, max_send: int = 0) -> rpc.FedloomStub:
    creds = channel_credentials(load_identity(certs, name))
    options = wire.channel_options()
    if max_send:  # let this client send what the server must refuse
        options.append(("grpc.max_send_message_length", max_send))
    return rpc.FedloomStub(grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options))


def upload(stub: rpc.FedloomStub, header: pb.UploadHeader, *pieces: bytes) -> pb.UploadReply:
    chunks = [pb.UploadChunk(header=header, data=pieces[0])]
    chunks += [pb.UploadChunk(data=p) for p in pieces[1:]]
    return stub.Upload(iter(chunks), timeout=30)


def first_task(stub: rpc.FedloomStub) -> tuple[pb.Task, threading.Event]:
    """Heartbeats (online while misbehaving, as a real client would be) until the returned
    event is set, and this client's first training task."""
    silent = threading.Event()

    def heartbeats() -> None:
        while not silent.wait(0.5):
            stub.Heartbeat(pb.HeartbeatRequest(), timeout=30)

    threading.Thread(target=heartbeats, daemon=True).start()
    task = stub.GetTask(pb.TaskRequest(wait_s=30), timeout=60)
    while task.kind != pb.Task.TRAIN:
        task = stub.GetTask(pb.TaskRequest(wait_s=30), timeout=60)
    return task, silent


def refused(call, code: grpc.StatusCode) -> str:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def test_hostile_messages_are_refused_and_everyone_else_is_served(live) -> None:  # noqa: ANN001
    server, certs, port, thread = live
    stub = stub_for(certs, "client-000000", port, max_send=64 << 20)
    joined = stub.Join(pb.JoinRequest(num_examples=1), timeout=60)
    dim = joined.dim
    task, silent = first_task(stub)

    good = np.full(dim, 0.001, dtype=np.float32)

    def header(payload: bytes, **change: object) -> pb.UploadHeader:
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

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    short = wire.to_bytes(good[:-1])
    why = refused(lambda: upload(stub, header(short, dim=dim - 1), short), invalid)
    assert f"expected dim {dim}" in why
    nan = good.copy()
    nan[3] = np.nan
    bad = wire.to_bytes(nan)
    assert "NaN" in refused(lambda: upload(stub, header(bad), bad), invalid)
    raw = wire.to_bytes(good)
    why = refused(
        lambda: upload(stub, header(raw), raw, b"\0" * 4096), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert "exceeds its declared" in why
    assert "sha256" in refused(lambda: upload(stub, header(raw, sha256=b"x" * 32), raw), invalid)
    why = refused(
        lambda: upload(stub, header(raw, task_id="0.0"), raw), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "not open" in why
    assert "stale" in refused(lambda: upload(stub, header(raw, version=99), raw), invalid)
    huge = b"\0" * (wire.MAX_MESSAGE_BYTES + 1024)  # one message over the transport's limit
    refused(lambda: upload(stub, header(huge), huge), grpc.StatusCode.RESOURCE_EXHAUSTED)
    for name in ("mallory", "client-000007"):  # valid certificates, unknown clients
        intruder = stub_for(certs, name, port)
        why = refused(
            lambda s=intruder: s.GetTask(pb.TaskRequest(wait_s=0), timeout=30),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert name in why
    # the genuine update is applied once; a retry is acknowledged, a different one refused
    assert upload(stub, header(raw), raw).accepted
    again = upload(stub, header(raw), raw)
    assert again.accepted and again.duplicate
    other = wire.to_bytes(good * 2)
    refused(lambda: upload(stub, header(other), other), grpc.StatusCode.ALREADY_EXISTS)
    counted = dict(server.refused)
    # gRPC may cancel the over-limit stream before the handler reads it: then the handler
    # sees no header (counted as malformed) or is never called
    assert counted.pop("malformed", 1) == 1
    assert counted == {
        "wrong_shape": 1,
        "nonfinite": 1,
        "oversized": 1,
        "corrupt": 1,
        "stale_task": 1,
        "stale_version": 1,
        "unknown_client": 2,
        "replay": 1,
    }
    # client 0 goes silent; the others finish the run, client 0 dropped in round 2
    silent.set()
    thread.join(120)
    assert not thread.is_alive()
    rounds = [r for r in server.engine.run_dir.records() if r.get("event") == "round"]
    assert [(r["completed"], r["rejected"]) for r in rounds] == [(3, 2), (2, 0)]
    assert rounds[1]["dropped"] == {"disconnected": 1}
    # who was left out and why: nobody in round 1 (client 0 made its refusals good), then
    # client 0 as disconnected
    assert rounds[0]["excluded"] == []
    assert rounds[1]["excluded"] == [
        {"client": 0, "outcome": "failed", "kind": "disconnected", "detail": "disconnected"}
    ]


def test_hostile_secure_aggregation_messages_are_refused(live_secagg) -> None:  # noqa: ANN001
    server, certs, port, thread = live_secagg
    stub = stub_for(certs, "client-000000", port)
    stub.Join(pb.JoinRequest(num_examples=1), timeout=60)
    task, silent = first_task(stub)
    spec = SecureTaskSpec.from_pb(task.secagg)
    assert (spec.num_clients, spec.threshold) == (3, 2)

    def fetch(stage: str, task_id: str = task.task_id, wait: float = 0.0) -> pb.SecAggMessage:
        request = pb.SecAggFetchRequest(task_id=task_id, stage=stage, wait_s=wait)
        return stub.SecAggFetch(request, timeout=30)

    request = fetch("advertise_keys")
    assert request.WhichOneof("body") == "advertise_request"
    assert fetch("share_keys").WhichOneof("body") == "wait_s"  # not open yet
    protocol = SecAggClient(spec.index, np.zeros(9, np.uint32), spec.threshold)
    keys = client_to_pb(
        task.task_id,
        protocol.advertise_keys(server_from_pb(request, "advertise_keys", spec.index, 3)),
    )

    def altered(change) -> pb.SecAggMessage:  # noqa: ANN001
        message = pb.SecAggMessage()
        message.CopyFrom(keys)
        change(message)
        return message

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    send = stub.SecAggSend
    impostor = altered(lambda m: setattr(m, "sender", (spec.index + 1) % 3))
    assert "claims sender" in refused(lambda: send(impostor, timeout=30), invalid)
    short = altered(lambda m: setattr(m.keys_advert, "s_public", b"k" * 31))
    assert "31 bytes" in refused(lambda: send(short, timeout=30), invalid)
    low_order = altered(lambda m: setattr(m.keys_advert, "c_public", bytes(32)))
    refused(lambda: send(low_order, timeout=30), invalid)
    forged = altered(lambda m: m.advertise_request.SetInParent())  # a server's message
    assert "not a client reply" in refused(lambda: send(forged, timeout=30), invalid)
    other_task = altered(lambda m: setattr(m, "task_id", "0.0"))
    stale = grpc.StatusCode.FAILED_PRECONDITION
    assert "no secure aggregation" in refused(lambda: send(other_task, timeout=30), stale)
    assert "unknown stage" in refused(lambda: fetch("gossip"), invalid)
    plain = wire.to_bytes(np.zeros(server.engine.server.dim, np.float32))
    header = pb.UploadHeader(
        task_id=task.task_id,
        dim=server.engine.server.dim,
        dtype="float32",
        payload_bytes=len(plain),
        sha256=wire.digest(plain),
    )
    assert "'uint32'" in refused(lambda: upload(stub, header, plain), invalid)  # not masked
    intruder = stub_for(certs, "client-000007", port)
    refused(lambda: intruder.SecAggSend(keys, timeout=30), grpc.StatusCode.PERMISSION_DENIED)
    # the genuine keys are taken once; a retry is acknowledged, different keys refused
    assert not send(keys, timeout=30).duplicate
    assert send(keys, timeout=30).duplicate
    fresh = SecAggClient(spec.index, np.zeros(9, np.uint32), spec.threshold)
    other = client_to_pb(
        task.task_id,
        fresh.advertise_keys(server_from_pb(request, "advertise_keys", spec.index, 3)),
    )
    assert "already taken" in refused(lambda: send(other, timeout=30), invalid)
    assert send(keys, timeout=30).duplicate  # also once the stage has moved on
    assert dict(server.refused) == {
        "secagg": 5,
        "malformed": 1,
        "stale_task": 1,
        "wrong_shape": 1,
        "unknown_client": 1,
    }
    # client 0 goes silent after advertising: the others finish without it, and the
    # server strips the pairwise masks they agreed with it
    silent.set()
    thread.join(120)
    assert not thread.is_alive()
    (record,) = [r for r in server.engine.run_dir.records() if r.get("event") == "round"]
    assert record["status"] == "aggregated" and record["completed"] == 2
    assert record["secagg"]["included"] == 2
    assert record["secagg"]["dropped"] == {"share_keys": 1}
    assert record["dropped"] == {"disconnected": 1}
