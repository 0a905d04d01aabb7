"""Knowledge distillation of the trained global model into a smaller student.

The student learns the teacher's temperature-softened output distribution (Hinton,
Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015): the loss is
``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, the ``T^2`` keeping its
gradients' scale independent of ``T``; with labels, ``alpha`` of it is mixed with
``1 - alpha`` of the student's cross-entropy on the hard labels. The teacher's logits
are computed once (it is fixed); batches are drawn from a seeded generator, so the same
seed and student give the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedloom.errors import ConfigError


@dataclass
class DistillHistory:
    """Per epoch: the mean training loss; ``kl``: the student's KL divergence to the
    teacher at temperature T over all of ``x`` (its first entry before training)."""

    loss: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """Mean over examples of KL(softmax(teacher / t) || softmax(student / t))."""
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def _check(temperature: float, alpha: float, epochs: int, batch_size: int, lr: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature = {temperature!r} must be > 0")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha = {alpha!r} must be in [0, 1]")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs = {epochs!r} must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size!r} must be an integer >= 1")
    if not lr > 0:
        raise ConfigError(f"lr = {lr!r} must be > 0")


def _tensor(a: torch.Tensor | np.ndarray) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(b) for b in torch.split(x, batch_size)])


def distill(
    teacher: nn.Module,
    student: nn.Module,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[nn.Module, DistillHistory]:
    """Train ``student`` (in place, with Adam) to match ``teacher`` on inputs ``x``
    (and labels ``y`` when given); returns it, in eval mode, and its history."""
    _check(temperature, alpha, epochs, batch_size, lr)
    inputs = _tensor(x)
    if inputs.shape[0] == 0:
        raise ConfigError("x: distillation needs at least one example")
    labels = None if y is None else _tensor(y).long()
    if labels is not None and labels.shape[0] != inputs.shape[0]:
        raise ConfigError(f"y has {labels.shape[0]} labels for {inputs.shape[0]} examples in x")
    teacher.eval()
    targets = _logits(teacher, inputs, 1024)
    history = DistillHistory()
    student.eval()
    history.kl.append(float(soft_kl(_logits(student, inputs, 1024), targets, temperature)))
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        student.train()
        total = 0.0
        order = torch.randperm(inputs.shape[0], generator=generator)
        for idx in torch.split(order, batch_size):
            out = student(inputs[idx])
            loss = temperature**2 * soft_kl(out, targets[idx], temperature)
            if labels is not None:
                loss = alpha * loss + (1 - alpha) * F.cross_entropy(out, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
        history.loss.append(total / inputs.shape[0])
        student.eval()
        history.kl.append(float(soft_kl(_logits(student, inputs, 1024), targets, temperature)))
    return student.eval(), history
