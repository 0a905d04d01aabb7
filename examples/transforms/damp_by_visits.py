"""A client transform: each client's update shrinks by 1 / (1 + strength * visits),
where visits counts the rounds the client took part in before (its own state)."""

import numpy as np

from fedloom.transforms import Context, State


class DampByVisits:
    def __init__(self, strength: float = 0.5) -> None:
        if not strength >= 0:
            raise ValueError(f"strength = {strength!r}, expected >= 0")
        self.strength = float(strength)

    def init(self, dim: int) -> State:
        return {"visits": np.zeros((), dtype=np.int64)}

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        visits = state["visits"]  # [K]: one count per row's client
        scale = (1.0 / (1.0 + self.strength * visits)).astype(np.float32)
        return updates * scale[:, None], {"visits": visits + 1}
