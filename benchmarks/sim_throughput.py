"""Client updates per second: plain PyTorch loop vs fedloom sequential vs vectorized.

Scenarios (MLP 64-32-10, 1 local epoch, batch 32, SGD lr 0.05, every client trained
once per pass from the same global model):
- ``digits``: scikit-learn digits (standardized), 100 IID clients of about 14 samples;
- ``synthetic``: 1,000 clients x 50 samples x 64 Gaussian features, 10 classes.
The plain loop deep-copies the model and builds ``torch.optim.SGD`` per client. Each
method is warmed up, then the methods are timed in turn, ``--repeats`` times, and the
median pass is reported. Measured with 1 torch thread and again with all threads.

``--device cuda --cohorts 1000,10000,100000`` runs only the vectorized executor on the
synthetic workload with those cohort sizes (the GPU check).

Usage: ``uv run python benchmarks/sim_throughput.py [--json PATH] [--quick]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedloom.client.schedule import (
    batch_schedule,
    client_seeds,
    cohort_schedule,
    cohort_schedule_tensors,
    steps_for,
)
from fedloom.client.trainer import TorchTrainer
from fedloom.data import ClientPartition, load_digits, standardize
from fedloom.data.partition import iid
from fedloom.models import MLP
from fedloom.params import module_vector
from fedloom.records import TrainPlan
from fedloom.sim.executor import SequentialExecutor
from fedloom.sim.vectorized import VectorizedExecutor

PLAN = TrainPlan(local_epochs=1, batch_size=32, lr=0.05)


def digits_clients() -> ClientPartition:
    data = standardize(load_digits())[0]
    return ClientPartition.from_indices(data, iid(len(data), 100, np.random.default_rng(0)))


def synthetic_clients(num_clients: int, samples: int = 50, features: int = 64) -> ClientPartition:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_clients * samples, features)).astype(np.float32)
    teacher = rng.normal(size=(features, 10)).astype(np.float32)
    y = np.argmax(x @ teacher + rng.normal(size=(len(x), 10)), axis=1).astype(np.int64)
    offsets = np.arange(0, len(x) + 1, samples, dtype=np.int64)
    return ClientPartition(x, y, offsets, 10)


def plain_loop(model: torch.nn.Module, data: ClientPartition, seeds: np.ndarray) -> None:
    """A hand-written FedAvg client loop: deepcopy, fresh SGD, same batches as fedloom."""
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    start = model.state_dict()
    for cid in range(data.num_clients):
        lo, hi = int(data.offsets[cid]), int(data.offsets[cid + 1])
        local = copy.deepcopy(model)
        opt = torch.optim.SGD(local.parameters(), lr=PLAN.lr)
        for idx in batch_schedule(hi - lo, PLAN, int(seeds[cid])):
            index = torch.from_numpy(idx + lo)
            opt.zero_grad()
            F.cross_entropy(local(x[index]), y[index]).backward()
            opt.step()
        _ = {k: v - start[k] for k, v in local.state_dict().items()}


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(data: ClientPartition, repeats: int) -> dict[str, float]:
    model = MLP(data.x.shape[1], [32], 10)
    g = module_vector(model)
    ids = np.arange(data.num_clients)
    seeds = client_seeds(0, 1, ids)
    seq = SequentialExecutor(TorchTrainer(copy.deepcopy(model)), data)
    vec = VectorizedExecutor(copy.deepcopy(model), data)
    methods = {
        "plain": lambda: plain_loop(model, data, seeds),
        "sequential": lambda: seq.train_cohort(g, ids, seeds, PLAN),
        "vectorized": lambda: vec.train_cohort(g, ids, seeds, PLAN),
    }
    for fn in methods.values():  # warm-up (lazy imports, allocator)
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn))
    return {name: round(len(ids) / statistics.median(t), 1) for name, t in times.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_checks(device: str) -> dict:
    """The accelerator's schedule is bit-identical to the host's, and its deltas match
    the CPU executor's (max abs difference reported)."""
    data = synthetic_clients(300, samples=70)
    ids = np.arange(data.num_clients)
    seeds = client_seeds(5, 3, ids)
    plan = TrainPlan(local_epochs=2, batch_size=16, lr=0.05)
    sizes = data.sizes()
    index, mask = cohort_schedule_tensors(sizes, seeds, plan, steps_for(sizes, plan), device)
    host = cohort_schedule(sizes, seeds, plan)
    same = bool(np.array_equal(index.cpu().numpy(), host.index))
    same &= bool(np.array_equal(mask.cpu().numpy(), host.mask))
    model = MLP(64, [32], 10)
    g = module_vector(model)
    on_dev = VectorizedExecutor(copy.deepcopy(model), data, device=device)
    on_cpu = VectorizedExecutor(copy.deepcopy(model), data)
    diff = np.abs(
        on_dev.train_cohort(g, ids, seeds, plan).deltas
        - on_cpu.train_cohort(g, ids, seeds, plan).deltas
    ).max()
    print(
        f"schedule bit-identical to the host's: {same};"
        f" max |delta(device) - delta(cpu)| = {diff:.2e}"
    )
    return {"schedule_identical": same, "max_abs_delta_diff_vs_cpu": float(diff)}


def gpu_check(device: str, cohorts: list[int], repeats: int) -> dict:
    """Two figures per cohort size: ``on_device`` trains the cohort and takes the FedAvg
    weighted mean of its deltas on the device (updates never leave it); ``to_host`` is
    ``train_cohort``, which copies every client's delta to host memory as the numpy
    ``CohortResult`` that the simulator's server consumes."""
    out: dict = {"device": device, "checks": device_checks(device), "rows": []}
    for k in cohorts:
        data = synthetic_clients(k)
        model = MLP(64, [32], 10)
        g = module_vector(model)
        ids = np.arange(k)
        seeds = client_seeds(0, 1, ids)
        vec = VectorizedExecutor(copy.deepcopy(model), data, device=device, memory_budget_mb=16384)
        weights = torch.from_numpy(data.sizes() / data.sizes().sum()).float().to(device)

        def on_device(vec=vec, g=g, ids=ids, seeds=seeds, weights=weights) -> None:
            deltas, _, _ = vec.train_cohort_tensors(g, ids, seeds, PLAN)
            _ = weights @ deltas
            sync(device)

        def to_host(vec=vec, g=g, ids=ids, seeds=seeds) -> None:
            vec.train_cohort(g, ids, seeds, PLAN)

        row: dict = {"cohort": k}
        for name, fn in (("on_device", on_device), ("to_host", to_host)):
            fn()  # warm-up
            t = statistics.median(timed(fn) for _ in range(repeats))
            row[name] = {"s": round(t, 5), "updates_per_s": round(k / t, 1)}
            print(
                f"cohort {k:>7} {name:>9}: {t:.4f} s  {k / t:>12,.0f} client-updates/s on {device}"
            )
        out["rows"].append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 200 synthetic clients")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cohorts", default="", help="GPU check: comma-separated cohort sizes")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    if args.cohorts:
        out = gpu_check(args.device, [int(c) for c in args.cohorts.split(",")], repeats)
    else:
        scenarios = {
            "digits": digits_clients(),
            "synthetic": synthetic_clients(200 if args.quick else 1000),
        }
        out = {}
        for threads in (1, os.cpu_count() or 1):
            torch.set_num_threads(threads)
            for name, data in scenarios.items():
                out.setdefault(name, {})[str(threads)] = r = measure(data, repeats)
                print(
                    f"{name:<10} threads={threads}: plain {r['plain']:>10,.0f}  "
                    f"sequential {r['sequential']:>10,.0f}  vectorized {r['vectorized']:>10,.0f}"
                    f"  client-updates/s  (vectorized/plain {r['vectorized'] / r['plain']:.1f}x,"
                    f" sequential/plain {r['sequential'] / r['plain']:.2f}x)"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
