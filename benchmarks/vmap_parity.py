"""fedloom's vectorized executor in a whole round against a plain ``torch.func.vmap`` loop.

For each workload and thread count, two implementations do the same math, interleaved
(A, B, A, B ...), and the median pass is reported with their ratio:

- ``fedloom``: one real round, ``Simulation.step`` with the vectorized executor and every
  client of the workload in the cohort: selection, the virtual-time round, the batch
  schedule, training, validation of every update, FedAvg aggregation and the round record
  (evaluation and checkpoints are spaced out of the timed rounds);
- ``plain``: the loop a competent engineer writes with ``torch.func`` (:func:`plain_loop`,
  about 25 lines): the cohort's parameters stacked, per step ``vmap(grad(loss))`` over
  ``functional_call`` on the clients' padded and masked batches, SGD by hand, and the
  example-weighted mean of the deltas as one running sum.

Both visit the same mini-batches (fedloom's seeded schedule, built inside the plain pass
too) with the same learning rate; before timing, one round of each from the same global
model and seeds is compared (max abs difference of the aggregate update).

Workloads (SGD lr 0.05, batch 32 unless said; ``tiny``: 1-2 local steps per client,
``realistic``: 5 local epochs over hundreds of samples per client):

- ``mlp_synthetic``: MLP 64-32-10 on Gaussian features labelled by a random teacher;
  tiny 1,000 clients x 50 samples, 1 epoch (2 steps); realistic 100 x 500, 5 epochs;
- ``mlp_digits``: the same MLP on scikit-learn's standardized digits; tiny 100 IID clients
  (about 18 samples, 1 step); realistic 4 clients (about 450 samples), 5 epochs;
- ``cnn_digits``: the built-in CNN (conv 16, 32, head 64) on the digits as
  ``[n, 1, 8, 8]``; same clients as ``mlp_digits``;
- ``char``: the built-in GRU character model (embedding 8, GRU 128) on windows of 80
  characters of a random Markov text, labelled with the next character; scaled down so a
  run fits in minutes (one client step of batch 16 costs tens of milliseconds on one
  core): tiny 20 clients x 16 sequences (1 step), realistic 4 clients x 32 sequences,
  5 epochs of batch 16 (10 steps).

The tiny workloads measure the round's fixed costs per client (virtual time, update
validation, registry, records) more than training; the realistic ones, the training.

Usage: ``uv run python benchmarks/vmap_parity.py [--json PATH] [--quick] [--threads 1,2]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedloom.assemble import build_simulation
from fedloom.client.schedule import cohort_schedule
from fedloom.config import load_config
from fedloom.data import ArrayDataset, ClientPartition, load_digits, standardize
from fedloom.data.federated import FederatedData
from fedloom.data.partition import iid
from fedloom.models import builtin_task
from fedloom.records import TrainPlan
from fedloom.runs import RunDirectory
from fedloom.sim import Simulation

sys.path.insert(0, str(Path(__file__).parent))
from targets import finish  # noqa: E402

GOAL = 0.9
DELTA_TOLERANCE = 1e-4
VOCAB, SEQ = 80, 80


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # built-in model kind
    hidden: tuple[int, ...]
    data: ClientPartition
    epochs: int
    batch: int
    lr: float = 0.05


# data ----------------------------------------------------------------------------------
def synthetic(clients: int, samples: int, features: int = 64) -> ClientPartition:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(clients * samples, features)).astype(np.float32)
    teacher = rng.normal(size=(features, 10)).astype(np.float32)
    y = np.argmax(x @ teacher + rng.normal(size=(len(x), 10)), axis=1).astype(np.int64)
    return ClientPartition(x, y, np.arange(0, len(x) + 1, samples, dtype=np.int64), 10)


def digits(clients: int, images: bool) -> ClientPartition:
    data = standardize(load_digits())[0]
    if images:
        data = ArrayDataset(data.x.reshape(-1, 1, 8, 8), data.y, data.num_classes)
    return ClientPartition.from_indices(data, iid(len(data), clients, np.random.default_rng(0)))


def chars(clients: int, samples: int) -> ClientPartition:
    """Windows of ``SEQ`` characters of a walk on one random Markov chain over ``VOCAB``
    characters, labelled with the character that follows."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(VOCAB, VOCAB)) * 3.0
    cum = np.cumsum(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), axis=1)
    text = np.empty((clients, samples + SEQ), dtype=np.int64)
    text[:, 0] = rng.integers(VOCAB, size=clients)
    for t in range(1, text.shape[1]):
        u = rng.random(clients)[:, None]
        text[:, t] = np.minimum((cum[text[:, t - 1]] < u).sum(1), VOCAB - 1)
    windows = np.lib.stride_tricks.sliding_window_view(text, SEQ + 1, axis=1)[:, :samples]
    x = np.ascontiguousarray(windows[..., :SEQ]).reshape(-1, SEQ)
    y = np.ascontiguousarray(windows[..., SEQ]).reshape(-1)
    return ClientPartition(x, y, np.arange(0, len(x) + 1, samples, dtype=np.int64), VOCAB)


def workloads(quick: bool) -> list[Workload]:
    """The tiny and realistic variant of each model (``quick``: far fewer clients)."""
    mlp, cnn, char = ("mlp", (32,)), ("cnn", (64,)), ("char", (128,))
    few = 2 if quick else 4
    return [
        Workload("mlp_synthetic tiny", *mlp, synthetic(100 if quick else 1000, 50), 1, 32),
        Workload("mlp_synthetic realistic", *mlp, synthetic(10 if quick else 100, 500), 5, 32),
        Workload("mlp_digits tiny", *mlp, digits(100, False), 1, 32),
        Workload("mlp_digits realistic", *mlp, digits(few, False), 5, 32),
        Workload("cnn_digits tiny", *cnn, digits(100, True), 1, 32),
        Workload("cnn_digits realistic", *cnn, digits(few, True), 5 if not quick else 1, 32),
        Workload("char tiny", *char, chars(4 if quick else 20, 16), 1, 16),
        Workload("char realistic", *char, chars(2 if quick else 4, 32), 5 if not quick else 1, 16),
    ]


# fedloom -------------------------------------------------------------------------------
def make_sim(w: Workload, out: Path, threads: int) -> Simulation:
    """A run whose every round trains all of ``w``'s clients with the vectorized executor;
    evaluation and checkpoints only far beyond the timed rounds."""
    n = w.data.num_clients
    cfg = load_config(
        None,
        [
            f'output_dir="{out}"',
            'name="vmap_parity"',
            "seed=0",
            "rounds=100000",
            f"threads={threads}",
            f"partition.num_clients={n}",
            f"server.clients_per_round={n}",
            "server.over_selection=1.0",
            f"client.local_epochs={w.epochs}",
            f"client.batch_size={w.batch}",
            f"client.lr={w.lr}",
            "evaluation.every=100000",
            "checkpoint.every=100000",
            'simulation.executor="vectorized"',
        ],
    )
    task = builtin_task(w.kind, w.data.sample_shape, "classes", w.data.num_classes, w.hidden)
    test = ArrayDataset(w.data.x[:64], w.data.y[:64], w.data.num_classes)
    data = FederatedData(w.data, None, test)
    return build_simulation(cfg, RunDirectory.create(cfg), data=data, task=task)


# the plain torch.func loop ---------------------------------------------------------------
def plain_loop(model: nn.Module, data: ClientPartition):  # noqa: ANN201 - a closure
    """One FedAvg round with ``torch.func``: returns ``train(g, ids, seeds, plan) -> mean
    delta`` (example-weighted), the clients trained together on stacked parameters."""
    from torch.func import functional_call, grad, vmap

    x, y, sizes = torch.from_numpy(data.x), torch.from_numpy(data.y), data.sizes()
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()], strict=True)
    numels = [s.numel() for s in shapes]

    def loss(params: dict, xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        each = F.cross_entropy(functional_call(model, params, (xb,)), yb, reduction="none")
        return (each * mb).sum() / mb.sum().clamp(min=1.0)

    grads_of = vmap(grad(loss))

    def train(g: torch.Tensor, ids: np.ndarray, seeds: np.ndarray, plan: TrainPlan) -> torch.Tensor:
        k, n = len(ids), sizes[ids]
        sched = cohort_schedule(n, seeds, plan)
        index = torch.from_numpy(sched.index + data.offsets[ids][:, None, None])
        mask = torch.from_numpy(sched.mask).float()
        start = [c.view(s) for c, s in zip(g.split(numels), shapes, strict=True)]
        params = {m: p.expand(k, *p.shape).clone() for m, p in zip(names, start, strict=True)}
        for s in range(index.shape[1]):
            rows = index[:, s]
            grads = grads_of(params, x[rows], y[rows], mask[:, s])
            torch._foreach_add_(list(params.values()), list(grads.values()), alpha=-plan.lr)
        weights = torch.from_numpy(n / n.sum()).float()
        total = torch.zeros_like(g)
        for piece, p, s in zip(total.split(numels), params.values(), start, strict=True):
            piece.copy_(weights @ (p - s).reshape(k, -1))  # one running weighted sum
        return total

    return train


# measurement ---------------------------------------------------------------------------
def recording(sim: Simulation) -> list[tuple]:
    """Record the arguments of every ``train_cohort`` call of ``sim``'s executor."""
    calls: list[tuple] = []
    inner = sim.executor.train_cohort

    def train_cohort(g, ids, seeds, plan, max_steps=None):  # noqa: ANN001, ANN202
        calls.append((g.copy(), np.array(ids), np.array(seeds), plan, max_steps))
        return inner(g, ids, seeds, plan, max_steps)

    sim.executor.train_cohort = train_cohort  # type: ignore[method-assign]
    return calls


def agreement(sim: Simulation, plain) -> tuple[float, TrainPlan]:  # noqa: ANN001
    """Max abs difference between fedloom's aggregate update of one round and the plain
    loop's on the same cohort, seeds, global model and plan (the one fedloom's engine
    dispatched: its batch is capped by the largest client's data), and that plan."""
    calls = recording(sim)
    before = sim.server.start_params.copy()
    sim.step()
    after = sim.server.start_params.copy()
    del sim.executor.train_cohort  # back to the class's method
    (g, ids, seeds, plan, max_steps), *rest = calls
    assert not rest and max_steps is None and len(ids) == sim.data.train.num_clients, calls
    order = np.argsort(ids)
    mean = plain(torch.from_numpy(g), ids[order], seeds[order], plan).numpy()
    return float(np.abs((after - before) - mean).max()), plan


def measure(w: Workload, threads: int, repeats: int, tmp: Path) -> dict:
    torch.set_num_threads(threads)
    sim = make_sim(w, tmp / f"{w.name.replace(' ', '_')}_{threads}", threads)
    torch.set_num_threads(threads)
    plain = plain_loop(sim.trainer.model, w.data)
    diff, plan = agreement(sim, plain)
    ids = np.arange(w.data.num_clients)
    g = torch.from_numpy(sim.server.start_params.copy())
    seeds_of = np.random.default_rng(1)
    times: dict[str, list[float]] = {"fedloom": [], "plain": []}
    sim.step()  # one more warm-up round each
    plain(g, ids, seeds_of.integers(2**62, size=len(ids)), plan)
    for _ in range(repeats):
        t0 = time.perf_counter()
        record = sim.step()
        times["fedloom"].append(time.perf_counter() - t0)
        assert record["completed"] == len(ids), record  # every client trained
        seeds = seeds_of.integers(2**62, size=len(ids))
        t0 = time.perf_counter()
        plain(g, ids, seeds, plan)
        times["plain"].append(time.perf_counter() - t0)
    steps = int(-(-w.data.sizes() // plan.batch_size).max()) * plan.local_epochs
    med = {k: statistics.median(v) for k, v in times.items()}
    rates = {k: float(f"{len(ids) / v:.4g}") for k, v in med.items()}
    row = {
        "clients": int(w.data.num_clients),
        "samples_per_client": [int(w.data.sizes().min()), int(w.data.sizes().max())],
        "local_epochs": plan.local_epochs,
        "batch_size": plan.batch_size,
        "max_local_steps": steps,
        "parameters": int(len(g)),
        "backend": getattr(sim.executor, "backend", sim.executor.name),
        "threads": threads,
        "round_s": {k: round(v, 5) for k, v in med.items()},
        "updates_per_s": rates,
        "ratio": round(med["plain"] / med["fedloom"], 3),
        "max_abs_aggregate_diff": diff,
    }
    print(
        f"{w.name:<24} threads={threads} {row['backend']:>4}: fedloom {rates['fedloom']:>9,.1f}"
        f"  plain vmap {rates['plain']:>9,.1f} client-updates/s  ratio {row['ratio']:.3f}"
        f"  |diff| {diff:.1e}",
        flush=True,
    )
    return row


def targets_of(rows: dict[str, dict]) -> list[dict]:
    out = []
    for key, r in rows.items():
        out.append(
            {
                "name": f"{key}: fedloom round / plain vmap loop",
                "value": r["ratio"],
                "goal": f">= {GOAL}",
                "met": r["ratio"] >= GOAL,
            }
        )
    worst = max(r["max_abs_aggregate_diff"] for r in rows.values())
    out.append(
        {
            "name": "aggregates of fedloom and the plain loop agree (max abs difference)",
            "value": worst,
            "goal": f"<= {DELTA_TOLERANCE:g}",
            "met": worst <= DELTA_TOLERANCE,
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="few clients, 1 timed pass")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated workload name prefixes")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    threads = [int(t) for t in args.threads.split(",")]
    chosen = [
        w
        for w in workloads(args.quick)
        if not args.only or any(w.name.startswith(p) for p in args.only.split(","))
    ]
    if not chosen:
        names = ", ".join(w.name for w in workloads(args.quick))
        parser.error(f"--only = {args.only!r} matches no workload (workloads: {names})")
    start, load = time.perf_counter(), os.getloadavg()[0]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="vmap-parity-") as tmp:
        for w in chosen:
            for t in threads:
                rows[f"{w.name}, {t} thread{'s' if t > 1 else ''}"] = measure(
                    w, t, repeats, Path(tmp)
                )
    result = {
        "command": " ".join(["benchmarks/vmap_parity.py", *sys.argv[1:]]),
        "repeats": repeats,
        "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "rows": rows,
        "total_s": round(time.perf_counter() - start, 1),
    }
    result["targets"] = targets_of(rows)
    finish(result, args.json)


if __name__ == "__main__":
    main()
