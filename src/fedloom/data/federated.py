"""Build a run's federated data from its config: source, split, standardize, partition.

Each random step draws from its own stream derived from the run seed, so changing,
say, the partitioner leaves the train/test split unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedloom.config import LEAF_SOURCES, DataConfig, PartitionConfig
from fedloom.data.arrays import ArrayDataset, ClientPartition
from fedloom.data.datasets import load_cifar10, load_huggingface, load_mnist, read_leaf
from fedloom.data.partition import METHODS, partition
from fedloom.data.sources import (
    load_arrays,
    load_digits,
    standardize,
    synthetic_fedprox,
    train_test_split,
)
from fedloom.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedloom.task import Targets


@dataclass(frozen=True)
class FederatedData:
    """Client training data, optional client hold-outs, and a central test set.

    Built from a config by :func:`build_federated_data`, or from the user's own arrays of
    any shape (images ``[n, C, H, W]``, token ids ``[n, T]``, tables, regression targets):
    :meth:`from_arrays` splits and partitions one centralized dataset, :meth:`from_clients`
    takes data already split by client (one client per writer, device, speaker).
    """

    train: ClientPartition
    holdout: ClientPartition | None
    test: ArrayDataset

    @property
    def num_features(self) -> int:
        """Values per example (the product of ``sample_shape``)."""
        return self.train.num_features

    @property
    def num_classes(self) -> int | None:
        """Classes (the vocabulary size for token targets); None for regression."""
        return self.train.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One example's shape, ``x.shape[1:]``."""
        return self.train.sample_shape

    @property
    def targets(self) -> Targets:
        """What ``y`` holds: ``"classes"``, ``"tokens"`` or ``"values"``."""
        return self.train.targets

    @classmethod
    def from_arrays(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        num_classes: int | None = None,
        test: tuple[np.ndarray, np.ndarray] | None = None,
        test_fraction: float = 0.2,
        partition: str = "dirichlet",
        num_clients: int = 100,
        alpha: float = 0.5,
        classes_per_client: int = 2,
        min_size: int = 1,
        groups: np.ndarray | None = None,
        client_holdout: float = 0.0,
        standardize: bool = False,
        seed: int = 0,
    ) -> FederatedData:
        """One centralized dataset ``x`` ``[n, ...]``, ``y`` split into clients, as
        :func:`build_federated_data` splits a configured source (the same seeded streams,
        so the same arrays and settings give the same clients).

        ``num_classes=None`` infers the targets from ``y``: integers are class labels
        (``[n]``) or token targets (``[n, T]``) with ``max + 1`` classes, anything else is
        regression. ``test``: a separate ``(x, y)`` test set, else ``test_fraction`` of
        the samples. ``partition``: iid, dirichlet (``alpha``), shards
        (``classes_per_client``) or natural (one client per ``groups`` value; there
        ``num_clients`` is 0 or the number of groups). ``standardize``: z-score float
        inputs with train statistics. ``client_holdout``: each client's fraction kept
        for federated evaluation.
        """
        if partition not in METHODS:
            raise DataError(f"partition = {partition!r}: expected one of {', '.join(METHODS)}")
        if partition == "natural" and groups is None:
            raise DataError("partition = 'natural' needs groups (each sample's client id)")
        given = None if test is None else cls._pair(test, "test")
        num_classes = cls._infer_classes(num_classes, [y, *([] if given is None else [given[1]])])
        full = cls._dataset(x, y, num_classes, None, groups)
        held_out = None if given is None else cls._dataset(*given, num_classes, "test")
        if held_out is not None:
            cls._same_layout(held_out, "test", full, "x, y")
        return cls._split(
            full,
            held_out,
            test_fraction,
            partition,
            dict(
                num_clients=num_clients,
                alpha=alpha,
                classes_per_client=classes_per_client,
                min_size=min_size,
            ),
            standardize,
            client_holdout,
            seed,
        )

    @classmethod
    def from_clients(
        cls,
        clients: Sequence[tuple[np.ndarray, np.ndarray]],
        *,
        test: tuple[np.ndarray, np.ndarray],
        num_classes: int | None = None,
        client_holdout: float = 0.0,
        seed: int = 0,
    ) -> FederatedData:
        """Data already split by client: ``clients[i]`` is client i's ``(x, y)`` (a client
        may hold 0 examples, ``x`` of shape ``[0, ...]``: it is registered but never
        selected), ``test`` the central ``(x, y)`` test set. ``num_classes`` as in
        :meth:`from_arrays`; ``client_holdout`` (drawn from ``seed``) as there."""
        pairs = [cls._pair(c, f"clients[{i}]") for i, c in enumerate(clients)]
        if not pairs:
            raise DataError("clients is empty: give at least one client's (x, y)")
        given = cls._pair(test, "test")
        num_classes = cls._infer_classes(num_classes, [*(y for _, y in pairs), given[1]])
        shards = [
            cls._dataset(x, y, num_classes, f"clients[{i}]") for i, (x, y) in enumerate(pairs)
        ]
        for i, shard in enumerate(shards[1:], start=1):
            cls._same_layout(shard, f"clients[{i}]", shards[0], "clients[0]")
        held_out = cls._dataset(*given, num_classes, "test")
        cls._same_layout(held_out, "test", shards[0], "clients[0]")
        sizes = np.array([len(s) for s in shards], dtype=np.int64)
        offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
        pool = ClientPartition(
            np.concatenate([s.x for s in shards]),
            np.concatenate([s.y for s in shards]),
            offsets,
            num_classes,
        )
        return cls._finish(pool, held_out, client_holdout, seed)

    # the steps behind the constructors ----------------------------------------------
    @staticmethod
    def _pair(value: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        if not (isinstance(value, tuple | list) and len(value) == 2):
            raise DataError(f"{what} must be an (x, y) pair of arrays, got {type(value).__name__}")
        return np.asarray(value[0]), np.asarray(value[1])

    @staticmethod
    def _infer_classes(num_classes: int | None, ys: list[np.ndarray]) -> int | None:
        """``num_classes`` when given; else ``max + 1`` over integer targets, None (regression)
        when any non-empty ``y`` is not integer."""
        if num_classes is not None:
            return num_classes
        arrays = [np.asarray(y) for y in ys]
        filled = [y for y in arrays if y.size]
        if not filled or any(y.dtype.kind not in "iu" for y in filled):
            return None
        return max(1, max(int(y.max()) for y in filled) + 1)

    @staticmethod
    def _dataset(
        x: np.ndarray,
        y: np.ndarray,
        num_classes: int | None,
        what: str | None,
        groups: np.ndarray | None = None,
    ) -> ArrayDataset:
        """The arrays as a validated dataset; errors are prefixed with ``what``."""
        try:
            return ArrayDataset(x, y, num_classes, groups)
        except DataError as exc:
            if what is None:
                raise
            raise DataError(f"{what}: {exc}") from None

    @staticmethod
    def _same_layout(data: ArrayDataset, what: str, ref: ArrayDataset, ref_what: str) -> None:
        """Refuse ``data`` whose examples or targets are shaped unlike ``ref``'s."""
        for name, got, want in (
            ("samples of shape", list(data.sample_shape), list(ref.sample_shape)),
            ("inputs of dtype", str(data.x.dtype), str(ref.x.dtype)),
            ("targets of shape [n, *]", list(data.y.shape[1:]), list(ref.y.shape[1:])),
        ):
            if got != want:
                raise DataError(f"{what} has {name} {got} but {ref_what} has {want}")

    @classmethod
    def _split(
        cls,
        full: ArrayDataset,
        test: ArrayDataset | None,
        test_fraction: float,
        method: str,
        settings: dict[str, Any],
        scale: bool,
        client_holdout: float,
        seed: int,
    ) -> FederatedData:
        """Split, standardize and partition as :func:`build_federated_data` does."""
        if test is None:
            train, test = train_test_split(full, test_fraction, np.random.default_rng([seed, 1]))
        else:
            train = full
        if scale:
            train, test = standardize(train, test)
        parts = partition(method, train, rng=np.random.default_rng([seed, 2]), **settings)
        return cls._finish(ClientPartition.from_indices(train, parts), test, client_holdout, seed)

    @classmethod
    def _finish(
        cls, clients: ClientPartition, test: ArrayDataset, client_holdout: float, seed: int
    ) -> FederatedData:
        """Clients' hold-outs (drawn from stream ``[seed, 3]``) and the checks every
        constructor shares."""
        if not 0.0 <= client_holdout < 1.0:
            raise DataError(f"client_holdout = {client_holdout!r}: expected a fraction in [0, 1)")
        if not clients.sizes().any():
            raise DataError("every client has 0 training examples: nothing could be learned")
        if len(test) == 0:
            raise DataError("test has 0 examples: the model could not be evaluated")
        holdout = None
        if client_holdout > 0:
            clients, holdout = clients.split_holdout(
                client_holdout, np.random.default_rng([seed, 3])
            )
        return cls(clients, holdout, test)


def _source(
    data: DataConfig, part: PartitionConfig, seed: int
) -> tuple[ArrayDataset, ArrayDataset | None, tuple[str, ...] | None]:
    """The configured data, the source's own test split (None: carve one out) and, for
    LEAF, its users (every one a natural client, with or without training samples)."""
    if data.source == "digits":
        return load_digits(), None, None
    if data.source == "synthetic":
        s = data.synthetic
        synthetic = synthetic_fedprox(
            num_clients=part.num_clients or 30,
            alpha=s.alpha,
            beta=s.beta,
            rng=np.random.default_rng([seed, 4]),
            num_features=s.num_features,
            num_classes=s.num_classes,
        )
        return synthetic, None, None
    assert data.path is not None
    if data.source in LEAF_SOURCES:
        leaf = read_leaf(data.path, data.source)
        return leaf.train, leaf.test, leaf.users
    if data.source == "huggingface":
        assert data.x_column is not None and data.y_column is not None
        group = data.group_column
        train, test = load_huggingface(
            data.path,
            data.x_column,
            data.y_column,
            split=data.train_split,
            test_split=data.test_split or None,
            group_column=group if isinstance(group, str) else None,
        )
        return train, test, None
    if data.source in ("mnist", "cifar10"):
        train, test = (load_mnist if data.source == "mnist" else load_cifar10)(data.path)
        return train, test, None
    full = load_arrays(data.path, label_column=data.label_column, group_column=data.group_column)
    return full, None, None


def build_federated_data(data: DataConfig, part: PartitionConfig, seed: int) -> FederatedData:
    """The configured dataset split into clients (deterministic in ``seed``); a source's
    own test split is the test set, else ``data.test_fraction`` of the samples is."""
    full, source_test, users = _source(data, part, seed)
    where = (
        f"data.source = {data.source!r}"
        if data.path is None
        else f"data.source = {data.source!r} (data.path = {str(data.path)!r})"
    )
    if full.targets == "classes":
        present = np.unique(full.y)
        if present.size < 2:
            raise DataError(
                f"{where}: every sample has the same label (class {int(present[0])}): a "
                "classifier needs at least 2 classes; nothing could be learned"
            )
    elif part.method in ("dirichlet", "shards"):
        raise ConfigError(
            f"partition.method = {part.method!r} splits clients by class label, but {where} "
            f"has {full.targets!r} targets; use 'iid' or 'natural'"
        )
    if users is None or part.method != "natural":
        settings = dict(
            num_clients=part.num_clients,
            alpha=part.alpha,
            classes_per_client=part.classes_per_client,
            min_size=part.min_size,
        )
        return FederatedData._split(
            full,
            source_test,
            data.test_fraction,
            part.method,
            settings,
            data.standardize,
            data.client_holdout,
            seed,
        )
    # a LEAF source's natural clients are its users, those without training samples too
    if source_test is None:
        train, test = train_test_split(full, data.test_fraction, np.random.default_rng([seed, 1]))
    else:
        train, test = full, source_test
    if data.standardize:
        train, test = standardize(train, test)
    assert train.groups is not None
    sizes = np.bincount(train.groups, minlength=len(users))
    small = np.flatnonzero((sizes > 0) & (sizes < part.min_size))
    if small.size:
        raise DataError(
            f"{where}: user {users[small[0]]!r} has {sizes[small[0]]} training samples, "
            f"fewer than partition.min_size = {part.min_size}"
        )
    if part.num_clients not in (0, len(users)):
        raise DataError(
            f"partition.num_clients = {part.num_clients} but {where} has {len(users)} users; "
            f"use {len(users)} or 0"
        )
    parts = np.split(np.argsort(train.groups, kind="stable"), np.cumsum(sizes)[:-1])
    clients = ClientPartition.from_indices(train, parts)
    return FederatedData._finish(clients, test, data.client_holdout, seed)
