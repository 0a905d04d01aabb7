"""What the server knows about every registered client, as arrays indexed by client id.

``ClientRegistry`` (``registry.py``) maintains these numbers and persists them in
SQLite; selectors (``selection.py``) read them. Struct of arrays, so 100,000 clients
cost a few MB and every selector is vectorized numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOURS = 24


@dataclass(frozen=True)
class ClientStats:
    """A read-only snapshot of the registry; row ``i`` is client ``i``."""

    data_size: np.ndarray  # int64 [N] training examples
    label_entropy: np.ndarray  # float64 [N] entropy of the label histogram, nats
    selected: np.ndarray  # int64 [N] times selected
    completed: np.ndarray  # int64 [N] times its update was aggregated
    reliability: np.ndarray  # float64 [N] in (0, 1): discounted completion rate
    last_round: np.ndarray  # int64 [N] last round it was selected (0 = never)
    loss: np.ndarray  # float64 [N] last reported mean training loss (nan = unknown)
    loss_sq: np.ndarray  # float64 [N] last reported mean squared batch loss (nan = unknown)
    duration: np.ndarray  # float64 [N] smoothed dispatch-to-upload seconds (nan = unknown)
    online_prob: np.ndarray  # float32 [N, 24] learned P(online) per hour of day
    flags: np.ndarray  # int32 [N] anomaly bitmask (see registry.FLAGS)

    @property
    def num_clients(self) -> int:
        return len(self.data_size)

    def predicted_online(self, ids: np.ndarray, start: float, end: float) -> np.ndarray:
        """Estimated probability that each client is online at ``start`` and still at ``end``
        (virtual seconds), from its learned hour-of-day pattern."""
        ids = np.asarray(ids, dtype=np.int64)
        h0 = int(start // 3600) % HOURS
        h1 = int(end // 3600) % HOURS
        p = self.online_prob[ids]
        return (p[:, h0] * (p[:, h1] if h1 != h0 else 1.0)).astype(np.float64)
