"""Whole simulated rounds whose updates stay on the training device (CPU tensors here,
``simulation.server_chain = "device"``): the same model and records as the host path,
the fallback named in the records, and no client's delta copied to the host."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.server import device_chain
from fedloom.sim import Simulation
from fedloom.sim.vectorized import VectorizedExecutor


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def run(tmp_path, chain: str, *extra: str) -> Simulation:
    config = load_config(
        None,
        [
            f'output_dir="{tmp_path / chain}"',
            "rounds=2",
            "partition.num_clients=24",
            "server.clients_per_round=8",
            "client.local_epochs=1",
            'data.source="synthetic"',
            'simulation.executor="vectorized"',
            f'simulation.server_chain="{chain}"',
            "checkpoint.every=0",
            *extra,
        ],
    )
    sim = start_simulation(config)
    sim.run()
    return sim


def rounds(sim: Simulation) -> list[dict]:
    return [r for r in sim.run_dir.records() if r["event"] == "round"]


KEYS = ("status", "completed", "num_examples", "rejected", "bytes_up", "epsilon")


def assert_same_run(host: Simulation, dev: Simulation) -> None:
    np.testing.assert_allclose(dev.server.params, host.server.params, rtol=1e-5, atol=1e-6)
    for h, d in zip(rounds(host), rounds(dev), strict=True):
        assert {k: d.get(k) for k in KEYS} == {k: h.get(k) for k in KEYS}
        assert d["train_loss"] == pytest.approx(h["train_loss"], rel=1e-6)
        assert d["update_norm"] == pytest.approx(h["update_norm"], rel=1e-5)
        assert d["local_loss"] == pytest.approx(h["local_loss"], rel=1e-6)
        assert "server_chain" not in h


@pytest.mark.parametrize(
    "extra",
    [
        ('server.optimizer.name="fedadam"',),
        ('privacy.mode="central"', "privacy.noise_multiplier=1.0", 'privacy.accountant="rdp"'),
    ],
    ids=["fedadam", "central-dp"],
)
def test_a_device_round_gives_the_host_model_and_records(tmp_path, monkeypatch, extra) -> None:
    host = run(tmp_path, "host", *extra)
    copied: list[tuple[int, ...]] = []
    real = device_chain.to_host

    def spy(t: torch.Tensor) -> np.ndarray:
        copied.append(tuple(t.shape))
        return real(t)

    def refuse(*args, **kwargs):
        raise AssertionError("train_cohort copies every delta to the host")

    monkeypatch.setattr(device_chain, "to_host", spy)
    monkeypatch.setattr(VectorizedExecutor, "train_cohort", refuse)
    dev = run(tmp_path, "device", *extra)
    assert_same_run(host, dev)
    assert {r["server_chain"] for r in rounds(dev)} == {"cpu"}
    d = dev.server.dim
    assert copied and all(len(s) == 1 or s[-1] != d for s in copied), copied  # no [K, d]


def test_a_stage_without_a_device_form_is_named_in_the_records(tmp_path) -> None:
    extra = ('aggregation.rule="median"',)
    host, dev = run(tmp_path, "host", *extra), run(tmp_path, "device", *extra)
    assert_same_run(host, dev)
    notes = {r["server_chain"] for r in rounds(dev)}
    assert notes == {"host: reducer CoordinateMedian has no device implementation"}


def test_a_client_side_host_stage_keeps_the_whole_round_on_the_host(tmp_path) -> None:
    extra = ('privacy.mode="local"', "privacy.local_epsilon=5", "privacy.delta=1e-5")
    dev = run(tmp_path, "device", *extra)
    notes = {r["server_chain"] for r in rounds(dev)}
    assert notes == {"host: local DP noises each upload on the host"}


def test_auto_keeps_a_cpu_run_on_the_host(tmp_path) -> None:
    sim = run(tmp_path, "auto")
    assert all("server_chain" not in r for r in rounds(sim))


def test_a_resumed_device_run_equals_the_uninterrupted_one(tmp_path) -> None:
    from fedloom.assemble import resume_simulation

    extra = (
        "rounds=3",
        "checkpoint.every=1",
        'privacy.mode="central"',
        "privacy.noise_multiplier=1.0",
    )
    full = run(tmp_path / "a", "device", *extra)
    config = load_config(
        None,
        [
            f'output_dir="{tmp_path / "b"}"',
            "partition.num_clients=24",
            "server.clients_per_round=8",
            "client.local_epochs=1",
            'data.source="synthetic"',
            'simulation.executor="vectorized"',
            'simulation.server_chain="device"',
            *extra,
        ],
    )
    crashed = start_simulation(config)
    crashed.step()
    crashed.step()
    resumed = resume_simulation(crashed.run_dir.path)
    resumed.run()
    assert resumed.server.round == full.server.round == 3
    np.testing.assert_array_equal(resumed.server.params, full.server.params)
