"""L2 clipping of each update row: to a fixed norm, or to an adaptive quantile.

Clipping bounds how far one client moves a sum, which DP's noise is calibrated to.
Rows within the norm pass unchanged bit for bit (see :func:`~fedloom.privacy.mechanisms.
clip_rows`). The adaptive clip norm is the state of a
:class:`~fedloom.privacy.mechanisms.QuantileClipper`, moved after each release by the
noisy count of unclipped updates (:class:`~fedloom.transforms.privacy.CentralRelease`).

References: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016; Andrew,
Thakkar, McMahan & Ramaswamy, "Differentially Private Learning with Adaptive Clipping",
NeurIPS 2021.
"""

from __future__ import annotations

import numpy as np

from fedloom.privacy.mechanisms import QuantileClipper, clip_rows
from fedloom.transforms.base import Context, State, register


@register("clip_l2")
class ClipL2:
    """Each row scaled to L2 norm at most ``clip_norm``; the state counts the rows that
    were within it already (``unclipped``, this apply's), which adaptive clipping and
    DP's records use."""

    def __init__(self, clip_norm: float) -> None:
        clip_rows(np.zeros((0, 1), np.float32), clip_norm)  # validates the norm now
        self.clip_norm = float(clip_norm)

    def init(self, dim: int) -> State:
        return {}

    def clip(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """The clipped rows and how many were within the norm already."""
        clipped, norms = clip_rows(rows, self.clip_norm)
        return clipped, int(np.count_nonzero(norms <= self.clip_norm))

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        return self.clip(updates)[0], state


class AdaptiveClipL2:
    """Rows clipped to the current norm of ``clipper`` (its state is the transform's);
    the norm moves when the round's noisy unclipped count is released."""

    def __init__(self, clipper: QuantileClipper) -> None:
        self.clipper = clipper

    @property
    def clip_norm(self) -> float:
        return self.clipper.clip_norm

    def init(self, dim: int) -> State:
        return dict(self.clipper.state_dict())

    def clip(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        clipped, norms = clip_rows(rows, self.clip_norm)
        return clipped, int(np.count_nonzero(norms <= self.clip_norm))

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        self.clipper.load_state_dict(state)
        return self.clip(updates)[0], dict(self.clipper.state_dict())
