"""Central DP inside simulated runs: accounting, budgets, resume."""

import json

import numpy as np
import pytest
import torch

from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.privacy import PrivacyBudgetExceeded, epsilon


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def dp_config(tmp_path, *extra):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=6",
            "partition.num_clients=50",
            "server.clients_per_round=10",
            'privacy.mode="central"',
            'privacy.accountant="rdp"',  # fast enough for tests; pld is the default
            "checkpoint.every=2",
            *extra,
        ],
    )


def test_dp_run_records_epsilon_and_ledger(tmp_path):
    sim = start_simulation(dp_config(tmp_path, "privacy.noise_multiplier=1.0"))
    sim.run()
    rounds = [r for r in sim.run_dir.records() if r["event"] == "round"]
    eps = [r["epsilon"] for r in rounds]
    assert eps == sorted(eps) and eps[0] > 0
    delta = 1 / 50**1.1
    assert eps[-1] == pytest.approx(epsilon(1.0, 10 / 50, 6, delta, accountant="rdp"), rel=1e-6)
    ledger = json.loads((sim.run_dir.path / "privacy.json").read_text())
    assert [e["round"] for e in ledger["events"]] == list(range(1, 7))
    assert ledger["delta"] == pytest.approx(delta)


def test_target_epsilon_is_met(tmp_path):
    sim = start_simulation(dp_config(tmp_path, "privacy.target_epsilon=3"))
    sim.run()
    final = [r for r in sim.run_dir.records() if r["event"] == "round"][-1]["epsilon"]
    assert 2.9 < final <= 3.0


def test_plan_beyond_budget_is_refused_before_any_work(tmp_path):
    cfg = dp_config(tmp_path, "privacy.noise_multiplier=0.5", "privacy.budget_epsilon=1")
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        start_simulation(cfg)
    assert not any(tmp_path.iterdir()), "no run directory is left behind"


def test_run_stops_when_the_budget_is_reached(tmp_path):
    cfg = dp_config(
        tmp_path,
        "rounds=50",
        "privacy.noise_multiplier=0.8",
        "privacy.budget_epsilon=4",
        'privacy.budget_policy="stop"',
    )
    sim = start_simulation(cfg)
    summary = sim.run()
    assert summary.stop_reason == "privacy_budget" and summary.rounds < 50
    spent = json.loads((sim.run_dir.path / "privacy.json").read_text())["epsilon"]
    assert spent <= 4
    assert resume_simulation(sim.run_dir.path).finished


def test_resume_with_adaptive_clipping_equals_uninterrupted(tmp_path):
    extra = (
        "privacy.noise_multiplier=1.0",
        "privacy.adaptive_clipping=true",
        "privacy.clip_norm=0.1",
        "privacy.count_stddev=2",
        'simulation.executor="sequential"',  # one executor for both runs
    )
    full = start_simulation(dp_config(tmp_path / "a", *extra))
    full.run()
    clips = [r["clip_norm"] for r in full.run_dir.records() if r["event"] == "round"]
    assert len(set(clips)) > 1, "the clip norm adapts"
    crashed = start_simulation(dp_config(tmp_path / "b", *extra))
    for _ in range(3):
        crashed.step()
    resumed = resume_simulation(crashed.run_dir.path)
    resumed.run()
    assert np.array_equal(resumed.server.params, full.server.params)
    a = json.loads((full.run_dir.path / "privacy.json").read_text())
    b = json.loads((resumed.run_dir.path / "privacy.json").read_text())
    assert a["events"] == b["events"]


def test_infeasible_noise_split_fails_before_training(tmp_path):
    cfg = dp_config(tmp_path, "privacy.noise_multiplier=1.0", "privacy.adaptive_clipping=true")
    with pytest.raises(ConfigError, match="privacy.count_stddev"):
        start_simulation(cfg)


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        (["privacy.target_epsilon=-1"], "privacy.target_epsilon"),
        (["privacy.target_epsilon=2", "privacy.delta=1.5"], "privacy.delta"),
        (["privacy.target_epsilon=2", "privacy.delta=0"], "privacy.delta"),
        (["privacy.noise_multiplier=0"], "noise_multiplier = 0"),
        ([], "exactly one of"),
    ],
)
def test_bad_privacy_settings(settings, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, ['privacy.mode="central"', *settings])


def test_local_dp_noises_every_upload(tmp_path):
    cfg = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=4",
            "partition.num_clients=50",
            "server.clients_per_round=10",
            'privacy.mode="local"',
            "privacy.local_epsilon=8",
            "privacy.clip_norm=0.5",
            'privacy.accountant="rdp"',
        ],
    )
    sim = start_simulation(cfg)
    seen = []
    receive = sim.server.receive

    def spy(update):
        seen.append(np.linalg.norm(update.delta))
        receive(update)

    sim.server.receive = spy
    sim.run()
    # clipped to 0.5, then noise of sigma ~ analytic_gaussian_sigma(8, delta, 1.0) per coordinate
    assert min(seen) > 0.5 * 3, "noise dominates the clipped update in 2410 dimensions"
    eps = [r["epsilon"] for r in sim.run_dir.records() if r["event"] == "round"]
    assert eps == sorted(eps) and eps[-1] > 0


@pytest.mark.parametrize("z", [0.05, 2.0])
def test_canary_audit_bound_is_valid_and_sensitive(tmp_path, z):
    cfg = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=30",
            "partition.num_clients=100",
            "server.clients_per_round=50",
            "evaluation.every=30",
            'privacy.mode="central"',
            f"privacy.noise_multiplier={z}",
            "privacy.audit_canaries=400",
            "client.lr=0.001",  # small training steps: the canaries dominate the model change
            'privacy.accountant="rdp"',
        ],
    )
    sim = start_simulation(cfg)
    sim.run()
    found = next(r for r in sim.run_dir.records() if r["event"] == "audit")
    assert found["epsilon_lower"] <= found["accountant_epsilon"]
    if z < 1:  # almost no noise: the canaries are memorized and the audit sees it
        assert found["epsilon_lower"] > 1.0


def test_dp_sgd_run_reports_its_planned_sample_level_epsilon(tmp_path):
    cfg = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=3",
            "partition.num_clients=20",
            "server.clients_per_round=5",
            "client.dp_sgd_clip_norm=1.0",
            "client.dp_sgd_noise_multiplier=1.1",
        ],
    )
    sim = start_simulation(cfg)
    sim.run()
    start = sim.run_dir.records()[0]
    sizes = sim.data.train.sizes()
    n = int(sizes.min())
    steps = 5 * -(-n // 32) * 3
    expected = epsilon(1.1, min(1.0, 32 / n), steps, 1 / sizes.sum() ** 1.1, accountant="rdp")
    assert start["dp_sgd_epsilon"] == pytest.approx(expected)


def test_local_laplace_runs_and_is_accounted_with_pld(tmp_path):
    cfg = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=2",
            "partition.num_clients=50",
            "server.clients_per_round=10",
            'privacy.mode="local"',
            'privacy.local_mechanism="laplace"',
            "privacy.local_epsilon=10",
        ],
    )
    sim = start_simulation(cfg)
    sim.run()
    ledger = json.loads((sim.run_dir.path / "privacy.json").read_text())
    assert {e["kind"] for e in ledger["events"]} == {"laplace"}
    assert ledger["events"][0]["noise_multiplier"] == pytest.approx(2 / 10)
    assert 0 < ledger["epsilon"] < float("inf")
    with pytest.raises(ConfigError, match="accountant"):
        load_config(
            None,
            [
                'privacy.mode="local"',
                'privacy.local_mechanism="laplace"',
                "privacy.local_epsilon=1",
                'privacy.accountant="rdp"',
            ],
        )
