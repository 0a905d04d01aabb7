"""The memory estimate of any built model: parameters counted from it, activations
measured by one probing forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.sim.memory import activation_bytes, check_memory_for, estimate_for

SMALL = ["partition.num_clients=6", "server.clients_per_round=3", "rounds=2"]


def cnn(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(channels * 8 * 8, 4),
    )  # fmt: skip


def test_activation_bytes_counts_every_leaf_output_once_per_call():
    model = cnn(5)
    x = torch.zeros(1, 1, 8, 8)
    # conv and relu outputs [5, 8, 8], the flattened copy, the logits
    assert activation_bytes(model, x) == 4 * (3 * 5 * 64 + 4)
    tokens = nn.Sequential(nn.Embedding(10, 3), nn.Linear(3, 10))
    assert activation_bytes(tokens, torch.zeros(1, 6, dtype=torch.int64)) == 4 * 6 * (3 + 10)


def test_activation_probe_leaves_the_model_and_rng_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 4)
    rng = torch.random.get_rng_state()
    activation_bytes(model, x)
    assert model.training and torch.equal(rng, torch.random.get_rng_state())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(not h for m in model.modules() for h in (m._forward_hooks,))


def test_estimate_for_grows_with_the_model_and_refuses_what_cannot_fit():
    sizes = np.array([50, 80, 120])
    x = np.zeros((3, 1, 8, 8), np.float32)
    cfg = load_config(None, [*SMALL, "client.batch_size=64"])
    small = estimate_for(cfg, cnn(2), x, sizes, 300)
    wide = estimate_for(cfg, cnn(64), x, sizes, 300)
    d = sum(p.numel() for p in cnn(64).parameters())
    assert f"{d:,} parameters" in wide[0].detail
    by = {t.setting: t.bytes for t in small}
    wide_by = {t.setting: t.bytes for t in wide}
    assert wide_by["client.batch_size = 64"] > 20 * by["client.batch_size = 64"]
    assert wide_by["evaluation.batch_size = 1024"] > 20 * by["evaluation.batch_size = 1024"]
    total = sum(wide_by.values())
    assert check_memory_for(cfg, cnn(64), x, sizes, 300) == total
    tight = load_config(None, [*SMALL, "client.batch_size=64", "simulation.memory_limit_mb=1"])
    with pytest.raises(ConfigError, match="more than simulation.memory_limit_mb"):
        check_memory_for(tight, cnn(64), x, sizes, 300)
