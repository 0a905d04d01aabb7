"""Client selection: which registered clients train in a round.

A selector is seeded through the ``Generator`` the server passes in, so a resumed run
draws the same cohorts as an uninterrupted one.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedloom.errors import FedloomError


class Selector(Protocol):
    def select(
        self, available: np.ndarray, k: int, round: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``k`` distinct client ids drawn from ``available`` (sorted int64 ids)."""
        ...


class UniformSelector:
    """Every available client equally likely, without replacement (McMahan et al., 2017)."""

    def select(
        self, available: np.ndarray, k: int, round: int, rng: np.random.Generator
    ) -> np.ndarray:
        if k > len(available):
            raise FedloomError(
                f"round {round}: {k} clients requested but only {len(available)} available"
            )
        return np.sort(rng.choice(available, size=k, replace=False))
