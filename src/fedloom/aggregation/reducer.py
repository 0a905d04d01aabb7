"""The reduce step of the server chain: a cohort's rows ``[K, d]`` to one update ``[d]``.

A reducer is ``partial`` (rows and weights to a float64 vector) then ``finish`` (that
vector and the total weight to the float32 update). A ``decomposable`` reducer's partial
vectors add across shards, so a runtime that splits one cohort over processes reduces
with one all-reduce (torchrun's ``combine``); a robust statistic (median, trimmed mean,
Krum) is not decomposable and needs every row in one process (torchrun's gather mode).
A robust reducer's ``partial`` is its statistic times the weight sum, so ``finish`` is
the same division for every reducer. ``min_rows`` is the fewest rows the rule is defined
for (Krum needs n > 2f + 2); a round with fewer is skipped, not reduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedloom.aggregation.mean import weighted_sum


@dataclass(frozen=True)
class ReduceContext:
    """What a reducer may know besides the rows. ``client_ids`` are aligned with the
    rows; ``rng`` draws bucketing's permutation (seeded in simulation, the OS's in a
    deployment); ``previous`` is the last aggregate the server applied (centered
    clipping starts there), ``reference`` the server's own update on its root dataset
    this round (FLTrust), both None when unknown; ``steps`` each row's local steps,
    aligned with the rows (FedNova's normalization), None when not given."""

    client_ids: np.ndarray
    rng: np.random.Generator
    previous: np.ndarray | None = None
    reference: np.ndarray | None = None
    steps: np.ndarray | None = None


class Reducer(Protocol):
    decomposable: bool
    min_rows: int
    needs_reference: bool

    def partial(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None = None
    ) -> np.ndarray: ...

    def finish(self, total: np.ndarray, weight: float) -> np.ndarray: ...


class WeightedMean:
    """FedAvg's example-weighted mean (McMahan et al., AISTATS 2017)."""

    decomposable = True
    min_rows = 1
    needs_reference = False

    def partial(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None = None
    ) -> np.ndarray:
        return weighted_sum(rows, weights)

    def finish(self, total: np.ndarray, weight: float) -> np.ndarray:
        return (total / weight).astype(np.float32)
