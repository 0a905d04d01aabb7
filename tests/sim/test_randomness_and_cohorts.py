"""The simulator's side of where randomness comes from, and of Poisson and secure cohorts.

The simulator keeps DP noise and cohorts seeded by the run seed (a simulated run is
replayed exactly) and says so in its start record; a deployment draws them from the OS
(tests/transport/test_deployment_randomness.py). Both aggregate a Poisson cohort whole,
and skip a secure round of fewer than ``secagg.min_clients`` clients without releasing
anything about them.
"""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.privacy.central import CentralDP
from fedloom.records import ClientMetrics, Update
from fedloom.secagg.cohort import SecureAggregator
from fedloom.server.selection import PoissonSelector
from fedloom.sim import Simulation

CENTRAL = [
    'privacy.mode="central"',
    'privacy.accountant="rdp"',
    "privacy.noise_multiplier=1.0",
    "privacy.clip_norm=0.05",
]


def config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "partition.num_clients=4",
            "client.local_epochs=1",
            # one executor for every run compared ("auto" chooses by timing, and the two
            # executors differ around 1e-7)
            'simulation.executor="sequential"',
            *extra,
        ],
    )


def rounds_of(sim: Simulation) -> list[dict]:
    return [r for r in sim.run_dir.records() if r["event"] == "round"]


def test_the_simulator_says_its_noise_and_cohorts_follow_the_seed(tmp_path) -> None:
    cfg = config(tmp_path / "a", "rounds=2", "server.clients_per_round=2", *CENTRAL)
    runs = [start_simulation(cfg) for _ in range(2)]
    for sim in runs:
        sim.run()
    (start,) = [r for r in runs[0].run_dir.records() if r["event"] == "start"]
    assert start["randomness"] == {
        "runtime": "simulation",
        "selection": "seed",
        "dp_noise": "seed",
        "dp_sgd_noise": "none",
    }
    # reproducible, which is exactly why a deployment must not do this
    assert np.array_equal(runs[0].server.params, runs[1].server.params)
    cfg = config(
        tmp_path / "b", "server.clients_per_round=2", *CENTRAL, "privacy.secure_noise=true"
    )
    assert start_simulation(cfg).randomness()["dp_noise"] == "os"


class EveryoneSampled(PoissonSelector):
    """A Poisson draw in which every available client happens to be sampled."""

    def __init__(self) -> None:
        super().__init__(1.0)


def test_a_poisson_cohort_larger_than_clients_per_round_is_aggregated_whole(tmp_path) -> None:
    sim = start_simulation(config(tmp_path, "rounds=2", "server.clients_per_round=2", *CENTRAL))
    sim.server.selector = EveryoneSampled()
    sim.run()
    for r in rounds_of(sim):
        assert r["status"] == "aggregated"
        assert r["dispatched"] == r["selected"] == r["completed"] == 4, r
        assert r["surplus"] == 0


class TooFew(PoissonSelector):
    """Round 1 draws nobody, round 2 only the first client, later rounds everyone."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def select(self, available, k, round, rng, stats=None, now=0.0):  # noqa: ANN001, ANN201
        ids = np.sort(np.asarray(available, dtype=np.int64))
        return ids[:0] if round == 1 else ids[:1] if round == 2 else ids


def test_secure_rounds_of_no_client_or_one_are_skipped_and_reveal_nothing(tmp_path) -> None:
    cfg = config(
        tmp_path, "rounds=3", "server.clients_per_round=2", "secagg.enabled=true", *CENTRAL
    )
    sim = start_simulation(cfg)
    sim.server.selector = TooFew()
    trained: list[int] = []
    aggregate = sim.secure.aggregate

    def spy(cohort, updates, dropouts, attempt, **kwargs):  # noqa: ANN001, ANN202
        trained.extend(u.client_id for u in updates)
        return aggregate(cohort, updates, dropouts, attempt, **kwargs)

    sim.secure.aggregate = spy
    sim.step()
    sim.step()
    assert np.array_equal(sim.server.params, sim.initial_params)  # nothing released
    assert trained == []  # nobody trained, so nothing of theirs exists to leak
    sim.run()
    r1, r2, r3 = rounds_of(sim)
    for r, size in ((r1, 0), (r2, 1)):
        assert r["status"] == "skipped" and r["completed"] == 0, r
        assert r["skip_reason"] == f"cohort of {size} is below secagg.min_clients = 2"
        assert r["secagg"]["included"] == 0 and r["secagg"]["cohort"] == size
        assert r["train_loss"] is None or math.isnan(r["train_loss"])
    assert r3["status"] == "aggregated" and r3["secagg"]["included"] == 4
    with sqlite3.connect(sim.run_dir.path / "clients.sqlite") as db:
        rows = db.execute("SELECT round, loss FROM participation").fetchall()
    assert rows and all(rnd == 3 and loss is None for rnd, loss in rows), rows


def test_the_protocol_aborts_rather_than_unmask_fewer_than_min_clients() -> None:
    """Three clients, threshold 2 of 3 holders: the threshold alone would unmask the two
    that sent masked inputs; with min_clients = 3 nothing is unmasked."""
    dim = 8
    ups = [
        Update(c, 1, 0, np.full(dim, 0.1 * (c + 1), np.float32), 5, ClientMetrics(0.5, 1, 1.0))
        for c in (0, 1)
    ]
    for need, aborted in ((2, False), (3, True)):
        agg = SecureAggregator(dim, 5, min_clients=need)
        result = agg.aggregate([0, 1, 2], ups, {2: "masked_input"}, attempt=1)
        assert result.threshold == 2
        assert (result.total is None) == aborted
        if aborted:
            assert "below the minimum of 3 inputs" in result.abort


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("secagg.threshold=0.3", "secagg.threshold = 0.3 is below 0.5"),
        ("secagg.min_clients=1", "secagg.min_clients"),
        ("secagg.min_clients=5", "secagg.min_clients = 5 exceeds server.clients_per_round = 4"),
    ],
)
def test_unsafe_secure_sum_settings_are_refused(tmp_path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, "secagg.enabled=true", "server.clients_per_round=4", setting)


def test_the_simulators_seeded_noise_is_removable_by_whoever_knows_the_seed(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The premise of the deployment's OS noise, shown on the simulator: replaying
    ``default_rng([seed, 8])`` recovers the exact clipped sums from the released models.
    (The same attack over gRPC is left with sqrt(2) times the noise.)"""
    sums: list[np.ndarray] = []
    release = CentralDP.release

    def keep(self, clipped_sum, unclipped, received):  # noqa: ANN001, ANN202
        sums.append(np.array(clipped_sum, dtype=np.float64))
        return release(self, clipped_sum, unclipped, received)

    monkeypatch.setattr(CentralDP, "release", keep)
    sim = start_simulation(config(tmp_path, "rounds=2", "server.clients_per_round=2", *CENTRAL))
    models = [sim.server.params.copy()]
    for _ in range(2):
        sim.step()
        models.append(sim.server.params.copy())
    replay = np.random.default_rng([sim.config.seed, 8])
    m = sim.privacy.expected_clients
    for t in (1, 2):
        released = (models[t].astype(np.float64) - models[t - 1]) * m
        guess = released - replay.normal(0.0, 0.05, released.size)
        assert np.abs(guess - sums[t - 1]).max() < 1e-6
