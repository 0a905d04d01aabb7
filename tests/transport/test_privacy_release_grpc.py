"""The release path over gRPC: a model version leaves the server only after its release is
charged, fixed-size sampling draws from all N, local DP's headline is the worst client's
composition, and a budget is never crossed."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np
import pytest
from inprocess import run_insecure_clients, serve_in_thread

from fedloom.assemble import deployment_server, open_deployment, start_simulation
from fedloom.config import load_config
from fedloom.data.storage import client_dir
from fedloom.privacy import epsilon
from fedloom.privacy.calibration import analytic_gaussian_sigma
from fedloom.transport.client import DeploymentClient
from fedloom.transport.server import DeploymentServer, ServerOptions

OPTIONS = ServerOptions(port=0, insecure=True, linger_s=0.5)


def records(server: DeploymentServer, event: str = "round") -> list[dict]:
    return [r for r in server.engine.run_dir.records() if r.get("event") == event]


class Published(dict):
    """The server's downloadable model versions, noting how many releases privacy.json
    held on disk when each version became downloadable."""

    def __init__(self, models: dict, ledger: Path) -> None:
        super().__init__(models)
        self.ledger = ledger
        self.charged_when_published: list[tuple[int, int]] = []

    def __setitem__(self, version: int, model: np.ndarray) -> None:
        events = json.loads(self.ledger.read_text())["events"]
        self.charged_when_published.append((version, len(events)))
        super().__setitem__(version, model)


def test_a_model_version_is_downloadable_only_after_its_release_is_charged(tmp_path):
    overrides = ['privacy.mode="central"', "privacy.noise_multiplier=1.0", "rounds=3"]
    server, port, thread = serve_in_thread(tmp_path, overrides, OPTIONS)
    published = Published(server._models, server.engine.run_dir.path / "privacy.json")
    server._models = published
    run_insecure_clients(server, thread, tmp_path, [0, 1, 2])
    assert [v for v, _ in published.charged_when_published] == [1, 2, 3]
    for version, charged in published.charged_when_published:
        assert charged >= version, f"version {version} was downloadable before being charged"


def test_fixed_size_sampling_draws_from_all_clients_not_only_those_online(tmp_path):
    overrides = [
        'privacy.mode="central"',
        'privacy.sampling="fixed"',
        'privacy.accountant="rdp"',
        "privacy.noise_multiplier=1.0",
        "rounds=8",
        "server.clients_per_round=2",
    ]
    server, port, thread = serve_in_thread(tmp_path, overrides, OPTIONS)
    run_insecure_clients(server, thread, tmp_path, [0, 1])  # client 2 never comes online
    rounds = records(server)
    assert len(rounds) == 8 and all(r["dispatched"] == 2 for r in rounds)
    # the offline client is drawn like any other (P[never in 8 rounds] = 3^-8): drawing
    # only from the clients online would give each of them inclusion 1 instead of 2/3
    assert sum(r["dropped"].get("disconnected", 0) for r in rounds) >= 1
    ledger = json.loads((server.engine.run_dir.path / "privacy.json").read_text())
    assert {(e["sampling_rate"], e["population"]) for e in ledger["events"]} == {(2 / 3, 3)}


def test_local_dp_reports_the_worst_clients_composition_and_stops_at_the_budget(tmp_path):
    delta, clip = 1e-5, 1.0
    sigma = analytic_gaussian_sigma(8.0, delta, 2 * clip)  # replace-one: sensitivity 2C
    z = sigma / (2 * clip)
    two = epsilon(z, 1.0, 2, delta, "pld")  # each client uploads in every round
    overrides = [
        'privacy.mode="local"',
        "privacy.local_epsilon=8",
        f"privacy.delta={delta}",
        f"privacy.budget_epsilon={two * 1.01}",  # room for two uploads per client, not three
        'privacy.budget_policy="stop"',
        "rounds=4",
    ]
    server, port, thread = serve_in_thread(tmp_path, overrides, OPTIONS)
    run_insecure_clients(server, thread, tmp_path, [0, 1, 2])
    rounds = records(server)
    assert [r["status"] for r in rounds] == ["aggregated", "aggregated", "skipped"]
    assert rounds[-1]["dispatched"] == 0, "the third upload was never asked for"
    ledger = json.loads((server.engine.run_dir.path / "privacy.json").read_text())
    assert ledger["view"] == "local"
    assert ledger["epsilon"] == rounds[1]["epsilon"] == pytest.approx(two, rel=1e-9)
    assert ledger["participations"] == {"clients": 3, "max_per_client": 2}
    assert ledger["secondary"]["model_epsilon"] < ledger["epsilon"]
    (stop,) = records(server, "stop")
    assert stop["reason"] == "privacy_budget"


def test_a_killed_and_resumed_server_keeps_every_release_charged(tmp_path):
    overrides = [
        'privacy.mode="central"',
        "privacy.noise_multiplier=1.0",
        "rounds=4",
        "checkpoint.every=2",
    ]
    server, port, thread = serve_in_thread(tmp_path, overrides, OPTIONS)
    path = server.engine.run_dir.path
    finish = server.engine.finish_round

    def finish_then_die(result, *args, **kwargs):
        record = finish(result, *args, **kwargs)
        if result.round == 3:  # killed after round 3 (its newest checkpoint is round 2's)
            server._stop.set()
        return record

    server.engine.finish_round = finish_then_die
    for i in range(3):
        folder = client_dir(tmp_path / "data", i)
        client = DeploymentClient(f"127.0.0.1:{port}", folder, insecure=True)
        threading.Thread(target=client.run, daemon=True).start()
    thread.join(120)
    server.stop()
    first_life = json.loads((path / "privacy.json").read_text())["events"]
    released = len(records(server))  # every round of the first life released a model
    assert released == 3 and len(first_life) == 3

    ready: queue.Queue[DeploymentServer] = queue.Queue()

    def serve_resumed() -> None:  # the simulation belongs to the thread that plays it
        resumed = deployment_server(open_deployment(None, path), OPTIONS)
        resumed.start()
        ready.put(resumed)
        resumed.run()

    second = threading.Thread(target=serve_resumed, daemon=True)
    second.start()
    resumed = ready.get(timeout=120)
    run_insecure_clients(resumed, second, tmp_path, [0, 1, 2])
    ledger = json.loads((path / "privacy.json").read_text())["events"]
    assert ledger[: len(first_life)] == first_life, "nothing charged before the kill is lost"
    replayed = ledger[len(first_life) :]
    # round 3 was redone with fresh OS noise: a new release, charged again; then round 4
    assert [(e["round"], e["replay"]) for e in replayed] == [(3, 1), (4, 0)]
    assert len({e["digest"] for e in ledger}) == len(ledger)


def test_distributed_dp_over_grpc_refuses_to_unmask_past_the_budget(tmp_path):
    run = [
        "partition.num_clients=4",
        "server.clients_per_round=4",  # Poisson at rate 1: every client, every round
        "secagg.enabled=true",
        'privacy.mode="distributed"',
        'privacy.accountant="rdp"',
        "privacy.noise_multiplier=1.0",
        "rounds=3",
    ]
    probe = start_simulation(load_config(None, [*run, f'output_dir="{tmp_path / "probe"}"']))
    one, ledger = probe.privacy.event(shares=4, cohort=4), probe.ledger
    assert ledger is not None
    first = ledger._planned([one])
    budget = 1.2 * first
    assert ledger._planned([one, one]) > budget  # room for one secure sum, not two
    options = ServerOptions(port=0, insecure=True, client_timeout_s=3.0, linger_s=0.5)
    overrides = [*run, f"privacy.budget_epsilon={budget}", 'privacy.budget_policy="stop"']
    server, port, thread = serve_in_thread(tmp_path, overrides, options)
    run_insecure_clients(server, thread, tmp_path, [0, 1, 2, 3])
    rounds = records(server)
    assert [r["status"] for r in rounds] == ["aggregated", "skipped"]
    assert "privacy budget" in rounds[1]["skip_reason"]
    assert rounds[1]["completed"] == 0, "the second sum was never unmasked"
    saved = json.loads((server.engine.run_dir.path / "privacy.json").read_text())
    assert len(saved["events"]) == 1 and saved["epsilon"] == pytest.approx(first)
    assert saved["epsilon"] <= budget
    (stop,) = records(server, "stop")
    assert stop["reason"] == "privacy_budget"


def test_quorum_over_grpc_decides_on_a_noisy_count_and_charges_every_attempt(tmp_path):
    overrides = [
        'privacy.mode="central"',
        'privacy.accountant="rdp"',
        "privacy.noise_multiplier=1.0",
        "rounds=3",
        "server.quorum=2",
        'server.quorum_policy="retry"',
        "server.max_retries=1",
    ]
    options = ServerOptions(port=0, insecure=True, linger_s=0.5, min_clients=2)
    server, port, thread = serve_in_thread(tmp_path, overrides, options)
    run_insecure_clients(server, thread, tmp_path, [0, 1])  # client 2 never comes online
    rounds = records(server)
    entries = server.engine.ledger.entries
    assert len(entries) == len(rounds), "retried and skipped attempts are charged too"
    for r, e in zip(rounds, entries, strict=True):
        assert e.attempt == r["attempt"]
        assert r["quorum_count"] != round(r["quorum_count"])  # a noisy count decides
        assert (r["status"] == "aggregated") == (r["quorum_count"] >= 2)
        z = 1.0 if r["status"] == "aggregated" else 3.0
        assert e.event.noise_multiplier == pytest.approx(z)
