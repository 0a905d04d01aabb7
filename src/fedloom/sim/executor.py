"""Executors train a round's dispatched clients inside one process.

Two implementations with one interface, ``train_cohort``: the sequential executor runs
clients one after another through one reused ``TorchTrainer``; the vectorized executor
(``sim/vectorized.py``) trains the whole cohort at once. ``run`` turns dispatches into
``Update`` records for the server, grouping clients that share a training plan. How many
batch losses each client samples for progress monitoring is the trainer's (sequential)
or the executor's (vectorized) ``loss_samples``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fedloom.client.schedule import NO_CAP, examples_seen
from fedloom.client.trainer import TorchTrainer
from fedloom.data.arrays import ClientPartition
from fedloom.records import ClientMetrics, Dispatch, TrainPlan, Update


@dataclass(frozen=True)
class CohortResult:
    """What a cohort's local training produced, one row per client."""

    deltas: np.ndarray  # float32 [K, d]: local minus global
    num_examples: np.ndarray  # int64 [K]
    train_loss: np.ndarray  # float64 [K]: mean loss over the client's steps
    train_loss_sq: np.ndarray  # float64 [K]: mean squared batch loss
    steps: np.ndarray  # int64 [K]
    # each client's sampled batch losses (ClientMetrics.loss_samples); () when none kept
    loss_samples: tuple[tuple[float, ...], ...] = ()


class Executor(Protocol):
    name: str

    def train_cohort(
        self,
        global_params: np.ndarray,
        client_ids: np.ndarray,
        seeds: np.ndarray,
        plan: TrainPlan,
        max_steps: np.ndarray | None = None,
    ) -> CohortResult: ...


@dataclass(frozen=True)
class PlanGroup:
    """The dispatches of one round that share a plan, as the arrays an executor takes."""

    plan: TrainPlan
    dispatches: list[Dispatch]
    client_ids: np.ndarray  # int64 [K]
    seeds: np.ndarray  # int64 [K]
    max_steps: np.ndarray | None  # int64 [K] (NO_CAP: uncapped); None when none is capped


def plan_groups(dispatches: Sequence[Dispatch]) -> list[PlanGroup]:
    """``dispatches`` grouped by plan, in order of first appearance (an executor trains
    one plan at a time)."""
    groups: dict[TrainPlan, list[Dispatch]] = defaultdict(list)
    first = dispatches[0] if dispatches else None
    if first is not None and all(d.plan is first.plan for d in dispatches):
        groups[first.plan] = list(dispatches)  # one plan: no hashing per client
    else:
        for d in dispatches:
            groups[d.plan].append(d)
    out = []
    for plan, group in groups.items():
        caps = [d.max_steps for d in group]
        max_steps = (
            None
            if all(c is None for c in caps)
            else np.array([NO_CAP if c is None else c for c in caps], dtype=np.int64)
        )
        ids = np.array([d.client_id for d in group], dtype=np.int64)
        seeds = np.array([d.seed for d in group], dtype=np.int64)
        out.append(PlanGroup(plan, group, ids, seeds, max_steps))
    return out


def run_dispatches(
    executor: Executor, global_params: np.ndarray, dispatches: Sequence[Dispatch]
) -> list[Update]:
    """Train every dispatched client and wrap the results as ``Update`` records."""
    updates: list[Update] = []
    for g in plan_groups(dispatches):
        plan, group, max_steps = g.plan, g.dispatches, g.max_steps
        res = executor.train_cohort(global_params, g.client_ids, g.seeds, plan, max_steps)
        seen = examples_seen(res.num_examples, plan, max_steps)
        for k, d in enumerate(group):
            n = int(res.num_examples[k])
            metrics = ClientMetrics(
                float(res.train_loss[k]),
                int(res.steps[k]),
                seen[k] / n,
                float(res.train_loss_sq[k]),
                res.loss_samples[k] if res.loss_samples else (),
            )
            updates.append(Update(d.client_id, d.round, d.version, res.deltas[k], n, metrics))
    return updates


class SequentialExecutor:
    """Trains the cohort one client after another with a single model object."""

    name = "sequential"

    def __init__(self, trainer: TorchTrainer, data: ClientPartition) -> None:
        self.trainer = trainer
        self.data = data
        self._x = torch.from_numpy(data.x)
        self._y = torch.from_numpy(data.y)

    def train_cohort(
        self,
        global_params: np.ndarray,
        client_ids: np.ndarray,
        seeds: np.ndarray,
        plan: TrainPlan,
        max_steps: np.ndarray | None = None,
    ) -> CohortResult:
        g = torch.from_numpy(global_params)
        k = len(client_ids)
        deltas = torch.empty((k, self.trainer.dim), dtype=torch.float32)
        sizes = np.empty(k, np.int64)
        losses = np.empty(k, np.float64)
        losses_sq = np.empty(k, np.float64)
        steps = np.empty(k, np.int64)
        samples: list[tuple[float, ...]] = []
        offsets = self.data.offsets
        for row, (cid, seed) in enumerate(zip(client_ids, seeds, strict=True)):
            lo, hi = int(offsets[cid]), int(offsets[cid + 1])
            cap = None if max_steps is None else int(max_steps[row])
            m: ClientMetrics = self.trainer.train(
                g, self._x[lo:hi], self._y[lo:hi], plan, int(seed), out=deltas[row], max_steps=cap
            )
            sizes[row], steps[row] = hi - lo, m.steps
            losses[row], losses_sq[row] = m.train_loss, m.train_loss_sq
            samples.append(m.loss_samples)
        return CohortResult(deltas.numpy(), sizes, losses, losses_sq, steps, tuple(samples))
