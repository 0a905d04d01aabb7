"""A run's privacy settings resolved into numbers: sampling rate, delta, noise multiplier.

When the config gives a target epsilon instead of a noise multiplier, the multiplier is
calibrated here, before any training, for the run's planned number of rounds and the
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

from fedloom.client.schedule import steps_for
from fedloom.config import RunConfig
from fedloom.errors import ConfigError
from fedloom.privacy.accounting import MechanismEvent, epsilon, noise_multiplier_for
from fedloom.privacy.calibration import analytic_gaussian_sigma
from fedloom.privacy.central import CentralDP
from fedloom.privacy.ledger import Budget, PrivacyLedger
from fedloom.privacy.mechanisms import (
    GeneratorNoise,
    QuantileClipper,
    SecureNoise,
    local_gaussian,
    local_laplace,
)
from fedloom.records import TrainPlan
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian

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

    @classmethod
    def from_config(cls, config: RunConfig, num_clients: int, dim: int = 0) -> PrivacyPlan:
        """The run's plan; ``dim`` (the model size) is needed by distributed DP."""
        p = config.privacy
        if p.mode == "off":
            return cls(enabled=False)
        k = config.server.clients_per_round
        q = k / num_clients
        delta = p.delta if p.delta is not None else 1.0 / num_clients**1.1
        z = p.noise_multiplier
        distributed = None
        if p.mode == "distributed":
            bits = config.secagg.bits
            try:
                distributed = (
                    DistributedDiscreteGaussian(p.clip_norm, dim, k, z, bits)
                    if z is not None
                    # calibrated against the server, which sees each cohort: no
                    # amplification by sampling (the ledger's headline, docs/privacy.md)
                    else DistributedDiscreteGaussian.for_epsilon(
                        p.target_epsilon, delta, 1.0, config.rounds, p.clip_norm, dim, k, bits
                    )
                )
            except ConfigError as err:
                raise ConfigError(
                    f"privacy.mode = 'distributed' with secagg.bits = {bits} and "
                    f"server.clients_per_round = {k}: {err}"
                ) from None
            z = distributed.noise_multiplier
        elif p.mode == "local":
            assert p.local_epsilon is not None
            # each upload is local_epsilon-LDP under replace-one (sensitivity 2C); the ledger
            # accounts the run's user-level add/remove guarantee (sensitivity C):
            # Gaussian z = sigma / C, Laplace scale / C = 2 / local_epsilon
            if p.local_mechanism == "laplace":
                z = 2.0 / p.local_epsilon
            else:
                z = analytic_gaussian_sigma(p.local_epsilon, delta, 2 * p.clip_norm) / p.clip_norm
        elif z is None:
            assert p.target_epsilon is not None
            z = noise_multiplier_for(
                p.target_epsilon,
                q,
                config.rounds,
                delta,
                accountant=p.accountant,
                sampling=p.sampling,
                population=num_clients,
            )
        budget = None if p.budget_epsilon is None else Budget(p.budget_epsilon, delta)
        return cls(
            enabled=True,
            local=p.mode == "local",
            mechanism_kind={"local": p.local_mechanism, "distributed": "distributed_dg"}.get(
                p.mode, "gaussian"
            ),
            local_epsilon=p.local_epsilon or 0.0,
            sampling=p.sampling,
            sampling_rate=q,
            population=num_clients,
            delta=delta,
            noise_multiplier=z,
            accountant=p.accountant,
            rounds=config.rounds,
            budget=budget,
            budget_policy=p.budget_policy,
            clip_norm=p.clip_norm,
            adaptive=p.adaptive_clipping,
            target_quantile=p.target_quantile,
            clip_learning_rate=p.clip_learning_rate,
            count_stddev=p.count_stddev,
            secure_noise=p.secure_noise,
            expected_clients=k,
            distributed=distributed,
            # the quorum is decided on a noisy count (sensitivity 1) that takes 1/9 of the
            # round's precision: the sum's multiplier grows by 6% (sync.SyncServer.close_round)
            quorum_stddev=(
                QUORUM_STDDEV_FACTOR * z
                if p.mode == "central" and config.server.quorum is not None
                else None
            ),
        )

    @staticmethod
    def dp_sgd_epsilon(config: RunConfig, sizes: np.ndarray, delta: float) -> float | None:
        """Planned sample-level epsilon of client-side DP-SGD for the worst-off client.

        Conservative: the client is assumed to take part in every round, and its
        mini-batches (shuffled epochs) are accounted as Poisson samples at rate
        ``batch_size / n`` of the smallest client, over all its local steps. None when
        DP-SGD is off or adds no noise.
        """
        c = config.client
        if c.dp_sgd_clip_norm is None or not c.dp_sgd_noise_multiplier:
            return None
        n = int(np.min(sizes))
        plan = TrainPlan(
            local_epochs=c.local_epochs, local_steps=c.local_steps, batch_size=c.batch_size
        )
        steps = int(steps_for(np.array([n]), plan)[0])
        rate = min(1.0, c.batch_size / n)
        return epsilon(
            c.dp_sgd_noise_multiplier, rate, steps * config.rounds, delta, accountant="rdp"
        )

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
        return "server" if self.distributed is not None else "release"

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
        key = [seed, 9, attempt, client] + ([replay] if replay else [])
        noise = SecureNoise() if self.secure_noise else GeneratorNoise(np.random.default_rng(key))
        if self.mechanism_kind == "laplace":
            return local_laplace(delta, self.clip_norm, self.local_epsilon, noise)
        return local_gaussian(delta, self.clip_norm, self.local_epsilon, self.delta, noise)

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
