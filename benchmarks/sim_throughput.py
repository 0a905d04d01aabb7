"""Client updates per second: hand-written PyTorch loops vs fedloom sequential vs vectorized.

A pass trains every client of a workload once from the same global model (fedloom's
seeded mini-batches, SGD, batch 32, lr 0.05) and returns the FedAvg update: the mean of
the clients' deltas weighted by example count. Tiny workloads (1 local epoch: one or two
SGD steps per client, which mostly measures per-client setup):
- ``digits``: MLP 64-32-10 on scikit-learn digits (standardized), 100 IID clients of
  about 18 samples;
- ``synthetic``: the same MLP, 1,000 clients x 50 samples x 64 Gaussian features;
- ``cnn`` / ``cnn_group``: the built-in LeNet-style CNN (conv 16 and 32, head 64; no
  normalization / GroupNorm) on the digits as ``[n, 1, 8, 8]`` images, 100 IID clients;
- ``char``: the built-in GRU character model (embedding 8, GRU 128) on synthetic token
  sequences ``[n, 80]`` (a random Markov chain over 80 characters) with the next
  character as label, 20 clients x 16 sequences (a client update costs 0.1-0.6 s on
  one core, so this keeps the run to a few minutes).
Realistic workloads (5 local epochs over 500 samples per client: 80 steps each):
- ``synthetic_5ep``: the MLP on 100 clients x 500 Gaussian samples;
- ``cnn_5ep``: the CNN on 20 clients x 500 Gaussian ``[1, 8, 8]`` images.
Fewer clients than the tiny workloads keep the run to a few minutes: an update of 80
steps costs about 0.05 s (MLP) and 0.3 s (CNN) one client at a time on one core.

Implementations, all on the same mini-batches:
- ``plain_reused``: the fair one-client-at-a-time loop: one module and one
  ``torch.optim.SGD`` for every client; at each client's start the global weights are
  copied into one buffer and ``nn.utils.vector_to_parameters`` points the module at it;
  ``zero_grad(set_to_none=False)`` (gradients allocated once); each trained model is
  added to one running weighted sum;
- ``plain_vmap``: the fair batched loop, ``torch.func``: the cohort's parameters stacked,
  ``vmap(grad(loss))`` over ``functional_call`` each step (short batches padded and
  masked), SGD by hand, each chunk's models added to one running weighted sum;
- ``plain_deepcopy`` (tiny MLP workloads only, historical): deep-copies the model and
  builds ``torch.optim.SGD`` per client, the baseline of fedloom's earliest figures;
- ``sequential`` and ``vectorized``: fedloom's executors (``train_cohort``, then the
  weighted mean of its ``[K, d]`` deltas).

The FedAvg update of every implementation on one cohort (which is also every
implementation's warm-up), and the single-client deltas of three clients, are checked
against the sequential executor's (max abs difference, goal <= 1e-4). Then the
implementations are timed in turn (interleaved), ``--repeats`` times, and the median
pass is reported with the ratios to ``plain_reused`` and ``plain_vmap``. One torch
thread (``--threads 1,2`` measures again with two). ``auto``: ``pick_faster`` on the
trial cohort the simulator uses (its largest clients, two local steps), checked against
the executor that was faster in the full measurement.

``--device cuda --cohorts 1000,10000,100000`` runs only the vectorized executor on the
synthetic workload with those cohort sizes (the GPU check).

Usage: ``uv run python benchmarks/sim_throughput.py [--json PATH] [--quick]
[--workloads digits,cnn_5ep]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from targets import finish
from torch import nn

from fedloom.client.schedule import (
    batch_schedule,
    client_seeds,
    cohort_schedule,
    cohort_schedule_tensors,
    steps_for,
)
from fedloom.client.trainer import TorchTrainer
from fedloom.data import ArrayDataset, ClientPartition, load_digits, standardize
from fedloom.data.partition import iid
from fedloom.models import MLP, builtin_task
from fedloom.params import module_vector
from fedloom.records import TrainPlan
from fedloom.sim.executor import SequentialExecutor
from fedloom.sim.executor_trial import pick_faster
from fedloom.sim.vectorized import VectorizedExecutor
from fedloom.task import ResolvedTask

PLAN = TrainPlan(local_epochs=1, batch_size=32, lr=0.05)
REALISTIC = replace(PLAN, local_epochs=5)  # 5 epochs over 500 samples: 80 steps a client
DELTA_TOLERANCE = 1e-4
VOCAB, SEQ = 80, 80
Train = Callable[[np.ndarray, np.ndarray, np.ndarray, TrainPlan], np.ndarray]
BASELINES = ("plain_reused", "plain_vmap")  # the fair hand-written loops
EXECUTORS = ("sequential", "vectorized")


@dataclass(frozen=True)
class Workload:
    name: str
    model: nn.Module
    task: ResolvedTask
    data: ClientPartition
    deepcopy_baseline: bool  # also time the deep-copying plain loop (historical column)
    vmap_chunk: int  # clients per vmap call in the plain torch.func loop (bounds memory)
    plan: TrainPlan = PLAN


# data --------------------------------------------------------------------------------
def digits_clients(images: bool = False) -> ClientPartition:
    data = standardize(load_digits())[0]
    if images:
        data = ArrayDataset(data.x.reshape(-1, 1, 8, 8), data.y, data.num_classes)
    return ClientPartition.from_indices(data, iid(len(data), 100, np.random.default_rng(0)))


def synthetic_clients(
    num_clients: int, samples: int = 50, features: int = 64, images: bool = False
) -> ClientPartition:
    """Gaussian features labelled by a noisy random linear teacher; ``images`` shapes
    the 64 features as ``[1, 8, 8]``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_clients * samples, features)).astype(np.float32)
    teacher = rng.normal(size=(features, 10)).astype(np.float32)
    y = np.argmax(x @ teacher + rng.normal(size=(len(x), 10)), axis=1).astype(np.int64)
    offsets = np.arange(0, len(x) + 1, samples, dtype=np.int64)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return ClientPartition(x, y, offsets, 10)


def char_clients(num_clients: int, samples: int = 16) -> ClientPartition:
    """Each client's text is a walk on one random Markov chain over ``VOCAB`` characters
    (each character has a few likely successors); its examples are windows of ``SEQ``
    characters labelled with the character that follows."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(VOCAB, VOCAB)) * 3.0
    cum = np.cumsum(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), axis=1)
    length = samples + SEQ
    text = np.empty((num_clients, length), dtype=np.int64)
    text[:, 0] = rng.integers(VOCAB, size=num_clients)
    for t in range(1, length):
        u = rng.random(num_clients)[:, None]
        text[:, t] = np.minimum((cum[text[:, t - 1]] < u).sum(1), VOCAB - 1)
    windows = np.lib.stride_tricks.sliding_window_view(text, SEQ + 1, axis=1)[:, :samples]
    x = np.ascontiguousarray(windows[..., :SEQ]).reshape(-1, SEQ)
    y = np.ascontiguousarray(windows[..., SEQ]).reshape(-1)
    offsets = np.arange(0, len(x) + 1, samples, dtype=np.int64)
    return ClientPartition(x, y, offsets, VOCAB)


WORKLOADS = ("digits", "synthetic", "cnn", "cnn_group", "char", "synthetic_5ep", "cnn_5ep")


def workloads(quick: bool, names: tuple[str, ...] = WORKLOADS) -> list[Workload]:
    """The named workloads (``--quick``: fewer clients and samples, same models)."""

    def builtin(kind: str, data: ClientPartition, **options) -> tuple[nn.Module, ResolvedTask]:
        task = builtin_task(kind, data.sample_shape, "classes", data.num_classes, **options)
        return task.build_model(0), task.resolved("classes")

    def mlp(data: ClientPartition) -> tuple[nn.Module, ResolvedTask]:
        return builtin("mlp", data, hidden=(32,))

    def cnn(data: ClientPartition, **options) -> tuple[nn.Module, ResolvedTask]:
        return builtin("cnn", data, hidden=(64,), **options)

    samples = 100 if quick else 500
    build: dict[str, Callable[[], Workload]] = {
        "digits": lambda: Workload("digits", *mlp(d := digits_clients()), d, True, 1000),
        "synthetic": lambda: Workload(
            "synthetic", *mlp(d := synthetic_clients(200 if quick else 1000)), d, True, 1000
        ),
        "cnn": lambda: Workload("cnn", *cnn(d := digits_clients(images=True)), d, False, 100),
        "cnn_group": lambda: Workload(
            "cnn_group", *cnn(d := digits_clients(images=True), norm="group"), d, False, 100
        ),
        "char": lambda: Workload(
            "char",
            *builtin("char", d := char_clients(8 if quick else 20), hidden=(128,)),
            d,
            False,
            20,
        ),
        "synthetic_5ep": lambda: Workload(
            "synthetic_5ep",
            *mlp(d := synthetic_clients(20 if quick else 100, samples)),
            d,
            False,
            100,
            REALISTIC,
        ),
        "cnn_5ep": lambda: Workload(
            "cnn_5ep",
            *cnn(d := synthetic_clients(4 if quick else 20, samples, images=True)),
            d,
            False,
            20,
            REALISTIC,
        ),
    }
    return [build[name]() for name in names]


# hand-written baselines ----------------------------------------------------------------
def _weights(data: ClientPartition, ids: np.ndarray) -> np.ndarray:
    """FedAvg weights: example counts."""
    return data.sizes()[ids].astype(np.float64)


def deepcopy_loop(model: nn.Module, data: ClientPartition) -> Train:
    """The historical baseline: deepcopy and a fresh SGD per client, every client's model
    kept until a generator averages them at the end."""
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)

    def train(g: np.ndarray, ids: np.ndarray, seeds: np.ndarray, plan: TrainPlan) -> np.ndarray:
        start = torch.from_numpy(g)
        nn.utils.vector_to_parameters(start.clone(), model.parameters())
        models, weights = [], _weights(data, ids)
        for cid, seed in zip(ids, seeds, strict=True):
            lo, hi = int(data.offsets[cid]), int(data.offsets[cid + 1])
            local = copy.deepcopy(model)
            opt = torch.optim.SGD(local.parameters(), lr=plan.lr)
            for idx in batch_schedule(hi - lo, plan, int(seed)):
                index = torch.from_numpy(idx + lo)
                opt.zero_grad()
                F.cross_entropy(local(x[index]), y[index]).backward()
                opt.step()
            models.append(local)
        total = float(weights.sum())
        with torch.no_grad():
            mean = sum(
                nn.utils.parameters_to_vector(m.parameters()) * (w / total)
                for m, w in zip(models, weights, strict=True)
            )
            return (mean - start).numpy()

    return train


def reused_loop(model: nn.Module, data: ClientPartition) -> Train:
    """The fair one-client-at-a-time loop: one module and one ``torch.optim.SGD`` for
    every client. At each client's start the global weights are copied into one buffer
    and ``vector_to_parameters`` points the module's parameters at it; gradients are
    zeroed in place (allocated once); each trained model joins one running weighted sum."""
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=PLAN.lr)
    work = torch.empty(sum(p.numel() for p in params))
    model.train()

    def train(g: np.ndarray, ids: np.ndarray, seeds: np.ndarray, plan: TrainPlan) -> np.ndarray:
        start = torch.from_numpy(g)
        for group in opt.param_groups:
            group["lr"] = plan.lr
        total = torch.zeros_like(start)
        weights = _weights(data, ids)
        for cid, seed, weight in zip(ids, seeds, weights, strict=True):
            lo, hi = int(data.offsets[cid]), int(data.offsets[cid + 1])
            with torch.no_grad():
                work.copy_(start)
                nn.utils.vector_to_parameters(work, params)
            for idx in batch_schedule(hi - lo, plan, int(seed)):
                index = torch.from_numpy(idx + lo)
                opt.zero_grad(set_to_none=False)
                F.cross_entropy(model(x[index]), y[index]).backward()
                opt.step()
            with torch.no_grad():
                total.add_(nn.utils.parameters_to_vector(params), alpha=float(weight))
        return (total.div_(float(weights.sum())) - start).numpy()

    return train


def vmap_loop(model: nn.Module, data: ClientPartition, chunk: int) -> Train:
    """The fair batched loop, ``torch.func``: stacked parameters of ``chunk`` clients at
    a time, per step ``vmap(grad(loss))`` of ``functional_call`` on the clients' padded
    batches (padding masked out of the mean), then an SGD step by hand; each chunk's
    trained models join one running weighted sum."""
    from torch.func import functional_call, grad, vmap

    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]
    model.train()

    def loss(params: dict, xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        each = F.cross_entropy(functional_call(model, params, (xb,)), yb, reduction="none")
        return (each * mb).sum() / mb.sum().clamp(min=1.0)

    grads_of = vmap(grad(loss))

    def train(g: np.ndarray, ids: np.ndarray, seeds: np.ndarray, plan: TrainPlan) -> np.ndarray:
        start = torch.from_numpy(g)
        pieces = [c.view(s) for c, s in zip(start.split(numels), shapes, strict=True)]
        weights = _weights(data, ids)
        total = torch.zeros_like(start)
        for lo in range(0, len(ids), chunk):
            part, part_seeds = ids[lo : lo + chunk], seeds[lo : lo + chunk]
            k = len(part)
            sched = cohort_schedule(data.sizes()[part], part_seeds, plan)
            index = torch.from_numpy(sched.index + data.offsets[part][:, None, None])
            mask = torch.from_numpy(sched.mask).float()
            params = {
                n: p.unsqueeze(0).expand(k, *p.shape).clone()
                for n, p in zip(names, pieces, strict=True)
            }
            for s in range(index.shape[1]):
                rows = index[:, s]
                grads = grads_of(params, x[rows], y[rows], mask[:, s])
                torch._foreach_add_(list(params.values()), list(grads.values()), alpha=-plan.lr)
            stacked = torch.cat([p.reshape(k, -1) for p in params.values()], dim=1)
            total.addmv_(stacked.T, torch.from_numpy(weights[lo : lo + k]).float())
        return (total.div_(float(weights.sum())) - start).numpy()

    return train


def fedloom_round(executor: SequentialExecutor | VectorizedExecutor) -> Train:
    """A fedloom executor's ``train_cohort`` and the weighted mean of its deltas."""

    def train(g: np.ndarray, ids: np.ndarray, seeds: np.ndarray, plan: TrainPlan) -> np.ndarray:
        result = executor.train_cohort(g, ids, seeds, plan)
        weights = result.num_examples / result.num_examples.sum()
        return weights.astype(np.float32) @ result.deltas

    return train


# measurement ---------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def implementations(
    w: Workload,
) -> tuple[dict[str, Train], VectorizedExecutor, SequentialExecutor]:
    """Every implementation of one pass over ``w``'s clients, each with its own model,
    and the two executors (for the ``auto`` trial)."""

    def fresh() -> nn.Module:
        return copy.deepcopy(w.model)

    seq = SequentialExecutor(TorchTrainer(fresh(), w.task), w.data)
    vec = VectorizedExecutor(fresh(), w.data, task=w.task)
    methods: dict[str, Train] = {
        "plain_reused": reused_loop(fresh(), w.data),
        "plain_vmap": vmap_loop(fresh(), w.data, w.vmap_chunk),
    }
    if w.deepcopy_baseline:
        methods["plain_deepcopy"] = deepcopy_loop(fresh(), w.data)
    methods["sequential"] = fedloom_round(seq)
    methods["vectorized"] = fedloom_round(vec)
    return methods, vec, seq


def delta_check(
    methods: dict[str, Train], g: np.ndarray, ids: np.ndarray, plan: TrainPlan
) -> dict[str, float]:
    """Max abs difference from the sequential executor of each implementation's FedAvg
    update of the whole cohort and of three single clients (other seeds than the timed
    passes); also every implementation's warm-up pass (lazy imports, allocator)."""
    seeds = client_seeds(7, 2, ids)
    cohorts = [(ids, seeds)] + [
        (ids[i : i + 1], seeds[i : i + 1]) for i in (0, len(ids) // 2, len(ids) - 1)
    ]
    refs = [methods["sequential"](g, c, s, plan) for c, s in cohorts]
    return {
        name: max(
            float(np.abs(train(g, c, s, plan) - ref).max())
            for (c, s), ref in zip(cohorts, refs, strict=True)
        )
        for name, train in methods.items()
        if name != "sequential"
    }


def measure(
    methods: dict[str, Train], g: np.ndarray, ids: np.ndarray, plan: TrainPlan, repeats: int
) -> dict:
    """Client updates per second of each implementation: passes interleaved, median."""
    seeds = client_seeds(0, 1, ids)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, train in methods.items():
            times[name].append(timed(lambda train=train: train(g, ids, seeds, plan)))
    return {name: round(len(ids) / statistics.median(t), 1) for name, t in times.items()}


def ratios(rates: dict[str, float]) -> dict[str, float]:
    """Each fedloom executor over each fair baseline, and fedloom's faster executor over
    the faster baseline (> 1: fedloom is faster)."""
    out = {f"{e}/{b}": round(rates[e] / rates[b], 3) for e in EXECUTORS for b in BASELINES}
    best = max(rates[e] for e in EXECUTORS) / max(rates[b] for b in BASELINES)
    out["best_fedloom/best_plain"] = round(best, 3)
    return out


def auto_choice(
    w: Workload,
    vec: VectorizedExecutor,
    seq: SequentialExecutor,
    g: np.ndarray,
    rates: dict[str, float],
) -> dict:
    """What ``pick_faster`` chooses on the simulator's trial cohort, against the faster
    executor of the full measurement."""
    from fedloom.assemble import TRIAL_CLIENTS  # not needed by the GPU check

    sizes = w.data.sizes()
    ids = np.sort(np.argsort(-sizes, kind="stable")[:TRIAL_CLIENTS])
    plan = replace(w.plan, local_steps=2, local_epochs=1)
    best, timings = pick_faster([vec, seq], g, ids, np.arange(len(ids), dtype=np.int64), plan)
    faster = max(("vectorized", "sequential"), key=lambda name: rates[name])
    return {
        "picked": best.name,
        "trial_ms_per_update": {
            n: round(t * 1e3, 4) if isinstance(t, float) else t for n, t in timings.items()
        },
        "faster_measured": faster,
        "vectorized_over_sequential": round(rates["vectorized"] / rates["sequential"], 3),
    }


def targets_of(results: dict[str, dict]) -> list[dict]:
    """The throughput goal against the fair loop, fedloom's faster executor against the
    faster hand-written loop, the agreement of every implementation's updates, and
    ``auto`` never choosing the slower executor."""
    out = []
    synthetic = results.get("synthetic", {}).get("updates_per_s", {}).get("1")
    if synthetic is not None:
        ratio = round(synthetic["vectorized"] / synthetic["plain_reused"], 2)
        out.append(
            {
                "name": "synthetic mlp (1-2 steps): vectorized / plain_reused loop, 1 thread",
                "value": ratio,
                "goal": ">= 10",
                "met": ratio >= 10,
            }
        )
    for name, r in results.items():
        for threads, rates in r["updates_per_s"].items():
            best = ratios(rates)["best_fedloom/best_plain"]
            out.append(
                {
                    "name": f"{name}: fedloom's faster executor / the faster of plain_reused "
                    f"and plain_vmap, {threads} thread(s)",
                    "value": best,
                    "goal": ">= 1 (not slower than hand-written PyTorch)",
                    "met": best >= 1,
                }
            )
    for name, r in results.items():
        worst = max(r["max_abs_delta_diff"].values())
        out.append(
            {
                "name": f"{name}: updates of every implementation agree with sequential",
                "value": worst,
                "goal": f"<= {DELTA_TOLERANCE:g}",
                "met": worst <= DELTA_TOLERANCE,
            }
        )
    for name, r in results.items():
        a = r["auto"]
        out.append(
            {
                "name": f"{name} vectorized/sequential executor: auto picks the faster",
                "value": a["picked"],
                "goal": f"{a['faster_measured']} (vectorized/sequential "
                f"{a['vectorized_over_sequential']}x in the full measurement)",
                "met": a["picked"] == a["faster_measured"],
            }
        )
    return out


def cpu_benchmark(
    quick: bool, repeats: int, thread_counts: list[int], names: tuple[str, ...] = WORKLOADS
) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for w in workloads(quick, names):
        torch.set_num_threads(1)
        methods, vec, seq = implementations(w)
        g = module_vector(w.model)
        ids = np.arange(w.data.num_clients)
        sizes = w.data.sizes()
        r = results[w.name] = {
            "clients": int(w.data.num_clients),
            "examples": int(len(w.data.y)),
            "samples_per_client": [int(sizes.min()), int(sizes.max())],
            "local_epochs": w.plan.local_epochs,
            "steps_per_client": [
                int(steps_for(sizes, w.plan).min()),
                int(steps_for(sizes, w.plan).max()),
            ],
            "sample_shape": list(w.data.sample_shape),
            "parameters": int(len(g)),
            "vectorized_backend": vec.backend,
            "max_abs_delta_diff": delta_check(methods, g, ids, w.plan),
            "updates_per_s": {},
            "ratios": {},
        }
        for threads in thread_counts:
            torch.set_num_threads(threads)
            rates = r["updates_per_s"][str(threads)] = measure(methods, g, ids, w.plan, repeats)
            rel = r["ratios"][str(threads)] = ratios(rates)
            shown = "  ".join(f"{n} {v:,.1f}" for n, v in rates.items())
            print(f"{w.name:<14}threads={threads}: {shown}  client-updates/s", flush=True)
            print(f"{'':<14}" + "  ".join(f"{n} {v:.2f}x" for n, v in rel.items()), flush=True)
        torch.set_num_threads(thread_counts[0])  # the trial, at the first thread count
        r["auto"] = auto_choice(w, vec, seq, g, r["updates_per_s"][str(thread_counts[0])])
        diff = max(r["max_abs_delta_diff"].values())
        print(
            f"{w.name:<14}max |update - sequential's| {diff:.1e}; auto picked "
            f"{r['auto']['picked']} ({r['auto']['trial_ms_per_update']} ms per update), "
            f"faster measured: {r['auto']['faster_measured']}",
            flush=True,
        )
    out: dict = {
        "plans": {
            "tiny": {
                "local_epochs": PLAN.local_epochs,
                "batch_size": PLAN.batch_size,
                "lr": PLAN.lr,
            },
            "realistic": {
                "local_epochs": REALISTIC.local_epochs,
                "batch_size": REALISTIC.batch_size,
                "lr": REALISTIC.lr,
            },
        },
        "repeats": repeats,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "workloads": results,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    out["targets"] = targets_of(results)
    return out


# GPU check -------------------------------------------------------------------------------
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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repeat, 200 synthetic and 8 char clients, realistic workloads of 20 and 4 "
        "clients x 100 samples",
    )
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated workload names"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cohorts", default="", help="GPU check: comma-separated cohort sizes")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    names = tuple(n for n in args.workloads.split(",") if n)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        parser.error(f"--workloads {args.workloads!r}: expected names from {', '.join(WORKLOADS)}")
    repeats = 1 if args.quick else args.repeats
    if args.cohorts:
        out = gpu_check(args.device, [int(c) for c in args.cohorts.split(",")], repeats)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2))
        return
    threads = [int(t) for t in args.threads.split(",")]
    finish(cpu_benchmark(args.quick, repeats, threads, names), args.json)


if __name__ == "__main__":
    main()
