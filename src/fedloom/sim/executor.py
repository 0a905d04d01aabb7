"""Executors train a round's dispatched clients inside one process.

The sequential executor runs every client through one reused ``TorchTrainer`` and
writes each delta straight into a preallocated ``[K, d]`` cohort matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedloom.client.trainer import TorchTrainer
from fedloom.data.arrays import ClientPartition
from fedloom.records import Dispatch, Update


class SequentialExecutor:
    """Trains the cohort one client after another with a single model object."""

    def __init__(self, trainer: TorchTrainer, data: ClientPartition) -> None:
        self.trainer = trainer
        self.data = data
        self._x = torch.from_numpy(data.x)
        self._y = torch.from_numpy(data.y)
        self._offsets = data.offsets

    def run(self, global_params: np.ndarray, dispatches: Sequence[Dispatch]) -> list[Update]:
        g = torch.from_numpy(global_params)
        deltas = torch.empty((len(dispatches), self.trainer.dim), dtype=torch.float32)
        updates = []
        for row, d in enumerate(dispatches):
            lo, hi = int(self._offsets[d.client_id]), int(self._offsets[d.client_id + 1])
            metrics = self.trainer.train(
                g, self._x[lo:hi], self._y[lo:hi], d.plan, d.seed, out=deltas[row]
            )
            updates.append(
                Update(d.client_id, d.round, d.version, deltas[row].numpy(), hi - lo, metrics)
            )
        return updates
