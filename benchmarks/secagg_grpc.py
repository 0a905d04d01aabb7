"""SecAgg+ over gRPC: what secure aggregation costs a deployment round, next to plain uploads.

One ``DeploymentServer`` (mTLS, in a thread of this process) serves ``--clients`` clients
(``DeploymentClient`` threads in two worker processes), every client in every round, on
digits with an MLP 64-h-10 (h = 1,330: 99,760 parameters, about the d = 100,000 of
``benchmarks/secagg.py``), 1 local epoch. The same run is played without SecAgg, with
SecAgg+ in a 32-bit and a 16-bit ring, and with signed keys. Per mode: the median round
wall time (dispatch to the round's record, from ``metrics.jsonl``; the first round, which
includes every client's first full download, is left out), the bytes each client sent and
received per round (all RPCs: model, update or masked input, protocol messages), and the
server's protocol time (``secagg.server_s``).

Usage: ``uv run python benchmarks/secagg_grpc.py --json benchmarks/results/secagg_grpc.json``
(``--clients``, ``--rounds``). Wall times depend on the machine: the recorded ones come
from a 2-core machine where the server and all clients share the two cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from targets import finish

MODES = {
    "plain": [],
    "secagg 32-bit": ["secagg.enabled=true"],
    "secagg 16-bit": ["secagg.enabled=true", "secagg.bits=16", 'secagg.rounding="stochastic"'],
    "secagg 32-bit signed": ["secagg.enabled=true", "secagg.signed=true"],
}
HIDDEN = 1330


def _clients(target: str, data: str, certs: str, ids: list[int], done: Any) -> None:
    """Worker process: one client thread per id until the run is done."""
    logging.basicConfig(level=logging.ERROR)
    import torch

    from fedloom.data.storage import client_dir
    from fedloom.transport.client import DeploymentClient

    torch.set_num_threads(1)
    errors: list[str] = []

    def go(i: int) -> None:
        try:
            bundle = Path(certs) / f"client-{i:06d}"  # ca.pem and its own pair, no CA key
            DeploymentClient(target, client_dir(Path(data), i), certs=bundle).run()
        except Exception as err:  # reported, not raised: the other threads go on
            errors.append(f"client {i}: {err!r}")

    threads = [threading.Thread(target=go, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.put(errors)


def play(root: Path, mode: str, clients: int, rounds: int) -> dict[str, Any]:
    from grpc_tooling import start_in_thread

    from fedloom.config import load_config
    from fedloom.data.federated import build_federated_data
    from fedloom.data.storage import write_partition
    from fedloom.transport.certs import init_ca, issue
    from fedloom.transport.server import ServerOptions

    root.mkdir(parents=True)
    certs = root / "certs"
    init_ca(certs)
    issue(certs, "server", kind="server")
    for i in range(clients):
        issue(certs, f"client-{i:06d}")
    overrides = [
        f"rounds={rounds}",
        f"partition.num_clients={clients}",
        f"server.clients_per_round={clients}",
        f"model.hidden=[{HIDDEN}]",
        "client.local_epochs=1",
        "threads=1",
        f"output_dir={root / 'runs'}",
        *MODES[mode],
    ]
    config = load_config(None, overrides)
    data = build_federated_data(config.data, config.partition, config.seed)
    write_partition(root / "data", data.train, data.holdout)
    server, thread = start_in_thread(config, ServerOptions(port=0, certs=certs, linger_s=1.0))
    port = server.port
    ctx = mp.get_context("spawn")
    done = ctx.Queue()
    halves = [list(range(clients))[::2], list(range(clients))[1::2]]
    args = (f"127.0.0.1:{port}", str(root / "data"), str(certs))
    procs = [ctx.Process(target=_clients, args=(*args, ids, done)) for ids in halves]
    for p in procs:
        p.start()
    errors = [e for _ in procs for e in done.get(timeout=1800)]
    thread.join(600)
    for p in procs:
        p.join(30)
    records = [r for r in server.engine.run_dir.records() if r.get("event") == "round"]
    later = records[1:]
    row: dict[str, Any] = {
        "mode": mode,
        "clients": clients,
        "dim": server.engine.server.dim,
        "rounds": [r["status"] for r in records],
        "included": [r.get("secagg", {}).get("included", r["completed"]) for r in records],
        "round_s": round(statistics.median(r["wall_s"] for r in later), 3),
        "up_bytes_per_client": round(statistics.median(r["bytes_up"] for r in later) / clients),
        "down_bytes_per_client": round(statistics.median(r["bytes_down"] for r in later) / clients),
        "accuracy": round(records[-1]["accuracy"], 4),
        "errors": errors,
    }
    if "secagg" in records[-1]:
        row["server_protocol_s"] = round(
            statistics.median(r["secagg"]["server_s"] for r in later), 3
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, mode in enumerate(MODES):
            row = play(Path(tmp) / str(k), mode, args.clients, args.rounds)
            rows.append(row)
            print(json.dumps(row), flush=True)
    plain = rows[0]
    for row in rows:
        row["round_vs_plain"] = round(row["round_s"] / plain["round_s"], 2)
        row["up_vs_plain"] = round(row["up_bytes_per_client"] / plain["up_bytes_per_client"], 3)
    print(f"{'mode':<22}{'round s':>9}{'x plain':>9}{'up B/client':>13}{'x plain':>9}")
    for r in rows:
        print(
            f"{r['mode']:<22}{r['round_s']:>9.3f}{r['round_vs_plain']:>9.2f}"
            f"{r['up_bytes_per_client']:>13,}{r['up_vs_plain']:>9.3f}"
        )
    targets = [
        {
            "name": f"{r['mode']}: accuracy - plain",
            "value": round(r["accuracy"] - plain["accuracy"], 4),
            "goal": "|diff| <= 0.005",
            "met": abs(r["accuracy"] - plain["accuracy"]) <= 0.005,
        }
        for r in rows[1:]
    ]
    result = {
        "rows": rows,
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "total_s": round(time.perf_counter() - started, 1),
        "targets": targets,
    }
    finish(result, args.json)


if __name__ == "__main__":
    main()
