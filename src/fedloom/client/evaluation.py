"""Evaluating a global model on held-out data: the evaluator the round engine is given.

The engine never touches data: a runtime hands it an ``Evaluator`` (here: a central test
set and, when there is one, the clients' hold-outs held in one place, as the simulator
holds them) and the engine records what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedloom.client.trainer import TorchTrainer, evaluate_model
from fedloom.data.arrays import ArrayDataset, ClientPartition


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics; ``clients``: per-client hold-out results (ids, accuracy, loss)
    for the registry, None when no hold-out was evaluated."""

    metrics: dict[str, float]
    clients: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


class Evaluator:
    """Central test-set metrics and, if asked, the clients' hold-out metrics, computed
    with ``trainer``'s model (one reused object)."""

    def __init__(
        self,
        trainer: TorchTrainer,
        test: ArrayDataset,
        holdout: ClientPartition | None,
        batch_size: int,
    ) -> None:
        self.trainer = trainer
        self.test_tensors = (torch.from_numpy(test.x), torch.from_numpy(test.y))
        self.holdout = holdout
        self.batch_size = batch_size

    @property
    def has_holdout(self) -> bool:
        return self.holdout is not None

    def __call__(self, params: np.ndarray, federated: bool = False) -> Evaluation:
        self.trainer.flat.load(params)
        bs = self.batch_size
        loss, correct = evaluate_model(self.trainer.model, *self.test_tensors, batch_size=bs)
        out = {"accuracy": float(correct.mean()), "loss": float(loss.mean())}
        holdout = self.holdout
        if not (federated and holdout is not None):
            return Evaluation(out)
        x, y = torch.from_numpy(holdout.x), torch.from_numpy(holdout.y)
        h_loss, h_correct = evaluate_model(self.trainer.model, x, y, batch_size=bs)
        sizes = holdout.sizes()
        has = sizes > 0
        starts = holdout.offsets[:-1][has]
        per_client = np.add.reduceat(h_correct.astype(np.float64), starts) / sizes[has]
        per_loss = np.add.reduceat(h_loss.astype(np.float64), starts) / sizes[has]
        out |= {
            "fed_accuracy": float(h_correct.mean()),
            "fed_loss": float(h_loss.mean()),
            "fed_accuracy_p10": float(np.percentile(per_client, 10)),
            "fed_clients": int(has.sum()),
        }
        return Evaluation(out, (np.flatnonzero(has), per_client, per_loss))
