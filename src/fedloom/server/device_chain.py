"""The server chain's row work on the device where a cohort was trained.

A simulated cohort trained on an accelerator is a ``[K, d]`` tensor there; copying it to
the host costs more than training it (about 110,000 client updates/s over PCIe against
millions trained). :class:`CohortRows` carries such a cohort to
:meth:`~fedloom.server.sync.SyncServer.receive_cohort`, and the functions here do the
chain's work over rows in torch, on the rows' device: validation (finiteness and the
norm limit), the server transforms that have a device form (:func:`device_transform`:
fixed L2 clipping), central DP's clipping with its unclipped count, the FedAvg weighted
sum and the projections of each row on the aggregate (the records' contributions).

What comes back to the host is what the records need and one ``d``-vector: per-client
norms and verdicts, the reduced sum, the contributions. The central DP release (its
noise, noisy counts, replay and digest) and the server optimizer then run on the host
as they always do, on that one vector: they draw the same numbers as a host round, so a
run's noise and model do not depend on where it trained, and the privacy accounting is
untouched. Every device-to-host copy goes through :func:`to_host`.

References: McMahan et al., AISTATS 2017 (FedAvg); McMahan, Ramage, Talwar & Zhang,
ICLR 2018 (DP-FedAvg's clipped sum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedloom.errors import FedloomError
from fedloom.privacy.mechanisms import per_sample_clip
from fedloom.transforms.base import Chain, Transform
from fedloom.transforms.clipping import ClipL2

RowMap = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CohortRows:
    """A round's trained cohort whose updates stay on their device: one row per client.

    ``deltas`` float32 ``[K, d]`` (any torch device); the rest are host arrays aligned
    with the rows: ``client_ids``, ``num_examples`` (int64), ``train_loss`` and
    ``train_loss_sq`` (float64), ``steps`` (int64), ``epochs`` (float64, passes over
    the client's data) and ``loss_samples`` (float64 ``[K, J]``, each client's sampled
    batch losses, NaN past its ``min(steps, J)``). ``round`` and ``version`` are the
    dispatch's, as in every ``Update``."""

    round: int
    version: int
    client_ids: np.ndarray
    deltas: torch.Tensor
    num_examples: np.ndarray
    train_loss: np.ndarray
    train_loss_sq: np.ndarray
    steps: np.ndarray
    epochs: np.ndarray
    loss_samples: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.client_ids)
        if not isinstance(self.deltas, torch.Tensor) or self.deltas.ndim != 2:
            shape = tuple(getattr(self.deltas, "shape", ()))
            raise FedloomError(f"cohort deltas must be a [K, d] tensor, got shape {shape}")
        if self.deltas.shape[0] != k:
            raise FedloomError(f"cohort deltas have {self.deltas.shape[0]} rows for {k} clients")
        for name in ("num_examples", "train_loss", "train_loss_sq", "steps", "epochs"):
            if np.shape(getattr(self, name)) != (k,):
                raise FedloomError(
                    f"cohort {name} has shape {np.shape(getattr(self, name))}, expected ({k},)"
                )
        if np.ndim(self.loss_samples) != 2 or np.shape(self.loss_samples)[0] != k:
            raise FedloomError(
                f"cohort loss_samples has shape {np.shape(self.loss_samples)}, expected ({k}, J)"
            )

    @property
    def device(self) -> torch.device:
        return self.deltas.device

    def take(self, keep: np.ndarray) -> CohortRows:
        """The rows at the positions ``keep`` (int64), in that order; the deltas are
        gathered on their device (no copy when ``keep`` is every row in order)."""
        if len(keep) == len(self.client_ids) and np.array_equal(keep, np.arange(len(keep))):
            return self
        at = torch.from_numpy(np.ascontiguousarray(keep, dtype=np.int64)).to(self.device)
        return CohortRows(
            self.round,
            self.version,
            self.client_ids[keep],
            self.deltas.index_select(0, at),
            self.num_examples[keep],
            self.train_loss[keep],
            self.train_loss_sq[keep],
            self.steps[keep],
            self.epochs[keep],
            self.loss_samples[keep],
        )


def to_host(t: torch.Tensor) -> np.ndarray:
    """A tensor as a host numpy array: the one place the device chain copies back."""
    return t.detach().to("cpu").numpy()


def row_checks(deltas: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each row's finiteness (bool ``[K]``) and L2 norm (float64 ``[K]``, accumulated in
    float64 as :class:`~fedloom.transforms.validation.Validate` does), from one pass over
    the rows and one ``[K]`` copy: a float32 row's float64 norm is finite exactly when
    every value is (squares of float32 values cannot overflow float64)."""
    if deltas.device.type == "cpu":  # host memory already: numpy's float64 einsum is faster
        u = deltas.detach().numpy()
        norms = np.sqrt(np.einsum("ij,ij->i", u, u, dtype=np.float64))
    else:
        norms = to_host(torch.linalg.vector_norm(deltas, dim=1, dtype=torch.float64))
    return np.isfinite(norms), norms


def weighted_sum(deltas: torch.Tensor, weights: np.ndarray) -> np.ndarray:
    """``sum_k w_k u_k`` as float64 ``[d]`` on the host, computed as
    :func:`fedloom.aggregation.weighted_sum` does (weights scaled by their maximum, the
    product in float32) but on the rows' device."""
    w = np.asarray(weights, dtype=np.float64)
    scale = float(w.max(initial=0.0))
    if scale == 0:
        return np.zeros(deltas.shape[1], dtype=np.float64)
    wt = torch.from_numpy((w / scale).astype(np.float32)).to(deltas.device)
    return to_host(wt @ deltas).astype(np.float64) * np.float64(scale)


def clipped_sum(
    deltas: torch.Tensor, clip_norm: float, norms: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Central DP's stage over the rows: each clipped to ``clip_norm`` (as
    :func:`~fedloom.privacy.mechanisms.clip_rows`: rows within it unchanged, the rest
    exactly within it), summed in float64; with the number of rows that were within the
    norm already, counted from ``norms`` (the rows' float64 norms, e.g. from
    :func:`row_checks`) when given. One ``d + 1`` copy to the host."""
    total = per_sample_clip(deltas, clip_norm).sum(dim=0, dtype=torch.float64)
    if norms is not None:
        return to_host(total), int(np.count_nonzero(norms <= clip_norm))
    row_norms = torch.linalg.vector_norm(deltas, dim=1, dtype=torch.float64)
    unclipped = (row_norms <= clip_norm).sum().to(torch.float64).reshape(1)
    out = to_host(torch.cat([total, unclipped]))
    return out[:-1], int(out[-1])


def project(deltas: torch.Tensor, unit: np.ndarray) -> np.ndarray:
    """Each row's component along the float32 ``unit`` vector (float64 ``[K]``), the
    product in float32 as the host path's ``matrix @ unit``."""
    u = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32)).to(deltas.device)
    return to_host(deltas @ u).astype(np.float64)


def device_transform(transform: Transform) -> RowMap | None:
    """The device form of a server transform (a chain of them composes), or None when
    one of its stages has none (the server then runs the chain on the host). Only
    stateless stages have a device form: fixed L2 clipping (:class:`ClipL2`)."""
    if isinstance(transform, Chain):
        stages = [device_transform(t) for t in transform.transforms]
        if any(s is None for s in stages):
            return None

        def composed(rows: torch.Tensor) -> torch.Tensor:
            for stage in stages:
                assert stage is not None
                rows = stage(rows)
            return rows

        return composed
    if type(transform) is ClipL2:
        clip = transform.clip_norm
        return lambda rows: per_sample_clip(rows, clip)
    return None


def host_reason(transform: Transform | None) -> str | None:
    """Why the server transforms must run on the host (None: they have a device form)."""
    if transform is None or device_transform(transform) is not None:
        return None
    stages = transform.transforms if isinstance(transform, Chain) else (transform,)
    names = [type(t).__name__ for t in stages if device_transform(t) is None]
    return f"server transform {', '.join(names)} has no device implementation"
