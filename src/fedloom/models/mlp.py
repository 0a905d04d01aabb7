"""The fully connected network: tabular features, or any example shape flattened."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """Fully connected ReLU network; no hidden layers gives multinomial logistic regression.

    ``in_features`` is a width or one example's shape: a shape of several dims (an image
    ``(C, H, W)``) is flattened in ``forward``. The layers, and so the parameter names
    (``0.weight``, ``2.weight``...), are those of the flat MLP of ``prod(shape)``
    features, so a checkpoint loads into either.
    """

    def __init__(
        self, in_features: int | Sequence[int], hidden: Sequence[int], num_classes: int
    ) -> None:
        shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
        layers: list[nn.Module] = []
        width = math.prod(shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.sample_dims = len(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sample_dims > 1:
            x = x.flatten(-self.sample_dims)
        return super().forward(x)
