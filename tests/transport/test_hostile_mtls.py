"""A hostile client over gRPC with mTLS: poisoned statistics, overflowing updates, a huge
example count, stalled uploads that hold every transfer slot, floods of streams, and a
client that never answers. The server keeps running, the honest clients' rounds
complete, and every refusal is recorded with its typed reason (the server's refused
counters, the round records, the registry)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from inprocess import bundle_dir, client_threads, serve_in_thread
from test_hostile import first_task, refused, stub_for, upload

from fedloom.errors import ConfigError
from fedloom.server.registry import ClientRegistry
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import fedloom_pb2_grpc as rpc
from fedloom.transport import wire
from fedloom.transport.certs import init_ca, issue
from fedloom.transport.client import DeploymentClient
from fedloom.transport.server import DeploymentServer, ServerOptions

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def make_certs(root: Path) -> Path:
    certs = root / "certs"
    init_ca(certs)
    issue(certs, "server", kind="server")
    for i in range(3):
        issue(certs, f"client-{i:06d}")
    return certs


def serve(
    root: Path, overrides: list[str], **options: object
) -> tuple[DeploymentServer, Path, int, threading.Thread]:
    certs = make_certs(root)
    settings = {"linger_s": 0.5, "client_timeout_s": 3.0} | options
    opts = ServerOptions(port=0, certs=certs, **settings)  # type: ignore[arg-type]
    server, port, thread = serve_in_thread(root, ["rounds=1", *overrides], opts)
    return server, certs, port, thread


def rounds_of(server: DeploymentServer) -> list[dict]:
    return [r for r in server.engine.run_dir.records() if r.get("event") == "round"]


def finish(server: DeploymentServer, thread: threading.Thread) -> None:
    thread.join(120)
    alive = thread.is_alive()
    server.stop()
    assert not alive, "the run did not finish"


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
        train_loss=0.5,
        train_loss_sq=0.3,
        steps=1,
        epochs=1.0,
    )
    return pb.UploadHeader(**{**fields, **change})


def test_poisoned_statistics_overflow_and_huge_counts(tmp_path: Path) -> None:
    """Each message that used to end the server (exit 2) is refused on the attacker's
    stream with its kind; a join claiming 2**62 examples is refused (above the cap), and
    an update claiming 2**62 weighs only what the client reported at its join."""
    server, certs, port, thread = serve(tmp_path, [])
    try:
        client_threads(port, tmp_path, [1, 2], certs)
        stub = stub_for(certs, "client-000000", port, max_send=64 << 20)
        why = refused(lambda: stub.Join(pb.JoinRequest(num_examples=2**62), timeout=60), INVALID)
        assert "exceeds server.max_examples_per_client" in why
        stub.Join(pb.JoinRequest(num_examples=300), timeout=60)
        task, silent = first_task(stub)
        dim = server.engine.server.dim
        small = wire.to_bytes(np.full(dim, 0.001, np.float32))
        for change, what in (
            ({"train_loss_sq": float("inf")}, "train_loss_sq = inf"),
            ({"train_loss": float("nan")}, "train_loss = nan"),
            ({"epochs": float("-inf")}, "epochs = -inf"),
            ({"steps": -5}, "steps = -5"),
            ({"num_examples": 0}, "num_examples = 0"),
        ):
            why = refused(
                lambda c=change: upload(stub, header_for(task, small, dim, **c), small), INVALID
            )
            assert what in why
        huge = wire.to_bytes(np.full(dim, 3e38, np.float32))
        why = refused(lambda: upload(stub, header_for(task, huge, dim), huge), INVALID)
        assert "L2 norm" in why
        # a genuine-looking vector with 2**62 examples is applied, with a bounded weight
        own = np.full(dim, 0.5, np.float32)
        raw = wire.to_bytes(own)
        assert upload(stub, header_for(task, raw, dim, num_examples=2**62), raw).accepted
        silent.set()
        finish(server, thread)
    finally:
        server.stop()
    assert dict(server.refused) == {"nonfinite": 3, "bad_count": 3, "overflow": 1}
    (record,) = rounds_of(server)
    assert record["status"] == "aggregated" and record["completed"] == 3
    assert record["rejected"] == 6
    assert record["refused_in_round"] == {"nonfinite": 3, "bad_count": 3, "overflow": 1}
    size = int(server.sizes[0])
    assert size == 300
    assert record["clamped_examples"] == {"0": [2**62, size]}
    # not replaced: with 2**62 the new model would be initial + own to float precision
    moved = server.engine.server.params - server.engine.initial_params
    assert np.abs(moved - own).mean() > 0.2
    with ClientRegistry(server.engine.run_dir.path / "clients.sqlite") as registry:
        (row,) = registry.history(0)  # the registry logged the bounded weight
    assert row["outcome"] == "completed" and row["num_examples"] == size


def test_a_client_whose_update_is_refused_is_named_in_the_round_record(tmp_path: Path) -> None:
    """The round record says which client was left out and why (the refusal's kind), as
    RoundResult.excluded does in the simulator; the registry flags it by that kind."""
    server, certs, port, thread = serve(tmp_path, [])
    try:
        client_threads(port, tmp_path, [1, 2], certs)
        stub = stub_for(certs, "client-000000", port)
        stub.Join(pb.JoinRequest(num_examples=10), timeout=60)
        task, silent = first_task(stub)
        dim = server.engine.server.dim
        nan = wire.to_bytes(np.full(dim, np.nan, np.float32))
        assert "NaN" in refused(lambda: upload(stub, header_for(task, nan, dim), nan), INVALID)
        silent.set()  # and never makes it good
        finish(server, thread)
    finally:
        server.stop()
    (record,) = rounds_of(server)
    assert record["completed"] == 2 and record["rejected"] == 1
    (excluded,) = record["excluded"]
    assert (excluded["client"], excluded["outcome"]) == (0, "rejected")
    assert excluded["kind"] == "nonfinite"
    assert "NaN/inf" in excluded["detail"]
    with ClientRegistry(server.engine.run_dir.path / "clients.sqlite") as registry:
        assert "nonfinite_update" in registry.summary()[0]["flags"]
        assert registry.history(0)[0]["outcome"] == "rejected"


def test_stalled_uploads_and_floods_cannot_hold_the_transfer_slots(tmp_path: Path) -> None:
    """Client 0 takes both transfer slots with uploads that send a header and stall, and
    floods more streams; the watchdog cancels the stalled ones, the flood is refused at
    the per-client limit, and the honest clients' round completes."""
    server, certs, port, thread = serve(
        tmp_path,
        [],
        max_transfers=2,
        max_transfers_per_client=2,
        transfer_grace_s=0.5,
        min_transfer_kbps=16,  # 2 kB/s: the stalled uploads are cancelled after ~5 s
    )
    try:
        # clients 1 and 2 are online (joined, heartbeats) but start working only later
        present = [stub_for(certs, f"client-00000{i}", port) for i in (1, 2)]
        quiet = threading.Event()
        for s in present:
            s.Join(pb.JoinRequest(num_examples=10**4), timeout=60)  # rejoin later: lower
            threading.Thread(target=beat, args=(s, quiet), daemon=True).start()
        stub = stub_for(certs, "client-000000", port)
        stub.Join(pb.JoinRequest(num_examples=1), timeout=60)
        task, silent = first_task(stub)
        dim = server.engine.server.dim
        raw = wire.to_bytes(np.full(dim, 0.001, np.float32))
        release = threading.Event()
        stalls = [
            stub.Upload.future(stalled(header_for(task, raw, dim), raw, release), timeout=60)
            for _ in range(2)
        ]
        wait_until(lambda: server._scheduler._free == 0)  # every slot is held
        for _ in range(3):  # a flood beyond the per-client limit
            why = refused(
                lambda: stub.Upload(stalled(header_for(task, raw, dim), raw, release), timeout=30),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            assert "at most 2" in why
        quiet.set()
        honest = client_threads(port, tmp_path, [1, 2], certs)  # they need the slots
        for future in stalls:
            assert future.exception(timeout=30).code() == grpc.StatusCode.CANCELLED
        # streams that never send a header are cancelled too
        wait_until(lambda: transfers_of(server, 0) == 0)  # the cancelled handlers ended
        silent_streams = [stub.Upload.future(nothing(release), timeout=60) for _ in range(2)]
        for future in silent_streams:
            assert future.exception(timeout=30).code() == grpc.StatusCode.CANCELLED
        release.set()
        assert upload(stub, header_for(task, raw, dim), raw).accepted
        silent.set()
        finish(server, thread)
        for t in honest:
            t.join(30)
    finally:
        release.set()
        server.stop()
    assert server.refused["stalled"] == 4
    assert server.refused["too_many_transfers"] == 3
    (record,) = rounds_of(server)
    assert record["status"] == "aggregated" and record["completed"] == 3
    assert record["refused_in_round"] == {"stalled": 4, "too_many_transfers": 3}
    assert not server._transfers and server._scheduler._free == 2  # everything freed


def test_a_silent_client_and_a_dead_one_cannot_stall_rounds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """clients_per_round == num_clients, no server.deadline_s. Round 1: client 0 stays
    online but never uploads: it fails at the round timeout as "deadline". Then client
    0 is gone: a round waits for it (saying so), then starts without it."""
    caplog.set_level(logging.INFO, logger="fedloom.server")
    server, certs, port, thread = serve(
        tmp_path,
        ["rounds=3"],
        round_timeout_s=3.0,
        start_timeout_s=2.0,
        status_every_s=0.5,
        client_timeout_s=2.0,
        heartbeat_s=0.2,
    )
    try:
        client_threads(port, tmp_path, [1, 2], certs)
        stub = stub_for(certs, "client-000000", port)
        stub.Join(pb.JoinRequest(num_examples=1), timeout=60)
        _, silent = first_task(stub)  # online by heartbeats, never uploads
        wait_until(lambda: len(rounds_of(server)) == 1, timeout=60)
        silent.set()  # now it is gone for good
        finish(server, thread)
    finally:
        server.stop()
    first, *later = rounds_of(server)
    assert first["completed"] == 2 and first["dropped"] == {"deadline": 1}
    assert [r["completed"] for r in later] == [2, 2]
    assert later[-1]["dispatched"] == 2  # started without the dead client
    text = caplog.text
    assert re.search(r"round 1 waits for \d of 3 clients: .*client-000000", text)
    assert re.search(
        r"round \d: waiting for 1 more clients \(2 of 3 online: .*\); not online: client-000000",
        text,
    )
    assert re.search(r"round \d starts with the 2 clients online", text)


def test_impossible_settings_are_refused_at_start(tmp_path: Path) -> None:
    from fedloom.config import load_config
    from fedloom.transport.server import check_settings

    config = load_config(None, ["partition.num_clients=3", "server.clients_per_round=3"])
    options = ServerOptions(port=0, insecure=True, min_clients=4)
    with pytest.raises(ConfigError, match="--min-clients = 4 exceeds the 3 registered"):
        check_settings(config, options)
    for bad, match in (
        ({"port": 70000}, "--port = 70000 must be in 0..65535"),
        ({"port": -1}, "--port = -1"),
        ({"host": "not_a_host!"}, "--host = 'not_a_host!'"),
        ({"min_clients": 0}, "--min-clients = 0"),
    ):
        with pytest.raises(ConfigError, match=match):
            ServerOptions(insecure=True, **bad)


def test_a_permanent_tls_failure_fails_at_once(tmp_path: Path) -> None:
    """A server certificate from another CA, or one that does not name the host, fails
    the client in one line at once instead of after --patience."""
    from concurrent import futures

    from fedloom.transport.certs import load_identity, server_credentials
    from fedloom.transport.client import RetryPolicy, TLSFailure

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    init_ca(ours)
    init_ca(theirs)
    issue(ours, "client-000000")
    issue(theirs, "server", kind="server")
    issue(ours, "server", kind="server", hosts=["10.9.9.9"])
    data = tmp_path / "data"
    from fedloom.config import load_config
    from fedloom.data.federated import build_federated_data
    from fedloom.data.storage import client_dir, write_partition

    config = load_config(None, ["partition.num_clients=1", "server.clients_per_round=1"])
    built = build_federated_data(config.data, config.partition, config.seed)
    write_partition(data, built.train, built.holdout)
    for server_dir, cause in (
        (theirs, "not signed by this client's CA"),
        (ours, "does not name the host"),
    ):
        grpc_server = grpc.server(futures.ThreadPoolExecutor(2))
        creds = server_credentials(load_identity(server_dir, "server"))
        port = grpc_server.add_secure_port("127.0.0.1:0", creds)
        grpc_server.start()
        try:
            client = DeploymentClient(
                f"127.0.0.1:{port}",
                client_dir(data, 0),
                certs=bundle_dir(ours, 0),
                retry=RetryPolicy(patience_s=120),
            )
            started = time.monotonic()
            with pytest.raises(TLSFailure, match=cause):
                client.run()
            assert time.monotonic() - started < 30  # not the 120 s of patience
        finally:
            grpc_server.stop(None)


def test_a_client_refuses_a_folder_holding_the_ca_key(tmp_path: Path) -> None:
    from fedloom.errors import FedloomError

    certs = make_certs(tmp_path)
    bundle = bundle_dir(certs, 0)
    assert sorted(p.name for p in bundle.iterdir()) == [
        "ca.pem",
        "client-000000.key",
        "client-000000.pem",
    ]
    assert oct(bundle.stat().st_mode & 0o777) == "0o700"
    assert oct((bundle / "client-000000.key").stat().st_mode & 0o777) == "0o600"
    data = tmp_path / "data" / "client-000000"
    with pytest.raises(FedloomError, match="holds the CA's private key"):
        DeploymentClient("127.0.0.1:1", data, certs=certs)


# helpers ----------------------------------------------------------------------------------
def beat(stub: rpc.FedloomStub, until: threading.Event) -> None:
    while not until.wait(0.5):
        stub.Heartbeat(pb.HeartbeatRequest(), timeout=30)


def stalled(header: pb.UploadHeader, payload: bytes, release: threading.Event) -> Iterator:
    """An upload that sends its header and 100 bytes, then nothing until ``release``."""
    yield pb.UploadChunk(header=header, data=payload[:100])
    release.wait(60)


def nothing(release: threading.Event) -> Iterator:
    """An upload stream that never sends its header."""
    release.wait(60)
    yield from ()


def transfers_of(server: DeploymentServer, cid: int) -> int:
    with server._transfer_lock:
        return sum(t.cid == cid for t in server._transfers)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)
