"""Split a centralized dataset's sample indices across simulated clients.

Every partitioner returns one int64 index array per client; each index ``0..n-1`` appears in
exactly one of them, and the result depends only on the arguments and the passed-in
``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np

from fedloom.data.arrays import ArrayDataset
from fedloom.errors import DataError

METHODS = ("iid", "dirichlet", "shards", "natural")


def _check_counts(num_samples: int, num_clients: int, min_size: int) -> None:
    """Reject client counts and minimum sizes the sample pool cannot satisfy."""
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    if min_size < 0:
        raise DataError(f"min_size must be >= 0, got {min_size}")
    if num_clients * min_size > num_samples:
        raise DataError(
            f"min_size={min_size} with num_clients={num_clients} needs "
            f"{num_clients * min_size} samples but the training pool has {num_samples}"
        )


def _check_labels(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DataError(
            f"{what} must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}"
        )
    return labels


def _group_by_owner(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Turn a per-sample owner array into one ascending index array per client."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    counts = np.bincount(owner, minlength=num_clients)
    return np.split(order, np.cumsum(counts)[:-1])


def iid(
    num_samples: int, num_clients: int, rng: np.random.Generator, min_size: int = 1
) -> list[np.ndarray]:
    """Uniformly random split whose client sizes differ by at most one.

    References: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (IID baseline).
    """
    if num_samples < 0:
        raise DataError(f"num_samples must be >= 0, got {num_samples}")
    _check_counts(num_samples, num_clients, min_size)
    return np.array_split(rng.permutation(num_samples).astype(np.int64), num_clients)


def _repair_min_size(
    owner: np.ndarray, num_clients: int, min_size: int, rng: np.random.Generator
) -> None:
    """Move random samples from the largest clients to clients below ``min_size`` (in place).

    Donors are levelled from the top ("water-filling"): every client is cut down to a common
    level L >= min_size, chosen as high as possible, with ties at L+1 broken by client id, so
    the small clients are never touched and the result is deterministic given ``rng``.
    """
    sizes = np.bincount(owner, minlength=num_clients)
    deficit = np.maximum(min_size - sizes, 0)
    need = int(deficit.sum())
    if need == 0:
        return

    def excess(level: int) -> int:
        return int(np.maximum(sizes - level, 0).sum())

    # Largest level whose excess still covers the need (excess(min_size) >= need is guaranteed
    # by _check_counts because total excess - need = n - num_clients * min_size >= 0).
    lo, hi = min_size, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if excess(mid) >= need else (lo, mid - 1)
    give = np.maximum(sizes - (lo + 1), 0)
    extra = need - int(give.sum())
    give[np.flatnonzero(sizes >= lo + 1)[:extra]] += 1

    # Pick each donor's `give` samples at random: order samples by (owner, random key).
    order = np.lexsort((rng.random(owner.size), owner))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sorted_owner = owner[order]
    rank = np.arange(owner.size) - starts[sorted_owner]
    moved = rng.permutation(order[rank < give[sorted_owner]])
    owner[moved] = np.repeat(np.arange(num_clients), deficit)


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Label-skewed split: each class is spread over clients with proportions ~ Dir(alpha).

    Small ``alpha`` concentrates each class on few clients; large ``alpha`` approaches IID.
    Each class's shuffled samples are cut at ``floor(cumsum(p) * n_class)``. Clients left below
    ``min_size`` are then topped up with random samples taken from the currently largest
    clients (no redrawing, so it terminates even with more clients than samples per class).

    References: Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification".
    """
    labels = _check_labels(labels)
    if not (np.isfinite(alpha) and alpha > 0):
        raise DataError(f"dirichlet alpha must be a finite number > 0, got {alpha}")
    _check_counts(labels.size, num_clients, min_size)
    owner = np.empty(labels.size, dtype=np.int64)
    clients = np.arange(num_clients, dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_clients, float(alpha)))
        cuts = np.floor(np.cumsum(p) * members.size).astype(np.int64)
        cuts[-1] = members.size
        owner[members] = np.repeat(clients, np.diff(cuts, prepend=0))
    _repair_min_size(owner, num_clients, min_size, rng)
    return _group_by_owner(owner, num_clients)


def shards(
    labels: np.ndarray,
    num_clients: int,
    classes_per_client: int,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Pathological non-IID split: sort by label, cut into shards, deal shards to clients.

    Samples are sorted by label (random order within a class), cut into
    ``num_clients * classes_per_client`` near-equal shards, and each client gets
    ``classes_per_client`` random shards, so it sees at most that many labels unless a shard
    straddles a class boundary.

    References: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (pathological non-IID MNIST).
    """
    labels = _check_labels(labels)
    _check_counts(labels.size, num_clients, min_size)
    if classes_per_client < 1:
        raise DataError(f"classes_per_client must be >= 1, got {classes_per_client}")
    num_labels = np.unique(labels).size
    if classes_per_client > num_labels:
        raise DataError(
            f"classes_per_client={classes_per_client} exceeds the {num_labels} distinct labels"
        )
    num_shards = num_clients * classes_per_client
    shard_min = labels.size // num_shards
    if shard_min == 0 or classes_per_client * shard_min < min_size:
        raise DataError(
            f"shards: num_clients={num_clients} x classes_per_client={classes_per_client} = "
            f"{num_shards} shards of {labels.size} samples leaves some client only "
            f"{classes_per_client * shard_min} samples (min_size={min_size}, need at least 1)"
        )
    by_label = np.lexsort((rng.random(labels.size), labels)).astype(np.int64)
    pieces = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, classes_per_client)
    return [np.concatenate([pieces[s] for s in row]) for row in dealt]


def natural(groups: np.ndarray, min_size: int = 1) -> list[np.ndarray]:
    """One client per distinct group value, in sorted group order (e.g. writer or device id).

    A group smaller than ``min_size`` is an error rather than silently dropped.

    References: Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings" (natural splits).
    """
    groups = _check_labels(groups, "groups")
    if groups.size == 0:
        raise DataError("groups is empty: natural partition needs at least one sample")
    values, owner, counts = np.unique(groups, return_inverse=True, return_counts=True)
    small = np.flatnonzero(counts < min_size)
    if small.size:
        g = small[0]
        raise DataError(
            f"group {values[g]} has {counts[g]} samples, fewer than min_size={min_size} "
            f"({small.size} groups are too small); natural partition does not drop data"
        )
    return _group_by_owner(owner.astype(np.int64), values.size)


def partition(
    method: str,
    data: ArrayDataset,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Dispatch to a partitioner by name; ``num_clients=0`` with "natural" uses every group.

    "iid" and "natural" split any data; "dirichlet" and "shards" skew clients by class
    label, so they need class labels (``data.targets == "classes"``).
    """
    if method == "iid":
        return iid(len(data), num_clients, rng, min_size)
    if method in ("dirichlet", "shards") and data.targets != "classes":
        raise DataError(
            f"partition.method = {method!r} splits clients by class label, but the data's "
            f"targets are {data.targets!r}, not class labels; use 'iid' or 'natural'"
        )
    if method == "dirichlet":
        return dirichlet(data.y, num_clients, alpha, rng, min_size)
    if method == "shards":
        return shards(data.y, num_clients, classes_per_client, rng, min_size)
    if method == "natural":
        if data.groups is None:
            raise DataError(
                "partition method 'natural' needs a dataset with groups (per-sample client ids)"
            )
        parts = natural(data.groups, min_size)
        if num_clients not in (0, len(parts)):
            raise DataError(
                f"num_clients={num_clients} but the dataset has {len(parts)} natural groups; "
                f"use num_clients={len(parts)} or 0"
            )
        return parts
    raise DataError(f"unknown partition method {method!r}; valid methods: {', '.join(METHODS)}")
