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
from fedloom.task import ResolvedTask


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics; ``clients``: per-client hold-out results (ids, accuracy, loss)
    for the registry (accuracy None for a task without an ``accuracy`` metric), None
    when no hold-out was evaluated."""

    metrics: dict[str, float]
    clients: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None


class Evaluator:
    """Central test-set metrics and, if asked, the clients' hold-out metrics, computed
    with ``trainer``'s model (one reused object) on ``task``'s loss and metrics (None:
    the trainer's task).

    Keys: ``loss`` and every metric by name (the test set's means); with the hold-outs,
    ``fed_loss`` and ``fed_<metric>`` (example-weighted means), the percentile client of
    the primary metric (``fed_<primary>_p10`` when higher is better: the worst-served
    tenth; ``_p90`` when lower is) and ``fed_clients``.
    """

    def __init__(
        self,
        trainer: TorchTrainer,
        test: ArrayDataset,
        holdout: ClientPartition | None,
        batch_size: int,
        task: ResolvedTask | None = None,
    ) -> None:
        self.trainer = trainer
        self.task = trainer.task if task is None else task
        self.test_tensors = (torch.from_numpy(test.x), torch.from_numpy(test.y))
        self.holdout = holdout
        self.batch_size = batch_size

    @property
    def has_holdout(self) -> bool:
        return self.holdout is not None

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-example values of every metric and of the loss (key ``loss``), float64."""
        loss, values = evaluate_model(
            self.trainer.model, x, y, batch_size=self.batch_size, task=self.task
        )
        return {n: v.astype(np.float64) for n, v in (*values.items(), ("loss", loss))}

    def __call__(self, params: np.ndarray, federated: bool = False) -> Evaluation:
        self.trainer.flat.load(params)
        out = {name: float(v.mean()) for name, v in self._evaluate(*self.test_tensors).items()}
        holdout = self.holdout
        if not (federated and holdout is not None):
            return Evaluation(out)
        each = self._evaluate(torch.from_numpy(holdout.x), torch.from_numpy(holdout.y))
        sizes = holdout.sizes()
        has = sizes > 0
        starts = holdout.offsets[:-1][has]
        per_client = {n: np.add.reduceat(v, starts) / sizes[has] for n, v in each.items()}
        primary = self.task.primary
        maximize = self.task.maximize(primary)
        tail = 10 if maximize else 90
        out |= {f"fed_{name}": float(v.mean()) for name, v in each.items()}
        out[f"fed_{primary}_p{tail}"] = float(np.percentile(per_client[primary], tail))
        out["fed_clients"] = int(has.sum())
        accuracy = per_client.get("accuracy") if "accuracy" in self.task.metrics else None
        return Evaluation(out, (np.flatnonzero(has), accuracy, per_client["loss"]))


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
