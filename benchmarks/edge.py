"""Edge devices: int8 export, unequal local work (FedNova, adaptive local work),
progress monitoring's cost and each built-in model's local training throughput.

Compression (``edge_export.measure``): the digits MLP 64-256-256-10 and fedloom's LeNet
trained centrally, exported with ``fedloom.edge.export_model`` (int8, TorchScript, ONNX);
see ``benchmarks/edge_export.py`` for the setup. Targets: the best int8 artifact of each
model >= 3.5x smaller serialized and >= 1.5x faster at batch 1 than float eager torch on
one CPU thread, <= 1 point accuracy drop; the float ONNX export's logits within 1e-4 of
torch's in onnxruntime.

Unequal local work. Digits (standardized), 20 clients, label-skewed (Dirichlet alpha
0.3), 10 clients per round, the default MLP 64-32-10, 5 local epochs of SGD (batch 32,
lr 0.05, no momentum), FedAvg's server step 1, a 6 s round deadline. Device speeds spread
10x: client i trains at ``5 * 10^(i / 19)`` ms per example (a trace file), 10 Mbit/s
links, 50 ms latency; a client's full work (about 360 examples) takes 1.8 s on the
fastest device and 18 s on the slowest. Three runs per seed (seeds 0-2), every round
evaluated on the test set:

- ``fixed``: every client gets the full work; the slow ones miss the deadline and are
  dropped (their data never reaches the model);
- ``adaptive``: ``edge.local_work = "adaptive"``: each client trains the steps that fit the
  deadline at its speed (fast devices 15 steps, the slowest 3), FedAvg;
- ``adaptive_fednova``: the same with ``aggregation.rule = "fednova"``.

Targets: FedNova's final accuracy (mean of the last 5 evaluations, averaged over seeds) at
least FedAvg's under the same heterogeneous steps; adaptive local work reaches the target
accuracy (0.85) in less virtual time than fixed epochs with deadline drops (the virtual
time of the first round at or above it, averaged over seeds; a run that never reaches it
counts as its total time, and is reported).

Progress monitoring: one client's local training (``TorchTrainer``, 200 digits, batch
10, 5 epochs = 100 steps, one thread) with ``loss_samples`` 0 and 4, interleaved in
alternating order, 41 pairs after warm-up; the overhead is the median of the paired time
ratios minus 1 (CPU time of the process, less disturbed by other load than wall time).
Target <= 2%. Throughput: samples per second of the same plain loop (batch 32, 50
steps, median of 5) for every built-in model kind on its data shape.

Usage: ``uv run python benchmarks/edge.py --json benchmarks/results/edge.json``
(``--quick``: a smoke run). Plots of accuracy against virtual time go next to the JSON.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # numpy's BLAS spins on a shared 2-core machine otherwise

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from targets import finish  # noqa: E402

from fedloom.assemble import start_simulation  # noqa: E402
from fedloom.client.trainer import TorchTrainer  # noqa: E402
from fedloom.config import load_config  # noqa: E402
from fedloom.models import builtin_task, model_stats  # noqa: E402
from fedloom.records import TrainPlan  # noqa: E402

CLIENTS = 20
TARGET_ACCURACY = 0.85
VARIANTS = {
    "fixed": [],
    "adaptive": ['edge.local_work="adaptive"'],
    "adaptive_fednova": ['edge.local_work="adaptive"', 'aggregation.rule="fednova"'],
}


def write_trace(path: Path) -> None:
    """Client i: 5 * 10^(i / 19) ms per example, a 10x spread."""
    rows = [
        {"client": i, "compute_ms_per_sample": 5.0 * 10 ** (i / (CLIENTS - 1)), "up_kbps": 1e4}
        for i in range(CLIENTS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def federated_run(variant: str, seed: int, rounds: int, root: Path) -> dict[str, Any]:
    trace = root / "devices.jsonl"
    if not trace.exists():
        write_trace(trace)
    cfg = load_config(
        None,
        [
            f'output_dir="{root / variant / str(seed)}"',
            f"seed={seed}",
            f"rounds={rounds}",
            f"partition.num_clients={CLIENTS}",
            'partition.method="dirichlet"',
            "partition.alpha=0.3",
            "server.clients_per_round=10",
            "server.deadline_s=6.0",
            "client.local_epochs=5",
            "client.lr=0.05",
            'devices.kind="trace"',
            f'devices.trace="{trace}"',
            "devices.latency_ms=50",
            "evaluation.every=1",
            "checkpoint.every=1000",
            'simulation.executor="sequential"',
            *VARIANTS[variant],
        ],
    )
    sim = start_simulation(cfg)
    sim.run()
    records = [r for r in sim.run_dir.records() if r["event"] == "round"]
    times = [float(r["virtual_time"]) for r in records]
    accuracy = [float(r["accuracy"]) for r in records]
    reached = next((t for t, a in zip(times, accuracy, strict=True) if a >= TARGET_ACCURACY), None)
    steps = sim.engine.registry.stats()
    return {
        "variant": variant,
        "seed": seed,
        "virtual_time": times,
        "accuracy": accuracy,
        "final_accuracy": float(np.mean(accuracy[-5:])),
        "time_to_target": reached,
        "dropped_deadline": sum(r["dropped"].get("missed the deadline", 0) for r in records),
        "partial": sum(r.get("partial") or 0 for r in records),
        "completed": sum(r["completed"] for r in records),
        "clients_ever_aggregated": int((steps.completed > 0).sum()),
    }


def unequal_work(seeds: list[int], rounds: int) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="fedloom-edge-") as tmp:
        for seed in seeds:
            for variant in VARIANTS:
                started = time.perf_counter()
                run = federated_run(variant, seed, rounds, Path(tmp))
                print(
                    f"{variant:17s} seed {seed}: final accuracy {run['final_accuracy']:.4f}, "
                    f"target at {run['time_to_target']} s, dropped {run['dropped_deadline']}, "
                    f"partial {run['partial']} ({time.perf_counter() - started:.1f} s)",
                    flush=True,
                )
                runs.append(run)

    def mean(variant: str, key: str) -> float:
        values = [r[key] for r in runs if r["variant"] == variant]
        if key == "time_to_target":
            totals = [r["virtual_time"][-1] for r in runs if r["variant"] == variant]
            values = [v if v is not None else t for v, t in zip(values, totals, strict=True)]
        return float(np.mean(values))

    summary = {
        v: {
            "final_accuracy": mean(v, "final_accuracy"),
            "time_to_target": mean(v, "time_to_target"),
            "runs_reaching_target": sum(
                r["time_to_target"] is not None for r in runs if r["variant"] == v
            ),
        }
        for v in VARIANTS
    }
    return {"runs": runs, "summary": summary}


def monitoring_overhead(pairs: int) -> dict[str, Any]:
    """Paired CPU-time ratio of local training with 4 sampled losses against none."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:200] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[:200])
    plan = TrainPlan(local_epochs=5, batch_size=10, lr=0.05)
    out: dict[str, Any] = {}
    for kind, shape in (("mlp", (64,)), ("cnn", (1, 8, 8))):
        task = builtin_task(kind, shape, "classes", 10).resolved("classes")
        model = task.task.build_model(0)
        xs = x.view(-1, *shape)
        trainers = {n: TorchTrainer(model, task, loss_samples=n) for n in (0, 4)}
        start = trainers[0].flat.params.clone()
        delta = torch.empty_like(start)
        times: dict[int, list[float]] = {0: [], 4: []}
        for r in range(pairs + 3):
            for n in (0, 4) if r % 2 else (4, 0):
                t0 = time.process_time()
                trainers[n].train(start, xs, y, plan, r, delta)
                if r >= 3:
                    times[n].append(time.process_time() - t0)
        ratio = statistics.median(b / a for a, b in zip(times[0], times[4], strict=True))
        out[kind] = {
            "median_s_without": statistics.median(times[0]),
            "median_s_with": statistics.median(times[4]),
            "overhead": ratio - 1.0,
        }
        print(f"monitoring overhead {kind}: {100 * (ratio - 1):+.2f}% ({pairs} pairs)", flush=True)
    return out


def throughput(steps: int) -> list[dict[str, Any]]:
    """Samples per second of plain local training for each built-in model kind."""
    kinds = [
        ("mlp", (64,), "classes", {"hidden": (32,)}, "64-32-10"),
        ("mlp", (64,), "classes", {"hidden": (256, 256)}, "64-256-256-10"),
        ("logistic", (64,), "classes", {}, "64-10"),
        ("cnn", (1, 8, 8), "classes", {}, "LeNet 1x8x8"),
        ("mobilenet", (1, 8, 8), "classes", {"width": 0.5}, "width 0.5, 1x8x8"),
        ("mobilenet", (1, 8, 8), "classes", {"width": 1.0}, "width 1.0, 1x8x8"),
        ("mobilenet", (3, 32, 32), "classes", {"width": 1.0}, "width 1.0, 3x32x32"),
        ("char", (80,), "classes", {"hidden": (128,)}, "GRU 128, 80 chars"),
    ]
    plan = TrainPlan(local_steps=steps, batch_size=32, lr=0.01)
    rows = []
    rng = np.random.default_rng(0)
    for kind, shape, targets, options, name in kinds:
        outputs = 80 if kind == "char" else 10
        task = builtin_task(kind, shape, targets, outputs, **options).resolved(targets)
        model = task.task.build_model(0)
        n = 32 * steps
        if kind == "char":
            x = torch.from_numpy(rng.integers(0, outputs, (n, *shape)))
        else:
            x = torch.from_numpy(rng.standard_normal((n, *shape)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, outputs, n))
        trainer = TorchTrainer(model, task)
        start = trainer.flat.params.clone()
        delta = torch.empty_like(start)
        trainer.train(start, x, y, plan, 0, delta)  # warm-up
        times = []
        for r in range(5):
            t0 = time.perf_counter()
            trainer.train(start, x, y, plan, r, delta)
            times.append(time.perf_counter() - t0)
        dtype = torch.int64 if kind == "char" else torch.float32
        stats = model_stats(model, shape, dtype)
        rows.append(
            {
                "model": kind,
                "config": name,
                "parameters": stats.parameters,
                "flops": stats.flops,
                "activation_bytes": stats.activation_bytes,
                "samples_per_s": 32 * steps / statistics.median(times),
            }
        )
        print(f"throughput {kind} ({name}): {rows[-1]['samples_per_s']:.0f} samples/s", flush=True)
    return rows


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"fixed": "tab:red", "adaptive": "tab:blue", "adaptive_fednova": "tab:green"}
    for run in runs:
        label = run["variant"] if run["seed"] == runs[0]["seed"] else None
        ax.plot(run["virtual_time"], run["accuracy"], color=colors[run["variant"]], label=label)
    ax.axhline(TARGET_ACCURACY, color="grey", linestyle=":", label="target")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Unequal local work on devices 10x apart (digits, non-IID, 6 s deadline)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    from edge_export import measure

    seeds, rounds, pairs, steps = ([0], 3, 2, 2) if args.quick else ([0, 1, 2], 40, 41, 50)
    export = measure(epochs=2 if args.quick else 30)
    work = unequal_work(seeds, rounds)
    overhead = monitoring_overhead(pairs)
    speed = throughput(steps)
    s = work["summary"]
    targets = [*export["targets"]]
    targets += [
        {
            "name": "FedNova final accuracy >= FedAvg's (heterogeneous steps, adaptive work)",
            "value": {
                "fednova": round(s["adaptive_fednova"]["final_accuracy"], 4),
                "fedavg": round(s["adaptive"]["final_accuracy"], 4),
            },
            "goal": ">= fedavg",
            "met": s["adaptive_fednova"]["final_accuracy"] >= s["adaptive"]["final_accuracy"],
        },
        {
            "name": f"virtual seconds to {TARGET_ACCURACY} accuracy: adaptive < fixed with drops",
            "value": {
                "adaptive": round(s["adaptive"]["time_to_target"], 1),
                "fixed": round(s["fixed"]["time_to_target"], 1),
            },
            "goal": "adaptive < fixed",
            "met": s["adaptive"]["time_to_target"] < s["fixed"]["time_to_target"],
        },
        {
            "name": "progress monitoring overhead of local training time (mlp, cnn)",
            "value": {k: round(v["overhead"], 4) for k, v in overhead.items()},
            "goal": "<= 0.02",
            "met": all(v["overhead"] <= 0.02 for v in overhead.values()),
        },
    ]
    result = {
        "benchmark": "edge",
        "threads": 1,
        "export": {k: v for k, v in export.items() if k != "targets"},
        "unequal_work": work,
        "monitoring": overhead,
        "throughput": speed,
        "total_s": round(time.perf_counter() - started, 1),
        "targets": targets,
    }
    if args.json is not None:
        plot(work["runs"], args.json.with_name("edge_time_to_accuracy.png"))
    finish(result, args.json)


if __name__ == "__main__":
    main()
