"""Build a run's simulated devices and network conditions from its config."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedloom.config import DevicesConfig, NetworkConfig
from fedloom.errors import ConfigError
from fedloom.sim.availability import Diurnal
from fedloom.sim.devices import (
    Population,
    lognormal_population,
    tiered_population,
    uniform_population,
)
from fedloom.sim.network import LinkChange, NetworkConditions, bandwidth_drop, link_flap
from fedloom.sim.traces import read_trace


def build_population(cfg: DevicesConfig, num_clients: int, seed: int) -> Population:
    """One device per client. A trace with fewer devices than clients is reused in order
    (client i gets trace row ``i % len(trace)``), as FedScale assigns its device traces."""
    rng = np.random.default_rng([seed, 7])
    if cfg.kind == "trace":
        assert cfg.trace is not None
        trace = read_trace(cfg.trace)
        pop = trace.subset(np.arange(num_clients) % len(trace))
    elif cfg.kind == "tiered":
        pop = tiered_population(num_clients, rng, availability=cfg.availability)
    elif cfg.kind == "lognormal":
        pop = lognormal_population(
            num_clients,
            rng,
            median_compute_ms_per_sample=cfg.compute_ms_per_sample,
            compute_sigma=cfg.compute_sigma,
            median_up_kbps=cfg.up_kbps,
            median_down_kbps=cfg.down_kbps,
            network_sigma=cfg.network_sigma,
            latency_ms=cfg.latency_ms,
            failure_prob=cfg.failure_prob,
            availability=cfg.availability,
        )
    else:
        diurnal = cfg.availability == "diurnal"
        pop = uniform_population(
            num_clients,
            compute_ms_per_sample=cfg.compute_ms_per_sample,
            memory_mb=np.inf,
            up_kbps=cfg.up_kbps,
            down_kbps=cfg.down_kbps,
            latency_ms=cfg.latency_ms,
            failure_prob=cfg.failure_prob,
            availability=Diurnal.sample(num_clients, rng) if diurnal else None,
        )
    if cfg.compute_scale != 1.0:
        pop = replace(pop, compute_ms_per_sample=pop.compute_ms_per_sample * cfg.compute_scale)
    return pop


def build_network(cfg: NetworkConfig, population: Population) -> NetworkConditions:
    changes: list[LinkChange] = []
    n = len(population)
    for i, ch in enumerate(cfg.changes):
        clients = None if ch.clients == "all" else np.asarray(ch.clients, dtype=np.int64)
        if clients is not None and (clients >= n).any():
            bad = int(clients[clients >= n][0])
            raise ConfigError(f"network.changes[{i}].clients: client {bad} does not exist ({n})")
        if ch.kind == "drop":
            changes += bandwidth_drop(ch.time, clients, ch.factor, ch.until, ch.direction)
        else:
            changes += link_flap(clients, ch.time, ch.period, ch.down_for, ch.count)
    return NetworkConditions(population, changes)
