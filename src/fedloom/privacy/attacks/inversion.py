"""Gradient inversion: rebuild a client's training example from one update it sent.

An honest-but-curious server that sees one client's gradient (or a one-step delta and its
learning rate) can search for an input whose gradient matches it. The attack here is
Inverting Gradients (Geiping, Bauermeister, Droge & Moeller, NeurIPS 2020): minimise
``1 - cos(grad(x'), g)`` summed over all parameters, plus a total-variation prior for images,
with Adam on the dummy input ``x'`` kept in the data range. The label is not optimised: as in
iDLG (Zhao, Mopuri & Bilen, 2020), for one example under cross-entropy the last layer's bias
gradient ``softmax - onehot`` is negative only at the true class. DLG (Zhu, Liu & Han,
"Deep Leakage from Gradients", NeurIPS 2019) is the same search with a squared distance and
a learned label.

Success is measured against the true example: PSNR and SSIM (Wang, Bovik, Sheikh &
Simoncelli, IEEE TIP 2004; gaussian window, since digit images are only 8x8) for images,
relative L2 error for tabular features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedloom.errors import ConfigError

SSIM_WINDOW = 5
SSIM_SIGMA = 1.0
"""The gaussian window of :func:`ssim` (5x5, sigma 1.0: the 11x11 window of Wang et al. does
not fit an 8x8 image)."""


@dataclass(frozen=True)
class InversionSpec:
    """The search: ``steps`` Adam steps at ``lr`` (halved at 3/8, 5/8 and 7/8 of the run,
    as in Geiping et al.), total-variation weight ``tv`` (0 for tabular data), inputs
    clamped to ``[low, high]`` after each step, ``restarts`` random starts (the best match
    is kept)."""

    steps: int = 400
    lr: float = 0.1
    tv: float = 1e-2
    low: float = 0.0
    high: float = 1.0
    restarts: int = 1

    def __post_init__(self) -> None:
        for name in ("steps", "restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"inversion.{name} = {value!r}: must be an integer >= 1")
        if not self.lr > 0:
            raise ConfigError(f"inversion.lr = {self.lr!r}: must be > 0")
        if not self.tv >= 0:
            raise ConfigError(f"inversion.tv = {self.tv!r}: must be >= 0")
        if not self.low < self.high:
            raise ConfigError(f"inversion.low = {self.low!r}, high = {self.high!r}: low < high")


@dataclass(frozen=True)
class Inversion:
    """The reconstructed input ``[1, *shape]``, the label used and the final gradient
    cosine distance (0: a perfect match)."""

    x: torch.Tensor
    label: int
    distance: float


def example_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of the mean cross-entropy of ``(x, y)`` for each parameter of ``model``:
    what a client sends after one full-batch step (``delta = -lr * gradient``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def gradient_from_delta(delta: Sequence[torch.Tensor], lr: float) -> list[torch.Tensor]:
    """The gradient of a one-step SGD update ``delta = -lr * g``."""
    if not lr > 0:
        raise ConfigError(f"lr = {lr!r}: must be > 0")
    return [-d / lr for d in delta]


def infer_label(update: Sequence[torch.Tensor]) -> int:
    """iDLG's label: the class whose last-layer bias gradient is smallest (the only negative
    entry for a single example under cross-entropy)."""
    bias = update[-1]
    if bias.ndim != 1:
        raise ConfigError(f"update[-1] has shape {tuple(bias.shape)}: expected a bias vector")
    return int(torch.argmin(bias))


def cosine_distance(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``1 - <a, b> / (|a| |b|)`` over all tensors of the two gradients flattened together."""
    dot = sum((x * y).sum() for x, y in zip(a, b, strict=True))
    na = torch.sqrt(sum((x * x).sum() for x in a))
    nb = torch.sqrt(sum((y * y).sum() for y in b))
    return 1 - dot / (na * nb + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute difference of neighbours) of images
    ``[..., H, W]``."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dh + dw


def invert_gradient(
    model: nn.Module,
    update: Sequence[torch.Tensor],
    input_shape: Sequence[int],
    spec: InversionSpec | None = None,
    *,
    label: int | None = None,
    seed: int = 0,
) -> Inversion:
    """Search for the one example whose gradient under ``model`` matches ``update`` (one
    tensor per parameter, in ``model.parameters()`` order). ``label``: the known label, or
    None to infer it (:func:`infer_label`). ``tv`` is applied only to inputs of two or more
    dims (images)."""
    spec = spec or InversionSpec()
    params = [p for p in model.parameters() if p.requires_grad]
    target = [u.detach().float() for u in update]
    if len(target) != len(params) or any(
        t.shape != p.shape for t, p in zip(target, params, strict=False)
    ):
        raise ConfigError("update: expected one tensor per model parameter, of its shape")
    if not all(torch.isfinite(t).all() for t in target):
        raise ConfigError("update: must be finite")
    y = torch.tensor([infer_label(target) if label is None else int(label)])
    image = len(input_shape) >= 2
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    best: Inversion | None = None
    for _ in range(spec.restarts):
        start = torch.rand(1, *input_shape, generator=gen) * (spec.high - spec.low) + spec.low
        x = start.requires_grad_()
        opt = torch.optim.Adam([x], lr=spec.lr)
        milestones = [int(spec.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.5)
        for _ in range(spec.steps):
            opt.zero_grad(set_to_none=True)
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
            objective = cosine_distance(grads, target)
            if image and spec.tv > 0:
                objective = objective + spec.tv * total_variation(x)
            objective.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(spec.low, spec.high)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        distance = float(cosine_distance(grads, target))
        if best is None or distance < best.distance:
            best = Inversion(x=x.detach(), label=int(y), distance=distance)
    assert best is not None  # restarts >= 1
    return best


def psnr(estimate: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(range^2 / MSE)`` (inf for equal inputs)."""
    mse = float(F.mse_loss(estimate.float(), truth.float()))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def ssim(estimate: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean structural similarity of two single-channel images ``[..., H, W]`` (gaussian
    window :data:`SSIM_WINDOW` x :data:`SSIM_WINDOW`, sigma :data:`SSIM_SIGMA`, valid
    positions only; constants K1 = 0.01, K2 = 0.03 as in Wang et al.)."""
    if estimate.shape != truth.shape or estimate.ndim < 2:
        raise ConfigError(
            f"ssim: images of shapes {tuple(estimate.shape)} and {tuple(truth.shape)}"
        )
    h, w = truth.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ConfigError(f"ssim: images {h}x{w} are smaller than the {SSIM_WINDOW}x window")
    a = estimate.double().reshape(-1, 1, h, w)
    b = truth.double().reshape(-1, 1, h, w)
    win = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA)
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a**2
    var_b = F.conv2d(b * b, win) - mu_b**2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(s.mean())


def relative_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """``|estimate - truth| / |truth|`` (L2): the reconstruction error of tabular features."""
    norm = float(torch.linalg.vector_norm(truth.double()))
    if norm == 0:
        raise ConfigError("relative_error: the true features are all zero")
    return float(torch.linalg.vector_norm((estimate - truth).double())) / norm
