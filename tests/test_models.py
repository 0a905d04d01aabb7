"""Model zoo: deterministic construction from a seed and the configured architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedloom.config import ModelConfig
from fedloom.errors import ConfigError
from fedloom.models import MLP, build_model
from fedloom.params import module_vector

torch.set_num_threads(1)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_same_seed_same_weights() -> None:
    config = ModelConfig(hidden=(8, 4))
    a = build_model(config, in_features=6, num_classes=3, seed=42)
    b = build_model(config, in_features=6, num_classes=3, seed=42)
    assert (module_vector(a) == module_vector(b)).all()


def test_same_seed_independent_of_global_rng() -> None:
    config = ModelConfig()
    torch.manual_seed(1)
    a = build_model(config, 5, 2, seed=7)
    torch.rand(100)
    b = build_model(config, 5, 2, seed=7)
    assert (module_vector(a) == module_vector(b)).all()


def test_different_seeds_differ() -> None:
    config = ModelConfig(hidden=(8,))
    vectors = [module_vector(build_model(config, 6, 3, seed=s)) for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not (vectors[i] == vectors[j]).all()


def test_global_rng_state_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state().clone()
    build_model(ModelConfig(hidden=(16, 8)), 10, 4, seed=0)
    build_model(ModelConfig(kind="logistic"), 10, 4, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    # the next draw is the one we would have got without building models
    drawn = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(drawn, torch.rand(3))


def test_logistic_is_a_single_linear_layer() -> None:
    model = build_model(ModelConfig(kind="logistic", hidden=(32, 16)), 7, 3, seed=0)
    layers = list(model.children())
    assert len(layers) == 1
    (linear,) = layers
    assert isinstance(linear, nn.Linear)
    assert (linear.in_features, linear.out_features) == (7, 3)
    assert sum(p.numel() for p in model.parameters()) == 7 * 3 + 3


def test_mlp_hidden_sizes() -> None:
    model = build_model(ModelConfig(kind="mlp", hidden=(16, 8)), 10, 4, seed=0)
    assert isinstance(model, MLP)
    layers = list(model.children())
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    shapes = [(m.in_features, m.out_features) for m in linears(model)]
    assert shapes == [(10, 16), (16, 8), (8, 4)]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    out = model(torch.zeros(5, 10))
    assert out.shape == (5, 4)


def test_default_mlp_has_one_hidden_layer() -> None:
    model = build_model(ModelConfig(), 3, 2, seed=0)
    assert [(m.in_features, m.out_features) for m in linears(model)] == [(3, 32), (32, 2)]


def test_mlp_without_hidden_is_logistic() -> None:
    mlp = MLP(4, (), 3)
    assert len(mlp) == 1 and isinstance(mlp[0], nn.Linear)
    assert (mlp[0].in_features, mlp[0].out_features) == (4, 3)


def test_weights_are_those_of_an_mlp_built_under_the_seed() -> None:
    """The seed draws the same initial weights as before models became tasks, so runs
    and checkpoints of earlier versions reproduce."""
    model = build_model(ModelConfig(hidden=(8,)), 6, 3, seed=11)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        expected = MLP(6, (8,), 3)
    assert (module_vector(model) == module_vector(expected)).all()


def test_image_models_need_image_shaped_data() -> None:
    with pytest.raises(ConfigError, match=r"model.kind = 'cnn' needs images \[C, H, W\]"):
        build_model(ModelConfig(kind="cnn"), 64, 10, seed=0)
