"""A LeNet-style CNN for small images ``[n, C, H, W]`` (MNIST/FEMNIST 28x28, CIFAR 32x32,
digits 8x8).

Each stage is a padded 3x3 convolution, an optional normalization, ReLU and a 2x2 max
pool, so two stages fit an 8x8 image; an MLP head maps the pooled features to the
outputs. ``norm="group"`` is GroupNorm: stateless, so a cohort trains under
``torch.func.vmap`` and per-client statistics never mix. ``norm="batch"`` is BatchNorm
with running statistics (buffers), which the vectorized executor declines.

References: LeCun et al., "Gradient-based learning applied to document recognition"
(1998); Wu and He, "Group Normalization" (ECCV 2018); Hsieh et al., "The Non-IID Data
Quagmire of Decentralized Machine Learning" (ICML 2020) on GroupNorm for non-IID clients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from fedloom.models.mlp import MLP

Norm = Literal["none", "group", "batch"]
NORMS: tuple[Norm, ...] = ("none", "group", "batch")
MAX_GROUPS = 8  # GroupNorm groups: the largest divisor of the channels up to this


def _norm(kind: Norm, channels: int) -> list[nn.Module]:
    if kind == "group":
        return [nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels)]
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    return []


class LeNet(nn.Module):
    """Conv stages (``channels``, each halving H and W) then an MLP head of ``hidden``
    widths; ``in_shape`` is one example's ``(C, H, W)``, the output ``[n, num_outputs]``."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (16, 32),
        hidden: Sequence[int] = (64,),
        norm: Norm = "none",
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        if norm not in NORMS:
            raise ValueError(f"norm = {norm!r}: expected one of {', '.join(NORMS)}")
        if min(h, w) >> len(channels) < 1:
            raise ValueError(f"a {h}x{w} image is too small for {len(channels)} pooling stages")
        layers: list[nn.Module] = []
        for out in channels:
            # a normalization's shift makes the convolution's bias redundant
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=norm == "none"))
            layers += _norm(norm, out)
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.head = MLP((c, h, w), hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
