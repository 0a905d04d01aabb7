"""Shard one simulation over processes, GPUs or machines with torch.distributed."""

from fedloom.distributed.runtime import shard_from_env

__all__ = ["shard_from_env"]
