"""Simulated device populations: how fast each client computes, talks and fails.

A ``Population`` is a struct of numpy arrays with one row per client, so 100,000 clients
cost under 10 MB and every timing question is one vectorized expression. Row ``i`` is
client ``i`` of the simulation; ``ids`` keeps the external ids a trace file used.

Timing model (deliberately simple, closed-form):

- compute: ``samples * compute_ms_per_sample / 1000`` seconds, where the per-sample cost is
  one forward plus backward pass;
- transfer: ``latency_ms / 1000 + bytes * 8 / (kbps * 1000 * (1 - loss_rate))`` seconds. Packet
  loss is modelled as retransmission overhead only: a fraction ``loss_rate`` of the link's
  throughput is wasted, the transfer itself always completes. Latency is paid once per
  transfer (one request/response setup), not per packet.
- failure: a dispatched task crashes with probability ``failure_prob``, at a uniformly random
  point of its work (the runtime draws the point).

References: FedScale (Lai et al., ICML 2022) device traces and completion-time model;
Bonawitz et al., "Towards Federated Learning at Scale", SysML 2019 (dropout rates);
Yang et al., "Characterizing Impacts of Heterogeneity in Federated Learning upon Large-Scale
Smartphone Data", WWW 2021 (device heterogeneity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedloom.errors import ConfigError
from fedloom.sim.availability import AlwaysAvailable, Availability, Diurnal

Direction = Literal["up", "down"]

# Allowed values of every float column: (description, vectorized check). Shared with the
# trace reader so a bad file is reported with its line number before a Population is built.
VALUE_RULES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "compute_ms_per_sample": ("a finite number > 0", lambda v: np.isfinite(v) & (v > 0)),
    "memory_mb": ("a number > 0 (inf = unlimited)", lambda v: ~np.isnan(v) & (v > 0)),
    "up_kbps": ("a finite number > 0", lambda v: np.isfinite(v) & (v > 0)),
    "down_kbps": ("a finite number > 0", lambda v: np.isfinite(v) & (v > 0)),
    "latency_ms": ("a finite number >= 0", lambda v: np.isfinite(v) & (v >= 0)),
    "loss_rate": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "failure_prob": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
}
FLOAT_FIELDS = tuple(VALUE_RULES)


@dataclass(frozen=True, eq=False)
class Population:
    """Struct of arrays, one row per client (row ``i`` is simulation client ``i``)."""

    compute_ms_per_sample: np.ndarray  # float64 [n] one forward+backward per training sample
    memory_mb: np.ndarray  # float64 [n] (inf = unlimited)
    up_kbps: np.ndarray  # float64 [n]
    down_kbps: np.ndarray  # float64 [n]
    latency_ms: np.ndarray  # float64 [n] one-way latency added once per transfer
    loss_rate: np.ndarray  # float64 [n] in [0, 1): throughput is multiplied by (1 - loss)
    failure_prob: np.ndarray  # float64 [n] in [0, 1): chance a dispatched task crashes
    tier: np.ndarray  # int16 [n] index into the generating tiers, -1 if none
    availability: Availability
    ids: np.ndarray = field(default=None)  # type: ignore[assignment]  # int64 [n]; 0..n-1

    def __post_init__(self) -> None:
        for name in FLOAT_FIELDS:
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        n = len(self.compute_ms_per_sample)
        ids = np.arange(n, dtype=np.int64) if self.ids is None else self.ids
        object.__setattr__(self, "ids", np.asarray(ids, dtype=np.int64))
        tier = np.asarray(self.tier)
        for name in (*FLOAT_FIELDS, "tier", "ids"):
            arr = tier if name == "tier" else getattr(self, name)
            if arr.shape != (n,):
                raise ConfigError(
                    f"Population: field {name!r} has shape {arr.shape}, expected ({n},)"
                )
        if len(self.availability) != n:
            raise ConfigError(
                f"Population: availability covers {len(self.availability)} clients, expected {n}"
            )
        for name, (what, rule) in VALUE_RULES.items():
            values = getattr(self, name)
            ok = rule(values)
            if not ok.all():
                i = int(np.argmin(ok))
                raise ConfigError(
                    f"Population: field {name!r} of client {i} must be {what}, got {values[i]}"
                )
        bad = (tier < -1) | (tier > np.iinfo(np.int16).max) | (tier != np.round(tier))
        if bad.any():
            i = int(np.argmax(bad))
            raise ConfigError(
                f"Population: field 'tier' of client {i} must be an integer >= -1, got {tier[i]}"
            )
        object.__setattr__(self, "tier", tier.astype(np.int16))

    def __len__(self) -> int:
        return len(self.compute_ms_per_sample)

    @property
    def nbytes(self) -> int:
        """Memory held by the population's arrays, availability included."""
        arrays = sum(getattr(self, name).nbytes for name in (*FLOAT_FIELDS, "tier", "ids"))
        return arrays + self.availability.nbytes

    def subset(self, idx: np.ndarray) -> Population:
        """Rows ``idx`` as a new population (renumbered 0..len(idx)-1, ``ids`` kept)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Population(
            **{name: getattr(self, name)[idx] for name in (*FLOAT_FIELDS, "tier", "ids")},
            availability=self.availability.subset(idx),
        )

    def compute_time(self, clients: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """Seconds each client needs to train on ``samples`` examples (forward + backward)."""
        return np.asarray(samples, dtype=np.float64) * self.compute_ms_per_sample[clients] / 1e3

    def throughput_bytes_per_s(self, clients: np.ndarray, direction: Direction) -> np.ndarray:
        """Effective payload rate of each client's link: ``kbps * 1000 * (1 - loss) / 8``."""
        kbps = _link(self, direction)[clients]
        return kbps * 1e3 * (1.0 - self.loss_rate[clients]) / 8.0

    def transfer_time(
        self, clients: np.ndarray, nbytes: np.ndarray | int, direction: Direction
    ) -> np.ndarray:
        """Seconds to move ``nbytes`` over each client's link: latency + bytes / throughput."""
        rate = self.throughput_bytes_per_s(clients, direction)
        return self.latency_ms[clients] / 1e3 + np.asarray(nbytes, dtype=np.float64) / rate


def _link(pop: Population, direction: Direction) -> np.ndarray:
    if direction == "up":
        return pop.up_kbps
    if direction == "down":
        return pop.down_kbps
    raise ConfigError(f"direction must be 'up' or 'down', got {direction!r}")


@dataclass(frozen=True)
class DeviceTier:
    """Median characteristics of one class of device; ``share`` is its fraction of clients."""

    name: str
    share: float
    compute_ms_per_sample: float
    memory_mb: float
    up_kbps: float
    down_kbps: float
    latency_ms: float
    loss_rate: float
    failure_prob: float


# Rough medians for training a small CNN (FEMNIST-sized, ~1M parameters); scale
# ``compute_scale`` for bigger models. Sources: relative compute speed of phone classes from
# AI Benchmark (Ignatov et al., 2019), which FedScale's device traces are built on (spread of
# ~10x between flagship and low-end, more for microcontroller-class IoT); bandwidths from
# Ookla Speedtest Global Index medians for mobile (2023: ~45 Mbps down / ~10 Mbps up) and
# MobiPerf (used by FedScale), with slower links for older devices; failure rates from
# Bonawitz et al. 2019 (6-10% of devices drop out of a round); loss rates typical of cellular
# links (0.1-2%).
DEFAULT_TIERS: tuple[DeviceTier, ...] = (
    DeviceTier("high_end_phone", 0.25, 15.0, 8192.0, 20_000.0, 60_000.0, 30.0, 0.001, 0.02),
    DeviceTier("mid_phone", 0.40, 40.0, 4096.0, 8_000.0, 25_000.0, 50.0, 0.005, 0.05),
    DeviceTier("low_end_phone", 0.25, 120.0, 2048.0, 2_000.0, 8_000.0, 90.0, 0.01, 0.08),
    DeviceTier("iot", 0.10, 400.0, 512.0, 500.0, 1_000.0, 150.0, 0.02, 0.10),
)

AvailabilitySpec = Literal["always", "diurnal"] | Availability


def _availability(spec: AvailabilitySpec, n: int, rng: np.random.Generator) -> Availability:
    if isinstance(spec, str):
        if spec == "always":
            return AlwaysAvailable(n)
        if spec == "diurnal":
            return Diurnal.sample(n, rng)
        raise ConfigError(f"availability must be 'always', 'diurnal' or a model, got {spec!r}")
    return spec


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def _check_sigma(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")


def tiered_population(
    n: int,
    rng: np.random.Generator,
    tiers: Sequence[DeviceTier] = DEFAULT_TIERS,
    availability: AvailabilitySpec = "always",
    sigma: float = 0.25,
    compute_scale: float = 1.0,
) -> Population:
    """``n`` clients drawn from ``tiers`` in proportion to their shares.

    Each client's compute, memory, bandwidth and latency are its tier's value times a
    lognormal jitter ``exp(sigma * N(0, 1))`` (median preserved); loss and failure rates are
    the tier's. ``compute_scale`` multiplies all compute costs (a bigger model).

    References: tiered heterogeneity as in FedScale (Lai et al., ICML 2022) and Yang et al. 2021.
    """
    if not tiers:
        raise ConfigError("tiers must not be empty")
    if len(tiers) > np.iinfo(np.int16).max:
        raise ConfigError(f"at most {np.iinfo(np.int16).max} tiers, got {len(tiers)}")
    for t in tiers:
        _check_positive(f"tier {t.name!r} share", t.share)
    _check_sigma("sigma", sigma)
    _check_positive("compute_scale", compute_scale)
    shares = np.array([t.share for t in tiers], dtype=np.float64)
    tier = rng.choice(len(tiers), size=n, p=shares / shares.sum()).astype(np.int16)

    def column(name: str, jitter: bool) -> np.ndarray:
        values = np.array([getattr(t, name) for t in tiers], dtype=np.float64)[tier]
        return values * np.exp(sigma * rng.standard_normal(n)) if jitter else values

    return Population(
        compute_ms_per_sample=column("compute_ms_per_sample", True) * compute_scale,
        memory_mb=column("memory_mb", True),
        up_kbps=column("up_kbps", True),
        down_kbps=column("down_kbps", True),
        latency_ms=column("latency_ms", True),
        loss_rate=column("loss_rate", False),
        failure_prob=column("failure_prob", False),
        tier=tier,
        availability=_availability(availability, n, rng),
    )


def lognormal_population(
    n: int,
    rng: np.random.Generator,
    median_compute_ms_per_sample: float = 40.0,
    compute_sigma: float = 0.8,
    median_up_kbps: float = 5_000.0,
    median_down_kbps: float = 20_000.0,
    network_sigma: float = 1.0,
    latency_ms: float = 50.0,
    memory_mb: float = 4096.0,
    loss_rate: float = 0.0,
    failure_prob: float = 0.0,
    availability: AvailabilitySpec = "always",
) -> Population:
    """Continuous heterogeneity: compute and bandwidth lognormal around their medians.

    One network factor per client scales both directions (a slow link is slow both ways).

    References: lognormal device speeds as in FedScale's ``get_completion_time_lognormal``
    (after Papaya, Huba et al., MLSys 2022).
    """
    for name, value in (
        ("median_compute_ms_per_sample", median_compute_ms_per_sample),
        ("median_up_kbps", median_up_kbps),
        ("median_down_kbps", median_down_kbps),
    ):
        _check_positive(name, value)
    _check_sigma("compute_sigma", compute_sigma)
    _check_sigma("network_sigma", network_sigma)
    compute = median_compute_ms_per_sample * np.exp(compute_sigma * rng.standard_normal(n))
    net = np.exp(network_sigma * rng.standard_normal(n))
    return Population(
        compute_ms_per_sample=compute,
        memory_mb=np.full(n, memory_mb),
        up_kbps=median_up_kbps * net,
        down_kbps=median_down_kbps * net,
        latency_ms=np.full(n, latency_ms),
        loss_rate=np.full(n, loss_rate),
        failure_prob=np.full(n, failure_prob),
        tier=np.full(n, -1, dtype=np.int16),
        availability=_availability(availability, n, rng),
    )


def uniform_population(
    n: int,
    *,
    compute_ms_per_sample: float = 50.0,
    memory_mb: float = 4096.0,
    up_kbps: float = 1000.0,
    down_kbps: float = 1000.0,
    latency_ms: float = 0.0,
    loss_rate: float = 0.0,
    failure_prob: float = 0.0,
    availability: Availability | None = None,
) -> Population:
    """``n`` identical devices (always available unless ``availability`` is given)."""
    return Population(
        compute_ms_per_sample=np.full(n, compute_ms_per_sample),
        memory_mb=np.full(n, memory_mb),
        up_kbps=np.full(n, up_kbps),
        down_kbps=np.full(n, down_kbps),
        latency_ms=np.full(n, latency_ms),
        loss_rate=np.full(n, loss_rate),
        failure_prob=np.full(n, failure_prob),
        tier=np.full(n, -1, dtype=np.int16),
        availability=AlwaysAvailable(n) if availability is None else availability,
    )
