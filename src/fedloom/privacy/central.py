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

With a quorum (``server.quorum``) the decision to apply, skip or retry a round is taken
on a noisy count of the delivered updates (stddev ``quorum_stddev``, sensitivity 1), which
is part of the round's release: the sum's noise is split so that the (sum, count) pair
keeps the planned multiplier, and a round that falls below the quorum releases (and is
charged for) the noisy count alone.

A round replayed after a resume (``replay``) is released with the noise it had before
only if that reproduces the release already charged bit for bit (nothing new is
learned); otherwise it is drawn again from a fresh stream keyed by the replay count, so
two different releases never share their noise.

The guarantee covers the released model. Per-client training statistics the server
keeps for scheduling (losses, durations) are not privatized.

References: McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018; Andrew, Thakkar, McMahan & Ramaswamy, "Differentially
Private Learning with Adaptive Clipping", NeurIPS 2021.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from fedloom.privacy.ledger import release_digest
from fedloom.privacy.mechanisms import (
    GeneratorNoise,
    NoiseSource,
    QuantileClipper,
    SecureNoise,
    clip_rows,
    split_noise_multiplier,
)


@dataclass(frozen=True)
class Replay:
    """A round attempt that was released (and charged) before a resume: the digests of
    its charged releases and how many there are (the fresh stream's key)."""

    attempt: int
    published: frozenset[str]

    @property
    def count(self) -> int:
        return len(self.published)


@dataclass(frozen=True)
class RoundRelease:
    """What one round attempt released: whether it met the quorum, the noisy average update
    (None below the quorum), the noisy count (None without a quorum) and its digest."""

    passes: bool
    delta: np.ndarray | None
    count: float | None
    digest: str


class CentralDP:
    """The server's DP-FedAvg release, round after round (state is checkpointable).

    Noise (the sum's and adaptive clipping's count noise) comes from the OS with
    ``secure`` (:class:`SecureNoise`), otherwise from ``default_rng([seed, 8])``: a
    replayable stream that anyone who knows the run seed can regenerate and subtract
    from the releases. A deployment always sets ``secure`` (every client learns the
    seed); only the simulator uses the seeded stream, for reproducible runs.
    """

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        expected_clients: float,
        seed: int,
        secure: bool = False,
        clipper: QuantileClipper | None = None,
        noise_on_clients: bool = False,
        quorum_stddev: float | None = None,
    ) -> None:
        self.fixed_clip = float(clip_norm)
        self.seed = seed
        self.quorum_stddev = quorum_stddev
        self.replay: Replay | None = None  # set by the runtime for a replayed attempt
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
        """The sum's share of the noise (all of it without adaptive clipping or a quorum).

        Each count released beside the sum takes its share of the precision: adaptive
        clipping's centred count (sensitivity 1/2, stddev ``count_stddev``) and the quorum
        count (sensitivity 1, stddev ``quorum_stddev``).
        """
        precision = 0.0  # of the counts, as multipliers of their sensitivities
        if self.clipper is not None:
            precision += (2.0 * self.count_stddev) ** -2
        if self.quorum_stddev is not None and not self.noise_on_clients:
            precision += self.quorum_stddev**-2
        if precision == 0.0:
            return self.noise_multiplier
        return split_noise_multiplier(self.noise_multiplier, 0.5 * precision**-0.5)

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

    def release_round(
        self, clipped_sum: np.ndarray, unclipped: float, received: int, quorum: int | None
    ) -> RoundRelease:
        """One round attempt's release: the noisy quorum count (with a ``quorum``), then, if
        it meets the quorum, the noisy average update (:meth:`release`).

        With ``replay`` set (a replayed attempt, seeded noise), the release is first drawn
        from the checkpointed stream; if that does not reproduce a charged release it is
        discarded unpublished and drawn again from a stream keyed by (attempt, replay
        count), so the two releases never share noise. ``replay`` is cleared.
        """
        replay, self.replay = self.replay, None
        saved = None if self.clipper is None else self.clipper.state_dict()
        out = self._release_round(clipped_sum, unclipped, received, quorum)
        if replay is None or self.secure or out.digest in replay.published:
            return out
        if self.clipper is not None and saved is not None:
            self.clipper.load_state_dict(saved)
        stream = self.noise
        key = [self.seed, 8, 1, replay.attempt, replay.count]
        self.noise = GeneratorNoise(np.random.default_rng(key))
        try:
            return self._release_round(clipped_sum, unclipped, received, quorum)
        finally:
            self.noise = stream

    def _release_round(
        self, clipped_sum: np.ndarray, unclipped: float, received: int, quorum: int | None
    ) -> RoundRelease:
        count = None  # without quorum_stddev the quorum is decided on the exact count
        if quorum is not None and self.quorum_stddev is not None:
            count = float(received + self.noise.normal(1, self.quorum_stddev)[0])
        passes = quorum is None or (received if count is None else count) >= quorum
        delta = self.release(clipped_sum, unclipped, received) if passes else None
        return RoundRelease(passes, delta, count, release_digest(delta, count, self.clip_norm))

    def state_dict(self) -> dict:
        return {
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "clipper": None if self.clipper is None else self.clipper.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        if self.clipper is not None:
            self.clipper.load_state_dict(state["clipper"])
