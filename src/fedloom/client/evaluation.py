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


class ReportedEvaluation:
    """The evaluator of a deployment without a central evaluation set: what the round's
    clients reported about the model they received, each evaluated on its own hold-out
    before training (``fed_*``: the example-weighted mean loss and accuracy, the 10th
    percentile client's accuracy, how many reported). It describes the model the round
    started from, not the one it produced, and it is what clients claim: a hostile client
    can report any value in range, which the server cannot check without its data."""

    def __init__(self) -> None:
        self._reports: dict[int, tuple[float, float, int]] = {}

    def report(self, reports: dict[int, tuple[float, float, int]]) -> None:
        """The round's reports: client id -> (loss, accuracy, examples), already checked."""
        self._reports = dict(reports)

    def __call__(self, params: np.ndarray, federated: bool = False) -> Evaluation:
        reports, self._reports = self._reports, {}
        if not reports:
            return Evaluation({})
        ids = np.array(sorted(reports), dtype=np.int64)
        loss, accuracy, count = (
            np.array([reports[int(c)][k] for c in ids], dtype=np.float64) for k in range(3)
        )
        w = count / count.sum()
        metrics = {
            "fed_accuracy": float(w @ accuracy),
            "fed_loss": float(w @ loss),
            "fed_accuracy_p10": float(np.percentile(accuracy, 10)),
            "fed_clients": len(ids),
        }
        return Evaluation(metrics, (ids, accuracy, loss))
