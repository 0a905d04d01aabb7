"""The torch.distributed runtime: one simulation sharded over ``torchrun`` processes.

Launch the ordinary command under torchrun::

    torchrun --nproc_per_node=4 -m fedloom run CONFIG
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=8 -m fedloom run CONFIG

Every process builds the same experiment from the same config and seed and runs the
same sans-IO server, so they all select the same cohort. Each process trains its
share of the cohort (vectorized where possible, on its own GPU when
``simulation.device = "cuda"``); then the processes combine their partial FedAvg sums
with one all-reduce per round, or gather every update row when
``distributed.mode = "gather"``. Rank 0 alone writes the run directory.

Collectives use the Gloo backend on CPU tensors: what crosses processes each round is
one vector of ``d + 2K + 1`` float64 values (or the gathered rows), small next to the
training itself. Multi-node resume needs the run directory on a shared filesystem.

References: the pfl-research and FLUTE simulators (one reused model per worker, local
sums, one all-reduce per round).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Literal

import numpy as np

from fedloom.errors import FedloomError
from fedloom.sim.shard import Shard


def world_size_from_env() -> int:
    """The ``WORLD_SIZE`` torchrun set, or 1 outside torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise FedloomError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def shard_from_env(mode: Literal["allreduce", "gather"] = "allreduce") -> Shard | None:
    """Join the process group torchrun describes in the environment; None if alone."""
    if world_size_from_env() <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(minutes=30))
    rank, world = dist.get_rank(), dist.get_world_size()

    def allreduce(vec: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float64))
        dist.all_reduce(t)
        return t.numpy()

    def gather(obj: Any) -> list[Any]:
        out: list[Any] = [None] * world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    return Shard(rank, world, mode, allreduce, gather, broadcast)


def shutdown() -> None:
    """Leave the process group (no-op outside torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
