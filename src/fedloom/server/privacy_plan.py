"""A run's privacy settings resolved into numbers: sampling rate, delta, noise multiplier.

``fedloom.assemble.privacy_plan`` builds it from the config. When the config gives a
target epsilon instead of a noise multiplier, the multiplier is calibrated there, before
any training, for the run's planned number of rounds and the
client sampling it actually uses (Poisson, or fixed-size without replacement), so the
accountant and the sampler agree. With distributed DP the noise is the clients' discrete
Gaussian shares inside secure aggregation, whose parameters (grid, per-client noise, norm
bound) depend on the model size and the ring (``fedloom.secagg.distributed_dp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedloom.errors import ConfigError
from fedloom.privacy.accounting import MechanismEvent
from fedloom.privacy.central import CentralDP
from fedloom.privacy.ledger import Budget, PrivacyLedger
from fedloom.privacy.mechanisms import QuantileClipper
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian
from fedloom.transforms.base import Context
from fedloom.transforms.privacy import LocalNoise

QUORUM_STDDEV_FACTOR = 3.0
"""Central DP with a quorum: the noisy count's stddev, in units of the noise multiplier."""


@dataclass(frozen=True)
class PrivacyPlan:
    enabled: bool
    local: bool = False
    local_epsilon: float = 0.0
    mechanism_kind: str = "gaussian"
    sampling: str = "poisson"
    sampling_rate: float = 1.0
    population: int = 0
    delta: float = 0.0
    noise_multiplier: float = math.inf
    accountant: str = "pld"
    rounds: int = 0
    budget: Budget | None = None
    budget_policy: str = "refuse"
    clip_norm: float = 1.0
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_stddev: float | None = None
    secure_noise: bool = False
    expected_clients: int = 0
    distributed: DistributedDiscreteGaussian | None = None
    quorum_stddev: float | None = None  # central DP with a quorum: the noisy count's stddev
    per_client: bool = False  # asynchronous: each client's releases, no sampling

    def event(
        self, count: int = 1, shares: int | None = None, cohort: int | None = None
    ) -> MechanismEvent:
        """One round's release (``count`` identical rounds) as the accountant sees it.

        Distributed DP: the noise was split over ``cohort`` dispatched clients and
        ``shares`` of them are in the sum (both default to the planned cohort).
        """
        if self.distributed is not None:
            mechanism = self.distributed if cohort is None else self.round_mechanism(cohort)
            return replace(mechanism.event(self.sampling_rate, shares), count=count)
        return MechanismEvent(
            self.mechanism_kind,
            self.noise_multiplier,
            self.sampling_rate,
            count,
            self.sampling,
            self.population if self.sampling == "fixed" else None,
        )

    def count_event(self) -> MechanismEvent:
        """A round attempt below the quorum (central DP): only its noisy count is released
        (sensitivity 1, stddev ``quorum_stddev``), over the same sampled cohort."""
        assert self.quorum_stddev is not None
        return MechanismEvent(
            "gaussian",
            self.quorum_stddev,
            self.sampling_rate,
            1,
            self.sampling,
            self.population if self.sampling == "fixed" else None,
        )

    @property
    def view(self) -> str:
        """Whom the ledger's headline epsilon is against (``fedloom.privacy.ledger``)."""
        if self.local:
            return "local"
        if self.per_client:
            return "participation"
        return "server" if self.distributed is not None else "release"

    def randomness(self, deployment: bool, dp_sgd: bool) -> dict[str, str]:
        """Where the draws that protect someone come from: ``"os"`` (the OS CSPRNG, or
        fresh OS entropy per round), ``"seed"`` (derived from the run seed: reproducible,
        and removable by anyone who knows the seed) or ``"none"`` (not drawn).

        ``selection``: the cohorts. ``dp_noise``: central DP and adaptive clipping's count
        noise on the server; local DP and distributed DP noise on the clients.
        ``dp_sgd_noise``: the clients' DP-SGD noise and batches (in a deployment each
        device draws its own; the simulator keys them by the client's seed, even with
        secure_noise). The start and resume records carry it.
        """
        if deployment:
            noise, selection, sgd = "os", "os", "os"
        else:
            noise, selection, sgd = "os" if self.secure_noise else "seed", "seed", "seed"
        return {
            "runtime": "deployment" if deployment else "simulation",
            "selection": selection,
            "dp_noise": noise if self.enabled else "none",
            "dp_sgd_noise": sgd if dp_sgd else "none",
        }

    def round_mechanism(self, cohort: int) -> DistributedDiscreteGaussian:
        """Distributed DP's encoding for a round that dispatched ``cohort`` clients."""
        assert self.distributed is not None
        return self.distributed.with_shares(cohort)

    def mechanism(self, seed: int) -> CentralDP | None:
        """The server's DP-FedAvg release (None without central DP)."""
        if not self.enabled or self.local:
            return None
        clipper = None
        if self.adaptive:
            clipper = QuantileClipper(
                self.clip_norm, self.target_quantile, self.clip_learning_rate, self.count_stddev
            )
        dp = CentralDP(
            self.clip_norm,
            self.noise_multiplier,
            self.expected_clients,
            seed,
            secure=self.secure_noise,
            clipper=clipper,
            noise_on_clients=self.distributed is not None,
            quorum_stddev=self.quorum_stddev,
        )
        if clipper is not None:  # fail now, not in the first round
            try:
                dp.sum_noise_multiplier  # noqa: B018 (raises when the split is infeasible)
            except ConfigError as err:
                raise ConfigError(
                    f"privacy.adaptive_clipping with privacy.count_stddev = "
                    f"{dp.count_stddev:g} (default clients_per_round / 20) and noise "
                    f"multiplier {self.noise_multiplier:.4g}: {err}"
                ) from None
        return dp

    def privatize_locally(
        self, delta: np.ndarray, seed: int, attempt: int, client: int, replay: int = 0
    ) -> np.ndarray:
        """One client's upload clipped and noised on the client (local DP).

        Simulated noise is seeded per (attempt, client), so it does not depend on which
        process or executor trained the client; ``replay`` > 0 (an attempt replayed after a
        resume whose uploads differ from the charged ones) keys a fresh stream.
        """
        noise = LocalNoise(self.clip_norm, self.local_epsilon, self.delta, self.mechanism_kind)
        ctx = Context(round=0, attempt=attempt, seed=seed, replay=replay, secure=self.secure_noise)
        return noise.privatize(delta, noise.noise_for(ctx, client))

    def ledger(self, path: Path | None) -> PrivacyLedger | None:
        """The run's ledger; refuses (raises) a plan that cannot fit the budget."""
        if not self.enabled:
            return None
        ledger = PrivacyLedger(
            path,
            self.budget,
            self.accountant,
            delta=self.delta,
            view=self.view,  # type: ignore[arg-type]
        )
        if self.budget is not None and self.budget_policy == "refuse":
            ledger.check_plan([self.event(self.rounds)])
        return ledger
