"""Staleness weights for asynchronous updates.

An update trained from model version ``tau`` arrives when the server is at version ``t``;
its staleness is ``s = t - tau``. The asynchronous server scales the update by ``w(s)``:

- ``constant``: ``w(s) = 1``;
- ``polynomial``: ``w(s) = (1 + s)^-a`` (FedBuff's default is ``a = 0.5``, ``1/sqrt(1+s)``);
- ``hinge``: ``w(s) = 1`` for ``s <= b``, else ``1 / (a (s - b) + 1)``.

All three are 1 for a fresh update and never increase with staleness, so a stale update
never weighs more than a fresh one (``w <= 1`` also keeps central DP's sensitivity at
the clip norm).

References: Xie, Koyejo & Gupta, "Asynchronous Federated Optimization", 2019 (section
5.2: the constant, polynomial and hinge functions); Nguyen et al., "Federated Learning
with Buffered Asynchronous Aggregation", AISTATS 2022 (``1/sqrt(1+s)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedloom.errors import ConfigError

StalenessKind = Literal["constant", "polynomial", "hinge"]


@dataclass(frozen=True)
class Staleness:
    """``w(s)`` of one kind with its parameters ``a`` (decay) and ``b`` (hinge's grace)."""

    kind: StalenessKind = "polynomial"
    a: float = 0.5
    b: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "polynomial", "hinge"):
            raise ConfigError(
                f"staleness = {self.kind!r}: expected 'constant', 'polynomial' or 'hinge'"
            )
        for name in ("a", "b"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"staleness {name} = {value!r}: expected a finite number >= 0")

    def __call__(self, staleness: np.ndarray | int) -> np.ndarray:
        """``w(s)`` for each staleness (non-negative integers), as float64."""
        s = np.asarray(staleness, dtype=np.float64)
        if np.any(s < 0) or not np.all(np.isfinite(s)):
            raise ValueError(f"staleness must be finite and >= 0, got {staleness!r}")
        if self.kind == "constant":
            return np.ones_like(s)
        if self.kind == "polynomial":
            return (1.0 + s) ** -self.a
        return 1.0 / (self.a * np.maximum(s - self.b, 0.0) + 1.0)  # 1 up to b
