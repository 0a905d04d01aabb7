"""Local training of a torch classifier, reusing one model object per process.

The model's parameters are views of one flat buffer (``FlatModule``), so starting a
client is a single copy of the global vector, the SGD step (momentum, weight decay,
FedProx proximal term) is a few whole-vector operations, and the update leaves as a
flat delta without ever building a per-client model or optimizer.

References: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (FedAvg), AISTATS 2017; Li et al., "Federated Optimization in
Heterogeneous Networks" (FedProx), MLSys 2020.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedloom.errors import FedloomError
from fedloom.params import FlatModule
from fedloom.records import ClientMetrics, TrainPlan


def batch_schedule(num_examples: int, plan: TrainPlan, seed: int) -> list[np.ndarray]:
    """The mini-batches (index arrays) a client visits, reproducible from ``seed``.

    Each epoch is a fresh permutation cut into ``ceil(n / batch_size)`` batches, the
    last one possibly smaller. With ``plan.local_steps`` set, epochs repeat until that
    many steps are taken (the last epoch may be cut short).
    """
    if num_examples < 1:
        raise FedloomError("a client needs at least one example to train")
    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(num_examples / plan.batch_size)
    steps = plan.local_steps if plan.local_steps is not None else plan.local_epochs * per_epoch
    batches: list[np.ndarray] = []
    cuts = np.arange(plan.batch_size, num_examples, plan.batch_size)
    while len(batches) < steps:
        batches.extend(np.split(rng.permutation(num_examples), cuts))
    return batches[:steps]


class TorchTrainer:
    """Trains any float32 torch classifier on a client's arrays with mini-batch SGD."""

    def __init__(self, model: nn.Module) -> None:
        self.flat = FlatModule(model)
        self.model = model
        self._anchor = torch.empty_like(self.flat.params)
        self._momentum = torch.zeros_like(self.flat.params)

    @property
    def dim(self) -> int:
        return self.flat.layout.dim

    def train(
        self,
        global_params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        plan: TrainPlan,
        seed: int,
        out: torch.Tensor,
    ) -> ClientMetrics:
        """Train from ``global_params`` and write the delta (local - global) into ``out``."""
        params, grads = self.flat.params, self.flat.grads
        params.copy_(global_params)
        batches = batch_schedule(len(y), plan, seed)
        use_anchor = plan.prox_mu > 0
        if use_anchor:
            self._anchor.copy_(global_params)
        if plan.momentum:
            self._momentum.zero_()
        loss_sum = torch.zeros(())
        self.model.train()
        for idx in batches:
            index = torch.from_numpy(idx)
            grads.zero_()
            loss = F.cross_entropy(self.model(x[index]), y[index])
            loss.backward()
            with torch.no_grad():
                loss_sum += loss.detach()
                self._step(plan, use_anchor)
        torch.sub(params, global_params, out=out)
        steps = len(batches)
        seen = sum(len(b) for b in batches)
        return ClientMetrics(
            train_loss=float(loss_sum) / steps, steps=steps, epochs=seen / len(y)
        )

    def _step(self, plan: TrainPlan, use_anchor: bool) -> None:
        params, g = self.flat.params, self.flat.grads
        if plan.weight_decay:
            g.add_(params, alpha=plan.weight_decay)
        if use_anchor:
            g.add_(params - self._anchor, alpha=plan.prox_mu)
        if plan.momentum:
            buf = self._momentum.mul_(plan.momentum).add_(g)
            g = g.add_(buf, alpha=plan.momentum) if plan.nesterov else buf
        params.add_(g, alpha=-plan.lr)


@torch.inference_mode()
def evaluate_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example cross-entropy loss and correctness of ``model`` on ``(x, y)``."""
    model.eval()
    losses, correct = [], []
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        losses.append(F.cross_entropy(logits, target, reduction="none"))
        correct.append(logits.argmax(dim=1) == target)
    if not losses:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    return torch.cat(losses).numpy(), torch.cat(correct).numpy()
