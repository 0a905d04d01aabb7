"""The reduce step of the server chain, shared by the synchronous and asynchronous servers.

It owns what a reducer needs beyond the rows (:class:`~fedloom.aggregation.ReduceContext`):
bucketing's randomness (seeded per round in simulation so a run replays exactly; from the
OS in a deployment, where every client knows the run seed and could otherwise predict
which buckets it shares), the last applied aggregate (centered clipping starts there; it
is checkpointed), the server's own update on its root dataset (FLTrust, computed by
the injected ``root_update`` from the round's start model) and each row's local steps
(FedNova).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np

from fedloom.aggregation import ReduceContext, Reducer, WeightedMean
from fedloom.errors import FedloomError

RootUpdate = Callable[[np.ndarray, int], np.ndarray]
_PREVIOUS = "reduce.previous"  # checkpoint array: the last applied aggregate


class Reduction:
    """``reducer`` over a round's rows, with its context (module docstring)."""

    def __init__(
        self,
        reducer: Reducer | None,
        seed: int,
        os_randomness: bool = False,
        root_update: RootUpdate | None = None,
    ) -> None:
        self.reducer: Reducer = reducer or WeightedMean()
        # a reducer written before min_rows / needs_reference existed has neither
        self.min_rows = int(getattr(self.reducer, "min_rows", 1))
        self.needs_reference = bool(getattr(self.reducer, "needs_reference", False))
        if self.needs_reference and root_update is None:
            raise FedloomError(
                f"reducer {type(self.reducer).__name__} needs the server's root-data update "
                "(root_update)"
            )
        self.seed = seed
        self.os_randomness = os_randomness
        self.root_update = root_update
        self.previous: np.ndarray | None = None

    @property
    def decomposable(self) -> bool:
        return self.reducer.decomposable

    def too_few(self, rows: int) -> str | None:
        """Why ``rows`` updates cannot be reduced (None: they can)."""
        need = self.min_rows
        if 0 < rows < need:
            return f"{rows} updates; the aggregation rule needs at least {need}"
        return None

    def partial(
        self,
        rows: np.ndarray,
        weights: np.ndarray,
        client_ids: np.ndarray,
        start: np.ndarray,
        round: int,
        attempt: int = 0,
        steps: np.ndarray | None = None,
    ) -> np.ndarray:
        """The reducer's partial vector of ``rows`` (``start``: the model the clients
        trained from, for the root update; ``steps``: each row's local steps, for
        FedNova)."""
        if self.reducer.decomposable:  # the mean needs no context
            return self.reducer.partial(rows, weights)
        rng = np.random.default_rng(
            secrets.randbits(128) if self.os_randomness else [self.seed, 23, round, attempt]
        )
        reference = None
        if self.needs_reference:
            assert self.root_update is not None
            reference = np.asarray(self.root_update(start, round), dtype=np.float32)
        ctx = ReduceContext(client_ids, rng, self.previous, reference, steps)
        return self.reducer.partial(rows, weights, ctx)

    def finish(self, total: np.ndarray, weight: float) -> np.ndarray:
        return self.reducer.finish(total, weight)

    def applied(self, delta: np.ndarray) -> None:
        """Remember the aggregate the server applied (the next round's ``previous``)."""
        if not self.reducer.decomposable:
            self.previous = np.array(delta, dtype=np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {} if self.previous is None else {_PREVIOUS: self.previous}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        previous = arrays.get(_PREVIOUS)
        self.previous = None if previous is None else np.array(previous, dtype=np.float32)
