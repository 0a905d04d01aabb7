"""Gradient inversion on a case whose answer is known: one 8x8 image's gradient on a small
MLP gives the image back (PSNR above 25 dB within 150 steps), the label comes from the last
layer's bias gradient, and an update drowned in noise gives nothing back (PSNR below 12 dB).
Also PSNR, SSIM and the relative error on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedloom.errors import ConfigError
from fedloom.models.mlp import MLP
from fedloom.privacy.attacks import (
    InversionSpec,
    example_gradient,
    gradient_from_delta,
    infer_label,
    invert_gradient,
    psnr,
    relative_error,
    ssim,
)

torch.set_num_threads(1)
SPEC = InversionSpec(steps=150)
PSNR_RECOVERED = 25.0
PSNR_FAILED = 12.0


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP and one hand-drawn 8x8 "7" in [0, 1] (label 7), digits-like."""
    x = torch.zeros(8, 8)
    x[1, 1:7] = 1.0
    x[2:7, 5] = torch.linspace(1.0, 0.5, 5)
    x[4, 3:7] = 0.6
    torch.manual_seed(0)
    return MLP((1, 8, 8), [32], 10), x.reshape(1, 1, 8, 8), torch.tensor([7])


def test_one_image_is_rebuilt_from_its_one_step_delta(setup) -> None:
    model, x, y = setup
    delta = [-0.1 * g for g in example_gradient(model, x, y)]
    update = gradient_from_delta(delta, lr=0.1)
    assert infer_label(update) == int(y)
    found = invert_gradient(model, update, (1, 8, 8), SPEC)
    assert found.label == int(y) and found.distance < 1e-2
    assert psnr(found.x, x) > PSNR_RECOVERED and ssim(found.x, x) > 0.9


def test_a_heavily_noised_update_gives_nothing_back(setup) -> None:
    model, x, y = setup
    gen = torch.Generator().manual_seed(1)
    grads = example_gradient(model, x, y)
    scale = math.sqrt(sum(float((g * g).sum()) for g in grads))
    noisy = [
        g + 10 * scale * torch.randn(g.shape, generator=gen) / math.sqrt(g.numel()) for g in grads
    ]
    found = invert_gradient(model, noisy, (1, 8, 8), SPEC, label=int(y))
    assert psnr(found.x, x) < PSNR_FAILED


def test_image_and_feature_scores_on_hand_made_inputs() -> None:
    a = torch.zeros(1, 8, 8)
    b = torch.full((1, 8, 8), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(b, b) == math.inf
    assert ssim(b, b) == pytest.approx(1.0)
    checker = (torch.arange(64).reshape(8, 8) % 2).float()
    assert ssim(checker, 1 - checker) < 0
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])) == pytest.approx(0.75)


def test_bad_inputs_are_refused(setup) -> None:
    model, _, _ = setup
    with pytest.raises(ConfigError, match="one tensor per model parameter"):
        invert_gradient(model, [torch.zeros(3)], (1, 8, 8))
    with pytest.raises(ConfigError, match="inversion.steps"):
        InversionSpec(steps=0)
    with pytest.raises(ConfigError, match="lr"):
        gradient_from_delta([torch.zeros(2)], lr=0.0)
    with pytest.raises(ConfigError, match="smaller than"):
        ssim(torch.zeros(4, 4), torch.zeros(4, 4))


def test_tabular_features_are_rebuilt_without_a_tv_prior() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(12, 16), nn.Sigmoid(), nn.Linear(16, 3))
    x = torch.rand(1, 12)
    y = torch.tensor([1])
    spec = InversionSpec(steps=150, tv=0.0)
    found = invert_gradient(model, example_gradient(model, x, y), (12,), spec)
    assert found.label == 1 and relative_error(found.x, x) < 0.05
