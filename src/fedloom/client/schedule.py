"""Mini-batch schedules for a whole cohort at once, reproducible per client.

Every client's batch order must be the same whichever executor trains it (one by one,
vectorized, or on another rank) and in whatever order. numpy's ``Generator`` gives
that only through one generator object per client, which costs tens of microseconds
each: too slow for cohorts of 10,000 clients. So the schedule is drawn from a
counter-based hash instead: each (client seed, epoch, position) is mixed with
SplitMix64 into a 64-bit key, and an epoch's permutation is the argsort of its keys.
That is fully vectorized over clients, epochs and samples. SplitMix64 is a few lines
of integer arithmetic that numpy runs directly; no maintained package offers
per-row counter-based streams for numpy, hence this module.

``cohort_schedule_tensors`` computes the same schedule with torch on an accelerator, so
a GPU cohort never waits for the host (numpy is faster on the CPU for small cohorts).
Both are tested to be bit-identical.

References: Steele, Lea & Flood, "Fast Splittable Pseudorandom Number Generators",
OOPSLA 2014 (SplitMix64); Salmon et al., "Parallel Random Numbers: As Easy as 1, 2, 3",
SC 2011 (counter-based generation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedloom.errors import FedloomError
from fedloom.records import TrainPlan

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PAD = np.iinfo(np.uint64).max

NO_CAP = np.iinfo(np.int64).max
"""A client's step cap meaning "no cap" (``Dispatch.max_steps`` is None), as an int64."""


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer applied elementwise to a uint64 array."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def client_seeds(run_seed: int, round: int, client_ids: np.ndarray) -> np.ndarray:
    """One 63-bit seed per client for its work in ``round`` (vectorized)."""
    ids = np.asarray(client_ids, dtype=np.uint64)
    base = splitmix64(splitmix64(np.uint64(run_seed)) ^ np.uint64(round))
    return (splitmix64(base ^ ids) >> np.uint64(1)).astype(np.int64)


def steps_for(
    sizes: np.ndarray, plan: TrainPlan, max_steps: np.ndarray | None = None
) -> np.ndarray:
    """Number of local steps of each client under ``plan``, capped by ``max_steps``
    (a straggler that does only the work that fits its deadline)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if plan.local_steps is not None:
        steps = np.full(sizes.shape, plan.local_steps, dtype=np.int64)
    else:
        steps = plan.local_epochs * -(-sizes // plan.batch_size)
    if max_steps is not None:
        steps = np.minimum(steps, np.asarray(max_steps, dtype=np.int64))
    return steps


def examples_seen(
    sizes: np.ndarray, plan: TrainPlan, max_steps: np.ndarray | None = None
) -> np.ndarray:
    """Training samples each client processes under ``plan`` (its compute work)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    steps = steps_for(sizes, plan, max_steps)
    per_epoch = -(-sizes // plan.batch_size)
    full, rest = np.divmod(steps, per_epoch)
    return full * sizes + np.minimum(rest * plan.batch_size, sizes)


def steps_for_each(
    sizes: np.ndarray, plans: Sequence[TrainPlan], max_steps: np.ndarray | None = None
) -> np.ndarray:
    """:func:`steps_for` with each client's own plan (batch sizes fitted to devices)."""
    return _each(steps_for, sizes, plans, max_steps)


def examples_seen_each(
    sizes: np.ndarray, plans: Sequence[TrainPlan], max_steps: np.ndarray | None = None
) -> np.ndarray:
    """:func:`examples_seen` with each client's own plan."""
    return _each(examples_seen, sizes, plans, max_steps)


def _each(
    fn: Callable[[np.ndarray, TrainPlan, np.ndarray | None], np.ndarray],
    sizes: np.ndarray,
    plans: Sequence[TrainPlan],
    max_steps: np.ndarray | None,
) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.zeros(len(sizes), dtype=np.int64)
    # a cohort's dispatches share a few plan objects: group by object, then by value
    # (hashing and comparing every client's plan cost milliseconds per 1,000 clients)
    by_object: dict[int, list[int]] = {}
    for i, p in enumerate(plans):
        by_object.setdefault(id(p), []).append(i)
    groups: dict[TrainPlan, list[int]] = {}
    for members in by_object.values():
        groups.setdefault(plans[members[0]], []).extend(members)
    for plan, members in groups.items():
        rows = np.array(members, dtype=np.int64)
        caps = None if max_steps is None else np.asarray(max_steps)[rows]
        out[rows] = fn(sizes[rows], plan, caps)
    return out


@dataclass(frozen=True)
class CohortSchedule:
    """Batches of K clients over S steps: ``index[k, s, b]`` is a row of client k's data.

    ``mask[k, s, b]`` is False for padding (client k's batch s has fewer than B rows, or
    client k takes fewer than S steps); padded entries hold index 0.
    """

    index: np.ndarray  # int64 [K, S, B]
    mask: np.ndarray  # bool [K, S, B]
    steps: np.ndarray  # int64 [K]

    def batches(self, k: int) -> list[np.ndarray]:
        """Client k's batches as index arrays (what the sequential trainer visits)."""
        return [self.index[k, s][self.mask[k, s]] for s in range(int(self.steps[k]))]


def cohort_schedule(
    sizes: np.ndarray, seeds: np.ndarray, plan: TrainPlan, max_steps: np.ndarray | None = None
) -> CohortSchedule:
    """The mini-batches of every client in a cohort.

    Each epoch is a fresh permutation of the client's samples cut into full batches of
    ``plan.batch_size`` with a smaller last one. With ``plan.local_steps`` set, epochs
    repeat until that many steps are taken (the last epoch may be cut short).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    seeds = np.asarray(seeds, dtype=np.int64)
    if sizes.shape != seeds.shape or sizes.ndim != 1:
        raise FedloomError("sizes and seeds must be 1-D arrays of the same length")
    if len(sizes) and sizes.min() < 1:
        bad = int(np.argmin(sizes))
        raise FedloomError(f"client at position {bad} has {sizes[bad]} examples; need >= 1")
    b = plan.batch_size
    steps = steps_for(sizes, plan, max_steps)
    k, s_max = len(sizes), int(steps.max(initial=0))
    if k == 0 or s_max == 0:
        empty = np.zeros((k, 0, b), dtype=np.int64)
        return CohortSchedule(empty, empty.astype(bool), steps)
    n_max = int(sizes.max())
    per_epoch = -(-sizes // b)
    epochs = max(1, int((-(-steps // per_epoch)).max()))
    # keys[k, e, i]: a random key per (client, epoch, position); padding sorts last
    pos = np.arange(n_max, dtype=np.uint64)
    ep = np.arange(epochs, dtype=np.uint64)
    counter = splitmix64((ep[:, None] << np.uint64(32)) | pos[None, :])
    keys = splitmix64(seeds.astype(np.uint64)[:, None, None] ^ counter[None])
    keys = np.where(pos[None, None, :] >= sizes.astype(np.uint64)[:, None, None], _PAD, keys)
    perm = np.argsort(keys, axis=2, kind="stable")
    # step s of client k is batch j = s % per_epoch of epoch e = s // per_epoch
    s = np.arange(s_max)
    e = s[None, :] // per_epoch[:, None]
    j = s[None, :] % per_epoch[:, None]
    p = j[:, :, None] * b + np.arange(b)[None, None, :]
    mask = (p < sizes[:, None, None]) & (s[None, :, None] < steps[:, None, None])
    e = np.minimum(e, epochs - 1)
    rows = np.arange(k)[:, None, None]
    index = perm[rows, e[:, :, None], np.minimum(p, n_max - 1)]
    index = np.where(mask, index, 0)
    return CohortSchedule(index, mask, steps)


def batch_schedule(
    num_examples: int, plan: TrainPlan, seed: int, max_steps: int | None = None
) -> list[np.ndarray]:
    """One client's batches (the K = 1 case of ``cohort_schedule``)."""
    if num_examples < 1:
        raise FedloomError("a client needs at least one example to train")
    cap = None if max_steps is None else np.array([max_steps])
    return cohort_schedule(np.array([num_examples]), np.array([seed]), plan, cap).batches(0)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _srl(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 values read as uint64."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def _splitmix64_t(z: torch.Tensor) -> torch.Tensor:
    """``splitmix64`` on int64 tensors (two's-complement wrap-around equals uint64)."""
    z = z + _signed(int(_GOLDEN))
    z = (z ^ _srl(z, 30)) * _signed(int(_M1))
    z = (z ^ _srl(z, 27)) * _signed(int(_M2))
    return z ^ _srl(z, 31)


def cohort_schedule_tensors(
    sizes: np.ndarray, seeds: np.ndarray, plan: TrainPlan, steps: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cohort_schedule(sizes, seeds, plan, steps)``'s ``(index, mask)`` built on ``device``.

    ``steps`` must be ``steps_for(sizes, plan, ...)``, at least 1 each. Keys are compared
    as uint64 by flipping their sign bit before torch's (signed) stable sort.
    """
    b = plan.batch_size
    k, s_max, n_max = len(sizes), int(steps.max()), int(sizes.max())
    per_epoch = -(-sizes // b)
    epochs = max(1, int((-(-steps // per_epoch)).max()))

    def on(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    n, st, pe = on(sizes)[:, None], on(steps)[:, None], on(per_epoch)[:, None]
    pos = torch.arange(n_max, device=device)
    ep = torch.arange(epochs, device=device)
    counter = _splitmix64_t((ep[:, None] << 32) | pos[None, :])
    keys = _splitmix64_t(on(seeds)[:, None, None] ^ counter[None]) ^ -(1 << 63)
    keys = torch.where(pos >= n[:, :, None], torch.iinfo(torch.int64).max, keys)
    perm = torch.argsort(keys, dim=2, stable=True)
    s = torch.arange(s_max, device=device)
    e = (s // pe).clamp(max=epochs - 1)
    p = (s % pe)[:, :, None] * b + torch.arange(b, device=device)
    mask = (p < n[:, :, None]) & (s[:, None] < st[:, :, None])
    rows = torch.arange(k, device=device)[:, None, None]
    index = torch.where(mask, perm[rows, e[:, :, None], p.clamp(max=n_max - 1)], 0)
    return index, mask
