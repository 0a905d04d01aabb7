"""Asynchronous training (FedBuff) over gRPC: real server and client processes on 127.0.0.1.

Nothing here times anything: each test asserts what the run's records, its durable
inbox and the processes' logs show, read from the outside.
"""

from __future__ import annotations

import re
from pathlib import Path

from deployment import Deployment

from fedloom.metrics import validate
from fedloom.transport.inbox import FILE, Inbox


def fedbuff(buffer: int, concurrency: int, max_staleness: int = 20) -> str:
    return (
        f'[asynchronous]\nmode = "fedbuff"\nbuffer_size = {buffer}\n'
        f"concurrency = {concurrency}\nmax_staleness = {max_staleness}\nbackoff_s = 0.5\n"
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


def test_fedbuff_deployment_steps_drops_too_stale_updates_and_improves(tmp_path: Path) -> None:
    """Five clients get work on version 0 at once; the buffer holds two updates, which
    may be one version stale. Whatever the arrival order, the first two arrivals close
    step 1 and the next two step 2, so the last of the five first tasks arrives at
    staleness >= 2: it is refused with its staleness named, its client is told, and it
    is counted in the step records and the refusal counters."""
    d = Deployment(tmp_path, clients=5, rounds=4, epochs=2, extra=fedbuff(2, 5, max_staleness=1))
    try:
        d.start_server("--min-clients", "5")
        clients = [d.start_client(i) for i in range(d.clients)]
        d.wait_server()
        for proc in clients:
            assert proc.wait(60) == 0, d.logs()
        records = d.records()
        validate(records)
        steps = steps_of(records)
        assert [s["round"] for s in steps] == [1, 2, 3, 4]
        for s in steps:
            assert s["status"] == "aggregated" and s["completed"] == 2
            assert sum(s["staleness"].values()) == 2  # a histogram of the step's updates
            assert all(int(k) <= 1 for k in s["staleness"])
            assert s["bytes_up"] == 2 * 4 * d.final_params().size
        dropped = sum(s["dropped_stale"] for s in steps)
        assert dropped >= 1
        refused = steps[-1]["refused_messages"]
        assert refused.get("stale_version", 0) == dropped, refused
        told = "".join(p.read_text() for p in tmp_path.glob("client-*.log"))
        assert len(re.findall(r"refused by the server: .*staleness \d+ exceeds", told)) == dropped
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
        d.start_client(1, None, "--max-upload-kbps", "16")  # ~5 s per upload
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
