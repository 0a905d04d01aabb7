"""A simulated round whose updates stay on the device the cohort trained on.

The vectorized executor trains a cohort as one ``[K, d]`` tensor on its device
(``train_cohort_tensors``); :func:`train_rows` hands that tensor, with the per-client
counts, losses and steps, to the server as a :class:`~fedloom.server.device_chain.
CohortRows`, so validation, clipping and the reduction run there
(:meth:`~fedloom.server.sync.SyncServer.receive_cohort`) and only what the records need
comes back to the host. :func:`host_reason` says when a run's round must instead carry
every update to the host as an ``Update`` record: stages of the clients' side that work
update by update on the host.

``simulation.server_chain`` chooses: ``auto`` keeps the updates on the device when the
executor trains on an accelerator, ``device`` also on the CPU (the same arithmetic in
torch), ``host`` never.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedloom.client.schedule import examples_seen
from fedloom.records import Dispatch, TrainPlan
from fedloom.server import device_chain
from fedloom.server.device_chain import CohortRows
from fedloom.server.sync import CohortDispatch
from fedloom.sim.executor import plan_groups
from fedloom.sim.vectorized import VectorizedExecutor

if TYPE_CHECKING:
    from fedloom.sim.runtime import Simulation


def host_reason(sim: Simulation) -> str | None:
    """Why ``sim``'s rounds carry every update to the host (None: they need not)."""
    if not isinstance(sim.executor, VectorizedExecutor):
        return "the sequential executor trains on the host"
    checks = (
        (sim.shard is not None, "torchrun shards the cohort over processes"),
        (sim.adversary is not None, "simulated adversaries rewrite updates on the host"),
        (sim.server.client_states is not None, "the clients' transform chain runs on the host"),
        (sim.privacy.local, "local DP noises each upload on the host"),
        (sim.server.compression is not None, "uploads are compressed on the host"),
        (sim.secure is not None, "secure aggregation masks each upload on the host"),
        (sim.server.decoders is not None, "two-sided transforms decode each update"),
    )
    return next((why for bad, why in checks if bad), None)


def keeps_updates_on_device(sim: Simulation) -> tuple[bool, str | None]:
    """Whether ``sim``'s rounds keep the updates on the device, and what the round
    records say of it: None (the host, as configured or on a CPU under ``auto``), or
    ``"host: <reason>"`` when the device was asked for (or an accelerator trains) but a
    stage needs the host."""
    mode = sim.config.simulation.server_chain
    if mode == "host":
        return False, None
    on_accelerator = (
        isinstance(sim.executor, VectorizedExecutor) and sim.executor.device.type != "cpu"
    )
    if mode == "auto" and not on_accelerator:
        return False, None
    reason = host_reason(sim)
    return reason is None, None if reason is None else f"host: {reason}"


def train_rows(
    executor: VectorizedExecutor, global_params: np.ndarray, dispatches: Sequence[Dispatch]
) -> CohortRows:
    """Train every dispatched client (grouped by plan) and keep their deltas on the
    executor's device; the per-client statistics come to the host (``[K, 2 + J]``)."""
    if not dispatches:
        return _empty(executor, 0, 0)
    first = dispatches[0]
    parts = [
        _train(executor, global_params, g.client_ids, g.seeds, g.plan, g.max_steps)
        for g in plan_groups(dispatches)
    ]
    ids, deltas, losses, steps, n, epochs = (
        parts[0] if len(parts) == 1 else _concat(parts)  # type: ignore[assignment]
    )
    return _rows(first.round, first.version, ids, deltas, losses, steps, n, epochs)


def train_cohort(
    executor: VectorizedExecutor, global_params: np.ndarray, cohort: CohortDispatch
) -> CohortRows:
    """:func:`train_rows` for a cohort dispatched as arrays (``SyncServer.begin_cohort``):
    no object per client on the way."""
    if not len(cohort.client_ids):
        return _empty(executor, cohort.round, cohort.version)
    part = _train(executor, global_params, cohort.client_ids, cohort.seeds, cohort.plan, None)
    return _rows(cohort.round, cohort.version, *part)


def _train(
    executor: VectorizedExecutor,
    global_params: np.ndarray,
    ids: np.ndarray,
    seeds: np.ndarray,
    plan: TrainPlan,
    max_steps: np.ndarray | None,
) -> tuple:
    deltas, losses, steps = executor.train_cohort_tensors(
        global_params, ids, seeds, plan, max_steps
    )
    n = executor.sizes[ids].astype(np.int64)
    epochs = examples_seen(n, plan, max_steps) / np.maximum(n, 1)
    return ids, deltas, device_chain.to_host(losses), steps, n, epochs


def _rows(
    round: int,
    version: int,
    ids: np.ndarray,
    deltas: torch.Tensor,
    losses: np.ndarray,
    steps: np.ndarray,
    n: np.ndarray,
    epochs: np.ndarray,
) -> CohortRows:
    return CohortRows(
        round,
        version,
        ids,
        deltas,
        n,
        losses[:, 0],
        losses[:, 1],
        np.asarray(steps, dtype=np.int64),
        epochs,
        losses[:, 2:],
    )


def _empty(executor: VectorizedExecutor, round: int, version: int) -> CohortRows:
    empty = np.zeros(0)
    return CohortRows(
        round,
        version,
        np.zeros(0, dtype=np.int64),
        torch.zeros((0, executor.dim), dtype=torch.float32, device=executor.device),
        np.zeros(0, dtype=np.int64),
        empty,
        empty,
        np.zeros(0, dtype=np.int64),
        empty,
        np.zeros((0, executor.loss_samples)),
    )


def _concat(parts: list[tuple]) -> tuple:
    """The groups' rows one after another (the server orders them by selection)."""
    columns = list(zip(*parts, strict=True))
    return (
        np.concatenate(columns[0]),
        torch.cat(columns[1]),
        *(np.concatenate(c) for c in columns[2:]),
    )


def local_loss(rows: CohortRows) -> list[float] | None:
    """The clients' sampled batch losses averaged position by position (as
    ``client.progress.mean_curve`` averages ``Update`` records); None when none."""
    m = np.array(rows.loss_samples, dtype=np.float64)
    m[~np.isfinite(m)] = np.nan
    counts = (~np.isnan(m)).sum(axis=0)
    keep = counts > 0
    if not keep.any():
        return None
    return (np.nansum(m, axis=0)[keep] / counts[keep]).tolist()
