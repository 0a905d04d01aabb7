"""Build a run's federated data from its config: source, split, standardize, partition.

Each random step draws from its own stream derived from the run seed, so changing,
say, the partitioner leaves the train/test split unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedloom.config import DataConfig, PartitionConfig
from fedloom.data.arrays import ArrayDataset, ClientPartition
from fedloom.data.partition import partition
from fedloom.data.sources import (
    load_arrays,
    load_digits,
    standardize,
    synthetic_fedprox,
    train_test_split,
)
from fedloom.errors import DataError


@dataclass(frozen=True)
class FederatedData:
    """Client training data, optional client hold-outs, and a central test set."""

    train: ClientPartition
    holdout: ClientPartition | None
    test: ArrayDataset

    @property
    def num_features(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def _source(data: DataConfig, part: PartitionConfig, seed: int) -> ArrayDataset:
    if data.source == "digits":
        return load_digits()
    if data.source == "synthetic":
        s = data.synthetic
        return synthetic_fedprox(
            num_clients=part.num_clients or 30,
            alpha=s.alpha,
            beta=s.beta,
            rng=np.random.default_rng([seed, 4]),
            num_features=s.num_features,
            num_classes=s.num_classes,
        )
    assert data.path is not None
    return load_arrays(data.path, label_column=data.label_column, group_column=data.group_column)


def build_federated_data(data: DataConfig, part: PartitionConfig, seed: int) -> FederatedData:
    """The configured dataset split into clients (deterministic in ``seed``)."""
    full = _source(data, part, seed)
    present = np.unique(full.y)
    if present.size < 2:
        where = f"data.path = {str(data.path)!r}" if data.source == "file" else data.source
        raise DataError(
            f"{where}: every sample has the same label (class {int(present[0])}): a "
            "classifier needs at least 2 classes; nothing could be learned"
        )
    train, test = train_test_split(full, data.test_fraction, np.random.default_rng([seed, 1]))
    if data.standardize:
        train, test = standardize(train, test)
    parts = partition(
        part.method,
        train,
        part.num_clients,
        np.random.default_rng([seed, 2]),
        alpha=part.alpha,
        classes_per_client=part.classes_per_client,
        min_size=part.min_size,
    )
    clients = ClientPartition.from_indices(train, parts)
    holdout = None
    if data.client_holdout > 0:
        clients, holdout = clients.split_holdout(
            data.client_holdout, np.random.default_rng([seed, 3])
        )
    return FederatedData(clients, holdout, test)
