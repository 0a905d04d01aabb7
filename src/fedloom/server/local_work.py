"""The server's plan of each client's local work, fitted to its device (docs/edge.md).

One owner for three decisions the server makes per client before it dispatches:

- **who may train at all**: a device whose memory cannot hold training of the model at
  batch 1 (parameters, gradients, the global copy, optimizer state and one example's
  activations: :class:`~fedloom.edge.memory.TrainingMemory`) is never given it;
- **how** it trains: its batch capped at what its memory holds, and the precision its
  hardware runs (bf16, else fp16, else fp32, when reduced precision is allowed);
- **how much**: with adaptive local work, the local steps that fit the round's time
  budget at the client's speed (profiled, or measured from its last update), never more
  than the plan asks and, below ``min_steps``, none (the client is dropped, not asked
  for work it cannot finish).

It holds one row per client (memory, bf16, fp16), grown as deployed clients join with
their declared profiles; the simulator fills it from its population.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from fedloom.edge.memory import MB, UNLIMITED, TrainingMemory
from fedloom.edge.profiles import PRECISIONS, DeviceProfile, Precision
from fedloom.records import Dispatch, TrainPlan


class LocalWorkPlanner:
    """Per-client capabilities and the rules that fit a dispatch to them (module
    docstring). ``memory``: the model's training memory; ``memory_aware``: cap batches
    and refuse devices by memory; ``reduced_precision``: allow bf16/fp16 where the
    device has it; ``qat``: train with int8 fake quantization; ``min_steps``: adaptive
    work below this is not worth dispatching."""

    def __init__(
        self,
        memory: TrainingMemory,
        memory_aware: bool = True,
        reduced_precision: bool = False,
        qat: bool = False,
        min_steps: int = 1,
    ) -> None:
        self.memory = memory
        self.memory_aware = memory_aware
        self.reduced_precision = reduced_precision
        self.qat = qat
        self.min_steps = int(min_steps)
        self.memory_mb = np.zeros(0, dtype=np.float64)
        self.bf16 = np.zeros(0, dtype=bool)
        self.fp16 = np.zeros(0, dtype=bool)
        # every declared row's largest batch, and the (memory, precision rule) it is for
        self._batches: tuple[TrainingMemory, bool, np.ndarray] | None = None

    def declare(self, ids: np.ndarray, profiles: list[DeviceProfile]) -> None:
        """The devices ``ids`` run ``profiles`` (clients joining a deployment); an id
        never declared counts as an unlimited fp32 device."""
        if len(ids) != len(profiles):
            raise ValueError(f"{len(ids)} client ids for {len(profiles)} profiles")
        self.declare_arrays(
            ids,
            np.array([p.memory_mb for p in profiles], dtype=np.float64),
            np.array([p.bf16 for p in profiles], dtype=bool),
            np.array([p.fp16 for p in profiles], dtype=bool),
        )

    def declare_arrays(
        self, ids: np.ndarray, memory_mb: np.ndarray, bf16: np.ndarray, fp16: np.ndarray
    ) -> None:
        """:meth:`declare` as columns (a simulated population of any size)."""
        ids = np.asarray(ids, dtype=np.int64)
        size = int(ids.max()) + 1 if len(ids) else 0
        if size > len(self.memory_mb):
            grow = size - len(self.memory_mb)
            self.memory_mb = np.concatenate([self.memory_mb, np.full(grow, math.inf)])
            self.bf16 = np.concatenate([self.bf16, np.zeros(grow, dtype=bool)])
            self.fp16 = np.concatenate([self.fp16, np.zeros(grow, dtype=bool)])
        self.memory_mb[ids] = memory_mb
        self.bf16[ids] = bf16
        self.fp16[ids] = fp16
        self._batches = None

    def _column(self, values: np.ndarray, ids: np.ndarray, default: object) -> np.ndarray:
        known = ids < len(values)
        out = np.full(len(ids), default, dtype=values.dtype)
        out[known] = values[ids[known]]
        return out

    def precisions(self, ids: np.ndarray) -> list[Precision]:
        return [PRECISIONS[int(k)] for k in self._precision_codes(np.asarray(ids, np.int64))]

    def _precision_codes(self, ids: np.ndarray) -> np.ndarray:
        """Index into ``PRECISIONS`` per client: bf16 where it runs, else fp16, else fp32."""
        codes = np.zeros(len(ids), dtype=np.int64)
        if self.reduced_precision:
            codes[self._column(self.fp16, ids, False)] = PRECISIONS.index("fp16")
            codes[self._column(self.bf16, ids, False)] = PRECISIONS.index("bf16")
        return codes

    def largest_batches(self, ids: np.ndarray) -> np.ndarray:
        """The largest batch each client's memory holds at its precision (int64; an id
        never declared: unlimited). Computed once for every declared client and kept
        until the next declaration, since ``admit`` asks for everyone online each round."""
        ids = np.asarray(ids, dtype=np.int64)
        every = self._every_batch()
        if len(ids) and 0 <= ids.min() and ids.max() < len(every):  # all declared
            return every[ids]
        known = ids < len(every)
        out = np.full(len(ids), UNLIMITED, dtype=np.int64)
        out[known] = every[ids[known]]
        return out

    def _every_batch(self) -> np.ndarray:
        """The largest batch of every declared client, kept until the next declaration."""
        cached = self._batches
        if cached is None or cached[0] != self.memory or cached[1] != self.reduced_precision:
            every = self._compute_batches(np.arange(len(self.memory_mb), dtype=np.int64))
            cached = self._batches = (self.memory, self.reduced_precision, every)
        return cached[2]

    def _compute_batches(self, ids: np.ndarray) -> np.ndarray:
        memory = self._column(self.memory_mb, ids, math.inf)
        per = np.array([self.memory.per_example_bytes(p) for p in PRECISIONS])
        per = per[self._precision_codes(ids)]
        free = np.where(np.isinf(memory), np.inf, memory * MB - self.memory.fixed_bytes)
        with np.errstate(divide="ignore", invalid="ignore"):
            batch = np.where(free < 0, 0.0, np.floor(free / per))
        return np.minimum(np.nan_to_num(batch, nan=UNLIMITED, posinf=UNLIMITED), UNLIMITED).astype(
            np.int64
        )

    def eligible(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` can hold training of the model at batch 1 (bool mask)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.memory_aware:
            return np.ones(len(ids), dtype=bool)
        return self.largest_batches(ids) >= 1

    def fit(self, dispatches: list[Dispatch]) -> list[Dispatch]:
        """Each dispatch with its plan fitted to its device: the batch within its memory,
        its precision, QAT."""
        if not dispatches:
            return dispatches
        ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
        batches = self.largest_batches(ids) if self.memory_aware else None
        fitted = []
        # a cohort shares few distinct plans: fit each once, keep unchanged dispatches
        plans: dict[tuple[TrainPlan, int, Precision], tuple[TrainPlan, bool]] = {}
        for k, (d, precision) in enumerate(zip(dispatches, self.precisions(ids), strict=True)):
            batch = d.plan.batch_size
            if batches is not None:
                batch = int(max(1, min(batch, batches[k])))
            key = (d.plan, batch, precision)
            if key not in plans:
                plan = replace(d.plan, batch_size=batch, precision=precision, qat=self.qat)
                plans[key] = (plan, plan == d.plan)
            plan, same = plans[key]
            fitted.append(d if same else replace(d, plan=plan))
        return fitted


def steps_within(
    full_steps: np.ndarray, step_seconds: np.ndarray, budget_seconds: np.ndarray
) -> np.ndarray:
    """Local steps that fit ``budget_seconds`` at ``step_seconds`` each: at least 0, at
    most ``full_steps``; an unknown speed (NaN) or no budget limit (inf) keeps the full
    work."""
    full = np.asarray(full_steps, dtype=np.int64)
    per = np.asarray(step_seconds, dtype=np.float64)
    budget = np.asarray(budget_seconds, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        fit = np.floor(np.where(per > 0, budget / per, np.inf))
    fit = np.where(np.isnan(fit), np.inf, fit)
    return np.clip(fit, 0, full).astype(np.int64)


def at_least(fit: np.ndarray, full: np.ndarray, least: int) -> np.ndarray:
    """``fit`` with the clients that cannot do ``least`` steps (or their whole work, if
    smaller) set to 0: not worth dispatching."""
    fit = np.asarray(fit, dtype=np.int64)
    return np.where(fit >= np.minimum(least, full), fit, 0)


def unfit_reason(least: int) -> str:
    """The failure reason of a client :func:`at_least` set to 0."""
    return f"cannot finish {least} step{'s' if least > 1 else ''} before the deadline"
