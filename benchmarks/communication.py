"""Compressed communication: upload bytes to a target accuracy per codec, virtual time to
a target under heterogeneous uplinks (fixed vs adaptive settings), and the bytes on a
gRPC wire against the encoded payloads.

Part 1 (codecs). Digits (standardized), Dirichlet(0.5) over 100 clients, 10 per round,
MLP 64-h-10, the default client plan (5 local epochs, batch 32, SGD lr 0.1), FedAvg,
``--rounds`` rounds, seeds ``--seeds``. The uncompressed float32 run gives the final
accuracy ``A`` (mean over the seeds of the last round's test accuracy); the target is
``A - 0.01``. Every codec then runs the same rounds and seeds on the same model. Per
codec: the compression ratio (float32 bytes / payload bytes, from the rounds'
``compression`` records), the final accuracy (mean), the upload bytes when the test
accuracy first reached the target (``fedloom.report.bytes_to_target``; mean, "not
reached" when any seed misses) and the reduction against float32's bytes to target.

Part 2 (heterogeneous uplinks). The same task, with a device trace of 100 clients whose
uplinks are lognormal (median 3.16 Mbit/s, sigma 1.15) clipped to [0.1, 100] Mbit/s,
downlinks 100 Mbit/s, 1 ms per sample, 20 ms latency, and ``server.deadline_s`` set to
float32's upload time at the median uplink plus 0.3 s, so that clients with slower than
about median uplinks cannot upload a float32 model in time (the JSON gives the share).
Virtual time (``virtual_time`` of the first round whose test accuracy reaches 0.95, a
fixed target every setting can reach) for (a) no compression, (b) top-k (fp16 values)
with error feedback at each fraction of its ladder (the best mean is kept), (c)
``compression.adaptive = true`` with the same codec, which picks each client's densest
fraction that fits its uplink and the deadline.

Part 3 (wire). A deployment server (in a thread, plaintext on loopback) and 10 client
threads, every client every round, top-k 0.01 with error feedback; a ``FaultProxy`` without
faults between them counts every byte on the TCP connections. Compared: the rounds'
``bytes_up`` (what the transport counted as payload), the encoded payload sizes of the
``compression`` records, and the proxy's client-to-server bytes; and the final model
against the simulator's run of the same config.

Usage: ``uv run python benchmarks/communication.py --json
benchmarks/results/communication.json`` (``--quick`` for a smoke run). The simulator
runs of parts 1 and 2 are independent and deterministic, so ``--workers`` (2) processes
play them in parallel; each uses one thread for torch and for numpy's BLAS (set before
numpy loads). Nothing here measures speed: wall seconds are reported for the budget only.

References: Lin et al., "Deep Gradient Compression", ICLR 2018 (top-k with error
feedback and warm-up); Karimireddy et al., "Error Feedback Fixes SignSGD", ICML 2019;
Alistarh et al., "QSGD", NeurIPS 2017; Wen et al., "TernGrad", NeurIPS 2017; Vogels et
al., "PowerSGD", NeurIPS 2019; Abdelmoniem & Canini, "Towards Mitigating Device
Heterogeneity in Federated Learning via Adaptive Model Quantization", EuroMLSys 2021.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # numpy's BLAS spins on a shared 2-core machine otherwise

import argparse  # noqa: E402
import logging  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import Executor, Future, ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from targets import finish  # noqa: E402

EF = "compression.error_feedback=true"


def _topk(fraction: float, ef: bool, *extra: str, values: str = "fp16") -> list[str]:
    params = f'compression.params={{fraction={fraction}, values="{values}"}}'
    return ['compression.codec="topk"', params, *([EF] if ef else []), *extra]


# name -> overrides; the first is the float32 baseline
CODECS: dict[str, list[str]] = {
    "float32": [],
    "fp16": ['compression.codec="fp16"'],
    "bf16": ['compression.codec="bf16"'],
    "uniform 8-bit": ['compression.codec="uniform"', "compression.params={bits=8}"],
    "uniform 4-bit": ['compression.codec="uniform"', "compression.params={bits=4}"],
    "qsgd 16 levels": ['compression.codec="qsgd"', "compression.params={levels=16}"],
    "terngrad": ['compression.codec="terngrad"'],
    "sign + EF": ['compression.codec="sign"', EF],
    "topk 0.01 + EF": _topk(0.01, True),
    "topk 0.01": _topk(0.01, False),
    "topk 0.003 + EF": _topk(0.003, True),
    "topk 0.003": _topk(0.003, False),
    "topk 0.001 + EF": _topk(0.001, True),
    "topk 0.001": _topk(0.001, False),
    "topk 0.003 + EF + warm-up 10": _topk(0.003, True, "compression.warmup_rounds=10"),
    "stc 0.01 + EF": _topk(0.01, True, values="sign"),
    "stc 0.003 + EF": _topk(0.003, True, values="sign"),
    "randomk 0.01": ['compression.codec="randomk"', "compression.params={fraction=0.01}"],
    "powersgd rank 2 + EF": ['compression.codec="powersgd"', "compression.params={rank=2}", EF],
}
QUICK_CODECS = ("float32", "fp16", "uniform 8-bit", "topk 0.01 + EF", "topk 0.01")
MEDIAN_UP_KBPS = 3162.0  # sqrt(0.1 * 100) Mbit/s, the middle of the range on a log scale
LADDER = (0.1, 0.03, 0.01, 0.003, 0.001)  # sparse.FRACTION_LADDER, the adaptive choices


def base_overrides(hidden: int, rounds: int, seed: int, out: Path) -> list[str]:
    """The shared task: digits, Dirichlet(0.5) over 100 clients, 10 per round."""
    return [
        "data.source=digits",
        'partition.method="dirichlet"',
        "partition.alpha=0.5",
        "partition.num_clients=100",
        "server.clients_per_round=10",
        f"model.hidden=[{hidden}]",
        f"rounds={rounds}",
        f"seed={seed}",
        "threads=1",
        'simulation.executor="vectorized"',
        "checkpoint.every=0",
        f"output_dir={out}",
    ]


def simulate(overrides: list[str]) -> tuple[list[dict[str, Any]], Any, float]:
    """One simulator run: its round records, final parameters and wall seconds."""
    from fedloom.assemble import start_simulation
    from fedloom.config import load_config

    started = time.perf_counter()
    sim = start_simulation(load_config(None, overrides))
    sim.run()
    records = [r for r in sim.run_dir.records() if r.get("event") == "round"]
    return records, np.array(sim.server.params, copy=True), time.perf_counter() - started


def run_records(overrides: list[str]) -> tuple[list[dict[str, Any]], float]:
    """One simulator run in a worker process: its round records and wall seconds."""
    records, _, wall = simulate(overrides)
    return records, wall


class Inline(Executor):
    """Runs each job when submitted, in this process (one worker: no start-up cost)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _ratio(records: list[dict[str, Any]]) -> float:
    """float32 bytes / encoded payload bytes over the whole run (1.0 uncompressed)."""
    comp = [r["compression"] for r in records if r.get("compression")]
    if not comp:
        return 1.0
    return sum(c["raw_bytes"] for c in comp) / sum(c["payload_bytes"] for c in comp)


def _mean(values: list[float | None]) -> float | None:
    """The mean, None when any value is None (a seed that missed)."""
    return None if any(v is None for v in values) else statistics.fmean(values)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ part 1


def codec_table(
    pool: Executor,
    root: Path,
    names: tuple[str, ...],
    hidden: int,
    rounds: int,
    seeds: list[int],
) -> dict[str, Any]:
    """Every codec on the same rounds and seeds; bytes to float32's final accuracy - 0.01."""
    from fedloom.report import bytes_to_target

    jobs = {
        name: [
            pool.submit(
                run_records,
                [*base_overrides(hidden, rounds, seed, root / f"p1-{k}-{seed}"), *CODECS[name]],
            )
            for seed in seeds
        ]
        for k, name in enumerate(names)
    }
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    walls: dict[str, float] = {}
    for name, futures in jobs.items():
        done = [f.result() for f in futures]
        runs[name] = [records for records, _ in done]
        walls[name] = sum(wall for _, wall in done)
        print(f"  part 1: {name} ({walls[name]:.1f} s in its runs)", flush=True)
    final_a = statistics.fmean(r[-1]["accuracy"] for r in runs["float32"])
    target = final_a - 0.01
    rows = []
    for name in names:
        per_seed = [bytes_to_target(r, "accuracy", target) for r in runs[name]]
        rows.append(
            {
                "codec": name,
                "overrides": CODECS[name],
                "ratio": round(statistics.fmean(_ratio(r) for r in runs[name]), 2),
                "final_accuracy": round(statistics.fmean(r[-1]["accuracy"] for r in runs[name]), 4),
                "final_accuracy_per_seed": [round(r[-1]["accuracy"], 4) for r in runs[name]],
                "bytes_to_target_per_seed": per_seed,
                "bytes_to_target": _mean(per_seed),
                "wall_s": round(walls[name], 1),
            }
        )
    base = rows[0]["bytes_to_target"]
    for row in rows:
        b = row["bytes_to_target"]
        row["reduction"] = round(base / b, 1) if b and base else None
    return {
        "hidden": hidden,
        "rounds": rounds,
        "seeds": seeds,
        "float32_final_accuracy": round(final_a, 4),
        "target": round(target, 4),
        "rows": rows,
    }


# ------------------------------------------------------------------------------ part 2


def write_trace(path: Path, clients: int, seed: int = 0) -> dict[str, float]:
    """A CSV device trace: lognormal uplinks clipped to [0.1, 100] Mbit/s (median 3.16,
    sigma 1.15), 100 Mbit/s downlinks, 1 ms per sample, 20 ms latency."""
    rng = np.random.default_rng(seed)
    up = np.clip(
        np.exp(np.log(MEDIAN_UP_KBPS) + 1.15 * rng.standard_normal(clients)), 100.0, 100_000.0
    )
    lines = ["client,compute_ms_per_sample,up_kbps,down_kbps,latency_ms"]
    lines += [f"{i},1.0,{u!r},100000.0,20.0" for i, u in enumerate(up.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return {
        "up_kbps_min": round(float(up.min()), 1),
        "up_kbps_median": round(float(np.median(up)), 1),
        "up_kbps_max": round(float(up.max()), 1),
    }


def bandwidth_table(
    pool: Executor,
    root: Path,
    hidden: int,
    rounds: int,
    seeds: list[int],
    target: float,
    deadline_s: float,
    ladder: tuple[float, ...],
) -> dict[str, Any]:
    """Virtual time to ``target`` under the lognormal uplinks: float32, top-k + EF at each
    fraction of ``ladder``, and adaptive top-k + EF."""
    from fedloom.report import time_to_target

    trace = root / "uplinks.csv"
    spread = write_trace(trace, 100)
    devices = [
        'devices.kind="trace"',
        f'devices.trace="{trace}"',
        f"server.deadline_s={deadline_s}",
    ]
    dim = 64 * hidden + hidden + hidden * 10 + 10
    up = np.array([float(x.split(",")[2]) for x in trace.read_text().split("\n")[1:] if x])
    configs: dict[str, list[str]] = {"float32": []}
    for f in ladder:
        configs[f"topk {f} + EF"] = _topk(f, True)
    # adaptive around top-k's default fraction (0.01), as a user would start
    configs["adaptive topk + EF"] = _topk(0.01, True, "compression.adaptive=true")
    jobs = {
        name: [
            pool.submit(
                run_records,
                [*base_overrides(hidden, rounds, seed, root / f"p2-{k}-{seed}"), *devices, *extra],
            )
            for seed in seeds
        ]
        for k, (name, extra) in enumerate(configs.items())
    }
    rows = []
    for name, futures in jobs.items():
        times, accs, dropped, settings, wall = [], [], 0, [], 0.0
        for future in futures:
            records, run_s = future.result()
            wall += run_s
            times.append(time_to_target(records, "accuracy", target))
            accs.append(records[-1]["accuracy"])
            dropped += sum(sum(r.get("dropped", {}).values()) for r in records)
            for r in records:
                if r.get("compression"):
                    settings += list(r["compression"]["settings"].values())
        row: dict[str, Any] = {
            "config": name,
            "virtual_s_per_seed": [None if t is None else round(t, 2) for t in times],
            "virtual_s": None if _mean(times) is None else round(_mean(times), 2),  # type: ignore[arg-type]
            "final_accuracy": round(statistics.fmean(accs), 4),
            "dropped_per_run": round(dropped / len(seeds), 1),
            "wall_s": round(wall, 1),
        }
        if settings:
            values, counts = np.unique(np.array(settings), return_counts=True)
            row["settings_used"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
        rows.append(row)
        print(f"  part 2: {name} ({row['wall_s']} s in its runs)", flush=True)
    fixed = [r for r in rows if r["config"].startswith("topk ")]
    reached = [r for r in fixed if r["virtual_s"] is not None]
    best = min(reached, key=lambda r: r["virtual_s"]) if reached else fixed[0]
    return {
        "hidden": hidden,
        "rounds": rounds,
        "seeds": seeds,
        "target": target,
        "deadline_s": deadline_s,
        "uplinks": spread,
        "float32_upload_bytes": 4 * dim,
        # the upload alone, before download and compute
        "share_too_slow_for_float32_upload": round(
            float(np.mean(4 * dim * 8 / (up * 1e3) > deadline_s)), 2
        ),
        "rows": rows,
        "best_fixed": best["config"],
    }


# ------------------------------------------------------------------------------ part 3


def wire(root: Path, hidden: int, rounds: int, clients: int) -> dict[str, Any]:
    """Top-k + EF over gRPC through a counting proxy, against the simulator's model."""
    from grpc_tooling import FaultProxy, start_in_thread

    from fedloom.config import load_config
    from fedloom.data.federated import build_federated_data
    from fedloom.data.storage import client_dir, write_partition
    from fedloom.runs import RunDirectory
    from fedloom.transport.client import DeploymentClient
    from fedloom.transport.server import ServerOptions

    extra = [
        f"partition.num_clients={clients}",
        f"server.clients_per_round={clients}",
        *_topk(0.01, True),
    ]
    sim_records, sim_params, _ = simulate(
        [*base_overrides(hidden, rounds, 0, root / "sim"), *extra]
    )
    overrides = [*base_overrides(hidden, rounds, 0, root / "grpc" / "runs"), *extra]
    overrides.remove('simulation.executor="vectorized"')  # a deployment trains on clients
    config = load_config(None, overrides)
    data = build_federated_data(config.data, config.partition, config.seed)
    write_partition(root / "grpc" / "data", data.train, data.holdout)
    started = time.perf_counter()
    server, thread = start_in_thread(config, ServerOptions(port=0, insecure=True, linger_s=0.5))
    with FaultProxy(("127.0.0.1", server.port)) as proxy:
        host, port = proxy.address
        for i in range(clients):
            client = DeploymentClient(
                f"{host}:{port}", client_dir(root / "grpc" / "data", i), insecure=True
            )
            threading.Thread(target=client.run, daemon=True).start()
        thread.join(600)
        finished = not thread.is_alive()
        server.stop()
        time.sleep(0.5)  # the clients' last RPCs and closing frames
        stats = proxy.stats
    wall = time.perf_counter() - started
    run_dir = next((root / "grpc" / "runs").iterdir())
    run = RunDirectory.open(run_dir)
    records = [r for r in run.records() if r.get("event") == "round"]
    _, state = run.latest_checkpoint()
    deployed = state["arrays"]["params"]
    transport_up = sum(int(r["bytes_up"]) for r in records)
    payload_up = sum(int(r["compression"]["payload_bytes"]) for r in records)
    uploads = sum(int(r["compression"]["payloads"]) for r in records)
    raw_up = sum(int(r["compression"]["raw_bytes"]) for r in records)
    return {
        "hidden": hidden,
        "rounds": rounds,
        "clients": clients,
        "codec": "topk 0.01 (fp16 values) + EF",
        "finished": finished,
        "rounds_done": len(records),
        "uploads": uploads,
        "float32_bytes": raw_up,
        "transport_bytes_up": transport_up,
        "payload_bytes": payload_up,
        "proxy_bytes_up": stats.bytes_up,
        "proxy_bytes_down": stats.bytes_down,
        "transport_bytes_down": sum(int(r["bytes_down"]) for r in records),
        "connections": stats.connections,
        "framing_bytes_up": stats.bytes_up - payload_up,
        "framing_bytes_per_upload": round((stats.bytes_up - payload_up) / max(uploads, 1), 1),
        "simulator_bytes_up": sum(int(r["bytes_up"]) for r in sim_records),
        "max_abs_diff_vs_simulator": float(np.abs(deployed - sim_params).max()),
        "simulator_accuracy": round(sim_records[-1]["accuracy"], 4),
        "wall_s": round(wall, 1),
    }


# ------------------------------------------------------------------------------ output


def _fmt_bytes(b: float | None) -> str:
    return "not reached" if b is None else f"{b:,.0f}"


def print_tables(p1: dict[str, Any], p2: dict[str, Any], p3: dict[str, Any]) -> None:
    print(
        f"\nPart 1: digits, MLP 64-{p1['hidden']}-10, {p1['rounds']} rounds, seeds "
        f"{p1['seeds']}; float32 final accuracy {p1['float32_final_accuracy']}, "
        f"target {p1['target']}"
    )
    print(f"{'codec':<30}{'ratio':>9}{'final acc':>11}{'bytes to target':>18}{'reduction':>11}")
    for r in p1["rows"]:
        red = "-" if r["reduction"] is None else f"{r['reduction']:.1f}x"
        print(
            f"{r['codec']:<30}{r['ratio']:>9.1f}{r['final_accuracy']:>11.4f}"
            f"{_fmt_bytes(r['bytes_to_target']):>18}{red:>11}"
        )
    print(
        f"\nPart 2: uplinks {p2['uplinks']} kbit/s, deadline {p2['deadline_s']} s "
        f"({p2['share_too_slow_for_float32_upload']:.0%} of clients cannot upload float32 in "
        f"time), target accuracy {p2['target']}"
    )
    print(f"{'config':<24}{'virtual s per seed':>30}{'mean':>10}{'final acc':>11}{'dropped':>9}")
    for r in p2["rows"]:
        per = ", ".join("-" if t is None else f"{t:.1f}" for t in r["virtual_s_per_seed"])
        mean = "not reached" if r["virtual_s"] is None else f"{r['virtual_s']:.1f}"
        print(
            f"{r['config']:<24}{per:>30}{mean:>10}{r['final_accuracy']:>11.4f}"
            f"{r['dropped_per_run']:>9}"
        )
    print(f"\nPart 3: gRPC, {p3['clients']} clients, {p3['rounds']} rounds, {p3['codec']}")
    for key in (
        "uploads",
        "float32_bytes",
        "transport_bytes_up",
        "payload_bytes",
        "proxy_bytes_up",
        "framing_bytes_up",
        "framing_bytes_per_upload",
        "proxy_bytes_down",
        "transport_bytes_down",
        "max_abs_diff_vs_simulator",
    ):
        print(
            f"  {key:<28}{p3[key]:>16,}"
            if isinstance(p3[key], int)
            else f"  {key:<28}{p3[key]:>16}"
        )


def targets(p1: dict[str, Any], p2: dict[str, Any], p3: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's acceptance checks, as measured."""
    rows = {r["codec"]: r for r in p1["rows"]}
    ef_rows = [r for r in p1["rows"] if "EF" in r["codec"] and r["reduction"] is not None]
    best = max(ef_rows, key=lambda r: r["reduction"]) if ef_rows else None
    out = [
        {
            "name": "best codec with error feedback: float32 bytes to target / its bytes"
            + (f" ({best['codec']})" if best else ""),
            "value": best["reduction"] if best else None,
            "goal": ">= 100",
            "met": bool(best and best["reduction"] >= 100),
        }
    ]
    # the same top-k without EF: worse when it misses the target, or needs more bytes,
    # or ends lower
    for name, row in rows.items():
        if not (name.startswith("topk") and name.endswith("+ EF")):
            continue
        plain = rows.get(name.removesuffix(" + EF"))
        if plain is None:
            continue
        worse = (
            row["bytes_to_target"] is not None
            and (
                plain["bytes_to_target"] is None
                or plain["bytes_to_target"] > row["bytes_to_target"]
            )
        ) or plain["final_accuracy"] < row["final_accuracy"]
        out.append(
            {
                "name": f"{plain['codec']} without EF vs with EF: (bytes to target, final "
                "accuracy) without / with",
                "value": [
                    [plain["bytes_to_target"], plain["final_accuracy"]],
                    [row["bytes_to_target"], row["final_accuracy"]],
                ],
                "goal": "without EF misses the target, needs more bytes, or ends lower",
                "met": bool(worse),
            }
        )
    p2rows = {r["config"]: r for r in p2["rows"]}
    adaptive = p2rows["adaptive topk + EF"]["virtual_s"]
    others = {k: p2rows[k]["virtual_s"] for k in ("float32", p2["best_fixed"])}
    out.append(
        {
            "name": "adaptive top-k + EF virtual s to target vs float32 and the best fixed "
            f"({p2['best_fixed']})",
            "value": [adaptive, others["float32"], others[p2["best_fixed"]]],
            "goal": "adaptive < both",
            "met": adaptive is not None and all(v is None or adaptive < v for v in others.values()),
        }
    )
    out.append(
        {
            "name": "gRPC: transport-counted bytes_up == encoded payload bytes",
            "value": [p3["transport_bytes_up"], p3["payload_bytes"]],
            "goal": "equal",
            "met": p3["finished"] and p3["transport_bytes_up"] == p3["payload_bytes"],
        }
    )
    out.append(
        {
            "name": "gRPC final model vs the simulator's: max abs difference",
            "value": p3["max_abs_diff_vs_simulator"],
            "goal": "<= 1e-3",
            "met": p3["finished"] and p3["max_abs_diff_vs_simulator"] <= 1e-3,
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        help="simulator runs in parallel, one thread each (default 2; 1 with --quick)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(1)
    if args.quick:
        hidden, rounds, seeds, names = 64, 4, [0], QUICK_CODECS
        p2_rounds, ladder, target2, wire_rounds, wire_clients = 4, (0.1, 0.01), 0.3, 2, 3
    else:
        hidden, rounds, seeds, names = (
            args.hidden,
            args.rounds,
            list(range(args.seeds)),
            tuple(CODECS),
        )
        p2_rounds, ladder, target2, wire_rounds, wire_clients = 60, LADDER, 0.95, 10, 10
    workers = args.workers or (1 if args.quick else 2)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        (
            ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
            if workers > 1
            else Inline()
        ) as pool,
    ):
        root = Path(tmp)
        t0 = time.perf_counter()
        p1 = codec_table(pool, root, names, hidden, rounds, seeds)
        p1["wall_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        dim = 64 * hidden + hidden + hidden * 10 + 10
        # float32's upload time at the median uplink, plus 0.3 s for download and compute:
        # clients with slower than median uplinks cannot upload a float32 model in time
        deadline = round(4 * dim * 8 / (MEDIAN_UP_KBPS * 1e3) + 0.3, 2)
        p2 = bandwidth_table(pool, root, hidden, p2_rounds, seeds, target2, deadline, ladder)
        p2["wall_s"] = round(time.perf_counter() - t0, 1)
        p3 = wire(root, hidden, wire_rounds, wire_clients)
    print_tables(p1, p2, p3)
    checks = targets(p1, p2, p3)
    result = {
        "machine": f"{os.cpu_count()} cores; torch and BLAS one thread per process",
        "workers": workers,
        "quick": args.quick,
        "codecs": p1,
        "bandwidth": p2,
        "wire": p3,
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "total_s": round(time.perf_counter() - started, 1),
        "targets": checks,
    }
    finish(result, args.json)


if __name__ == "__main__":
    main()
