"""Train a whole cohort at once: stacked parameters and per-client gradients.

The cohort's parameters are one ``[K, d]`` matrix. Each local step gathers every
client's mini-batch into ``[K, B, *example_shape]`` (images, token ids, features) and
evaluates per-client gradients of the task's loss: with ``torch.func.vmap(grad(...))``
over ``functional_call`` of the ordinary model and the task's per-example loss, or, for
plain MLPs on the built-in cross-entropy, with hand-written batched matrix products
(``batched_mlp.py``) that compute the same thing faster; then it steps all clients with
the same functional optimizer the sequential trainer uses. Batches are padded to ``B``
with a mask: padded samples contribute nothing to the loss, and a client whose schedule
has ended takes masked (no-op) steps. Clients are bucketed by their number of local
steps (buckets span at most a factor 1.25) so padding stays small, and each bucket is cut
into chunks that fit a memory budget.

A model ``vmap`` cannot batch (an operation without a batching rule, random numbers in
training mode such as dropout, data-dependent Python control flow) is found at
construction by a probe on one example (:func:`vmap_failure`), so the caller can fall
back to the sequential executor before the run starts.

References: Horace He and Richard Zou, functorch / ``torch.func`` (vmap, grad);
pfl-research and FLUTE for vectorized FL simulation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedloom.client import local_optim
from fedloom.client.dp_sgd import step_noise
from fedloom.client.schedule import cohort_schedule, cohort_schedule_tensors, steps_for
from fedloom.client.trainer import classifier_task
from fedloom.data.arrays import ClientPartition
from fedloom.params import ParamLayout
from fedloom.privacy.mechanisms import per_sample_clip
from fedloom.records import TrainPlan
from fedloom.sim.batched_mlp import DpGradFn, GradFn, make_grad_fns, mlp_layers
from fedloom.sim.executor import CohortResult
from fedloom.sim.memory import activation_bytes, client_bytes
from fedloom.task import ResolvedTask, cross_entropy

BUCKET_RATIO = 1.25


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be vectorized, or None if it can (as far as its structure
    tells; :func:`vmap_failure` tries it)."""
    if any(True for _ in model.buffers()):
        names = [n for n, _ in model.named_buffers()]
        return f"model has buffers ({', '.join(names[:3])}); batch statistics are not per client"
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return "model parameters are not all float32"
    return None


def vmap_grad_fns(model: nn.Module, task: ResolvedTask) -> tuple[GradFn, DpGradFn]:
    """Per-client gradients of ``task``'s loss, and clipped per-sample gradient sums,
    via ``torch.func`` over ``model`` (see ``batched_mlp.make_grad_fns`` for the forms).

    A client's loss is the mean of the task's per-example loss over its unmasked
    examples, which is the task's batch loss on the unpadded batch; a per-sample
    gradient is that of the task's loss on a one-example batch, as in the sequential
    trainer's DP-SGD.
    """
    from torch.func import functional_call, grad, vmap

    specs = [(s.name, s.offset, s.numel, s.shape) for s in ParamLayout.from_module(model)]
    loss_fn, loss_each = task.loss.fn, task.loss_each()

    def views(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: flat[o : o + k].view(shape) for n, o, k, shape in specs}

    def loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor):
        outputs = functional_call(model, views(flat), (x,))
        value = (loss_each(outputs, y) * m).sum() / m.sum().clamp(min=1.0)
        return value, value.detach()

    def loss_one(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outputs = functional_call(model, views(flat), (x.unsqueeze(0),))
        return loss_fn(outputs, y.unsqueeze(0))

    batched = vmap(grad(loss, has_aux=True))
    per_sample = vmap(vmap(grad(loss_one), in_dims=(None, 0, 0)))

    def dp_grad(params, x, y, mask, clip):  # noqa: ANN001, ANN202
        clipped = per_sample_clip(per_sample(params, x, y), clip) * mask.unsqueeze(2)
        return clipped.sum(1), batched(params, x, y, mask)[1]

    return batched, dp_grad


def _probe(
    grad_fn: GradFn, dp_grad_fn: DpGradFn, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> str | None:
    """Run both gradient functions for one client on one example; why they fail, or None."""
    one = (params.detach().unsqueeze(0), x[:1].unsqueeze(0), y[:1].unsqueeze(0))
    mask = torch.ones((1, 1), device=params.device)
    try:
        with torch.random.fork_rng(devices=[]):
            grad_fn(*one, mask)
            dp_grad_fn(*one, mask, 1.0)
    except Exception as err:  # noqa: BLE001 - whatever vmap refuses is the reason
        text = (str(err).strip().splitlines() or [""])[0][:300]
        return f"torch.func.vmap cannot train it ({type(err).__name__}: {text})"
    return None


def vmap_failure(
    model: nn.Module, task: ResolvedTask, x: torch.Tensor, y: torch.Tensor
) -> str | None:
    """Why ``torch.func.vmap`` cannot train ``model`` on ``task`` (in its current mode),
    tried on the first example of ``x``, ``y``; None if it can."""
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return _probe(*vmap_grad_fns(model, task), params, x, y)


def _uses_builtin_cross_entropy(task: ResolvedTask, data: ClientPartition) -> bool:
    """Whether the hand-written MLP gradients compute ``task``'s loss on ``data``: the
    built-in cross-entropy on class labels ``[n]`` of float examples."""
    return (
        task.loss.fn is cross_entropy.fn
        and data.y.ndim == 1
        and data.y.dtype == np.int64
        and data.x.dtype == np.float32
    )


class VectorizedExecutor:
    """Trains K clients simultaneously on one device, on ``task``'s loss (None: a
    classifier's cross-entropy). Raises ``ValueError`` naming the reason when the
    model cannot be vectorized (buffers, or an operation ``vmap`` refuses)."""

    name = "vectorized"

    def __init__(
        self,
        model: nn.Module,
        data: ClientPartition,
        device: str | torch.device = "cpu",
        memory_budget_mb: float = 512.0,
        task: ResolvedTask | None = None,
    ) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"cannot vectorize this model: {reason}")
        self.task = classifier_task(model) if task is None else task
        self.device = torch.device(device)
        self.layout = ParamLayout.from_module(model)
        self.model = model.to(self.device).train()
        self.data = data
        self.x = torch.from_numpy(data.x).to(self.device)
        self.y = torch.from_numpy(data.y).to(self.device)
        self.offsets = data.offsets
        self.sizes = data.sizes()
        self.memory_budget = memory_budget_mb * 2**20
        layers = None
        if _uses_builtin_cross_entropy(self.task, data):
            layers = mlp_layers(model, tuple(data.x.shape[1:]))
        self._grad: GradFn
        self._dp_grad: DpGradFn
        if layers is not None:
            self.backend = "bmm"
            self._grad, self._dp_grad = make_grad_fns(layers, self.dim)
        else:
            self.backend = "vmap"
            self._grad, self._dp_grad = vmap_grad_fns(self.model, self.task)
            if len(self.y):
                params = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
                reason = _probe(self._grad, self._dp_grad, params, self.x, self.y)
                if reason is not None:
                    raise ValueError(f"cannot vectorize this model: {reason}")
        self._example_bytes = (data.x[:1].nbytes + data.y[:1].nbytes) if len(data.y) else 0
        self._activation = activation_bytes(self.model, self.x[:1]) if len(data.y) else 0

    @property
    def dim(self) -> int:
        return self.layout.dim

    def _bytes_per_client(self, plan: TrainPlan) -> float:
        """Rough peak memory of one client in a chunk (parameters, optimizer state, the
        batch's examples and activations, measured on one example at construction)."""
        slots = 2 if plan.optimizer == "adam" else (1 if plan.momentum else 0)
        per_sample = plan.dp_sgd_clip is not None and self.backend == "vmap"
        return client_bytes(
            self.dim, plan.batch_size, slots, self._example_bytes, self._activation, per_sample
        )

    def train_cohort(
        self,
        global_params: np.ndarray,
        client_ids: np.ndarray,
        seeds: np.ndarray,
        plan: TrainPlan,
        max_steps: np.ndarray | None = None,
    ) -> CohortResult:
        ids = np.asarray(client_ids, dtype=np.int64)
        deltas, losses, steps = self.train_cohort_tensors(
            global_params, ids, seeds, plan, max_steps
        )
        losses = losses.cpu().numpy()
        return CohortResult(
            deltas.cpu().numpy(), self.sizes[ids], losses[:, 0], losses[:, 1], steps
        )

    def train_cohort_tensors(
        self,
        global_params: np.ndarray,
        client_ids: np.ndarray,
        seeds: np.ndarray,
        plan: TrainPlan,
        max_steps: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Deltas ``[K, d]`` and (mean loss, mean squared loss) ``[K, 2]`` left on the
        executor's device, and the step counts; ``train_cohort`` copies them to the host."""
        ids = np.asarray(client_ids, dtype=np.int64)
        seeds = np.asarray(seeds, dtype=np.int64)
        k = len(ids)
        sizes = self.sizes[ids]
        steps = steps_for(sizes, plan, max_steps)
        dev = self.device
        deltas = torch.empty((k, self.dim), dtype=torch.float32, device=dev)
        losses = torch.empty((k, 2), dtype=torch.float64, device=dev)
        g = torch.from_numpy(np.ascontiguousarray(global_params, dtype=np.float32)).to(dev)
        chunk = max(1, int(self.memory_budget // self._bytes_per_client(plan)))
        for rows in _buckets(steps, chunk):
            d, loss = self._train_chunk(g, ids[rows], sizes[rows], seeds[rows], steps[rows], plan)
            if len(rows) == k:  # one chunk: no copy
                deltas, losses = d, loss
            else:
                at = torch.from_numpy(rows).to(dev)
                deltas.index_copy_(0, at, d)
                losses.index_copy_(0, at, loss)
        return deltas, losses, steps

    def _schedule(
        self,
        ids: np.ndarray,
        sizes: np.ndarray,
        seeds: np.ndarray,
        steps: np.ndarray,
        plan: TrainPlan,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Global row indices ``[K, S, B]`` and float mask of the chunk's batches, built
        where the training runs (numpy on the host, torch on an accelerator)."""
        offsets = self.offsets[ids][:, None, None]
        if self.device.type == "cpu":
            sched = cohort_schedule(sizes, seeds, plan, max_steps=steps)
            return torch.from_numpy(sched.index + offsets), torch.from_numpy(sched.mask).float()
        index, mask = cohort_schedule_tensors(sizes, seeds, plan, steps, self.device)
        return index + torch.from_numpy(offsets).to(self.device), mask.float()

    def _train_chunk(
        self,
        g: torch.Tensor,
        ids: np.ndarray,
        sizes: np.ndarray,
        seeds: np.ndarray,
        steps: np.ndarray,
        plan: TrainPlan,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deltas [K, d] and per-client (mean loss, mean squared loss) [K, 2] on the device."""
        index, mask = self._schedule(ids, sizes, seeds, steps, plan)
        dev = self.device
        s_max = int(steps.max(initial=0))
        padded = bool((steps != s_max).any())
        steps_t = torch.from_numpy(steps).to(dev)
        k = len(ids)
        params = g.expand(k, -1).clone()
        state = local_optim.init_state(plan, params)
        anchor = g if plan.prox_mu else None
        loss_sum = torch.zeros((k, 2), dtype=torch.float64, device=dev)
        for s in range(s_max):
            rows = index[:, s]
            if plan.dp_sgd_clip is None:
                grads, loss = self._grad(params, self.x[rows], self.y[rows], mask[:, s])
            else:  # DP-SGD: clipped per-sample gradients plus noise, over the batch size
                clip = plan.dp_sgd_clip
                grads, loss = self._dp_grad(params, self.x[rows], self.y[rows], mask[:, s], clip)
                if plan.dp_sgd_noise:
                    noise = torch.from_numpy(step_noise(seeds, s, self.dim)).to(dev)
                    grads.add_(noise, alpha=plan.dp_sgd_noise * clip)
                grads.div_(mask[:, s].sum(1).clamp(min=1.0).unsqueeze(1))
            active = steps_t > s if padded else None
            local_optim.step(plan, params, grads, state, anchor=anchor, active=active)
            terms = torch.stack([loss, loss * loss], dim=1).double()
            loss_sum += terms if active is None else terms * active.unsqueeze(1)
        params.sub_(g)
        return params, loss_sum / steps_t.double().unsqueeze(1)


def _buckets(steps: np.ndarray, chunk: int) -> list[np.ndarray]:
    """Row groups of similar step counts (within ``BUCKET_RATIO``), at most ``chunk`` each."""
    order = np.argsort(steps, kind="stable")
    key = np.floor(np.log(np.maximum(steps[order], 1)) / math.log(BUCKET_RATIO)).astype(np.int64)
    cuts = np.flatnonzero(np.diff(key)) + 1
    groups = []
    for group in np.split(order, cuts):
        groups.extend(np.split(group, np.arange(chunk, len(group), chunk)))
    return [np.sort(gr) for gr in groups if len(gr)]
