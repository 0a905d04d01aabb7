"""Local training of any torch model on its task's loss, reusing one model object per process.

The model's parameters are views of one flat buffer (``FlatModule``), so starting a
client is a single copy of the global vector, the SGD step (momentum, weight decay,
FedProx proximal term) is a few whole-vector operations, and the update leaves as a
flat delta without ever building a per-client model or optimizer. The loss is the
task's (``fedloom.task``): cross-entropy for class labels unless the task says otherwise.

Edge devices (``TrainPlan.precision``, ``TrainPlan.qat``): the forward and backward
passes may run in bfloat16 or float16 under ``torch.autocast`` (parameters, gradients,
the optimizer and the delta stay float32), and Linear/Conv layers may be int8
fake-quantized (``client/qat.py``). fp16 is trained without loss scaling: float16's
smallest normal is 6e-5 (subnormals reach 6e-8), so activation gradients smaller than
that underflow to zero and those steps lose signal; bf16 has float32's range and does
not. A model whose gradients are that small should train in bf16 or fp32. Progress
monitoring keeps the batch losses of a few evenly spaced steps (``client/progress.py``).

References: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (FedAvg), AISTATS 2017; Li et al., "Federated Optimization in
Heterogeneous Networks" (FedProx), MLSys 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import numpy as np
import torch
from torch import nn

from fedloom.client import local_optim
from fedloom.client.dp_sgd import step_noise
from fedloom.client.progress import check_count, sample_steps
from fedloom.client.qat import FakeQuantForward
from fedloom.client.schedule import batch_schedule
from fedloom.params import FlatModule
from fedloom.privacy.mechanisms import NoiseSource, per_sample_clip
from fedloom.records import ClientMetrics, TrainPlan
from fedloom.task import ResolvedTask, Task

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def classifier_task(model: nn.Module) -> ResolvedTask:
    """The task of a classifier of class labels: cross-entropy, accuracy."""
    return Task(model).resolved("classes")


def compute_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``TrainPlan.precision`` (None: float32, no autocast)."""
    return _DTYPES[precision]


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """``torch.autocast`` in ``precision``'s dtype on ``device``'s type (CPU included);
    a no-op for fp32."""
    dtype = compute_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class TorchTrainer:
    """Trains any float32 torch model on a client's arrays with mini-batch SGD, on
    ``task``'s loss (None: a classifier's cross-entropy). A model with buffers
    (BatchNorm) trains in train mode and keeps its running statistics in the module.

    ``loss_samples``: how many evenly spaced batch losses ``train`` keeps
    (``ClientMetrics.loss_samples``; the run's ``edge.loss_samples``, 0: none)."""

    def __init__(
        self, model: nn.Module, task: ResolvedTask | None = None, loss_samples: int = 4
    ) -> None:
        self.flat = FlatModule(model)
        self.model = model
        self.task = classifier_task(model) if task is None else task
        self.loss_samples = check_count(loss_samples)
        self._loss = self.task.loss.fn
        self._qat = FakeQuantForward(model)
        # torch.func per-sample gradients (plain, QAT), built on first DP-SGD use
        self._per_sample: dict[bool, Callable] = {}

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
        max_steps: int | None = None,
        dp_noise: NoiseSource | None = None,
    ) -> ClientMetrics:
        """Train from ``global_params`` and write the delta (local - global) into ``out``.

        ``dp_noise``: where DP-SGD's noise comes from. None keys it by ``seed`` and the
        step (:func:`~fedloom.client.dp_sgd.step_noise`, as the simulator's executors
        do); a deployed client passes its own OS source (``SecureNoise``), since the
        server chooses ``seed`` and could otherwise replay and subtract the noise.
        """
        params, grads = self.flat.params, self.flat.grads
        params.copy_(global_params)
        batches = batch_schedule(len(y), plan, seed, max_steps)
        stacked, stacked_grads = params.view(1, -1), grads.view(1, -1)
        state = local_optim.init_state(plan, stacked)
        anchor = global_params if plan.prox_mu else None
        loss_sum = torch.zeros((), device=params.device)
        loss_sq_sum = torch.zeros((), device=params.device)
        sampled = sample_steps(len(batches), self.loss_samples)
        slot = dict(zip(sampled.tolist(), range(len(sampled)), strict=True))
        samples = torch.empty(len(sampled), device=params.device)
        self.model.train()
        for step, idx in enumerate(batches):
            index = torch.from_numpy(idx)
            grads.zero_()
            if plan.dp_sgd_clip is None:
                with autocast(plan.precision, x.device):
                    loss = self._loss(self._forward(x[index], plan.qat), y[index]).float()
                loss.backward()
            else:
                loss = self._dp_sgd_gradient(x[index], y[index], plan, seed, step, dp_noise)
            with torch.no_grad():
                loss_sum += loss.detach()
                loss_sq_sum += loss.detach() ** 2
                if step in slot:  # a device-side copy: no synchronization
                    samples[slot[step]] = loss.detach()
            local_optim.step(plan, stacked, stacked_grads, state, anchor=anchor)
        torch.sub(params, global_params, out=out)
        steps = len(batches)
        seen = sum(len(b) for b in batches)
        per_step = 1.0 / steps if steps else float("nan")
        return ClientMetrics(
            train_loss=float(loss_sum) * per_step,
            steps=steps,
            epochs=seen / len(y),
            train_loss_sq=float(loss_sq_sum) * per_step,
            loss_samples=tuple(samples.tolist()),
        )

    def _forward(self, x: torch.Tensor, qat: bool) -> torch.Tensor:
        """The model on ``x``, with int8 fake-quantized Linear/Conv layers under QAT
        (its own parameters, so gradients reach the flat buffer)."""
        if not qat:
            return self.model(x)
        return self._qat(dict(self.model.named_parameters()), x)

    def _dp_sgd_gradient(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        plan: TrainPlan,
        seed: int,
        step: int,
        dp_noise: NoiseSource | None = None,
    ) -> torch.Tensor:
        """Write one DP-SGD gradient into the flat gradient buffer; return the batch loss.

        Per-sample gradients come from ``torch.func`` (vmap over samples of grad of the
        task's loss on a one-example batch), are clipped to ``plan.dp_sgd_clip``,
        summed, noised and divided by the batch size.
        """
        if plan.qat not in self._per_sample:
            self._per_sample[plan.qat] = self._per_sample_fn(plan.qat)
        clip = plan.dp_sgd_clip
        assert clip is not None
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        with autocast(plan.precision, x.device):
            per = self._per_sample[plan.qat](params, x, y)
        flat = torch.cat([per[s.name].reshape(len(y), -1) for s in self.flat.layout], dim=1)
        total = per_sample_clip(flat, clip).sum(0)
        if plan.dp_sgd_noise:
            if dp_noise is None:
                standard = step_noise(np.array([seed]), step, self.dim)[0]
            else:
                standard = dp_noise.normal(self.dim, 1.0).astype(np.float32)
            noise = torch.from_numpy(standard)
            total.add_(noise, alpha=plan.dp_sgd_noise * clip)
        self.flat.grads.copy_(total / len(y))
        with torch.no_grad(), autocast(plan.precision, x.device):
            return self._loss(self._forward(x, plan.qat), y).float()

    def _per_sample_fn(self, qat: bool):  # noqa: ANN202 - a torch.func transform
        from torch.func import functional_call, grad, vmap

        loss_fn = self._loss
        forward = self._qat if qat else partial(functional_call, self.model)

        def loss_one(params: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            outputs = forward(params, xi.unsqueeze(0))
            return loss_fn(outputs, yi.unsqueeze(0)).float()

        return vmap(grad(loss_one), in_dims=(None, 0, 0))


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    task: ResolvedTask | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-example loss of ``model`` on ``(x, y)`` and the per-example value of every
    metric of ``task`` (None: a classifier's cross-entropy and accuracy), by name;
    evaluated ``batch_size`` examples at a time, in eval mode."""
    task = classifier_task(model) if task is None else task
    loss_each, metrics_each = task.loss_each(), task.metrics_each()
    model.eval()
    losses: list[torch.Tensor] = []
    values: dict[str, list[torch.Tensor]] = {name: [] for name in metrics_each}
    for start in range(0, len(y), batch_size):
        outputs = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        losses.append(loss_each(outputs, target).float())
        for name, each in metrics_each.items():
            values[name].append(each(outputs, target).float())

    def joined(parts: list[torch.Tensor]) -> np.ndarray:
        return torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)

    return joined(losses), {name: joined(parts) for name, parts in values.items()}
