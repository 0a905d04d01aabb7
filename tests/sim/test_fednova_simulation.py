"""FedNova in the simulator: clients with unequal data train unequal numbers of local
steps; the run's records and registry show the rounds it reduced, equal steps give
FedAvg's model bit for bit, unequal steps do not, asynchronous buffers reduce with it,
and a resumed run equals the uninterrupted one."""

from __future__ import annotations

import numpy as np

from fedloom import metrics
from fedloom.aggregation import FedNova
from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config
from fedloom.runs import RunDirectory


def config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=4",
            "partition.num_clients=6",
            'partition.method="dirichlet"',  # unequal client sizes: unequal steps per epoch
            "server.clients_per_round=6",
            'aggregation.rule="fednova"',
            "client.local_epochs=1",
            "client.batch_size=16",
            "client.momentum=0.5",
            'simulation.executor="sequential"',
            "evaluation.every=2",
            "checkpoint.every=2",
            *extra,
        ],
    )


def rounds(run_dir) -> list[dict]:
    return [r for r in run_dir.records() if r["event"] == "round"]


def test_a_fednova_run_reduces_rounds_of_unequal_local_steps(tmp_path) -> None:
    sim = start_simulation(config(tmp_path))
    assert isinstance(sim.server.reduction.reducer, FedNova)
    assert sim.server.reduction.reducer.momentum == 0.5
    sim.run()
    records = rounds(sim.run_dir)
    metrics.validate(records)
    assert [r["status"] for r in records] == ["aggregated"] * 4
    assert all(r["completed"] == 6 and r["update_norm"] > 0 for r in records)
    start = next(r for r in sim.run_dir.records() if r["event"] == "start")
    assert records[-1]["loss"] < start["loss"]
    steps = {h["steps"] for c in range(6) for h in sim.registry.history(c) if h["steps"]}
    assert len(steps) > 1  # the clients' local work differed


def test_fednova_is_fedavg_when_steps_are_equal_and_not_otherwise(tmp_path) -> None:
    def params(name: str, *extra: str) -> np.ndarray:
        sim = start_simulation(config(tmp_path / name, "rounds=2", *extra))
        sim.run()
        return sim.server.params

    equal = "client.local_steps=3"
    assert np.array_equal(
        params("nova-equal", equal), params("mean-equal", equal, 'aggregation.rule="mean"')
    )
    assert not np.allclose(params("nova"), params("mean", 'aggregation.rule="mean"'))


def test_fedbuff_buffers_reduce_with_fednova(tmp_path) -> None:
    sim = start_simulation(
        config(tmp_path, 'asynchronous.mode="fedbuff"', "asynchronous.buffer_size=3")
    )
    sim.run()
    records = rounds(sim.run_dir)
    assert [r["status"] for r in records] == ["aggregated"] * 4
    assert all(r["completed"] == 3 for r in records)


def test_a_resumed_fednova_run_equals_the_uninterrupted_one(tmp_path) -> None:
    full = start_simulation(config(tmp_path / "a"))
    full.run()
    crashed = start_simulation(config(tmp_path / "b"))
    for _ in range(3):  # checkpoint after round 2; round 3 is lost in the "crash"
        crashed.step()
    path = crashed.run_dir.path
    del crashed
    resumed = resume_simulation(path)
    assert resumed.server.round == 2
    resumed.run()
    assert np.array_equal(resumed.server.params, full.server.params)
    ours, theirs = rounds(RunDirectory(path)), rounds(full.run_dir)
    assert [r["update_norm"] for r in ours[-2:]] == [r["update_norm"] for r in theirs[-2:]]
