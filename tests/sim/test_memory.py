"""Memory is estimated from the settings before any work, and the batch size is capped by
the clients' data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.sim.memory import check_memory, effective_batch_size, estimate, parameter_count

SMALL = ["partition.num_clients=6", "server.clients_per_round=3", "rounds=2"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_huge_batch_size_is_capped_by_the_largest_client(tmp_path):
    """``client.batch_size = 10**9`` once built a [K, S, 10**9] schedule (tens of GB)."""
    sim = start_simulation(
        load_config(None, [f'output_dir="{tmp_path}"', *SMALL, "client.batch_size=1000000000"])
    )
    largest = int(sim.data.train.sizes().max())
    assert sim.server.plan.batch_size == largest
    sim.run()
    assert np.isfinite(sim.server.params).all()


def test_estimate_grows_with_settings_not_data():
    sizes = np.array([50, 80, 120])
    cfg = load_config(None, SMALL)
    base = sum(t.bytes for t in estimate(cfg, 64, 10, sizes, 300))
    huge_batch = load_config(None, [*SMALL, "client.batch_size=1000000000"])
    assert sum(t.bytes for t in estimate(huge_batch, 64, 10, sizes, 300)) == sum(
        t.bytes
        for t in estimate(load_config(None, [*SMALL, "client.batch_size=120"]), 64, 10, sizes, 300)
    )
    assert effective_batch_size(10**9, sizes) == 120 and effective_batch_size(16, sizes) == 16
    wide = load_config(None, [*SMALL, "model.hidden=[20000000]"])
    assert parameter_count(wide, 64, 10) == 64 * 20_000_000 + 20_000_000 + 20_000_000 * 10 + 10
    with pytest.raises(ConfigError, match=r"model.hidden = \[20000000\]"):
        check_memory(wide, 64, 10, sizes, 300)
    assert check_memory(cfg, 64, 10, sizes, 300) == base < 64 * 2**20


def test_parameter_count_matches_the_built_model():
    from fedloom.models import build_model

    for extra in (["model.hidden=[7, 5]"], ['model.kind="logistic"']):
        cfg = load_config(None, [*SMALL, *extra])
        model = build_model(cfg.model, 13, 4, 0)
        assert parameter_count(cfg, 13, 4) == sum(p.numel() for p in model.parameters())
