"""Where a deployment's protective randomness comes from, tested from the adversary's side.

Every client learns the run seed (it builds the initial model from it) and the server
picks each task's seed. So in a deployment the central DP noise, the clients' DP-SGD
noise and the cohort draws must come from the OS: a client replaying the seeded noise
stream, or a server replaying a client's, must be left with the calibrated noise's
magnitude, not the data. Poisson cohorts are aggregated whole, and a secure round of
fewer than ``secagg.min_clients`` clients is skipped without anyone learning anything.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from inprocess import serve_in_thread

from fedloom.assemble import plan_from_config, start_simulation
from fedloom.client.trainer import TorchTrainer
from fedloom.config import load_config
from fedloom.data.storage import client_dir, read_client
from fedloom.errors import FedloomError
from fedloom.privacy.central import CentralDP
from fedloom.records import Update
from fedloom.secagg.cohort import SecureAggregator
from fedloom.server.selection import PoissonSelector
from fedloom.server.sync import SyncServer, client_seed
from fedloom.transport.client import DeploymentClient
from fedloom.transport.secure_round import SecureTaskSpec
from fedloom.transport.server import DeploymentServer, ServerOptions

OPTIONS = ServerOptions(port=0, insecure=True, client_timeout_s=5.0, heartbeat_s=0.25, linger_s=0.5)
CENTRAL = [
    'privacy.mode="central"',
    'privacy.accountant="rdp"',  # fast; the accountant is not what these tests check
    "privacy.noise_multiplier=1.0",
    "privacy.clip_norm=0.05",
]


class Spy(DeploymentClient):
    """An honest client that also keeps what it is told: the run seed and every model."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.seed: int | None = None
        self.models: dict[int, np.ndarray] = {}

    def _setup(self, reply) -> None:  # noqa: ANN001
        super()._setup(reply)
        self.seed = int(reply.model.seed)

    def _download(self, version: int) -> np.ndarray:
        params = super()._download(version)
        self.models[version] = params.copy()
        return params


def run(
    root: Path, overrides: list[str], selector: PoissonSelector | None = None
) -> tuple[DeploymentServer, list[Spy]]:
    """A whole in-process run with three client threads (client 0 a ``Spy``); rounds
    start once all three are online."""
    options = dataclasses.replace(OPTIONS, min_clients=3)
    server, port, thread = serve_in_thread(root, overrides, options)
    if selector is not None:  # before any client joins, so before the first round
        server.engine.server.selector = selector
    clients = [
        Spy(f"127.0.0.1:{port}", client_dir(root / "data", i), name=f"client-{i}", insecure=True)
        for i in range(3)
    ]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    thread.join(120)
    alive = thread.is_alive()
    server.stop()
    assert not alive, "the run did not finish"
    for t in threads:
        t.join(30)
    return server, clients


def rounds_of(server: DeploymentServer) -> list[dict]:
    return [r for r in server.engine.run_dir.records() if r.get("event") == "round"]


def test_a_client_with_the_seed_and_every_release_cannot_remove_the_central_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack of a seeded server: regenerate ``default_rng([seed, 8])``'s draws and
    subtract them from each released step. In a deployment what is left differs from
    the true clipped sum by the difference of two independent noise vectors (sqrt(2)
    times the calibrated stddev), not by float rounding."""
    sums: list[np.ndarray] = []
    release = CentralDP.release

    def keep(self, clipped_sum, unclipped, received):  # noqa: ANN001, ANN202
        sums.append(np.array(clipped_sum, dtype=np.float64))
        return release(self, clipped_sum, unclipped, received)

    monkeypatch.setattr(CentralDP, "release", keep)
    server, clients = run(tmp_path, ["rounds=3", *CENTRAL])
    spy, engine = clients[0], server.engine
    start = next(r for r in engine.run_dir.records() if r.get("event") == "start")
    assert start["randomness"] == {
        "runtime": "deployment",
        "selection": "os",
        "dp_noise": "os",
        "dp_sgd_noise": "none",
    }
    assert [r["completed"] for r in rounds_of(server)] == [3, 3, 3]  # q = 1: everyone
    assert spy.seed == engine.settings.seed and sorted(spy.models) == [0, 1, 2]
    scale = 1.0 * 0.05  # noise_multiplier * clip_norm
    m = engine.privacy.expected_clients  # the release divides by it; server lr is 1
    replay = np.random.default_rng([spy.seed, 8])
    for t in (1, 2):
        released = (spy.models[t].astype(np.float64) - spy.models[t - 1]) * m
        guess = released - replay.normal(0.0, scale, released.size)
        residual = guess - sums[t - 1]
        assert np.std(residual) / scale == pytest.approx(math.sqrt(2), abs=0.12)


def test_the_server_cannot_replay_a_clients_dp_sgd_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server knows the task seed, the plan and the model; replaying the seeded
    DP-SGD noise from them and subtracting it must not give the noiseless update: a
    deployed client drew its own noise from the OS (and its own batches, which one full
    batch makes irrelevant here)."""
    received: dict[int, np.ndarray] = {}
    receive = SyncServer.receive

    def keep(self, update: Update) -> None:  # noqa: ANN001
        received[update.client_id] = update.delta.copy()
        receive(self, update)

    monkeypatch.setattr(SyncServer, "receive", keep)
    overrides = [
        "rounds=1",
        "client.local_steps=1",
        "client.batch_size=100000",  # one full batch: the device's own batch order is moot
        "client.dp_sgd_clip_norm=1.0",
        "client.dp_sgd_noise_multiplier=1.0",
    ]
    server, _ = run(tmp_path, overrides)
    engine, spec = server.engine, server.model_spec
    assert sorted(received) == [0, 1, 2]
    start = next(r for r in engine.run_dir.records() if r.get("event") == "start")
    assert start["randomness"]["dp_sgd_noise"] == "os"
    cfg = engine.run_dir.load_config()
    plan = plan_from_config(cfg)
    quiet = dataclasses.replace(plan, dp_sgd_noise=0.0)
    task, model = spec.build()
    trainer = TorchTrainer(model, task)
    start_params = torch.from_numpy(engine.initial_params.copy())
    for cid, delta in received.items():
        train, _ = read_client(client_dir(tmp_path / "data", cid))
        x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
        seed = client_seed(cfg.seed, 1, cid)  # what the server put in the task
        replayed, noiseless = torch.empty(engine.server.dim), torch.empty(engine.server.dim)
        trainer.train(start_params, x, y, plan, seed, out=replayed)
        trainer.train(start_params, x, y, quiet, seed, out=noiseless)
        server_noise = (replayed - noiseless).numpy().astype(np.float64)  # the replay
        denoised = delta - server_noise
        residual = denoised - noiseless.numpy()
        # one SGD step is linear in the noise: two independent draws differ by sqrt(2)
        assert np.std(residual) / np.std(server_noise) == pytest.approx(math.sqrt(2), abs=0.15)


class EveryoneSampled(PoissonSelector):
    """A Poisson draw in which every online client happens to be sampled."""

    def __init__(self) -> None:
        super().__init__(1.0)


def test_a_poisson_cohort_larger_than_clients_per_round_is_aggregated_whole(
    tmp_path: Path,
) -> None:
    """clients_per_round = 2 of 3, but the draw samples all 3: nobody is surplus, every
    sampled client that delivers is in the sum (cutting one would let one client's
    presence displace another's update)."""
    overrides = ["rounds=2", "server.clients_per_round=2", *CENTRAL]
    server, _ = run(tmp_path, overrides, EveryoneSampled())
    for r in rounds_of(server):
        assert r["status"] == "aggregated"
        assert r["dispatched"] == r["selected"] == r["completed"] == 3, r
        assert r["surplus"] == 0 and not r["dropped"]


def test_deployed_cohorts_cannot_be_predicted_from_the_seed(tmp_path: Path) -> None:
    """Whoever knows the seed (every client) replays the simulator's seeded Poisson
    draws; a deployment's cohorts do not follow them, and two deployments of the same
    config draw differently."""
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "partition.num_clients=40",
            "server.clients_per_round=20",  # q = 1/2: 40 coin flips a round
            *CENTRAL,
        ],
    )
    runs = [start_simulation(cfg, deployment=True) for _ in range(2)]
    seeded = start_simulation(cfg)  # the simulator: exactly what the attacker predicts
    predicted = SyncServer(
        runs[0].server.params, 40, 20, runs[0].server.plan, runs[0].server.optimizer,
        runs[0].server.monitor, seed=cfg.seed, selector=PoissonSelector(0.5),
    )  # fmt: skip
    drawn: list[list[tuple[int, ...]]] = [[], [], []]
    for _ in range(5):
        guess = tuple(d.client_id for d in predicted.begin_round())
        for i, sim in enumerate([*runs, seeded]):
            cohort = tuple(d.client_id for d in sim.server.begin_round())
            drawn[i].append(cohort)
            for c in cohort:
                sim.server.fail(c, "not trained in this test")
            sim.server.close_round()
        assert drawn[0][-1] != guess and drawn[1][-1] != guess
        assert drawn[2][-1] == guess
        for c in guess:
            predicted.fail(c, "not trained")
        predicted.close_round()
    assert drawn[0] != drawn[1]
    assert all(5 <= len(c) <= 35 for c in drawn[0])  # still Poisson(1/2) draws


class TooFew(PoissonSelector):
    """Round 1 draws nobody, round 2 only client 0, later rounds everyone online."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def select(self, available, k, round, rng, stats=None, now=0.0):  # noqa: ANN001, ANN201
        ids = np.sort(np.asarray(available, dtype=np.int64))
        return ids[:0] if round == 1 else ids[:1] if round == 2 else ids


def test_secure_rounds_of_no_client_or_one_are_skipped_and_reveal_nothing(
    tmp_path: Path,
) -> None:
    """An empty Poisson cohort is a normal, recorded round; a cohort of one is below
    secagg.min_clients (2): skipped before anyone trains, so no record, registry row or
    model change carries client 0's update or loss. The run goes on."""
    overrides = ["rounds=3", "server.clients_per_round=2", "secagg.enabled=true", *CENTRAL]
    server, clients = run(tmp_path, overrides, TooFew())
    sim = server.engine
    r1, r2, r3 = rounds_of(server)
    for r, size in ((r1, 0), (r2, 1)):
        assert r["status"] == "skipped" and r["completed"] == 0, r
        assert "below secagg.min_clients = 2" in r["skip_reason"]
        assert r["secagg"] == {
            "included": 0,
            "cohort": size,
            "aborted": f"cohort of {size} is below secagg.min_clients = 2",
        }
        assert r["train_loss"] is None or math.isnan(r["train_loss"])
        assert r["update_norm"] == 0.0
    assert r3["status"] == "aggregated" and r3["secagg"]["included"] == 3
    assert sorted(clients[0].models) == [0]  # it never trained in round 2: nothing to leak
    with sqlite3.connect(sim.run_dir.path / "clients.sqlite") as db:
        rows = db.execute("SELECT round, client_id, loss FROM participation").fetchall()
    assert all(rnd == 3 for rnd, _, _ in rows), rows  # rounds 1 and 2: nobody took part
    assert all(loss is None for _, _, loss in rows)  # no per-client loss under SecAgg


def test_a_secure_sum_below_min_clients_is_never_unmasked(tmp_path: Path) -> None:
    """secagg.min_clients = 3 with three clients and a Shamir threshold of 2: when one
    client vanishes before its masked input, the protocol could unmask the other two,
    but the server aborts first and the round is skipped with the model unchanged."""

    class Vanish(Exception):
        pass

    class Quitter(DeploymentClient):
        def _fetch_stage(self, task, stage):  # noqa: ANN001, ANN202
            if stage == "masked_input":
                raise Vanish
            return super()._fetch_stage(task, stage)

    overrides = ["rounds=1", "secagg.enabled=true", "secagg.min_clients=3"]
    server, port, thread = serve_in_thread(tmp_path, overrides, OPTIONS)
    kinds = [DeploymentClient, DeploymentClient, Quitter]

    def play(i: int) -> None:
        client = kinds[i](
            f"127.0.0.1:{port}", client_dir(tmp_path / "data", i), name=f"client-{i}",
            insecure=True,
        )  # fmt: skip
        try:
            client.run()
        except Vanish:
            pass

    threads = [threading.Thread(target=play, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    thread.join(120)
    server.stop()
    (record,) = rounds_of(server)
    assert record["secagg"]["threshold"] == 2  # the threshold alone would unmask two
    assert "minimum of 3 inputs" in record["secagg"]["aborted"]
    assert record["status"] == "skipped" and record["completed"] == 0
    np.testing.assert_array_equal(server.engine.server.params, server.engine.initial_params)


def test_a_device_refuses_a_secure_sum_of_one_client() -> None:
    """Whatever the server's config says: a cohort of one would unmask this client's own
    input, so the device refuses the task's spec (and leaves the protocol)."""
    aggregator = SecureAggregator(10, 5)
    pair = SecureTaskSpec.for_client(aggregator, 0, 2, 2, 1, None, None).to_pb()
    assert SecureTaskSpec.from_pb(pair).num_clients == 2
    alone = SecureTaskSpec.for_client(aggregator, 0, 1, 1, 1, None, None).to_pb()
    with pytest.raises(FedloomError, match="num_clients = 1; a secure sum needs at least 2"):
        SecureTaskSpec.from_pb(alone)
