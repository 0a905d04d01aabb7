"""Populations and network conditions built from config."""

import json

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.sim.devices import uniform_population
from fedloom.sim.network import NetworkConditions, bandwidth_drop
from fedloom.sim.population import build_network, build_population

MB = 1_000_000


@pytest.mark.parametrize("kind", ["uniform", "tiered", "lognormal"])
def test_generated_populations(kind):
    cfg = load_config(None, [f'devices.kind="{kind}"', 'devices.availability="diurnal"'])
    pop = build_population(cfg.devices, 500, seed=0)
    again = build_population(cfg.devices, 500, seed=0)
    assert len(pop) == 500
    assert np.array_equal(pop.compute_ms_per_sample, again.compute_ms_per_sample)
    online = pop.availability.available(np.arange(500), 3 * 3600.0)
    assert 0 < online.sum() < 500  # diurnal: some online, some not


def test_uniform_defaults_and_compute_scale():
    cfg = load_config(None, ["devices.compute_scale=3"])
    pop = build_population(cfg.devices, 4, seed=0)
    assert np.all(pop.compute_ms_per_sample == 15.0)
    assert np.all(pop.up_kbps == 10_000) and np.all(pop.failure_prob == 0)


def test_trace_rows_are_reused_in_order(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        "".join(
            json.dumps({"client": 10 + i, "compute_ms_per_sample": 1 + i, "up_kbps": 100}) + "\n"
            for i in range(3)
        )
    )
    cfg = load_config(None, ['devices.kind="trace"', f'devices.trace="{path}"'])
    pop = build_population(cfg.devices, 7, seed=0)
    assert pop.compute_ms_per_sample.tolist() == [1, 2, 3, 1, 2, 3, 1]


def test_network_changes_from_config():
    cfg = load_config(
        None,
        [
            'network.changes=[{kind="drop", time=10, until=20, factor=0.5},'
            ' {kind="flap", clients=[1], time=0, period=10, down_for=5, count=2}]'
        ],
    )
    pop = uniform_population(3, up_kbps=8000, down_kbps=8000)
    net = build_network(cfg.network, pop)
    assert len(net.changes) == 2 + 4
    assert net.factor_at(np.array([0, 1]), 2.0, "up").tolist() == [1.0, 0.0]
    assert net.factor_at(np.array([0, 2]), 15.0, "down").tolist() == [0.5, 0.5]
    bad = load_config(None, ['network.changes=[{kind="drop", clients=[9]}]'])
    with pytest.raises(ConfigError, match=r"network.changes\[0\].clients: client 9"):
        build_network(bad.network, pop)


def test_transfers_with_different_start_times():
    pop = uniform_population(2, up_kbps=8000, down_kbps=8000)  # 1 MB takes 1 s
    net = NetworkConditions(pop, bandwidth_drop(5.0, None, 0.5))
    end = net.transfer_end(np.array([0, 1]), np.array([0.0, 10.0]), MB, "up")
    assert end.tolist() == pytest.approx([1.0, 12.0])
    straddle = net.transfer_end(np.array([0, 1]), np.array([4.5, 0.0]), MB, "up")
    assert straddle.tolist() == pytest.approx([6.0, 1.0])  # 0.5 MB at full rate, 0.5 MB at half
