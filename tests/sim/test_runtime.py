"""End-to-end simulated runs: learning, records, checkpoints, resume."""

import json

import numpy as np
import pytest
import torch

from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config
from fedloom.errors import CheckpointError
from fedloom.runs import RunDirectory


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=8",
            "partition.num_clients=20",
            "server.clients_per_round=5",
            "checkpoint.every=3",
            *extra,
        ],
    )


def test_default_experiment_learns(tmp_path):
    sim = start_simulation(config(tmp_path, "rounds=15"))
    summary = sim.run()
    assert summary.accuracy > 0.8  # chance is 0.1
    assert summary.stop_reason == "max_rounds" and summary.rounds == 15
    records = sim.run_dir.records()
    assert [r["round"] for r in records if r["event"] == "round"] == list(range(1, 16))
    start = records[0]
    assert start["event"] == "start" and start["accuracy"] < summary.accuracy
    assert records[-1]["event"] == "stop"
    assert all(r["completed"] == 5 and r["rejected"] == 0 for r in records if r["event"] == "round")


def test_run_directory_contents(tmp_path):
    cfg = config(tmp_path, "rounds=7")
    sim = start_simulation(cfg)
    sim.run()
    run = sim.run_dir
    assert run.path == tmp_path / cfg.name
    assert run.load_config() == cfg
    # every 3 rounds plus the final round, newest `keep` (3) kept
    assert [p.name for p in run.checkpoints()] == [
        "round-000003.npz",
        "round-000006.npz",
        "round-000007.npz",
    ]
    state = run.read_checkpoint(run.checkpoints()[-1])
    assert np.array_equal(state["arrays"]["params"], sim.server.params)
    assert state["meta"]["round"] == 7
    assert not list(run.path.rglob("*.tmp"))
    # a second run with the same name gets its own directory
    assert start_simulation(cfg).run_dir.path == tmp_path / f"{cfg.name}-2"


def test_resume_equals_uninterrupted(tmp_path):
    # one executor for both runs: "auto" chooses by timing, and the executors agree to
    # float rounding, not bit for bit
    extra = ('server.optimizer.name="fedadam"', 'simulation.executor="sequential"')
    full = start_simulation(config(tmp_path / "a", *extra))
    full.run()

    crashed = start_simulation(config(tmp_path / "b", *extra))
    for _ in range(5):  # checkpoint at round 3; rounds 4-5 are lost in the "crash"
        crashed.step()
    path = crashed.run_dir.path
    del crashed

    resumed = resume_simulation(path)
    assert resumed.server.round == 3
    resumed.run()
    assert np.array_equal(resumed.server.params, full.server.params)
    assert resumed.server.opt_state.keys() == full.server.opt_state.keys()
    for key in full.server.opt_state:
        assert np.array_equal(resumed.server.opt_state[key], full.server.opt_state[key])

    records = RunDirectory(path).records()
    rounds = [r["round"] for r in records if r["event"] == "round"]
    assert rounds == list(range(1, 9)), "each round recorded exactly once"
    full_acc = [r["accuracy"] for r in full.run_dir.records() if r["event"] == "round"]
    assert [r["accuracy"] for r in records if r["event"] == "round"] == full_acc
    assert [r["event"] for r in records].count("resume") == 1


def test_resume_finished_run_is_a_no_op(tmp_path):
    sim = start_simulation(config(tmp_path, "rounds=3"))
    sim.run()
    again = resume_simulation(sim.run_dir.path)
    assert again.finished
    summary = again.run()
    assert summary.rounds == 3
    assert np.array_equal(again.server.params, sim.server.params)


def test_resume_skips_a_damaged_checkpoint(tmp_path):
    sim = start_simulation(config(tmp_path, "rounds=7"))
    sim.run()
    sim.run_dir.checkpoints()[-1].write_bytes(b"not a zip file")
    resumed = resume_simulation(sim.run_dir.path)
    assert resumed.server.round == 6
    resumed.run()
    assert np.array_equal(resumed.server.params, sim.server.params)


def test_resume_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        resume_simulation(tmp_path)
    sim = start_simulation(config(tmp_path))
    assert [p.name for p in sim.run_dir.checkpoints()] == ["round-000000.npz"]
    assert resume_simulation(sim.run_dir.path).server.round == 0
    sim.step()
    for path in sim.run_dir.checkpoints():
        path.unlink()
    with pytest.raises(CheckpointError, match="recorded rounds up to 1 but has no checkpoint"):
        resume_simulation(sim.run_dir.path)


def test_early_stopping_records_reason(tmp_path):
    sim = start_simulation(config(tmp_path, "rounds=40", "stopping.target=0.5"))
    summary = sim.run()
    assert summary.stop_reason == "target_reached"
    assert summary.rounds < 40 and summary.accuracy >= 0.5
    stop = [r for r in sim.run_dir.records() if r["event"] == "stop"]
    assert len(stop) == 1 and "0.5" in stop[0]["detail"]
    # the final checkpoint carries the decision, so a resume does not train on
    state = sim.run_dir.read_checkpoint(sim.run_dir.checkpoints()[-1])
    assert state["meta"]["stopped"]["reason"] == "target_reached"
    assert resume_simulation(sim.run_dir.path).finished


def test_federated_evaluation_on_client_holdouts(tmp_path):
    sim = start_simulation(
        config(tmp_path, "rounds=4", "data.client_holdout=0.3", "evaluation.federated_every=2")
    )
    sim.run()
    rounds = {r["round"]: r for r in sim.run_dir.records() if r["event"] == "round"}
    assert "fed_accuracy" in rounds[2] and "fed_accuracy" in rounds[4]
    assert "fed_accuracy" not in rounds[1]
    assert 0 <= rounds[4]["fed_accuracy_p10"] <= rounds[4]["fed_accuracy"] <= 1
    assert rounds[4]["fed_clients"] > 0


def test_metrics_are_json_lines(tmp_path):
    sim = start_simulation(config(tmp_path, "rounds=2"))
    sim.run()
    for line in sim.run_dir.metrics_path.read_text().splitlines():
        assert isinstance(json.loads(line), dict)


def test_users_own_csv_with_natural_partition(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=(n, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    site = rng.integers(0, 6, size=n)
    rows = ["f0,f1,f2,f3,f4,label,site"]
    rows += [
        ",".join(f"{v:.5f}" for v in x[i]) + f",{'yes' if y[i] else 'no'},s{site[i]}"
        for i in range(n)
    ]
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(rows) + "\n")
    cfg = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=10",
            'data.source="file"',
            f'data.path="{path}"',
            'data.label_column="label"',
            'data.group_column="site"',
            'partition.method="natural"',
            "partition.num_clients=0",
            "server.clients_per_round=3",
        ],
    )
    sim = start_simulation(cfg)
    assert sim.data.train.num_clients == 6 and sim.data.num_features == 5
    assert sim.run().accuracy > 0.85
