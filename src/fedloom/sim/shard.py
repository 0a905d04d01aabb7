"""How one simulation process relates to the others when a cohort is sharded.

The simulation runtime only needs these few collective operations; the
torch.distributed runtime (``fedloom.distributed``) provides them, and a single
process runs without a ``Shard`` at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes training one cohort together.

    ``mode`` says how the processes combine their clients' updates: ``allreduce`` sums
    the partial FedAvg sums (one all-reduce of ``d + 2K + 1`` numbers per round), and
    ``gather`` gives every process every client's update row, for aggregators that need
    the whole ``[K, d]`` matrix.
    """

    rank: int
    world: int
    mode: Literal["allreduce", "gather"]
    allreduce: Callable[[np.ndarray], np.ndarray]
    gather: Callable[[Any], list[Any]]
    broadcast: Callable[[Any], Any]

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes the run directory."""
        return self.rank == 0

    def mine(self, items: list) -> list:
        """This rank's share of a cohort (strided, so shares differ by at most one)."""
        return items[self.rank :: self.world]
