"""User-level central differential privacy on the server: DP-FedAvg.

Each client's update is clipped to an L2 norm C, the clipped updates are summed with
equal weight (so one client moves the sum by at most C), Gaussian noise with standard
deviation z·C is added to the sum, and the result is divided by the *expected* cohort
size (a data-independent denominator: dividing by the realised count would leak it).
With adaptive clipping the clip norm follows a target quantile of the update norms
through a noisy count of unclipped updates; the noise is split between the sum and
that count so the pair is one Gaussian release with multiplier z.

Under secure aggregation the server releases the securely summed updates the same way
(each client clipped its own); with the distributed discrete Gaussian the clients already
added the noise inside the sum (``noise_on_clients``), and the release only divides.

The guarantee covers the released model. Per-client training statistics the server
keeps for scheduling (losses, durations) are not privatized.

References: McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018; Andrew, Thakkar, McMahan & Ramaswamy, "Differentially
Private Learning with Adaptive Clipping", NeurIPS 2021.
"""

from __future__ import annotations

import copy

import numpy as np

from fedloom.privacy.mechanisms import (
    GeneratorNoise,
    NoiseSource,
    QuantileClipper,
    SecureNoise,
    clip_rows,
    split_noise_multiplier,
)


class CentralDP:
    """The server's DP-FedAvg release, round after round (state is checkpointable)."""

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        expected_clients: float,
        seed: int,
        secure: bool = False,
        clipper: QuantileClipper | None = None,
        noise_on_clients: bool = False,
    ) -> None:
        self.fixed_clip = float(clip_norm)
        self.noise_on_clients = noise_on_clients
        self.noise_multiplier = float(noise_multiplier)
        self.expected_clients = float(expected_clients)
        self.clipper = clipper
        self.secure = secure
        self.rng = np.random.default_rng([seed, 8])
        self.noise: NoiseSource = SecureNoise() if secure else GeneratorNoise(self.rng)

    @property
    def clip_norm(self) -> float:
        return self.clipper.clip_norm if self.clipper is not None else self.fixed_clip

    @property
    def sum_noise_multiplier(self) -> float:
        """The sum's share of the noise (all of it without adaptive clipping)."""
        if self.clipper is None:
            return self.noise_multiplier
        return split_noise_multiplier(self.noise_multiplier, self.count_stddev)

    @property
    def count_stddev(self) -> float:
        assert self.clipper is not None
        stddev = self.clipper.count_stddev
        return self.expected_clients / 20.0 if stddev is None else stddev

    def clip(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """Rows clipped to the current norm, and how many were within it already."""
        clipped, norms = clip_rows(rows, self.clip_norm)
        return clipped, int(np.count_nonzero(norms <= self.clip_norm))

    def release(self, clipped_sum: np.ndarray, unclipped: float, received: int) -> np.ndarray:
        """The noisy average update, then the next round's clip norm (adaptive).

        With ``noise_on_clients`` the sum already carries the noise and none is added.
        """
        noisy = clipped_sum
        if not self.noise_on_clients:
            scale = self.sum_noise_multiplier * self.clip_norm
            noisy = clipped_sum + self.noise.normal(clipped_sum.shape[0], scale)
        delta = (noisy / self.expected_clients).astype(np.float32)
        if self.clipper is not None:
            self.clipper.update_from_count(
                unclipped, received, self.noise, expected_clients=self.expected_clients
            )
        return delta

    def state_dict(self) -> dict:
        return {
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "clipper": None if self.clipper is None else self.clipper.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        if self.clipper is not None:
            self.clipper.load_state_dict(state["clipper"])
