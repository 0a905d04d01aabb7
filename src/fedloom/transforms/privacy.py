"""Differential-privacy transforms: local noise on the client, the central release and
audit canaries on the server.

- :class:`LocalNoise`: each client clips its own row and adds Gaussian (analytic
  calibration) or Laplace noise before upload (local DP). Simulated noise is seeded per
  (run seed, attempt, client[, replay]); in a deployment (``ctx.secure``) it comes from
  the OS, so nothing the server sends decides it.
- :class:`CentralRelease`: DP-FedAvg's release of the cohort's clipped sum (noise, the
  noisy quorum count, adaptive clipping's count, replay handling after a resume), as
  :class:`~fedloom.privacy.central.CentralDP` implements it; the transform's state is
  that mechanism's checkpoint state.
- :class:`AuditCanaries`: fixed random directions at the clip norm that join the sum with
  the sampling rate, to measure privacy empirically.

References: McMahan, Ramage, Talwar & Zhang, ICLR 2018 (DP-FedAvg); Andrew et al.,
NeurIPS 2021 (adaptive clipping); Balle & Wang, ICML 2018 (analytic Gaussian); Steinke,
Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023 (canaries).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedloom.errors import FedloomError
from fedloom.privacy.central import CentralDP, RoundRelease
from fedloom.privacy.mechanisms import (
    GeneratorNoise,
    NoiseSource,
    SecureNoise,
    local_gaussian,
    local_laplace,
)
from fedloom.transforms.base import Context, State


class LocalNoise:
    """Local DP: each row clipped (L2, or L1 for Laplace) and noised on its client."""

    def __init__(
        self,
        clip_norm: float,
        epsilon: float,
        delta: float = 0.0,
        mechanism: Literal["gaussian", "laplace"] = "gaussian",
    ) -> None:
        if mechanism not in ("gaussian", "laplace"):
            raise FedloomError(f"local DP mechanism = {mechanism!r}, expected gaussian or laplace")
        self.clip_norm = float(clip_norm)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self.mechanism = mechanism

    def init(self, dim: int) -> State:
        return {}

    def noise_for(self, ctx: Context, client: int) -> NoiseSource:
        """One client's noise: the OS's in a deployment, else seeded per attempt and client."""
        if ctx.secure:
            return SecureNoise()
        key = [ctx.seed, 9, ctx.attempt, client] + ([ctx.replay] if ctx.replay else [])
        return GeneratorNoise(np.random.default_rng(key))

    def privatize(self, row: np.ndarray, noise: NoiseSource) -> np.ndarray:
        """One upload (``[d]`` or ``[K, d]``) clipped and noised from ``noise``."""
        if self.mechanism == "laplace":
            return local_laplace(row, self.clip_norm, self.epsilon, noise)
        return local_gaussian(row, self.clip_norm, self.epsilon, self.delta, noise)

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        ids = np.asarray(ctx.client_ids)
        if ids.shape != (updates.shape[0],):
            raise FedloomError(f"local DP: {ids.shape} client ids for {updates.shape[0]} rows")
        out = np.empty(updates.shape, dtype=np.float32)
        for i, cid in enumerate(ids.tolist()):  # one noise stream per client
            out[i] = self.privatize(updates[i], self.noise_for(ctx, cid))
        return out, state


class CentralRelease:
    """The server's DP release of one round's clipped sum (a ``[1, d]`` row).

    :meth:`release` is the whole decision: the noisy quorum count (with ``quorum``), then,
    if it passes, the noisy average update and the next adaptive clip norm. ``apply``
    serves chains: it reads ``ctx.stats["unclipped"]`` and counts ``ctx.client_ids`` as
    the received updates, and returns the released ``[1, d]`` (``[0, d]`` below the
    quorum). The state is the mechanism's ``state_dict`` (its seeded generator and the
    clipper).
    """

    def __init__(self, dp: CentralDP, quorum: int | None = None) -> None:
        self.dp = dp
        self.quorum = quorum
        self.last: RoundRelease | None = None

    def init(self, dim: int) -> State:
        return self.dp.state_dict()

    def release(self, clipped_sum: np.ndarray, unclipped: float, received: int) -> RoundRelease:
        self.last = self.dp.release_round(clipped_sum, unclipped, received, self.quorum)
        return self.last

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        if updates.ndim != 2 or updates.shape[0] != 1:
            raise FedloomError(f"the central release takes one summed row, got {updates.shape}")
        self.dp.load_state_dict(state)
        out = self.release(
            updates[0].astype(np.float64),
            float(ctx.stats.get("unclipped", 0.0)),
            len(ctx.client_ids),
        )
        rows = np.zeros((0, updates.shape[1]), np.float32) if out.delta is None else out.delta[None]
        return rows, self.dp.state_dict()


class AuditCanaries:
    """Canary updates added to the clipped sum before the release.

    ``directions`` ``[m, d]`` (unit rows) and ``included`` ``[m]`` (which canaries are in
    the experiment) are fixed for the run; in each attempt an included canary joins with
    probability ``sampling_rate`` (seeded by (seed, 12, attempt)), scaled to the clip.
    """

    def __init__(
        self,
        directions: np.ndarray,
        included: np.ndarray,
        clip_norm: float,
        sampling_rate: float,
        seed: int,
    ) -> None:
        self.directions = np.asarray(directions)
        self.included = np.asarray(included, dtype=bool)
        self.clip_norm = float(clip_norm)
        self.sampling_rate = float(sampling_rate)
        self.seed = seed

    def init(self, dim: int) -> State:
        return {}

    def contribution(self, attempt: int) -> np.ndarray:
        """The canaries' clipped sum in ``attempt`` (float64 ``[d]``)."""
        draw = np.random.default_rng([self.seed, 12, attempt]).random(len(self.included))
        joins = self.included & (draw < self.sampling_rate)
        return self.clip_norm * self.directions[joins].sum(axis=0, dtype=np.float64)

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        return updates + self.contribution(ctx.attempt)[None], state
