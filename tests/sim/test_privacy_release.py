"""The release path under attack and failure: resumed rounds, sampling as accounted, quorum
decisions, budgets on what is actually spent, and what local DP's ledger reports."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config
from fedloom.privacy import epsilon
from fedloom.privacy.calibration import analytic_gaussian_sigma
from fedloom.report import summary_rows
from fedloom.sim import Simulation

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=5",
            "partition.num_clients=30",
            "server.clients_per_round=6",
            "client.local_epochs=1",
            'privacy.mode="central"',
            'privacy.accountant="rdp"',
            "checkpoint.every=2",
            *extra,
        ],
    )


def ledger_of(sim: Simulation) -> dict:
    return json.loads((sim.run_dir.path / "privacy.json").read_text())


def rounds_of(sim: Simulation) -> list[dict]:
    return [r for r in sim.run_dir.records() if r["event"] == "round"]


def spy_releases(sim: Simulation) -> list[tuple[np.ndarray, np.ndarray]]:
    """(clipped sum, released average) of every central DP release the server makes."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    dp = sim.server.dp
    release = dp.release

    def spy(clipped_sum, unclipped, received):
        out = release(clipped_sum, unclipped, received)
        seen.append((np.array(clipped_sum, dtype=np.float64), out.astype(np.float64)))
        return out

    dp.release = spy
    return seen


# ------------------------------------------------------------------ item 4: resume


def test_kill_and_resume_keeps_every_release_and_equals_the_uninterrupted_run(tmp_path):
    extra = ("privacy.noise_multiplier=1.0", 'simulation.executor="sequential"')
    full = start_simulation(cfg(tmp_path / "a", *extra))
    full.run()
    crashed = start_simulation(cfg(tmp_path / "b", *extra))
    for _ in range(3):  # killed after round 3; the newest checkpoint is round 2
        crashed.step()
    before = ledger_of(crashed)["events"]
    assert [e["round"] for e in before] == [1, 2, 3]
    resumed = resume_simulation(crashed.run_dir.path)
    assert len(resumed.ledger.entries) == 3, "the ledger is never truncated by resume"
    resumed.run()
    # the replayed round 3 is the same release bit for bit: charged once, nothing new
    replayed = [r for r in rounds_of(resumed) if r.get("replayed")]
    assert [r["round"] for r in replayed] == [3]
    assert np.array_equal(resumed.server.params, full.server.params)
    assert ledger_of(resumed)["events"] == ledger_of(full)["events"]


def test_a_replayed_round_with_another_cohort_gets_fresh_noise_and_is_charged(tmp_path):
    extra = ("privacy.noise_multiplier=1.0",)
    crashed = start_simulation(cfg(tmp_path, *extra))
    for _ in range(2):
        crashed.step()  # checkpoint at round 2
    first = spy_releases(crashed)
    crashed.step()  # round 3 released, then the server dies
    resumed = resume_simulation(crashed.run_dir.path)
    resumed.server.rng = np.random.default_rng(12345)  # round 3 redone with another cohort
    second = spy_releases(resumed)
    before = resumed.server.params.copy()
    resumed.step()
    # the candidate drawn with the checkpointed noise differed from the charged release: it
    # was discarded unpublished, and the published release drew fresh noise
    assert len(second) == 2
    (s1, r1), (s2, r2) = first[0], second[-1]
    assert np.allclose(resumed.server.params - before, r2, atol=1e-6)
    assert not np.array_equal(s1, s2), "the redone round summed another cohort"
    # someone holding both releases subtracts them: were the noise reused it would cancel
    m = resumed.server.dp.expected_clients
    noise1, noise2 = m * r1 - s1, m * r2 - s2
    sigma = resumed.server.dp.sum_noise_multiplier * resumed.server.dp.clip_norm
    assert np.std(noise1 - noise2) == pytest.approx(np.sqrt(2) * sigma, rel=0.1)
    assert abs(np.corrcoef(noise1, noise2)[0, 1]) < 0.1
    entries = resumed.ledger.entries
    assert [(e.round, e.replay) for e in entries] == [(1, 0), (2, 0), (3, 0), (3, 1)]
    assert resumed.ledger.epsilon() == pytest.approx(
        epsilon(1.0, 6 / 30, 4, resumed.privacy.delta, "rdp")
    )


def test_a_deployment_replay_draws_from_the_os_and_is_always_charged(tmp_path):
    extra = ("privacy.noise_multiplier=1.0",)
    crashed = start_simulation(cfg(tmp_path, *extra), deployment=True)
    for _ in range(3):
        crashed.step()
    resumed = resume_simulation(crashed.run_dir.path, deployment=True)
    resumed.step()  # round 3 again: same cohort, fresh OS noise, a new release
    assert [(e.round, e.replay) for e in resumed.ledger.entries] == [
        (1, 0),
        (2, 0),
        (3, 0),
        (3, 1),
    ]


# --------------------------------------------------- item 5: fixed-size sampling


def test_fixed_size_sampling_on_the_device_trace_is_the_accountants(tmp_path):
    config = load_config(
        ROOT / "examples" / "devices_trace.toml",
        [
            f'output_dir="{tmp_path}"',
            f'devices.trace="{ROOT / "examples" / "traces" / "mixed_devices.jsonl"}"',
            "rounds=12",
            "client.local_epochs=1",
            'privacy.mode="central"',
            'privacy.sampling="fixed"',
            'privacy.accountant="rdp"',
            "privacy.noise_multiplier=1.0",
            "stopping.target=1.0",
        ],
    )
    sim = start_simulation(config)
    online_seen = []
    while not sim.finished:
        online_seen.append(len(sim.virtual_time.available()))
        sim.step()
    records = rounds_of(sim)
    # exactly m = 20 drawn each round, from all N = 200: the offline picks are dropouts
    for r in records:
        offline = r["dropped"].get("offline when sampled", 0)
        assert r["dispatched"] + offline == 20
    offline_picks = sum(r["dropped"].get("offline when sampled", 0) for r in records)
    online_share = np.mean(online_seen) / 200
    # were the 20 drawn from the clients online, no pick would ever be offline
    assert offline_picks / (20 * len(records)) == pytest.approx(1 - online_share, abs=0.15)
    # the true inclusion probability, m / N, is what the ledger accounts with
    ledger = ledger_of(sim)
    assert {e["sampling_rate"] for e in ledger["events"]} == {20 / 200}
    assert {e["population"] for e in ledger["events"]} == {200}
    true = epsilon(1.0, 0.1, len(records), sim.privacy.delta, "rdp", "fixed", 200)
    assert ledger["epsilon"] == pytest.approx(true)


# ----------------------------------------------------------------- item 6: quorum


def test_quorum_is_decided_on_a_noisy_count_and_every_attempt_is_charged(tmp_path):
    config = cfg(
        tmp_path,
        "rounds=6",
        "privacy.noise_multiplier=1.0",
        "server.quorum=5",
        'server.quorum_policy="retry"',
        "server.max_retries=2",
        "devices.failure_prob=0.35",
    )
    sim = start_simulation(config)
    sim.run()
    records = rounds_of(sim)
    entries = sim.ledger.entries
    assert len(entries) == len(records), "every attempt (retries and skips too) is charged"
    z = sim.privacy.noise_multiplier
    for r, e in zip(records, entries, strict=True):
        assert e.attempt == r["attempt"]
        count = r["quorum_count"]
        assert count != round(count), "the decision is made on a noisy count"
        assert (r["status"] == "aggregated") == (count >= 5)
        expected = z if r["status"] == "aggregated" else 3 * z  # the count alone: 3z
        assert e.event.noise_multiplier == pytest.approx(expected)
    assert {r["status"] for r in records} >= {"aggregated", "retry"}
    # the sum carries its share of the noise; the pair is the planned multiplier z
    zs = sim.server.dp.sum_noise_multiplier
    assert zs**-2 + (3 * z) ** -2 == pytest.approx(z**-2)


# --------------------------------------------------------- item 7: the budget


def test_distributed_dp_with_dropouts_never_spends_past_the_budget(tmp_path):
    config = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=8",
            "partition.num_clients=40",
            "server.clients_per_round=10",
            "client.local_epochs=1",
            'privacy.mode="distributed"',
            'privacy.accountant="rdp"',
            "privacy.target_epsilon=3",
            "privacy.budget_epsilon=3",
            "secagg.enabled=true",
            "devices.failure_prob=0.3",  # fewer shares than planned: less noise per round
        ],
    )
    sim = start_simulation(config)
    summary = sim.run()
    ledger = ledger_of(sim)
    assert ledger["epsilon"] <= 3
    assert summary.stop_reason == "privacy_budget"
    last = rounds_of(sim)[-1]
    assert last["status"] == "skipped" and "privacy budget" in last["skip_reason"]
    # what was refused would have crossed the budget
    assert sim.ledger.would_exceed([sim.privacy.event(shares=1, cohort=10)])


def test_central_budget_refuses_the_release_that_would_cross_it(tmp_path):
    config = cfg(
        tmp_path,
        "rounds=50",
        "privacy.noise_multiplier=0.8",
        "privacy.budget_epsilon=4",
        'privacy.budget_policy="stop"',
    )
    sim = start_simulation(config)
    summary = sim.run()
    assert summary.stop_reason == "privacy_budget" and summary.rounds < 50
    assert ledger_of(sim)["epsilon"] <= 4
    records = rounds_of(sim)
    assert records[-1]["dispatched"] == 0 and records[-1]["status"] == "skipped"
    assert sim.ledger.would_exceed([sim.privacy.event()])


# --------------------------------------------------------------- item 10: local


def test_local_dp_headline_is_the_worst_clients_composition(tmp_path):
    config = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=6",
            "partition.num_clients=12",
            "server.clients_per_round=6",
            "client.local_epochs=1",
            'privacy.mode="local"',
            "privacy.local_epsilon=2",
            "privacy.delta=1e-5",
            'privacy.accountant="rdp"',
        ],
    )
    sim = start_simulation(config)
    sim.run()
    ledger = ledger_of(sim)
    assert ledger["view"] == "local"
    counts = sim.ledger.participations()
    worst = max(counts.values())
    assert worst >= 2
    # the server sees each identified upload: per upload local_epsilon, composed unsampled
    sigma = analytic_gaussian_sigma(2.0, 1e-5, 2 * sim.privacy.clip_norm)
    z = sigma / (2 * sim.privacy.clip_norm)
    assert epsilon(z, 1.0, 1, 1e-5, "pld") == pytest.approx(2.0)
    # composed exactly (unsampled Gaussians), whatever the run's accountant
    assert ledger["epsilon"] == pytest.approx(epsilon(z, 1.0, worst, 1e-5, "pld"))
    assert ledger["participations"]["max_per_client"] == worst
    assert ledger["per_upload_epsilon"] == pytest.approx(2.0, rel=1e-3)
    # the amplified number is only a labelled secondary view of the released models
    model = ledger["secondary"]["model_epsilon"]
    assert model < ledger["epsilon"]
    assert "not a guarantee against the server" in ledger["secondary"]["label"]
    last = rounds_of(sim)[-1]
    assert last["epsilon"] == ledger["epsilon"] and last["model_epsilon"] == model
    rows = dict(summary_rows(sim.run_dir))
    assert rows["privacy spent (epsilon) (local DP, worst client)"].startswith(
        f"{ledger['epsilon']:.4g}"
    )
    assert rows["  released models only (amplified; not against the server)"] == f"{model:.4g}"


def test_distributed_sums_unmasked_below_the_quorum_are_charged(tmp_path):
    config = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=4",
            "partition.num_clients=40",
            "server.clients_per_round=10",
            "client.local_epochs=1",
            'privacy.mode="distributed"',
            'privacy.accountant="rdp"',
            "privacy.noise_multiplier=2.0",
            "secagg.enabled=true",
            "devices.failure_prob=0.3",
            "server.quorum=9",
            'server.quorum_policy="retry"',
            "server.max_retries=1",
        ],
    )
    sim = start_simulation(config)
    sim.run()
    records = rounds_of(sim)
    below = [r for r in records if r["status"] != "aggregated" and r["completed"] > 0]
    assert below, "some unmasked sums fell below the quorum"
    # the server saw each of those noisy sums: every one is in the ledger
    charged = {e.attempt: e for e in sim.ledger.entries}
    for r in records:
        if r["completed"] > 0 and r.get("skip_reason") is None:
            event = charged[r["attempt"]].event
            assert event == sim.privacy.event(shares=r["completed"], cohort=r["dispatched"])
    assert len(sim.ledger.entries) == sum(r["completed"] > 0 for r in records)
