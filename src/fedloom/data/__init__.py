"""Data layer: datasets, client partitioning and the per-client on-disk layout."""

from fedloom.data.arrays import ArrayDataset, ClientPartition
from fedloom.data.partition import dirichlet, iid, natural, partition, shards
from fedloom.data.sources import (
    load_arrays,
    load_digits,
    standardize,
    synthetic_fedprox,
    train_test_split,
)
from fedloom.data.storage import read_client, read_partition, write_partition

__all__ = [
    "ArrayDataset",
    "ClientPartition",
    "dirichlet",
    "iid",
    "load_arrays",
    "load_digits",
    "natural",
    "partition",
    "read_client",
    "read_partition",
    "shards",
    "standardize",
    "synthetic_fedprox",
    "train_test_split",
    "write_partition",
]
