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

Edge plans train as the sequential trainer does: ``plan.precision`` under
``torch.autocast`` on the ``torch.func`` path, or with the MLP products cast the same way
(``batched_mlp.py``); ``plan.qat`` always on the ``torch.func`` path, with the
fake-quantized forward of ``client/qat.py``. Padding repeats a batch's first example,
so batch statistics (QAT's input ranges) are those of the client's real batch. Each
client's sampled batch losses (``client/progress.py``) are its own steps', kept on the
device.

A model ``vmap`` cannot batch (an operation without a batching rule, random numbers in
training mode such as dropout, data-dependent Python control flow) is found at
construction by a probe on one example (:func:`vmap_failure`), so the caller can fall
back to the sequential executor before the run starts.

References: Horace He and Richard Zou, functorch / ``torch.func`` (vmap, grad);
pfl-research and FLUTE for vectorized FL simulation.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch import nn

from fedloom.client import local_optim
from fedloom.client.dp_sgd import step_noise
from fedloom.client.progress import check_count, sample_matrix
from fedloom.client.qat import FakeQuantForward
from fedloom.client.schedule import cohort_schedule, cohort_schedule_tensors, steps_for
from fedloom.client.trainer import autocast, classifier_task, compute_dtype
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


def vmap_grad_fns(
    model: nn.Module, task: ResolvedTask, precision: str = "fp32", qat: bool = False
) -> tuple[GradFn, DpGradFn]:
    """Per-client gradients of ``task``'s loss, and clipped per-sample gradient sums,
    via ``torch.func`` over ``model`` (see ``batched_mlp.make_grad_fns`` for the forms),
    the forward and backward passes under ``precision``'s autocast, with int8
    fake-quantized Linear/Conv layers under ``qat``.

    A client's loss is the mean of the task's per-example loss over its unmasked
    examples, which is the task's batch loss on the unpadded batch; a per-sample
    gradient is that of the task's loss on a one-example batch, as in the sequential
    trainer's DP-SGD.
    """
    from torch.func import functional_call, grad, vmap

    specs = [(s.name, s.offset, s.numel, s.shape) for s in ParamLayout.from_module(model)]
    names = [name for name, *_ in specs]
    loss_fn, loss_each = task.loss.fn, task.loss_each()
    forward = FakeQuantForward(model) if qat else partial(functional_call, model)
    device = next(model.parameters()).device

    def pieces(flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each parameter of ``flat`` (``[..., d]``) as a view ``[..., *shape]``: the
        gradient is taken per parameter, not of the flat rows, whose slices' backward
        would write a zero-filled ``[K, d]`` matrix per parameter and add them up."""
        lead = flat.shape[:-1]
        return tuple(flat[..., o : o + k].view(*lead, *shape) for _, o, k, shape in specs)

    def joined(grads: tuple[torch.Tensor, ...], lead: int) -> torch.Tensor:
        """Per-parameter gradients ``[*lead dims, *shape]`` as one ``[*lead dims, d]``."""
        return torch.cat([g.flatten(lead) for g in grads], dim=lead)

    def loss(params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor):
        with autocast(precision, device):
            outputs = forward(dict(zip(names, params, strict=True)), x)
            each = loss_each(outputs, y).float()
        value = (each * m).sum() / m.sum().clamp(min=1.0)
        return value, value.detach()

    def loss_one(params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor):
        with autocast(precision, device):
            outputs = forward(dict(zip(names, params, strict=True)), x.unsqueeze(0))
            return loss_fn(outputs, y.unsqueeze(0)).float()

    per_client = vmap(grad(loss, has_aux=True))
    per_sample = vmap(vmap(grad(loss_one), in_dims=(None, 0, 0)))

    def batched(params, x, y, mask):  # noqa: ANN001, ANN202
        grads, value = per_client(pieces(params), x, y, mask)
        return joined(grads, 1), value

    def dp_grad(params, x, y, mask, clip):  # noqa: ANN001, ANN202
        each = joined(per_sample(pieces(params), x, y), 2)
        clipped = per_sample_clip(each, clip) * mask.unsqueeze(2)
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
        loss_samples: int = 4,
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
        self.loss_samples = check_count(loss_samples)
        self._layers = None
        if _uses_builtin_cross_entropy(self.task, data):
            self._layers = mlp_layers(model, tuple(data.x.shape[1:]))
        # gradient functions by (precision, qat), built on first use
        self._fns: dict[tuple[str, bool], tuple[GradFn, DpGradFn]] = {}
        self.backend = "vmap" if self._layers is None else "bmm"
        fns = self._grad_fns(TrainPlan())
        if self.backend == "vmap" and len(self.y):
            params = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
            reason = _probe(*fns, params, self.x, self.y)
            if reason is not None:
                raise ValueError(f"cannot vectorize this model: {reason}")
        self._example_bytes = (data.x[:1].nbytes + data.y[:1].nbytes) if len(data.y) else 0
        self._activation = activation_bytes(self.model, self.x[:1]) if len(data.y) else 0

    @property
    def dim(self) -> int:
        return self.layout.dim

    def _backend(self, plan: TrainPlan) -> str:
        """How ``plan`` is trained: ``bmm`` (plain MLPs, no QAT) or ``vmap``."""
        return "vmap" if plan.qat else self.backend

    def _grad_fns(self, plan: TrainPlan) -> tuple[GradFn, DpGradFn]:
        """The gradient functions of ``plan``'s precision and QAT setting."""
        key = (plan.precision, plan.qat)
        if key not in self._fns:
            if self._backend(plan) == "bmm":
                assert self._layers is not None
                dtype = compute_dtype(plan.precision)
                self._fns[key] = make_grad_fns(self._layers, self.dim, dtype)
            else:
                self._fns[key] = vmap_grad_fns(self.model, self.task, *key)
        return self._fns[key]

    def _bytes_per_client(self, plan: TrainPlan) -> float:
        """Rough peak memory of one client in a chunk (parameters, optimizer state, the
        batch's examples and activations, measured on one example at construction)."""
        slots = 2 if plan.optimizer == "adam" else (1 if plan.momentum else 0)
        per_sample = plan.dp_sgd_clip is not None and self._backend(plan) == "vmap"
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
        counts = np.minimum(steps, self.loss_samples)
        samples = tuple(
            tuple(row[:n].tolist()) for row, n in zip(losses[:, 2:], counts, strict=True)
        )
        return CohortResult(
            deltas.cpu().numpy(), self.sizes[ids], losses[:, 0], losses[:, 1], steps, samples
        )

    def train_cohort_tensors(
        self,
        global_params: np.ndarray,
        client_ids: np.ndarray,
        seeds: np.ndarray,
        plan: TrainPlan,
        max_steps: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Deltas ``[K, d]`` and loss statistics ``[K, 2 + loss_samples]`` (mean loss, mean
        squared loss, then the sampled batch losses of :func:`sample_matrix`'s steps, NaN
        padded) left on the executor's device, and the step counts; ``train_cohort``
        copies them to the host."""
        ids = np.asarray(client_ids, dtype=np.int64)
        seeds = np.asarray(seeds, dtype=np.int64)
        k = len(ids)
        sizes = self.sizes[ids]
        steps = steps_for(sizes, plan, max_steps)
        dev = self.device
        deltas = torch.empty((k, self.dim), dtype=torch.float32, device=dev)
        losses = torch.empty((k, 2 + self.loss_samples), dtype=torch.float64, device=dev)
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
        where the training runs (numpy on the host, torch on an accelerator); padding
        repeats each batch's first row."""
        offsets = self.offsets[ids][:, None, None]
        if self.device.type == "cpu":
            sched = cohort_schedule(sizes, seeds, plan, max_steps=steps)
            index = np.where(sched.mask, sched.index, sched.index[:, :, :1])
            return torch.from_numpy(index + offsets), torch.from_numpy(sched.mask).float()
        index, mask = cohort_schedule_tensors(sizes, seeds, plan, steps, self.device)
        index = torch.where(mask, index, index[:, :, :1])
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
        """Deltas [K, d] and per-client loss statistics [K, 2 + loss_samples] (see
        ``train_cohort_tensors``) on the device."""
        index, mask = self._schedule(ids, sizes, seeds, steps, plan)
        grad_fn, dp_grad_fn = self._grad_fns(plan)
        dev = self.device
        s_max = int(steps.max(initial=0))
        padded = bool((steps != s_max).any())
        steps_t = torch.from_numpy(steps).to(dev)
        k = len(ids)
        params = g.expand(k, -1).clone()
        state = local_optim.init_state(plan, params)
        anchor = g if plan.prox_mu else None
        loss_sum = torch.zeros((k, 2), dtype=torch.float64, device=dev)
        samples = torch.full((k, self.loss_samples), math.nan, dtype=torch.float64, device=dev)
        slots = _sample_slots(sample_matrix(steps, self.loss_samples), dev)
        for s in range(s_max):
            rows = index[:, s]
            if plan.dp_sgd_clip is None:
                grads, loss = grad_fn(params, self.x[rows], self.y[rows], mask[:, s])
            else:  # DP-SGD: clipped per-sample gradients plus noise, over the batch size
                clip = plan.dp_sgd_clip
                grads, loss = dp_grad_fn(params, self.x[rows], self.y[rows], mask[:, s], clip)
                if plan.dp_sgd_noise:
                    noise = torch.from_numpy(step_noise(seeds, s, self.dim)).to(dev)
                    grads.add_(noise, alpha=plan.dp_sgd_noise * clip)
                grads.div_(mask[:, s].sum(1).clamp(min=1.0).unsqueeze(1))
            active = steps_t > s if padded else None
            local_optim.step(plan, params, grads, state, anchor=anchor, active=active)
            terms = torch.stack([loss, loss * loss], dim=1).double()
            loss_sum += terms if active is None else terms * active.unsqueeze(1)
            if s in slots:  # a device-side scatter: no synchronization
                at, col = slots[s]
                samples.index_put_((at, col), loss.index_select(0, at).double())
        params.sub_(g)
        return params, torch.cat([loss_sum / steps_t.double().unsqueeze(1), samples], dim=1)


def _sample_slots(
    picks: np.ndarray, device: torch.device
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For each step some client samples (``picks``: ``sample_matrix``'s ``[K, J]``),
    the (row, column) indices of ``[K, J]`` that take that step's losses, on ``device``."""
    rows, cols = np.nonzero(picks >= 0)
    if not len(rows):
        return {}
    at = picks[rows, cols]
    order = np.argsort(at, kind="stable")
    rows_t = torch.from_numpy(rows[order]).to(device)
    cols_t = torch.from_numpy(cols[order]).to(device)
    values, starts = np.unique(at[order], return_index=True)
    ends = np.append(starts[1:], len(at))
    return {
        int(v): (rows_t[a:b], cols_t[a:b])
        for v, a, b in zip(values.tolist(), starts.tolist(), ends.tolist(), strict=True)
    }


def _buckets(steps: np.ndarray, chunk: int) -> list[np.ndarray]:
    """Row groups of similar step counts (within ``BUCKET_RATIO``), at most ``chunk`` each."""
    order = np.argsort(steps, kind="stable")
    key = np.floor(np.log(np.maximum(steps[order], 1)) / math.log(BUCKET_RATIO)).astype(np.int64)
    cuts = np.flatnonzero(np.diff(key)) + 1
    groups = []
    for group in np.split(order, cuts):
        groups.extend(np.split(group, np.arange(chunk, len(group), chunk)))
    return [np.sort(gr) for gr in groups if len(gr)]
