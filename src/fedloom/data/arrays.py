"""In-memory containers for a centralized dataset and for all clients' shards of it.

Both containers validate and normalize their arrays once, at construction, so every later
consumer (partitioners, trainers, storage) can rely on what they hold without re-checking:

- ``x`` ``[n, ...]`` (at least 2-D): real features as finite float32 (images
  ``[n, C, H, W]``, tables ``[n, f]``), or integer ids as int64 >= 0 (token sequences
  ``[n, T]``, categorical inputs), always C-contiguous;
- ``y``: with ``num_classes`` an int, int64 class labels ``[n]`` (``"classes"``) or token
  targets ``[n, T]`` (``"tokens"``) in ``[0, num_classes)``; with ``num_classes=None``,
  finite float32 regression targets ``[n]`` or ``[n, k]`` (``"values"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedloom.errors import DataError

if TYPE_CHECKING:
    from fedloom.task import Targets


def _at(index: np.ndarray) -> str:
    """``[3]`` or ``[3, 7]``: an element's index as the error messages write it."""
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _as_inputs(x: np.ndarray, what: str = "x") -> np.ndarray:
    """``x`` as float32 (real features, finite) or int64 (ids, >= 0), C-contiguous and at
    least 2-D, or raise naming the problem and its first offending element."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{what} must be numeric, got dtype {x.dtype}")
    if np.iscomplexobj(x):
        raise DataError(
            f"{what} has complex dtype {x.dtype}: its imaginary part would be lost; give real "
            "features (e.g. the real and imaginary parts as separate columns)"
        )
    if x.ndim < 2:
        raise DataError(f"{what} must be at least 2-D [samples, ...], got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        if x.dtype == np.uint64 and x.size and x.max() > np.iinfo(np.int64).max:
            raise DataError(f"{what} holds ids above the int64 range (max {x.max()})")
        x = np.ascontiguousarray(x, dtype=np.int64)
        negative = x < 0
        if negative.any():
            at = np.argwhere(negative)[0]
            raise DataError(
                f"{what}{_at(at)} = {x[tuple(at)]}: integer inputs are token or category "
                "ids and must be >= 0 (give float features as a float array)"
            )
        return x
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        at = np.argwhere(~finite)[0]
        where = f"feature {at[1]}" if x.ndim == 2 else f"element {_at(at[1:])}"
        raise DataError(f"{what} contains NaN/inf (first at row {at[0]}, {where}: {x[tuple(at)]})")
    return x


def _as_targets(y: np.ndarray, n: int, num_classes: int | None, what: str = "y") -> np.ndarray:
    """``y`` as int64 labels ``[n]`` / tokens ``[n, T]`` in ``[0, num_classes)``, or, with
    ``num_classes=None``, as finite float32 regression targets ``[n]`` / ``[n, k]``."""
    y = np.asarray(y)
    if num_classes is None:
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_) or np.iscomplexobj(y):
            raise DataError(f"{what} must hold real regression targets, got dtype {y.dtype}")
        if y.ndim not in (1, 2) or y.shape[0] != n or (y.ndim == 2 and y.shape[1] == 0):
            raise DataError(
                f"{what} must be regression targets [{n}] or [{n}, k] (one row per row of x), "
                f"got shape {y.shape}"
            )
        y = np.ascontiguousarray(y, dtype=np.float32)
        finite = np.isfinite(y)
        if not finite.all():
            at = np.argwhere(~finite)[0]
            raise DataError(f"{what}{_at(at)} = {y[tuple(at)]}: regression targets must be finite")
        return y
    if not (np.issubdtype(y.dtype, np.integer) or (y.size == 0 and y.dtype.kind in "fb")):
        raise DataError(
            f"{what} must hold integer class labels, got dtype {y.dtype} "
            "(num_classes=None takes real-valued regression targets)"
        )
    if y.ndim not in (1, 2) or y.shape[0] != n or (y.ndim == 2 and y.shape[1] == 0):
        raise DataError(
            f"{what} must be 1-D with {n} labels (one per row of x) or token targets "
            f"[{n}, T], got shape {y.shape}"
        )
    y = np.ascontiguousarray(y, dtype=np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        at = np.argwhere(bad)[0]
        raise DataError(
            f"{what}{_at(at)} = {y[tuple(at)]} is outside [0, num_classes={num_classes})"
        )
    return y


def _check_num_classes(num_classes: int | None) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise DataError(
            f"num_classes must be an integer >= 1 (or None for regression), got {num_classes!r}"
        )
    if num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


class _Shaped:
    """What ``x``, ``y`` and ``num_classes`` say about the data, shared by both containers."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int | None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One example's shape, ``x.shape[1:]``."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def num_features(self) -> int:
        """Values per example (the product of ``sample_shape``)."""
        return math.prod(self.sample_shape)

    @property
    def targets(self) -> Targets:
        """What ``y`` holds: ``"classes"``, ``"tokens"`` or ``"values"``."""
        if self.num_classes is None:
            return "values"
        return "tokens" if self.y.ndim == 2 else "classes"


@dataclass(frozen=True, eq=False)
class ArrayDataset(_Shaped):
    """Examples ``x``, targets ``y``, optionally each sample's natural client id (``groups``).

    Validated on construction (see the module docstring); ``groups`` becomes int64 [n].
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int | None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        num_classes = _check_num_classes(self.num_classes)
        x = _as_inputs(self.x)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", _as_targets(self.y, x.shape[0], num_classes))
        object.__setattr__(self, "num_classes", num_classes)
        if self.groups is not None:
            groups = np.asarray(self.groups)
            if not np.issubdtype(groups.dtype, np.integer):
                raise DataError(f"groups must hold integer client ids, got dtype {groups.dtype}")
            if groups.shape != (x.shape[0],):
                raise DataError(
                    f"groups must be 1-D with {x.shape[0]} ids (one per row of x), "
                    f"got shape {groups.shape}"
                )
            object.__setattr__(self, "groups", np.ascontiguousarray(groups, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        """Rows ``idx`` (integer indices or boolean mask) as a new dataset (copies the rows)."""
        idx = np.asarray(idx)
        groups = None if self.groups is None else self.groups[idx]
        return ArrayDataset(self.x[idx], self.y[idx], self.num_classes, groups)


@dataclass(frozen=True, eq=False)
class ClientPartition(_Shaped):
    """All clients' samples in one compact pool: client i owns rows offsets[i]:offsets[i+1].

    Compact so that 100,000 registered clients cost only an offsets array; only a cohort's
    rows are ever materialized as tensors.
    """

    x: np.ndarray
    y: np.ndarray
    offsets: np.ndarray
    num_classes: int | None

    def __post_init__(self) -> None:
        num_classes = _check_num_classes(self.num_classes)
        x = _as_inputs(self.x)
        n = x.shape[0]
        offsets = np.asarray(self.offsets)
        if not np.issubdtype(offsets.dtype, np.integer) or offsets.ndim != 1 or offsets.size < 1:
            raise DataError(
                f"offsets must be a 1-D integer array of num_clients + 1 entries, "
                f"got dtype {offsets.dtype} shape {offsets.shape}"
            )
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if offsets[0] != 0 or offsets[-1] != n:
            raise DataError(
                f"offsets must start at 0 and end at the pool size {n}, "
                f"got {offsets[0]} .. {offsets[-1]}"
            )
        shrinking = np.flatnonzero(np.diff(offsets) < 0)
        if shrinking.size:
            i = shrinking[0]
            raise DataError(
                f"offsets must be non-decreasing, but offsets[{i}]={offsets[i]} > "
                f"offsets[{i + 1}]={offsets[i + 1]} (client {i} would have a negative size)"
            )
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", _as_targets(self.y, n, num_classes))
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "num_classes", num_classes)

    @classmethod
    def from_indices(cls, data: ArrayDataset, parts: Sequence[np.ndarray]) -> ClientPartition:
        """Gather ``data`` rows so that client i owns the rows ``parts[i]`` (in that order)."""
        arrays = [np.asarray(p) for p in parts]
        for i, p in enumerate(arrays):
            if p.ndim != 1 or not (np.issubdtype(p.dtype, np.integer) or p.size == 0):
                raise DataError(
                    f"parts[{i}] must be a 1-D integer index array, "
                    f"got dtype {p.dtype} shape {p.shape}"
                )
            if p.size and (p.min() < 0 or p.max() >= len(data)):
                raise DataError(
                    f"parts[{i}] (client {i}) indexes outside [0, {len(data)}): "
                    f"min {p.min()}, max {p.max()}"
                )
        sizes = np.array([p.size for p in arrays], dtype=np.int64)
        offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
        idx = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
        return cls(data.x[idx], data.y[idx], offsets, data.num_classes)

    @property
    def num_clients(self) -> int:
        """Number of registered clients (including any with zero samples)."""
        return int(self.offsets.size - 1)

    def sizes(self) -> np.ndarray:
        """Samples per client, int64 [num_clients]."""
        return np.diff(self.offsets)

    def client(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``i``'s ``(x, y)`` as zero-copy views into the pool."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise DataError(f"client id must be an integer, got {i!r}")
        if not 0 <= i < self.num_clients:
            raise DataError(
                f"unknown client {i}: the partition has {self.num_clients} clients "
                f"(ids 0..{self.num_clients - 1})"
            )
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.x[lo:hi], self.y[lo:hi]

    def client_index(self) -> np.ndarray:
        """Owning client of every pool row, int64 [N]."""
        return np.repeat(np.arange(self.num_clients, dtype=np.int64), self.sizes())

    def label_histograms(self) -> np.ndarray:
        """Per-client label counts, int64 [num_clients, num_classes] (class labels only:
        token and regression targets have no per-example label to count)."""
        if self.targets != "classes" or self.num_classes is None:
            raise DataError(
                f"label histograms need class labels, but this partition's targets are "
                f"{self.targets!r}"
            )
        flat = self.client_index() * self.num_classes + self.y
        counts = np.bincount(flat, minlength=self.num_clients * self.num_classes)
        return counts.astype(np.int64).reshape(self.num_clients, self.num_classes)

    def split_holdout(
        self, fraction: float, rng: np.random.Generator
    ) -> tuple[ClientPartition, ClientPartition]:
        """Split every client into ``(train, holdout)``, both with ``num_clients`` clients.

        Each client puts ``floor(fraction * size)`` randomly chosen samples in its hold-out,
        capped so that at least one sample stays in train (a 1-sample client holds out
        nothing). Rows keep their original order within each side.
        """
        if not 0.0 <= fraction < 1.0:
            raise DataError(f"holdout fraction must be in [0, 1), got {fraction}")
        sizes = self.sizes()
        held = np.minimum(np.floor(fraction * sizes).astype(np.int64), np.maximum(sizes - 1, 0))
        owner = self.client_index()
        # Random order within each client: sort by (client, random key).
        order = np.lexsort((rng.random(owner.size), owner))
        rank = np.arange(owner.size, dtype=np.int64) - self.offsets[owner]
        is_held = np.empty(owner.size, dtype=bool)
        is_held[order] = rank < held[owner]
        train_idx = np.flatnonzero(~is_held)
        held_idx = np.flatnonzero(is_held)

        def build(idx: np.ndarray, per_client: np.ndarray) -> ClientPartition:
            offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(per_client)])
            return ClientPartition(self.x[idx], self.y[idx], offsets, self.num_classes)

        return build(train_idx, sizes - held), build(held_idx, held)
