"""Asynchronous training (FedBuff) over gRPC: real server and client processes on 127.0.0.1.

Nothing here times anything: each test asserts what the run's records, its durable
inbox and the processes' logs show, read from the outside.
"""

from __future__ import annotations

import queue
import re
import threading
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
import pytest
from deployment import Deployment

from fedloom.assemble import deployment_server, open_deployment
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.metrics import validate
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import server as server_module
from fedloom.transport import wire
from fedloom.transport.certs import METADATA_CLIENT
from fedloom.transport.inbox import FILE, Inbox
from fedloom.transport.server import ServerOptions, TokenBucket


def fedbuff(buffer: int, concurrency: int, max_staleness: int = 20, contributions: int = 0) -> str:
    limit = f"max_contributions = {contributions}\n" if contributions else ""
    return (
        f'[asynchronous]\nmode = "fedbuff"\nbuffer_size = {buffer}\n'
        f"concurrency = {concurrency}\nmax_staleness = {max_staleness}\nbackoff_s = 0.5\n" + limit
    )


def inbox_after(run: Path, step: int) -> set[tuple[str, str]]:
    """(client, task) of the run's inbox entries awaiting a step after ``step``."""
    inbox = Inbox(run / FILE)
    try:
        return {(f"client-{e.client:06d}", e.task) for e in inbox.after(step)}
    finally:
        inbox.close()


def steps_of(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("event") == "round"]


TOPK = '[compression]\ncodec = "topk"\nparams = {fraction = 0.3}\nerror_feedback = true\n'


def test_fedbuff_deployment_steps_drops_too_stale_updates_and_improves(tmp_path: Path) -> None:
    """Six clients get work on version 0 at once; the buffer holds two updates, which
    may be one version stale, and each client may contribute to one step. Whatever the
    arrival order, the first two arrivals close step 1 and the next two step 2, so the
    last two of the six first tasks arrive at staleness 2: each is refused with its
    staleness named, its client is told, and both are counted in step 3's record and the
    refusal counters. The run needs every client once, so those two clients get new work
    on version 2 and close step 3. Uploads are top-k payloads with error feedback,
    decoded by the server on arrival as in synchronous rounds."""
    extra = fedbuff(2, 6, max_staleness=1, contributions=1) + TOPK
    d = Deployment(tmp_path, clients=6, rounds=3, epochs=2, extra=extra)
    try:
        d.start_server("--min-clients", "6")
        clients = [d.start_client(i) for i in range(d.clients)]
        d.wait_server()
        for proc in clients:
            assert proc.wait(60) == 0, d.logs()
        records = d.records()
        validate(records)
        steps = steps_of(records)
        assert [s["round"] for s in steps] == [1, 2, 3]
        assert [s["staleness"] for s in steps] == [{"0": 2}, {"1": 2}, {"0": 2}]
        assert [s["dropped_stale"] for s in steps] == [0, 0, 2]
        assert sorted(c for s in steps for c in s["contributors"]) == list(range(6))
        for s in steps:
            assert s["status"] == "aggregated" and s["completed"] == 2
            record = s["compression"]
            assert record["codec"] == "topk" and record["payloads"] == 2
            assert s["bytes_up"] == record["payload_bytes"] < record["raw_bytes"]
        assert steps[-1]["refused_messages"].get("stale_version", 0) == 2
        told = "".join(p.read_text() for p in tmp_path.glob("client-*.log"))
        refused = r"refused by the server: .*staleness (\d+) exceeds .*now (\d+)\)"
        versions = re.findall(refused, told)
        assert versions == [("2", "2"), ("2", "2")], told
        assert steps[-1]["accuracy"] > records[0]["accuracy"]
    finally:
        d.close()


def test_killed_async_server_resumes_without_losing_acknowledged_updates(
    tmp_path: Path,
) -> None:
    """Client 0's update is acknowledged and waits in the buffer (of two; it gets no more
    work while it waits) when the server is SIGKILLed; client 1 (rate-capped) is still
    uploading its task. The resumed server puts client 0's update back into the buffer
    from the inbox, refuses client 1's upload as a stale task (it was handed out after
    the last checkpoint, the start's) and gives it new work, and finishes the run: every
    update acknowledged before the kill is in a step of the resumed run."""
    d = Deployment(tmp_path, clients=2, rounds=2, epochs=1, extra=fedbuff(2, 2))
    try:
        slow = ("--min-transfer-kbps", "0")
        d.start_server("--min-clients", "1", *slow)
        d.start_client(0)
        d.wait_server_log(r"acknowledged client-000000")
        d.start_client(1, None, "--max-upload-kbps", "32")  # ~2.4 s per upload
        d.wait_server_log(r"client-000001 fetched task")
        first_log = d.server_log
        assert d.server is not None and d.run_path is not None
        d.kill(d.server)
        before = Path(first_log).read_text()
        acknowledged = set(re.findall(r"acknowledged (client-\d+) task (\S+)", before))
        assert {c for c, _ in acknowledged} == {"client-000000"}, before
        assert inbox_after(d.run_path, 0) == acknowledged  # the durable inbox, as left

        d.start_server("--min-clients", "1", *slow, resume=d.run_path)
        d.wait_server()
        after = Path(d.server_log).read_text()
        readmitted = set(re.findall(r"readmitted (client-\d+) task (\S+)", after))
        assert acknowledged <= readmitted, after
        closed = dict(re.findall(r"step (\d+) holds: (.*)", after))
        assert all(f"{c}:{t}" in closed["1"] for c, t in acknowledged), after
        records = d.records()
        validate(records)
        assert [r["event"] for r in records].count("resume") == 1
        steps = steps_of(records)
        assert [s["round"] for s in steps] == [1, 2]
        assert 0 in steps[0]["contributors"]
        # client 1's upload of its task from before the kill: refused as a stale task
        assert re.search(r"refused \(stale_task\): task \S+ is not open for client-1\n", after)
        slow_log = next(tmp_path.glob("client-1-*.log")).read_text()  # the client is told
        assert re.search(r"refused by the server: task \S+ is not open for client-1", slow_log)
        assert inbox_after(d.run_path, 0) == set()  # every entry is checkpointed now
    finally:
        d.close()


def test_fedasync_deployment_fails_a_silent_client_and_goes_on(tmp_path: Path) -> None:
    """FedAsync over gRPC: every arrival is a step that mixes the client's model in.
    Client 1 is killed while it holds a task; silent past the client timeout, its task is
    failed as "disconnected" (named in a step record, its client backed off), and client
    0 alone carries the run to its last step. Both upload slowly (rate caps), so the run
    outlasts the timeout whatever the machine's speed."""
    extra = '[asynchronous]\nmode = "fedasync"\nconcurrency = 2\nbackoff_s = 30\n'
    d = Deployment(tmp_path, clients=2, rounds=4, epochs=1, extra=extra)
    try:
        d.start_server("--min-clients", "2", "--min-transfer-kbps", "0")
        d.start_client(0, None, "--max-upload-kbps", "32")  # ~2.4 s per upload
        doomed = d.start_client(1, None, "--max-upload-kbps", "16")
        d.wait_server_log(r"client-000001 fetched task")
        d.kill(doomed)
        d.wait_server()
        records = d.records()
        validate(records)
        steps = steps_of(records)
        assert [s["round"] for s in steps] == [1, 2, 3, 4]
        assert all(s["contributors"] == [0] and s["completed"] == 1 for s in steps)
        failed = [e for s in steps for e in s["excluded"] if e["client"] == 1]
        assert [e["kind"] for e in failed] == ["disconnected"], d.logs()
        assert sum(s["dropped"].get("disconnected", 0) for s in steps) == 1
        assert steps[-1]["accuracy"] > records[0]["accuracy"]
    finally:
        d.close()


class _Refused(Exception):
    """What a fake RPC context raises where gRPC would end the call with a status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class _Context:
    """The parts of ``grpc.ServicerContext`` the server uses, for plaintext client ``cid``."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [(METADATA_CLIENT, f"client-{self.cid:06d}")]

    def is_active(self) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Refused(code, details)

    def cancel(self) -> None:
        """Nothing to cancel: the call is a plain method call."""


def _upload(server: Any, cid: int, task: pb.Task, delta: np.ndarray) -> pb.UploadReply:
    payload = delta.astype("<f4").tobytes()
    header = pb.UploadHeader(
        task_id=task.task_id,
        round=task.round,
        version=task.version,
        num_examples=50,
        dim=delta.size,
        dtype="float32",
        payload_bytes=len(payload),
        sha256=wire.digest(payload),
        train_loss=1.0,
        steps=1,
        epochs=1.0,
    )
    return server.Upload(iter([pb.UploadChunk(header=header, data=payload)]), _Context(cid))


def _serve(config: Any, resume: Path | None) -> tuple[Any, threading.Thread]:
    """An asynchronous server playing in a thread of this process (the thread that builds
    it owns its SQLite registry), answering direct method calls (not started on a port)."""
    built: queue.Queue[Any] = queue.Queue()

    def play() -> None:
        run = open_deployment(None if resume else config, resume)
        server = deployment_server(run, ServerOptions(port=0, insecure=True, heartbeat_s=0.1))
        built.put(server)
        server.run()

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return built.get(timeout=120), thread


def _task(server: Any, cid: int) -> pb.Task:
    task = server.GetTask(pb.TaskRequest(wait_s=20), _Context(cid))
    assert task.kind == pb.Task.TRAIN, task
    return task


def test_restart_keeps_checkpointed_tasks_open_and_refuses_later_ones(tmp_path: Path) -> None:
    """Resume semantics for outstanding work, in process: a task in the checkpoint's
    ``in_flight`` keeps its id and its upload is accepted after the restart; a task handed
    out after the checkpoint is refused as a stale task; a retry of an upload acknowledged
    before the restart is acknowledged as a duplicate, a different one refused."""
    settings = [
        "rounds=3",
        "partition.num_clients=3",
        "server.clients_per_round=3",
        f"output_dir={tmp_path / 'runs'}",
        'asynchronous.mode="fedbuff"',
        "asynchronous.buffer_size=2",
        "asynchronous.concurrency=3",
        "checkpoint.every=1",
    ]
    config = load_config(None, settings)
    server, thread = _serve(config, None)
    dim = server.engine.server.dim
    rng = np.random.default_rng(0)
    for cid in range(3):
        server.Join(pb.JoinRequest(num_examples=50), _Context(cid))
    first = {cid: _task(server, cid) for cid in range(3)}  # all on version 0
    deltas = {cid: rng.normal(0, 0.01, dim).astype(np.float32) for cid in range(3)}
    for cid in (0, 1):  # step 1: its checkpoint holds client 2's task as outstanding
        assert _upload(server, cid, first[cid], deltas[cid]).accepted
    later = _task(server, 0)  # handed out after step 1's checkpoint
    assert later.round == 2
    run_path = server.engine.run_dir.path
    server.stop()  # as a kill would: no record, no checkpoint after step 1
    thread.join(30)

    server, thread = _serve(config, run_path)
    try:
        assert server.engine.server.round == 1
        assert _task(server, 2).task_id == first[2].task_id  # still its task
        assert _upload(server, 2, first[2], deltas[2]).accepted
        with pytest.raises(_Refused, match=r"task \S+ is not open for client-0") as refused:
            _upload(server, 0, later, deltas[0])
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert _upload(server, 1, first[1], deltas[1]).duplicate
        with pytest.raises(_Refused, match="already applied") as replay:
            _upload(server, 1, first[1], deltas[1] + 1e-3)
        assert replay.value.code == grpc.StatusCode.ALREADY_EXISTS
    finally:
        server.stop()
        thread.join(30)


def test_downloads_share_the_token_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent takers of one bucket together get its rate: after the burst, every byte
    waits for its share, whoever asks (a fake clock: no wall time is measured)."""
    clock = [0.0]
    waits: list[float] = []
    monkeypatch.setattr(server_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(server_module.time, "sleep", waits.append)
    bucket = TokenBucket(1000.0, burst=500)  # 1 kB/s
    for _ in range(4):  # two downloads interleaving chunks of 500 B, at the same moment
        bucket.take(500)
    # the burst pays the first chunk; the next three queue behind one another
    assert waits == pytest.approx([0.5, 1.0, 1.5])
    clock[0] = 10.0  # idle for long: only a burst accumulates
    waits.clear()
    bucket.take(600)
    assert waits == pytest.approx([0.1])  # the debt was paid meanwhile
    with pytest.raises(ConfigError, match="token bucket"):
        TokenBucket(0.0, burst=1)
