"""The gRPC deployment's transport: model download throughput, 200 clients, a slow link.

1. Throughput. A ``DeploymentServer`` (in its own process) serves an MLP 64-h-10 on digits
   with h chosen so that the float32 model is ~10 MB or ~100 MB, with mTLS and in plaintext.
   The client (the main process) times whole ``Download`` calls of the current version through
   ``DeploymentClient._download``: ``DownloadChunk`` messages serialized once per version on the
   server, their protobuf framing read by the client (``fedloom.transport.download``), the data
   copied into one buffer and hashed in a second thread as it arrives, then the sha256
   comparison. The baseline is a minimal gRPC server in the same server process: a generic
   server-streaming handler with identity serializers that streams the same bytes in the same
   1 MiB chunks (fedloom's chunk size; neither is tuned for this benchmark) over the same kind of
   channel (same certificates, same ``wire.channel_options()``), the receiver joining the bytes.
   Median of 31 timed downloads after 3 warm-ups (10 MB) or of 7 after 1 (100 MB), fedloom and
   raw alternating; the JSON also gives the quartiles of raw / fedloom over the back-to-back
   pairs, to show the noise. MB = 10^6 bytes. Then the same number of downloads again with each
   step timed (request to first chunk, rest of the stream, and the client's final checks) to
   show where the time goes.
2. Concurrent clients. One ``fedloom server`` process (mTLS) and 200 ``DeploymentClient``
   threads spread over 4 processes (50 each), each client with its own folder of a
   200-client IID partition of digits, MLP 64-32-10, every client in every round.
   Reported: rounds completed, the server process's peak RSS (VmHWM), wall time per round,
   and per round the clients' mean and slowest download, training and upload times.
3. Slow link. 5 clients reach a ``fedloom server`` (mTLS) through ``FaultProxy`` with
   50 ms latency each way (100 ms RTT) and 10 Mbit/s per connection and direction (every
   client has its own connection, so they share no bottleneck). Ideal round time: the
   bytes one client moves (download + upload, from the round's record) at 10 Mbit/s, plus
   two RTTs (task reply, download request and reply, upload: four one-way trips); measured:
   the round's ``wall_s`` from metrics.jsonl (dispatch to last update applied).

Usage: ``uv run python benchmarks/transport.py --json benchmarks/results/transport.json``
(``--quick``: 10 MB only with fewer repeats, 20 clients, fewer rounds; ``--only PART``).
Every figure depends on the machine: the recorded ones come from a 2-core machine shared
with other work, whose load average the JSON records before and after.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

RAW_METHOD = "/bench.Raw/Stream"
SIZES = {"10MB": 33_333, "100MB": 333_333}  # hidden width h: 75 h + 10 float32 parameters
LINK_RTT_S = 0.100
LINK_BYTES_PER_S = 10e6 / 8


def _params(hidden: int) -> int:
    return 64 * hidden + hidden + hidden * 10 + 10


def _vmhwm_mb(pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _certs(root: Path, clients: int) -> Path:
    from fedloom.transport.certs import init_ca, issue

    certs = root / "certs"
    init_ca(certs)
    issue(certs, "server", kind="server")
    for i in range(clients):
        issue(certs, f"client-{i:06d}")
    return certs


def _write_run(root: Path, lines: list[str]) -> tuple[Path, Path]:
    """A run config (overrides as TOML) and its client folders; returns (config, data)."""
    from fedloom.config import load_config
    from fedloom.data.federated import build_federated_data
    from fedloom.data.storage import write_partition

    sections: dict[str, list[str]] = {"": []}
    for item in lines:
        key, _, value = item.partition("=")
        section, _, leaf = key.rpartition(".")
        sections.setdefault(section, []).append(f"{leaf} = {value}")
    text = "\n".join(sections.pop(""))
    for section, body in sections.items():
        text += f"\n[{section}]\n" + "\n".join(body)
    path = root / "run.toml"
    path.write_text(text + "\n")
    config = load_config(path)
    data = build_federated_data(config.data, config.partition, config.seed)
    write_partition(root / "data", data.train, data.holdout)
    return path, root / "data"


# 1. throughput -----------------------------------------------------------------------------
def _raw_server(payload: bytes, certs: Path | None):
    from concurrent import futures

    import grpc

    from fedloom.transport import wire

    def stream(request: bytes, context: grpc.ServicerContext):
        yield from wire.chunks(payload)

    handler = grpc.method_handlers_generic_handler(
        "bench.Raw",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=wire.channel_options())
    server.add_generic_rpc_handlers((handler,))
    if certs is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        from fedloom.transport.certs import load_identity, server_credentials

        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(load_identity(certs, "server"))
        )
    server.start()
    return server, port


def _throughput_server(conn: Any, root: str, hidden: int, certs: str) -> None:
    """Child process: a fedloom server with and without TLS and the raw baselines."""
    logging.disable(logging.WARNING)
    from fedloom.assemble import deployment_server, open_deployment
    from fedloom.config import load_config
    from fedloom.transport import wire
    from fedloom.transport.server import ServerOptions

    config = load_config(
        None,
        [
            f"model.hidden=[{hidden}]",
            "partition.num_clients=2",
            "server.clients_per_round=1",
            "rounds=1",
            f'output_dir="{root}/runs-{hidden}"',
        ],
    )
    sim = open_deployment(config, None)
    tls = deployment_server(sim, ServerOptions(port=0, certs=Path(certs)))
    plain = deployment_server(sim, ServerOptions(port=0, insecure=True))
    payload = wire.to_bytes(sim.engine.server.params)
    raw_tls, raw_tls_port = _raw_server(payload, Path(certs))
    raw_plain, raw_plain_port = _raw_server(payload, None)
    conn.send(
        {
            "tls": tls.start(),
            "plain": plain.start(),
            "raw_tls": raw_tls_port,
            "raw_plain": raw_plain_port,
            "version": sim.engine.server.version,
            "dim": sim.engine.server.dim,
            "bytes": len(payload),
        }
    )
    conn.recv()  # stop
    for s in (tls, plain):
        s.stop()
    for s in (raw_tls, raw_plain):
        s.stop(grace=None)
    conn.send(_vmhwm_mb())


def _fedloom_reader(target: str, data: Path, certs: Path | None, dim: int):
    from fedloom.transport.client import DeploymentClient

    logging.getLogger("fedloom.client").setLevel(logging.ERROR)  # "connecting WITHOUT TLS"
    client = DeploymentClient(
        target,
        data,
        certs=None if certs is None else certs / "client-000000",  # the bundle, no CA key
        insecure=certs is None,
        name="client-000000",
    )
    client.dim = dim

    def download(version: int) -> int:
        client.held = None  # no base: the whole model, as a client's first download
        return 4 * client._download(version).size

    return client, download


def _raw_reader(target: str, certs: Path | None):
    import grpc

    from fedloom.transport import wire

    if certs is None:
        channel = grpc.insecure_channel(target, options=wire.channel_options())
    else:
        from fedloom.transport.certs import channel_credentials, load_identity

        creds = channel_credentials(load_identity(certs, "client-000000"))
        channel = grpc.secure_channel(target, creds, options=wire.channel_options())
    call = channel.unary_stream(RAW_METHOD, request_serializer=None, response_deserializer=None)

    def download(_version: int) -> int:
        return len(b"".join(call(b"", timeout=120)))

    return channel, download


def throughput(root: Path, label: str, hidden: int, warmup: int, repeats: int) -> dict:
    certs = root / "certs"
    data = root / "data" / "client-000000"
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_throughput_server, args=(child, str(root), hidden, str(certs)))
    proc.start()
    info = parent.recv()
    out: dict[str, Any] = {}
    try:
        for mode, mode_certs in (("tls", certs), ("plain", None)):
            client, fed = _fedloom_reader(f"127.0.0.1:{info[mode]}", data, mode_certs, info["dim"])
            channel, raw = _raw_reader(f"127.0.0.1:{info['raw_' + mode]}", mode_certs)
            times: dict[str, list[float]] = {"fedloom": [], "raw": []}
            for rep in range(warmup + repeats):
                order = [("fedloom", fed), ("raw", raw)]
                for name, fn in order if rep % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    got = fn(info["version"])
                    elapsed = time.perf_counter() - t0
                    assert got == info["bytes"], (name, got, info["bytes"])
                    if rep >= warmup:
                        times[name].append(elapsed)
            stages = _stages(client, channel, info["version"], repeats)
            client.channel.close()
            channel.close()
            fed_s, raw_s = (statistics.median(times[k]) for k in ("fedloom", "raw"))
            # the spread: raw / fedloom of each back-to-back pair, quartiles
            pairs = [r / f for f, r in zip(times["fedloom"], times["raw"], strict=True)]
            q1, _, q3 = statistics.quantiles(pairs, n=4)
            out[mode] = {
                "fedloom_MBps": round(info["bytes"] / 1e6 / fed_s, 1),
                "raw_MBps": round(info["bytes"] / 1e6 / raw_s, 1),
                "ratio": round(raw_s / fed_s, 3),
                "pair_ratio_quartiles": [round(q1, 3), round(q3, 3)],
                "meets_80pct": raw_s / fed_s >= 0.8,
                "fedloom_s": round(fed_s, 4),
                "raw_s": round(raw_s, 4),
                "repeats": repeats,
                "stages_ms": stages,
            }
            print(
                f"{label:>6} {mode:>5} {info['bytes']:>12,} {out[mode]['fedloom_MBps']:>12.1f} "
                f"{out[mode]['raw_MBps']:>10.1f} {out[mode]['ratio']:>6.3f} "
                f"{q1:>5.2f}-{q3:.2f}",
                flush=True,
            )
    finally:
        parent.send("stop")
        server_rss = parent.recv()
        proc.join(60)
    out |= {
        "hidden": hidden,
        "params": info["dim"],
        "model_bytes": info["bytes"],
        "server_peak_rss_mb": round(server_rss, 1),
    }
    return out


def _staged_fedloom(client: Any, version: int) -> dict[str, float]:
    """``DeploymentClient._download`` for a whole model in timed steps (ms): request to
    first chunk, the rest of the stream (chunks copied into one buffer and hashed in a
    second thread as they arrive) and the final checks (waiting for the hash, comparing
    it, float32 view)."""
    from fedloom.transport import download, wire
    from fedloom.transport import fedloom_pb2 as pb
    from fedloom.transport.client import _BackgroundHash

    t = [time.perf_counter()]
    call = client.channel.unary_stream(
        download.METHOD,
        request_serializer=pb.DownloadRequest.SerializeToString,
        response_deserializer=download.parse,
    )
    stream = call(pb.DownloadRequest(version=version, base_version=-1), metadata=client._metadata)
    header, buffer, size = None, np.empty(0, np.uint8), 0
    hasher = _BackgroundHash()
    for chunk_header, data in stream:
        if header is None:
            header = chunk_header
            buffer = np.empty(header.payload_bytes, np.uint8)
            t.append(time.perf_counter())
        buffer[size : size + len(data)] = np.frombuffer(data, np.uint8)
        size += len(data)
        hasher.update(data)
    t.append(time.perf_counter())
    if hasher.digest() != header.sha256:
        raise wire.WireError("sha256 mismatch")
    wire.as_float32(buffer, client.dim, "model")
    t.append(time.perf_counter())
    names = ("first_chunk", "rest_of_stream", "checks")
    return {name: 1000 * (t[i + 1] - t[i]) for i, name in enumerate(names)}


def _staged_raw(channel: Any) -> dict[str, float]:
    call = channel.unary_stream(RAW_METHOD, request_serializer=None, response_deserializer=None)
    t = [time.perf_counter()]
    parts = []
    for piece in call(b"", timeout=120):
        if not parts:
            t.append(time.perf_counter())
        parts.append(piece)
    t.append(time.perf_counter())
    b"".join(parts)
    t.append(time.perf_counter())
    names = ("first_chunk", "rest_of_stream", "join")
    return {name: 1000 * (t[i + 1] - t[i]) for i, name in enumerate(names)}


def _stages(client: Any, channel: Any, version: int, repeats: int) -> dict[str, dict]:
    """Median milliseconds per step over ``repeats`` downloads of each kind, alternating."""
    runs: dict[str, list[dict[str, float]]] = {"fedloom": [], "raw": []}
    for _ in range(repeats):
        runs["fedloom"].append(_staged_fedloom(client, version))
        runs["raw"].append(_staged_raw(channel))
    return {
        kind: {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
        for kind, rows in runs.items()
    }


# 2 and 3: a CLI server, clients as threads in worker processes ------------------------------
def _timed_client_class():
    """``DeploymentClient`` that records how long each task's three steps took."""
    from fedloom.transport.client import DeploymentClient

    class TimedClient(DeploymentClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.phases: list[dict[str, float]] = []

        def _work(self, task: Any) -> None:
            self.phases.append(
                {"round": task.round, "download_s": 0.0, "train_s": 0.0, "upload_s": 0.0}
            )
            t0 = time.perf_counter()
            super()._work(task)
            self.phases[-1]["task_s"] = time.perf_counter() - t0

        def _download(self, version: int) -> Any:
            t0 = time.perf_counter()
            try:
                return super()._download(version)
            finally:
                self.phases[-1]["download_s"] += time.perf_counter() - t0

        def _train(self, task: Any, plan: Any, params: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return super()._train(task, plan, params)
            finally:
                self.phases[-1]["train_s"] += time.perf_counter() - t0

        def _upload(self, *args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return super()._upload(*args)
            finally:
                self.phases[-1]["upload_s"] += time.perf_counter() - t0

    return TimedClient


def _client_worker(target: str, data: str, certs: str, ids: list[int], queue: Any) -> None:
    """Child process: one client thread per id; puts {id: stats and task timings, or error}."""
    logging.basicConfig(level=logging.ERROR)
    from dataclasses import asdict

    from fedloom.data.storage import client_dir
    from fedloom.transport.client import RetryPolicy

    timed_client = _timed_client_class()
    results: dict[int, Any] = {}

    def go(i: int) -> None:
        client = None
        try:
            client = timed_client(
                target,
                client_dir(Path(data), i),
                certs=Path(certs) / f"client-{i:06d}",  # the client's bundle, no CA key
                retry=RetryPolicy(patience_s=120.0),
                seed=i,
            )
            results[i] = asdict(client.run()) | {"phases": client.phases}
        except Exception as err:  # reported, not raised: the other threads go on
            results[i] = {"error": repr(err), "phases": getattr(client, "phases", [])}

    threads = [threading.Thread(target=go, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put(
        {
            "results": results,
            "peak_rss_mb": _vmhwm_mb(),
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
    )


def _phase_summary(results: dict[int, Any], round_: int) -> dict[str, float]:
    """Mean and slowest client times of one round's task: download, train, upload, all."""
    rows = [p for v in results.values() for p in v["phases"] if p["round"] == round_]
    if not rows:
        return {}
    out = {}
    for key in ("download_s", "train_s", "upload_s", "task_s"):
        values = [p.get(key, 0.0) for p in rows]
        out[f"mean_{key}"] = round(statistics.mean(values), 3)
        out[f"max_{key}"] = round(max(values), 3)
    return out


class _CliServer:
    """``python -m fedloom server CONFIG`` on a free port, with its log and run directory."""

    def __init__(self, root: Path, config: Path, certs: Path, *extra: str) -> None:
        self.root = root
        self.log = root / "server.log"
        with self.log.open("w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fedloom", "server", str(config), "--port", "0"]
                + ["--certs", str(certs), *extra],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
            )
        self.port = 0
        self.peak_rss_mb = 0.0
        self.idle_rss_mb = 0.0
        self.cpu_s = 0.0
        deadline = time.monotonic() + 180
        while not self.port:
            text = self.log.read_text()
            if "listening on" in text:
                self.port = int(text.split("listening on")[1].split()[0].rsplit(":", 1)[1])
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{text[-3000:]}")
            time.sleep(0.2)
        self.idle_rss_mb = _vmhwm_mb(self.proc.pid) or 0.0  # started, no client yet
        self._watch = threading.Thread(target=self._poll_rss, daemon=True)
        self._watch.start()

    def _poll_rss(self) -> None:
        while self.proc.poll() is None:
            hwm = _vmhwm_mb(self.proc.pid)  # a high-water mark: the last read is the peak
            if hwm is not None:
                self.peak_rss_mb = max(self.peak_rss_mb, hwm)
            cpu = _cpu_s(self.proc.pid)
            if cpu is not None:
                self.cpu_s = max(self.cpu_s, cpu)
            time.sleep(0.25)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._watch.join(5)

    def records(self) -> list[dict]:
        from fedloom.runs import RunDirectory

        (path,) = (self.root / "runs").iterdir()
        return RunDirectory(path).records()


def _run_clients(target: str, data: Path, certs: Path, ids: list[list[int]]) -> tuple:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_client_worker, args=(target, str(data), str(certs), part, queue))
        for part in ids
    ]
    for p in procs:
        p.start()
    return procs, queue


def _collect(procs: list, queue: Any, timeout: float) -> tuple[dict[int, Any], dict[str, list]]:
    results: dict[int, Any] = {}
    rss, cpu = [], []
    for _ in procs:
        got = queue.get(timeout=timeout)
        results |= got["results"]
        rss.append(round(got["peak_rss_mb"], 1))
        cpu.append(round(got["cpu_s"], 1))
    for p in procs:
        p.join(30)
    exits = [p.exitcode for p in procs]
    return results, {"peak_rss_mb": rss, "cpu_s": cpu, "exit_codes": exits}


def concurrent_clients(root: Path, clients: int, processes: int, rounds: int) -> dict:
    config, data = _write_run(
        root,
        [
            f"rounds={rounds}",
            "seed=3",
            f'output_dir="{root / "runs"}"',
            'partition.method="iid"',
            f"partition.num_clients={clients}",
            f"server.clients_per_round={clients}",
            "client.local_epochs=1",
        ],
    )
    certs = _certs(root, clients)
    server = _CliServer(root, config, certs)
    started = time.perf_counter()
    ids = [list(range(clients))[p::processes] for p in range(processes)]
    procs, queue = _run_clients(f"127.0.0.1:{server.port}", data, certs, ids)
    code = server.wait(900)
    results, procs_info = _collect(procs, queue, 120)
    total_s = time.perf_counter() - started
    records = server.records()
    start = next(r for r in records if r.get("event") == "start")
    done = [r for r in records if r.get("event") == "round" and r["status"] == "aggregated"]
    walls = [r["wall_s"] for r in done]
    errors = sorted({v["error"] for v in results.values() if "error" in v})
    out = {
        "clients": clients,
        "rounds": len(done),
        "peak_rss_mb": round(server.peak_rss_mb, 1),
        "server_rss_before_clients_mb": round(server.idle_rss_mb, 1),
        "rounds_planned": rounds,
        "client_processes": processes,
        "transport": "mTLS",
        "model_params": start["params"],
        "round_wall_s": [round(w, 3) for w in walls],
        "mean_round_s": round(statistics.mean(walls), 3) if walls else None,
        "completed_per_round": [r["completed"] for r in done],
        "dropped_per_round": [r.get("dropped", {}) for r in done],
        "client_phases_per_round": [_phase_summary(results, r["round"]) for r in done],
        "client_rounds_total": sum(v.get("rounds", 0) for v in results.values()),
        "client_retries_total": sum(v.get("retries", 0) for v in results.values()),
        "client_errors": errors,
        "client_process_peak_rss_mb": procs_info["peak_rss_mb"],
        "client_process_cpu_s": procs_info["cpu_s"],
        "client_process_exit_codes": procs_info["exit_codes"],
        "server_cpu_s": round(server.cpu_s, 1),
        "server_exit_code": code,
        "total_s": round(total_s, 1),
    }
    print(
        f"{clients} clients over {processes} processes: {len(done)}/{rounds} rounds, "
        f"server peak RSS {out['peak_rss_mb']:.0f} MB, round wall s {out['round_wall_s']}, "
        f"completed {out['completed_per_round']}, retries {out['client_retries_total']}, "
        f"errors {errors or 'none'}",
        flush=True,
    )
    return out


def slow_link(root: Path, clients: int, hidden: int, rounds: int) -> dict:
    from grpc_tooling import FaultProxy

    config, data = _write_run(
        root,
        [
            f"rounds={rounds}",
            "seed=3",
            f'output_dir="{root / "runs"}"',
            f"partition.num_clients={clients}",
            f"server.clients_per_round={clients}",
            "client.local_epochs=1",
            f"model.hidden=[{hidden}]",
        ],
    )
    certs = _certs(root, clients)
    server = _CliServer(root, config, certs)
    proxy = FaultProxy(("127.0.0.1", server.port))
    host, port = proxy.start()
    proxy.set_latency(LINK_RTT_S / 2)
    proxy.set_rate(LINK_BYTES_PER_S)
    try:
        procs, queue = _run_clients(f"{host}:{port}", data, certs, [list(range(clients))])
        code = server.wait(900)
        results, procs_info = _collect(procs, queue, 120)
    finally:
        proxy.stop()
    rows = []
    for r in server.records():
        if r.get("event") != "round" or r["status"] != "aggregated":
            continue
        per_client = (r["bytes_down"] + r["bytes_up"]) / r["completed"]
        transfer_s = per_client / LINK_BYTES_PER_S
        rows.append(
            {
                "round": r["round"],
                "bytes_down_per_client": r["bytes_down"] // r["completed"],
                "bytes_up_per_client": r["bytes_up"] // r["completed"],
                "transfer_s": round(transfer_s, 3),
                "ideal_s": round(transfer_s + 2 * LINK_RTT_S, 3),
                "round_s": round(r["wall_s"], 3),
                "completed": r["completed"],
                **_phase_summary(results, r["round"]),
            }
        )
        print(
            f"round {r['round']}: down {rows[-1]['bytes_down_per_client']:,} B, "
            f"up {rows[-1]['bytes_up_per_client']:,} B per client; ideal "
            f"{rows[-1]['ideal_s']:.2f} s, measured {rows[-1]['round_s']:.2f} s "
            f"(slowest client: download {rows[-1].get('max_download_s', 0):.2f} s, "
            f"train {rows[-1].get('max_train_s', 0):.2f} s, "
            f"upload {rows[-1].get('max_upload_s', 0):.2f} s)",
            flush=True,
        )
    errors = sorted({v["error"] for v in results.values() if "error" in v})
    return {
        "round_s": round(statistics.mean(r["round_s"] for r in rows), 3) if rows else None,
        "ideal_s": round(statistics.mean(r["ideal_s"] for r in rows), 3) if rows else None,
        "ideal_note": "bytes per client / 10 Mbit/s + 2 RTT (mean over rounds)",
        "clients": clients,
        "params": _params(hidden),
        "model_bytes": 4 * _params(hidden),
        "rtt_s": LINK_RTT_S,
        "rate_bytes_per_s": LINK_BYTES_PER_S,
        "rounds": rows,
        "client_errors": errors,
        "client_process_exit_codes": procs_info["exit_codes"],
        "server_exit_code": code,
    }


def delta_cost(hidden: int, repeats: int = 5) -> dict[str, float]:
    """Milliseconds to encode and decode one model delta (``wire.xor_delta`` and
    ``apply_xor_delta``) for a model of this size, on a synthetic pair of versions."""
    import numpy as np

    from fedloom.transport import wire

    rng = np.random.default_rng(0)
    base = (0.05 * rng.normal(size=_params(hidden))).astype(np.float32)
    new = base + (1e-3 * rng.normal(size=base.size)).astype(np.float32)
    times: dict[str, list[float]] = {"xor_delta_ms": [], "apply_xor_delta_ms": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        payload = wire.xor_delta(new, base)
        t1 = time.perf_counter()
        wire.apply_xor_delta(payload, base)
        t2 = time.perf_counter()
        times["xor_delta_ms"].append(1000 * (t1 - t0))
        times["apply_xor_delta_ms"].append(1000 * (t2 - t1))
    out = {k: round(statistics.median(v), 1) for k, v in times.items()}
    return out | {"delta_bytes_over_raw": round(len(payload) / (4 * base.size), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="smaller and shorter variants")
    parser.add_argument(
        "--only", choices=["throughput", "concurrent", "slow"], help="run one part only"
    )
    args = parser.parse_args()
    quick = args.quick
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, shared with other work",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="fedloom-transport-") as tmp:
        root = Path(tmp)
        if args.only in (None, "throughput"):
            (root / "tp").mkdir()
            _certs(root / "tp", 1)
            _write_run(root / "tp", ["partition.num_clients=2", "server.clients_per_round=1"])
            print(
                f"{'model':>6} {'mode':>5} {'bytes':>12} {'fedloom MB/s':>12} {'raw MB/s':>10} "
                f"{'ratio':>6} {'pairs IQR':>9}"
            )
            sizes = {"10MB": SIZES["10MB"]} if quick else SIZES
            result["throughput"] = {}
            for label, hidden in sizes.items():
                warmup, repeats = (1, 3) if quick else ((3, 31) if label == "10MB" else (1, 7))
                result["throughput"][label] = throughput(
                    root / "tp", label, hidden, warmup, repeats
                )
            print("median ms per step of one download (first_chunk: request to first chunk)")
            for label, modes in result["throughput"].items():
                for mode in ("tls", "plain"):
                    for kind, steps in modes[mode]["stages_ms"].items():
                        text = ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
                        print(f"{label:>6} {mode:>5} {kind:>7}: {text}")
        if args.only in (None, "concurrent"):
            (root / "cc").mkdir()
            n, procs, rounds = (20, 2, 2) if quick else (200, 4, 5)
            result["concurrent_clients"] = concurrent_clients(root / "cc", n, procs, rounds)
        if args.only in (None, "slow"):
            (root / "sl").mkdir()
            result["slow_link"] = slow_link(root / "sl", 5, 13_333, 2 if quick else 3)
            result["slow_link"]["delta_cost"] = cost = delta_cost(13_333)
            print(
                f"model delta of {4 * _params(13_333):,} B: encode {cost['xor_delta_ms']} ms, "
                f"decode {cost['apply_xor_delta_ms']} ms (synthetic versions)"
            )
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
