"""When asynchronous work is handed out: how many clients train at once, and who waits.

The scheduler is the one owner of the asynchronous server's pace. From the registry's
estimates (each client's smoothed hand-out-to-arrival time and its reliability) it sizes
the number of clients training at once with Little's law: ``C`` clients whose tasks take
``D`` seconds and succeed with probability ``p`` deliver ``C p / D`` updates per second.

- ``target_rate`` (updates per second): ``C = ceil(target_rate * D / p)``, so the buffer
  fills at that rate and no faster (more concurrency only makes updates staler).
- ``uplink_bytes_per_s`` (the server's budget for model downloads): each task downloads
  the model once, so ``C`` tasks of ``D`` seconds ask ``C * model_bytes / D`` bytes per
  second; ``C`` is capped where that meets the budget. The runtime also shares the budget
  between the downloads in progress (the simulator's admission, the gRPC server's token
  bucket), so a burst cannot exceed it either.
- ``concurrency`` is the hard cap, and the starting value while nothing is measured.

Backoff: a client whose work failed (crash, offline, timeout) or whose update was
dropped as too stale waits ``backoff_s``, doubled for each further strike in a row up to
``max_backoff_s``; a delivered update clears its strikes. Slow clients are thereby
backed off only when their slowness wastes work (their updates arrive too stale), not
for being slow.

References: Little, "A Proof for the Queuing Formula L = lambda W", Operations Research
1961; Nguyen et al., AISTATS 2022 (FedBuff's concurrency); exponential backoff as in
Bonawitz et al., "Towards Federated Learning at Scale", MLSys 2019 (pace steering).
"""

from __future__ import annotations

import math

import numpy as np

from fedloom.errors import ConfigError
from fedloom.server.stats import ClientStats


class WorkScheduler:
    """Concurrency and backoff for asynchronous work (state is checkpointable)."""

    def __init__(
        self,
        concurrency: int,
        target_rate: float | None = None,
        uplink_bytes_per_s: float | None = None,
        model_bytes: int = 0,
        backoff_s: float = 30.0,
        max_backoff_s: float = 600.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency = {concurrency!r}: expected >= 1")
        for name, value in (("target_rate", target_rate), ("uplink", uplink_bytes_per_s)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} = {value!r}: expected a finite number > 0")
        if not 0 <= backoff_s <= max_backoff_s or not math.isfinite(max_backoff_s):
            raise ConfigError(
                f"backoff_s = {backoff_s!r}, max_backoff_s = {max_backoff_s!r}: expected "
                "0 <= backoff_s <= max_backoff_s"
            )
        self.concurrency = int(concurrency)
        self.target_rate = target_rate
        self.uplink = uplink_bytes_per_s
        self.model_bytes = int(model_bytes)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._until: dict[int, float] = {}  # client -> when it may get work again
        self._strikes: dict[int, int] = {}

    def capacity(self, stats: ClientStats | None) -> int:
        """How many clients may train at once now (module docstring)."""
        c = self.concurrency
        if stats is None:
            return c
        known = stats.duration[np.isfinite(stats.duration)]
        if known.size == 0:
            return c
        d = float(np.median(known))
        if self.target_rate is not None:
            p = float(np.clip(np.mean(stats.reliability), 0.05, 1.0))
            c = min(c, math.ceil(self.target_rate * d / p))
        if self.uplink is not None and self.model_bytes > 0:
            c = min(c, math.floor(self.uplink * d / self.model_bytes))
        return max(1, c)

    def waiting(self, now: float) -> set[int]:
        """Clients backed off at ``now``."""
        return {c for c, until in self._until.items() if until > now}

    def strike(self, client: int, now: float) -> float:
        """Back ``client`` off after failed or wasted work; returns until when."""
        n = self._strikes.get(client, 0) + 1
        self._strikes[client] = n
        until = now + min(self.max_backoff_s, self.backoff_s * 2 ** (n - 1))
        self._until[client] = until
        return until

    def clear(self, client: int) -> None:
        """``client`` delivered: its strikes are forgiven."""
        self._strikes.pop(client, None)
        self._until.pop(client, None)

    def next_release(self, now: float) -> float | None:
        """The earliest time a backed-off client may get work again (None: nobody waits)."""
        later = [t for t in self._until.values() if t > now]
        return min(later) if later else None

    def state_dict(self) -> dict:
        return {
            "until": {str(c): t for c, t in self._until.items()},
            "strikes": {str(c): n for c, n in self._strikes.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self._until = {int(c): float(t) for c, t in state["until"].items()}
        self._strikes = {int(c): int(n) for c, n in state["strikes"].items()}
