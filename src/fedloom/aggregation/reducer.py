"""The reduce step of the server chain: a cohort's rows ``[K, d]`` to one update ``[d]``.

A reducer is ``partial`` (rows and weights to a float64 vector) then ``finish`` (that
vector and the total weight to the float32 update). A ``decomposable`` reducer's partial
vectors add across shards, so a runtime that splits one cohort over processes reduces
with one all-reduce (torchrun's ``combine``); a robust statistic (median, trimmed mean,
Krum) is not decomposable and needs every row in one process.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedloom.aggregation.mean import weighted_sum


class Reducer(Protocol):
    decomposable: bool

    def partial(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray: ...

    def finish(self, total: np.ndarray, weight: float) -> np.ndarray: ...


class WeightedMean:
    """FedAvg's example-weighted mean (McMahan et al., AISTATS 2017)."""

    decomposable = True

    def partial(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return weighted_sum(rows, weights)

    def finish(self, total: np.ndarray, weight: float) -> np.ndarray:
        return (total / weight).astype(np.float32)
