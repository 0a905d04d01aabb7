"""Secure aggregation as one transform with two halves.

The client half encodes each update row into SecAgg+'s ring vector ``[delta | w | w*loss
| b]`` (:meth:`~fedloom.secagg.cohort.SecureAggregator.encode`); the protocol then sums
the masked rows so that the server learns only the sum; the server half decodes the
unmasked sum back to float sums (:meth:`~fedloom.secagg.cohort.SecureAggregator.decode`).
Between them sits the protocol (in process in the simulator, over gRPC in a deployment).

References: Bonawitz et al., CCS 2017; Bell et al., CCS 2020.
"""

from __future__ import annotations

import numpy as np

from fedloom.errors import FedloomError
from fedloom.records import ClientMetrics, Update
from fedloom.secagg.cohort import SecureAggregator, SecureSum
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian
from fedloom.transforms.base import Context, State, TwoSided


class _SecureHalf:
    """What both halves share: the aggregator's ring and seeds, the DP clip the rows were
    encoded under and the distributed-DP encoding (stateless: ``init`` gives ``{}``)."""

    def __init__(
        self,
        aggregator: SecureAggregator,
        dp_clip: float | None = None,
        distributed: DistributedDiscreteGaussian | None = None,
    ) -> None:
        self.aggregator, self.dp_clip, self.distributed = aggregator, dp_clip, distributed

    def init(self, dim: int) -> State:
        return {}


class SecureEncode(_SecureHalf):
    """The client half: rows (with ``ctx.weights`` as example counts and ``ctx.losses``)
    to ring vectors for a cohort of ``ctx.stats["num_clients"]`` in ``ctx.attempt``."""

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        k = updates.shape[0]
        losses = np.full(k, np.nan) if ctx.losses is None else np.asarray(ctx.losses)
        if np.shape(ctx.weights) != (k,) or losses.shape != (k,) or len(ctx.client_ids) != k:
            raise FedloomError(f"secure encoding: ids, weights and losses must cover {k} rows")
        records = [
            Update(int(c), ctx.round, 0, row, int(n), ClientMetrics(float(loss), 0, 0.0))
            for c, row, n, loss in zip(ctx.client_ids, updates, ctx.weights, losses, strict=True)
        ]
        n = int(ctx.stats.get("num_clients", k))
        return self.encode(records, n, ctx.attempt), state

    def encode(self, updates: list[Update], num_clients: int, attempt: int) -> np.ndarray:
        return self.aggregator.encode(updates, num_clients, attempt, self.dp_clip, self.distributed)


class SecureDecode(_SecureHalf):
    """The server half: the unmasked ring sum ``[1, slots]`` of the clients in
    ``ctx.client_ids`` to float sums ``[1, d + 3]`` (delta, weight, weighted loss,
    unclipped count); :meth:`decode` gives the typed :class:`SecureSum`."""

    def decode(
        self, total: np.ndarray, included: np.ndarray, num_clients: int, attempt: int
    ) -> SecureSum:
        return self.aggregator.decode(
            total, included, num_clients, attempt, self.dp_clip, self.distributed
        )

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        if updates.ndim != 2 or updates.shape[0] != 1:
            raise FedloomError(f"secure decoding takes the one unmasked sum, got {updates.shape}")
        n = int(ctx.stats.get("num_clients", len(ctx.client_ids)))
        s = self.decode(updates[0], np.asarray(ctx.client_ids), n, ctx.attempt)
        row = np.concatenate([s.delta, [s.weight, s.loss, s.unclipped]])
        return row[None], state


def secure_masking(
    aggregator: SecureAggregator,
    dp_clip: float | None = None,
    distributed: DistributedDiscreteGaussian | None = None,
) -> TwoSided:
    """SecAgg+'s two halves over ``aggregator``'s ring, range and seeds."""
    return TwoSided(
        SecureEncode(aggregator, dp_clip, distributed),
        SecureDecode(aggregator, dp_clip, distributed),
    )
