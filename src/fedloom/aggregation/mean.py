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
    """``sum_k w_k u_k / sum_k w_k`` over the rows of ``updates`` ``[K, d]`` as float32 ``[d]``."""
    total, w = _check(updates, weights)
    if total == 0:
        raise FedloomError("weights are all zero: no client contributed examples")
    return (weighted_sum(updates, w) / total).astype(np.float32)


def weighted_sum(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_k w_k u_k`` as float64 ``[d]``: the part of FedAvg that adds across shards.

    A runtime that splits a cohort over processes sums these partial vectors (one
    all-reduce) and divides by the summed weights. The product runs in float32, the
    dtype of the updates, so the matrix is never copied to float64; weights are scaled
    by their maximum first so neither huge nor tiny weights overflow float32.
    """
    _, w = _check(updates, weights)
    u = np.asarray(updates, dtype=np.float32)
    scale = float(w.max(initial=0.0))
    if scale == 0:
        return np.zeros(u.shape[1], dtype=np.float64)
    return (w / scale).astype(np.float32) @ u * np.float64(scale)


def _check(updates: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    updates = np.asarray(updates)
    if updates.ndim != 2:
        raise FedloomError(f"updates must be a [K, d] matrix, got shape {updates.shape}")
    k = updates.shape[0]
    if k == 0:
        raise FedloomError("updates is empty (K == 0): cannot average an empty cohort")
    w = check_weights(weights, k)
    return float(w.sum()), w


def check_weights(weights: np.ndarray, k: int) -> np.ndarray:
    """``weights`` as float64 ``[k]``, refused unless finite and non-negative."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,):
        raise FedloomError(f"weights has shape {w.shape}, expected ({k},) to match updates")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        i = int(bad[0])
        raise FedloomError(f"weights[{i}] is {w[i]}; weights must be finite and non-negative")
    return w
