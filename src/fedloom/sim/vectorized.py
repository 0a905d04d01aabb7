"""Train a whole cohort at once: stacked parameters and per-client gradients.

The cohort's parameters are one ``[K, d]`` matrix. Each local step gathers every
client's mini-batch into ``[K, B, features]`` and evaluates per-client gradients, with
batched matrix products for plain MLPs (``batched_mlp.py``) and otherwise with
``torch.func.vmap(grad(...))`` over ``functional_call`` of the ordinary model; then it
steps all clients with the same functional optimizer the sequential trainer uses. Batches
are padded to ``B`` with a mask: padded samples contribute nothing to the loss, and a
client whose schedule has ended takes masked (no-op) steps. Clients are bucketed by
their number of local steps (buckets span at most a factor 1.25) so padding stays
small, and each bucket is cut into chunks that fit a memory budget.

References: Horace He and Richard Zou, functorch / ``torch.func`` (vmap, grad);
pfl-research and FLUTE for vectorized FL simulation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedloom.client import local_optim
from fedloom.client.dp_sgd import step_noise
from fedloom.client.schedule import cohort_schedule, cohort_schedule_tensors, steps_for
from fedloom.data.arrays import ClientPartition
from fedloom.params import ParamLayout
from fedloom.privacy.mechanisms import per_sample_clip
from fedloom.records import TrainPlan
from fedloom.sim.batched_mlp import make_grad_fns, mlp_layers
from fedloom.sim.executor import CohortResult

BUCKET_RATIO = 1.25


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be vectorized, or None if it can."""
    if any(True for _ in model.buffers()):
        names = [n for n, _ in model.named_buffers()]
        return f"model has buffers ({', '.join(names[:3])}); batch statistics are not per client"
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return "model parameters are not all float32"
    return None


class VectorizedExecutor:
    """Trains K clients simultaneously on one device."""

    name = "vectorized"

    def __init__(
        self,
        model: nn.Module,
        data: ClientPartition,
        device: str | torch.device = "cpu",
        memory_budget_mb: float = 512.0,
    ) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"cannot vectorize this model: {reason}")
        self.device = torch.device(device)
        self.layout = ParamLayout.from_module(model)
        self.model = model.to(self.device)
        self.data = data
        self.x = torch.from_numpy(data.x).to(self.device)
        self.y = torch.from_numpy(data.y).to(self.device)
        self.offsets = data.offsets
        self.sizes = data.sizes()
        self.memory_budget = memory_budget_mb * 2**20
        layers = mlp_layers(model)
        if layers is not None:
            self.backend = "bmm"
            self._grad, self._dp_grad = make_grad_fns(layers, self.dim)
        else:
            self.backend = "vmap"
            self._grad, self._dp_grad = self._vmap_grad_fns()

    def _vmap_grad_fns(self):  # noqa: ANN202 - torch.func transforms
        """Per-client gradients, and clipped per-sample gradient sums, via torch.func."""
        from torch.func import functional_call, grad, vmap

        specs = [(s.name, s.offset, s.numel, s.shape) for s in self.layout]

        def views(flat: torch.Tensor) -> dict[str, torch.Tensor]:
            return {n: flat[o : o + k].view(shape) for n, o, k, shape in specs}

        def loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor):
            logits = functional_call(self.model, views(flat), (x,))
            per_example = F.cross_entropy(logits, y, reduction="none")
            value = (per_example * m).sum() / m.sum().clamp(min=1.0)
            return value, value.detach()

        def loss_one(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = functional_call(self.model, views(flat), (x.unsqueeze(0),))
            return F.cross_entropy(logits, y.unsqueeze(0))

        batched = vmap(grad(loss, has_aux=True))
        per_sample = vmap(vmap(grad(loss_one), in_dims=(None, 0, 0)))

        def dp_grad(params, x, y, mask, clip):  # noqa: ANN001, ANN202
            clipped = per_sample_clip(per_sample(params, x, y), clip) * mask.unsqueeze(2)
            return clipped.sum(1), batched(params, x, y, mask)[1]

        return batched, dp_grad

    @property
    def dim(self) -> int:
        return self.layout.dim

    def _bytes_per_client(self, plan: TrainPlan) -> float:
        """Rough peak memory of one client in a chunk (parameters, state, activations)."""
        slots = 2 if plan.optimizer == "adam" else (1 if plan.momentum else 0)
        if plan.dp_sgd_clip is not None and self.backend == "vmap":
            slots += plan.batch_size  # per-sample gradients are materialized
        widths = sum(s.shape[0] for s in self.layout if len(s.shape) >= 1)
        features = self.x.shape[1] if self.x.ndim > 1 else 1
        return 4.0 * (self.dim * (4 + slots) + plan.batch_size * (features + 6 * widths))

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
