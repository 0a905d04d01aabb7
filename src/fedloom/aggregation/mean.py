"""Example-weighted mean of client updates, the FedAvg aggregation rule.

Weighting by example count makes the aggregate the update the union of the cohort's data
would have produced under IID sampling. The whole cohort is reduced with one
matrix-vector product.
References: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

import numpy as np

from fedloom.errors import FedloomError


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_k w_k u_k / sum_k w_k`` over the rows of ``updates`` ``[K, d]`` as float32 ``[d]``.

    Weights are normalized in float64 (so huge example counts lose no precision) and then
    cast to float32, so the product runs in the dtype of the updates.
    """
    updates = np.asarray(updates, dtype=np.float32)
    if updates.ndim != 2:
        raise FedloomError(f"updates must be a [K, d] matrix, got shape {updates.shape}")
    k = updates.shape[0]
    if k == 0:
        raise FedloomError("updates is empty (K == 0): cannot average an empty cohort")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,):
        raise FedloomError(f"weights has shape {w.shape}, expected ({k},) to match updates")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        i = int(bad[0])
        raise FedloomError(f"weights[{i}] is {w[i]}; weights must be finite and non-negative")
    total = w.sum()
    if total == 0:
        raise FedloomError("weights are all zero: no client contributed examples")
    return (w / total).astype(np.float32) @ updates
