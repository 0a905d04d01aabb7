"""Progress monitoring of local training: the batch losses of a few evenly spaced steps.

A client's mean loss hides how training went (diverging late, stalling early); a handful
of sampled batch losses shows it at almost no cost. The sampled steps are fixed before
training, the losses are written into a preallocated tensor on the training device (a
copy with a Python index, no host synchronization) and read once at the end, so the loop
never waits on the device.
"""

from __future__ import annotations

import numpy as np

from fedloom.errors import ConfigError


def check_count(count: int) -> int:
    """``count`` (the run's ``edge.loss_samples``) if it is a non-negative int."""
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise ConfigError(f"loss_samples = {count!r}: expected an int >= 0")
    return int(count)


def sample_matrix(steps: np.ndarray, count: int) -> np.ndarray:
    """Each client's sampled steps (0-based) as the rows of an int64 ``[K, count]``
    matrix, -1 padded: for a client of ``s`` steps, ``n = min(count, s)`` evenly spaced
    steps ``rint(j (s - 1) / (n - 1))``, j < n (``np.linspace(0, s - 1, n)`` rounded), so
    the first and the last are included when ``n >= 2``, and all steps when
    ``s <= count``. They are distinct: their spacing is at least 1."""
    steps = np.asarray(steps, dtype=np.int64)
    if count <= 0:
        return np.zeros((len(steps), 0), np.int64)
    n = np.minimum(steps, count)[:, None]
    j = np.arange(count, dtype=np.int64)[None, :]
    spaced = np.rint(j * (steps[:, None] - 1) / np.maximum(n - 1, 1)).astype(np.int64)
    return np.where(j < n, spaced, -1)


def sample_steps(steps: int, count: int) -> np.ndarray:
    """One client's sampled steps out of ``steps`` (see :func:`sample_matrix`)."""
    row = sample_matrix(np.array([steps]), count)[0]
    return row[row >= 0]


def mean_curve(samples: list[tuple[float, ...]]) -> list[float] | None:
    """The clients' sampled losses averaged position by position (a client with fewer
    steps than samples has fewer positions): how local training went across the round,
    for its record. None when no client sampled any."""
    width = max((len(s) for s in samples), default=0)
    if width == 0:
        return None
    rows = np.full((len(samples), width), np.nan)
    for i, s in enumerate(samples):
        rows[i, : len(s)] = s
    rows[~np.isfinite(rows)] = np.nan
    counts = (~np.isnan(rows)).sum(axis=0)
    sums = np.nansum(rows, axis=0)
    keep = counts > 0
    return (sums[keep] / counts[keep]).tolist() if keep.any() else None
