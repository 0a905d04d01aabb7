"""A MobileNetV2-style network for small images ``[n, C, H, W]`` (digits 8x8,
MNIST/FEMNIST 28x28, CIFAR 32x32).

Inverted residual blocks (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018): a 1x1 expansion convolution, a 3x3 depthwise convolution
(``groups`` = channels), a linear 1x1 projection (no activation: ReLU6 on a narrow
bottleneck loses information), and a residual connection when the block keeps stride 1
and its channels. A width multiplier scales every layer's channels, rounded to a multiple
of 8 as in the paper's reference code (never below 8, never more than 10% under the
scaled width).

The configuration is shrunk for these images: the paper's 17 blocks up to 320 channels,
stride-2 stem and 1280-wide head are sized for 224x224 ImageNet, and its five halvings
would leave nothing of an 8x8 digit. Here the stem keeps the resolution, four stages
(7 blocks) go up to 64 channels with a 256-wide head, and a stage downsamples only while H
and W are >= 4, so a digit ends at 2x2 and a 32x32 image at 4x4. There is no dropout
(random numbers in training would keep the cohort off ``torch.func.vmap``).

Convolutions start from He et al.'s fan-in initialization ("Delving Deep into
Rectifiers", ICCV 2015; unit gain before the linear projections): torch's default keeps
about a sixth of the signal's variance per ReLU layer, so without normalization the
~20 convolutions would start from a nearly constant output and barely train.

``norm`` is as in ``cnn.py``: ``"none"`` (convolutions with biases) and ``"group"``
(GroupNorm, stateless) train a cohort under ``torch.func.vmap``; ``"batch"`` (BatchNorm,
the paper's choice) has running statistics (buffers) and trains client by client.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedloom.models.cnn import NORMS, Norm, _norm

# (expansion t, output channels c, blocks n, stride s) of each stage, the paper's Table 2
# cut to four stages for small images
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
)
STEM = 16
HEAD = 256
DIVISOR = 8
MIN_SIZE = 4  # a stage downsamples only while H and W are at least this
MAX_WIDTH = 4.0


def make_divisible(value: float, divisor: int = DIVISOR) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``),
    rounded up once more if that lost over 10% (the paper's ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv(
    c_in: int, c_out: int, kernel: int, stride: int, groups: int, norm: Norm, act: bool
) -> list[nn.Module]:
    # a normalization's shift makes the convolution's bias redundant
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=norm == "none")
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu" if act else "linear")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return [conv, *_norm(norm, c_out), *([nn.ReLU6()] if act else [])]


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped when ``expansion`` is 1), depthwise 3x3 at ``stride``,
    project linearly (1x1); the input is added back when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, norm: Norm) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers = _conv(c_in, hidden, 1, 1, 1, norm, act=True) if expansion != 1 else []
        layers += _conv(hidden, hidden, 3, stride, hidden, norm, act=True)
        layers += _conv(hidden, c_out, 1, 1, 1, norm, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """Stem, inverted residual stages, 1x1 head, global average pool and a linear
    classifier; ``in_shape`` is one example's ``(C, H, W)``, the output
    ``[n, num_outputs]``. ``width`` (0 < width <= 4) scales every layer's channels; the
    head widens only for ``width`` > 1, as in the paper."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        width: float = 1.0,
        norm: Norm = "none",
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        if norm not in NORMS:
            raise ValueError(f"norm = {norm!r}: expected one of {', '.join(NORMS)}")
        if not 0 < width <= MAX_WIDTH:
            raise ValueError(f"width = {width!r}: expected 0 < width <= {MAX_WIDTH}")
        if min(h, w) < MIN_SIZE:
            raise ValueError(f"a {h}x{w} image is too small: H and W must be >= {MIN_SIZE}")
        out = make_divisible(STEM * width)
        layers: list[nn.Module] = _conv(c, out, 3, 1, 1, norm, act=True)
        c = out
        for expansion, channels, blocks, stride in STAGES:
            out = make_divisible(channels * width)
            for i in range(blocks):
                s = stride if i == 0 and min(h, w) >= MIN_SIZE else 1
                layers.append(InvertedResidual(c, out, s, expansion, norm))
                c, h, w = out, (h - 1) // s + 1, (w - 1) // s + 1
        head = make_divisible(HEAD * max(1.0, width))
        layers += _conv(c, head, 1, 1, 1, norm, act=True)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(head, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(-2, -1)))
