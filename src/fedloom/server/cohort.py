"""The cohort policy: how many clients a round asks, from which pool, and when enough
delivered. The one owner of the cohort size in every runtime.

Under DP the accountant assumes the cohort is a uniform sample of all N clients: Poisson
at the planned rate (an offline client simply cannot join), or, with fixed-size sampling,
exactly ``clients_per_round`` drawn uniformly from all N, the offline picks being
dropouts (drawing from the clients online would raise each one's inclusion probability
above m / N; see docs/privacy.md). Without DP the configured selector draws from the
clients online, over-selecting to absorb expected dropouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedloom.server.selection import PoissonSelector, Selector, UniformSelector, make_selector
from fedloom.server.stats import ClientStats

Sampling = Literal["selector", "poisson", "fixed"]


@dataclass(frozen=True)
class CohortPolicy:
    """``sampling``: ``"selector"`` (no DP: the configured strategy over the clients
    online), ``"poisson"`` or ``"fixed"`` (DP: the accountant's sampling over all N)."""

    clients_per_round: int
    over_selection: float | Literal["auto"] = 1.0
    sampling: Sampling = "selector"
    sampling_rate: float = 1.0

    @property
    def sample_all(self) -> bool:
        """The cohort is drawn from all N clients (fixed-size DP sampling): an offline pick
        is a dropout, not a reason to draw another client."""
        return self.sampling == "fixed"

    def selector(self, strategy: str, max_share: float | None, params: dict[str, Any]) -> Selector:
        """The selector this policy draws with (the configured strategy only without DP)."""
        if self.sampling == "poisson":
            return PoissonSelector(self.sampling_rate)
        if self.sampling == "fixed":
            return UniformSelector()
        return make_selector(strategy, max_share, **params)

    def pool(self, available: np.ndarray, stats: ClientStats | None = None) -> np.ndarray | None:
        """Whom the selector draws from: the clients online, or None (all N).

        With ``stats``, a client online with no training examples is not eligible: it has
        nothing to train on. (In a deployment every client online joined with at least
        one example; in simulation a partition may leave clients empty.) Under fixed-size
        DP sampling the draw stays over all N, the accountant's population, so an empty
        pick is the runtime's to treat as a dropout.
        """
        if self.sample_all:
            return None
        if stats is None:
            return available
        ids = np.asarray(available, dtype=np.int64)
        return ids[stats.data_size[ids] > 0]

    def size(self, stats: ClientStats) -> int:
        """How many clients to dispatch so that about ``clients_per_round`` deliver
        (over-selection). Exactly that many under DP with fixed-size sampling: the
        accountant's cohort size."""
        need = self.clients_per_round
        if self.sample_all:
            return need
        factor = self.over_selection
        if factor == "auto":  # 1 / expected completion rate of clients seen so far
            seen = stats.selected > 0
            rate = float(stats.reliability[seen].mean()) if seen.any() else 1 / 1.3
            factor = min(2.0, max(1.0, 1.0 / rate))
        return math.ceil(need * factor)

    def enough(self, dispatched: int) -> int | None:
        """How many delivered updates end a round early, the rest of the ``dispatched``
        clients being surplus (over-selection); None: every dispatched client that
        delivers is aggregated.

        Always None under Poisson sampling (a cohort larger than ``clients_per_round`` is
        a normal draw): the accountant assumes every sampled client's update is in the
        sum, and cutting the cohort would let one client's presence displace another's
        update, moving the sum by up to 2C where the analysis assumes C.
        """
        need = self.clients_per_round
        if self.sampling == "poisson" or dispatched <= need:
            return None
        return need
