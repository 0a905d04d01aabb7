"""Small classifiers suited to edge devices, built deterministically from a seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from fedloom.config import ModelConfig


class MLP(nn.Sequential):
    """Fully connected ReLU network; no hidden layers gives multinomial logistic regression."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def build_model(config: ModelConfig, in_features: int, num_classes: int, seed: int) -> nn.Module:
    """The configured model with weights drawn from ``seed`` (global RNG left untouched)."""
    hidden = () if config.kind == "logistic" else config.hidden
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(in_features, hidden, num_classes)
