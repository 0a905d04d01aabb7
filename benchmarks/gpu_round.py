"""Full simulated rounds per second with the updates kept on the device, next to a plain
``torch.func`` loop on the same device.

Workload (that of ``sim_throughput.py``'s GPU check): MLP 64-32-10 (2,410 parameters),
every client holds 50 samples x 64 Gaussian features, 1 local epoch of batch 32 (2
steps), SGD lr 0.05.

- ``fedloom_round``: one real fedloom round: ``SyncServer.begin_cohort`` (selection,
  each client's seed; the cohort's dispatches as arrays), the vectorized executor's
  ``train_cohort_tensors`` (the batch schedule built on the device, the deltas left
  there), ``receive_cohort`` (shape, finiteness, norm, count and metric checks),
  ``close_round`` (FedAvg weighted mean, or with ``--dp`` central DP's clipping and
  Gaussian noise, then the server optimizer, FedAdam) and the round's record
  (``round_record``).
- ``train_only``: ``train_cohort_tensors`` alone, synchronized.
- ``plain_vmap``: a plain loop on the device: the cohort's parameters stacked,
  ``vmap(grad(loss))`` over ``functional_call`` per step on the same batches (fedloom's
  schedule, built on the device), an SGD step by hand, then the example-weighted mean
  of the deltas added to the global model.

A check round first (also the warm-up) runs fedloom's round with FedAvg (server lr 1)
and the plain loop from the same model: the two new models must agree (max abs
difference <= 1e-5). Every device-to-host copy of fedloom's chain goes through
``device_chain.to_host``; the bytes it copies per round are reported (the per-client
norms and verdicts, loss statistics, the reduced sum and the contributions, never a
client's delta). Then the three are timed in turn (A, B, C, A, B, C ...) ``--repeats``
times per cohort size and the median is reported.

Usage: ``uv run python benchmarks/gpu_round.py --device cpu --cohorts 100,1000
[--dp] [--json PATH] [--quick]``; the GPU check runs it with ``--device cuda
--cohorts 1000,10000,100000`` (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedloom.client.schedule import client_seeds, cohort_schedule_tensors, steps_for
from fedloom.data import ClientPartition
from fedloom.models import MLP
from fedloom.optim import FedAdam, FedAvg, ServerOptimizer
from fedloom.params import module_vector
from fedloom.privacy.central import CentralDP
from fedloom.records import TrainPlan
from fedloom.server import device_chain
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.engine import round_record
from fedloom.server.sync import SyncServer
from fedloom.sim.device_round import train_cohort
from fedloom.sim.vectorized import VectorizedExecutor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import finish  # noqa: E402

PLAN = TrainPlan(local_epochs=1, batch_size=32, lr=0.05)
SAMPLES, FEATURES = 50, 64
AGREEMENT = 1e-5
FULL_ROUND_GOAL = 1_000_000  # client-updates/s at 10,000 clients (on an accelerator)


def synthetic_clients(num_clients: int) -> ClientPartition:
    """``num_clients`` clients of ``SAMPLES`` Gaussian examples labelled by a noisy
    linear teacher (as ``sim_throughput.synthetic_clients``)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_clients * SAMPLES, FEATURES)).astype(np.float32)
    teacher = rng.normal(size=(FEATURES, 10)).astype(np.float32)
    y = np.argmax(x @ teacher + rng.normal(size=(len(x), 10)), axis=1).astype(np.int64)
    offsets = np.arange(0, len(x) + 1, SAMPLES, dtype=np.int64)
    return ClientPartition(x, y, offsets, 10)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CopySpy:
    """Counts the bytes fedloom's device chain copies to the host, and the rows of
    ``dim`` values among them (a client's delta is such a row)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.bytes = 0
        self.delta_rows = 0
        self._real = device_chain.to_host

    def __enter__(self) -> CopySpy:
        def spy(t: torch.Tensor) -> np.ndarray:
            out = self._real(t)
            self.bytes += out.nbytes
            if out.ndim == 2 and out.shape[1] == self.dim:
                self.delta_rows += out.shape[0]
            return out

        device_chain.to_host = spy  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        device_chain.to_host = self._real  # type: ignore[assignment]


def fedloom_server(params: np.ndarray, k: int, optimizer: ServerOptimizer, dp: bool) -> SyncServer:
    """A server that asks all ``k`` clients every round."""
    central = (
        CentralDP(clip_norm=1.0, noise_multiplier=1.0, expected_clients=k, seed=0) if dp else None
    )
    return SyncServer(
        params,
        num_clients=k,
        clients_per_round=k,
        plan=PLAN,
        optimizer=optimizer,
        monitor=ConvergenceMonitor(),
        seed=0,
        dp=central,
    )


def fedloom_round(server: SyncServer, executor: VectorizedExecutor) -> dict:
    """One whole round (module docstring); its record."""
    t0 = time.perf_counter()
    cohort = server.begin_cohort()
    rows = train_cohort(executor, server.start_params, cohort)
    refused = server.receive_cohort(rows)
    if refused:
        raise RuntimeError(f"{len(refused)} updates refused: {next(iter(refused.values()))}")
    result = server.close_round()
    return round_record(result, {}, time.perf_counter() - t0)


def plain_vmap(
    model: torch.nn.Module, data: ClientPartition, device: torch.device
) -> Callable[[torch.Tensor, np.ndarray, np.ndarray], torch.Tensor]:
    """The plain loop (module docstring): the new global model after one FedAvg round."""
    from torch.func import functional_call, grad, vmap

    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    offsets = torch.from_numpy(data.offsets[:-1]).to(device)
    sizes = data.sizes()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]

    def loss(params: dict, xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        each = F.cross_entropy(functional_call(model, params, (xb,)), yb, reduction="none")
        return (each * mb).sum() / mb.sum().clamp(min=1.0)

    grads_of = vmap(grad(loss))

    def round_(g: torch.Tensor, ids: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
        k = len(ids)
        steps = steps_for(sizes[ids], PLAN)
        index, mask = cohort_schedule_tensors(sizes[ids], seeds, PLAN, steps, device)
        index = torch.where(mask, index, index[:, :, :1]) + offsets[ids].view(k, 1, 1)
        mask = mask.float()
        pieces = [c.view(s) for c, s in zip(g.split(numels), shapes, strict=True)]
        params = {
            n: p.unsqueeze(0).expand(k, *p.shape).clone()
            for n, p in zip(names, pieces, strict=True)
        }
        for s in range(index.shape[1]):
            rows = index[:, s]
            grads = grads_of(params, x[rows], y[rows], mask[:, s])
            torch._foreach_add_(list(params.values()), list(grads.values()), alpha=-PLAN.lr)
        deltas = torch.cat([p.reshape(k, -1) for p in params.values()], dim=1) - g
        counts = torch.from_numpy(sizes[ids]).to(device=device, dtype=torch.float32)
        return g + (counts / counts.sum()) @ deltas

    return round_


def cohort_row(k: int, device: torch.device, repeats: int, dp: bool) -> dict:
    data = synthetic_clients(k)
    model = MLP(FEATURES, [32], 10)
    g = module_vector(model)
    ids = np.arange(k)
    executor = VectorizedExecutor(
        copy.deepcopy(model), data, device=device, memory_budget_mb=1 << 16
    )
    plain = plain_vmap(copy.deepcopy(model).to(device), data, device)
    g_dev = torch.from_numpy(g).to(device)

    # the check round (and warm-up): the same new model from fedloom and the plain loop
    check = fedloom_server(g.copy(), k, FedAvg(lr=1.0), dp=False)
    seeds = client_seeds(check.seed, 1, ids)  # the seeds begin_round gives round 1
    with CopySpy(len(g)) as spy:
        fedloom_round(check, executor)
    expected = device_chain.to_host(plain(g_dev, ids, seeds))
    diff = float(np.abs(check.params - expected).max())

    server = fedloom_server(g.copy(), k, FedAdam(), dp)
    fedloom_round(server, executor)  # warm-up of the timed configuration

    def run_fedloom() -> None:
        fedloom_round(server, executor)

    def run_train() -> None:
        executor.train_cohort_tensors(g, ids, seeds, PLAN)
        sync(device)

    def run_plain() -> None:
        plain(g_dev, ids, seeds)
        sync(device)

    run_plain()
    run_train()
    methods = {"fedloom_round": run_fedloom, "train_only": run_train, "plain_vmap": run_plain}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):  # interleaved, so load changes hit all three alike
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    row: dict = {
        "cohort": k,
        "max_abs_model_diff_vs_plain": diff,
        "host_bytes_per_round": spy.bytes,
        "delta_rows_copied": spy.delta_rows,
    }
    for name, t in times.items():
        s = statistics.median(t)
        row[name] = {"s": round(s, 6), "updates_per_s": round(k / s, 1)}
    shown = "  ".join(
        f"{n} {row[n]['s']:.4f} s ({row[n]['updates_per_s']:,.0f}/s)" for n in methods
    )
    print(
        f"cohort {k:>7}: {shown}  |model diff| {diff:.1e}  host copy {spy.bytes:,} B/round",
        flush=True,
    )
    return row


def targets_of(rows: list[dict], device: torch.device) -> list[dict]:
    """Agreement with the plain loop, no client's delta copied to the host, the full
    round against the plain loop at the largest cohort, and (accelerator) 1M/s at 10k."""
    worst = max(r["max_abs_model_diff_vs_plain"] for r in rows)
    copied = sum(r["delta_rows_copied"] for r in rows)
    last = rows[-1]
    ratio = round(last["fedloom_round"]["updates_per_s"] / last["plain_vmap"]["updates_per_s"], 3)
    out = [
        {
            "name": "fedloom round's model agrees with the plain vmap loop's (FedAvg, lr 1)",
            "value": worst,
            "goal": f"<= {AGREEMENT:g}",
            "met": worst <= AGREEMENT,
        },
        {
            "name": "client deltas (rows of the model's size) copied to the host, check rounds",
            "value": copied,
            "goal": "0",
            "met": copied == 0,
        },
        {
            "name": f"full round / plain vmap loop at {last['cohort']:,} clients on {device}",
            "value": ratio,
            "goal": ">= 1",
            "met": ratio >= 1,
        },
    ]
    at_10k = next((r for r in rows if r["cohort"] == 10_000), None)
    if device.type == "cuda" and at_10k is not None:
        rate = at_10k["fedloom_round"]["updates_per_s"]
        out.append(
            {
                "name": "full round client-updates/s at 10,000 clients",
                "value": rate,
                "goal": f">= {FULL_ROUND_GOAL:,}",
                "met": rate >= FULL_ROUND_GOAL,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--cohorts", default="100,1000", help="comma-separated cohort sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--dp", action="store_true", help="central DP (clip 1, noise 1)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="cohorts 20,60 and 1 repeat")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    torch.set_num_threads(args.threads)
    try:
        cohorts = [int(c) for c in ("20,60" if args.quick else args.cohorts).split(",")]
    except ValueError:
        parser.error(f"--cohorts {args.cohorts!r}: expected comma-separated integers")
    if not cohorts or min(cohorts) < 1:
        parser.error(f"--cohorts {args.cohorts!r}: every cohort needs at least one client")
    repeats = 1 if args.quick else args.repeats
    started = time.perf_counter()
    load = os.getloadavg()[0]
    rows = [cohort_row(k, device, repeats, args.dp) for k in cohorts]
    dim = len(module_vector(MLP(FEATURES, [32], 10)))
    result = {
        "device": str(device)
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "threads": args.threads,
        "plan": {"local_epochs": 1, "batch_size": PLAN.batch_size, "lr": PLAN.lr},
        "parameters": dim,
        "central_dp": args.dp,
        "repeats": repeats,
        "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
        "rows": rows,
        "total_s": round(time.perf_counter() - started, 1),
    }
    result["targets"] = targets_of(rows, device)
    finish(result, args.json)


if __name__ == "__main__":
    main()
