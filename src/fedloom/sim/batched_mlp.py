"""Per-client gradients of a whole cohort of MLPs with batched matrix products.

For the common small-model case (an ``nn.Sequential`` of ``Linear`` layers with ReLU
or Tanh between them, possibly flattening each example first, trained with the built-in
cross-entropy on class labels) the forward and backward passes of K clients are a
handful of ``baddbmm``/``bmm`` calls on ``[K, B, width]`` tensors. That
is faster than ``vmap(grad(...))`` for such models and avoids the several seconds that
``torch.func`` spends importing its compiler stack on first use. Other models use the
``torch.func`` path in ``vectorized.py``.

Reduced precision (``TrainPlan.precision``) follows ``torch.autocast``'s rules by hand:
every matrix product, forward and backward, takes its operands cast to bfloat16 or
float16 and its result is cast back to float32 (autocast's Linear rounds its output,
and ReLU and Tanh commute with that rounding), while the log-softmax, the loss and the
gradients' accumulation stay float32, as autocast's cross-entropy does. It agrees with
autocast up to the products' rounding, not bit for bit. QAT is not done here: the
executor trains it on the ``torch.func`` path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedloom.params import ParamLayout

_ACTIVATIONS = (nn.ReLU, nn.Tanh)


@dataclass(frozen=True)
class _Layer:
    w_off: int
    b_off: int | None
    out_f: int
    in_f: int
    act: str | None  # activation applied after this layer: "relu", "tanh" or None


def _plain(model: nn.Sequential, sample_shape: tuple[int, ...]) -> bool:
    """Whether ``model``'s forward is its layers in order on each example flattened
    (by fedloom's ``MLP`` or a leading ``nn.Flatten``) or already 1-D, not a custom
    forward or N-D examples fed to ``Linear`` layers as they are."""
    from fedloom.models.mlp import MLP

    forward = type(model).forward
    if isinstance(model, MLP) and forward is MLP.forward:
        return model.sample_dims == len(sample_shape)
    if forward is not nn.Sequential.forward:
        return False
    first = model[0]
    if isinstance(first, nn.Flatten):
        return (first.start_dim, first.end_dim) == (1, -1)
    return len(sample_shape) == 1


def mlp_layers(model: nn.Module, sample_shape: tuple[int, ...]) -> list[_Layer] | None:
    """The layer plan of a Linear/ReLU/Tanh ``nn.Sequential`` (a leading ``nn.Flatten``,
    or fedloom's ``MLP`` flattening its examples, included) for examples of
    ``sample_shape``, or None if not such a model."""
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return None
    shape = tuple(sample_shape)
    if not _plain(model, shape):
        return None
    layout = ParamLayout.from_module(model)
    offsets = {s.name: s.offset for s in layout}
    layers: list[_Layer] = []
    for i, (name, mod) in enumerate(model.named_children()):
        if i == 0 and isinstance(mod, nn.Flatten):
            continue
        if isinstance(mod, nn.Linear):
            b = f"{name}.bias"
            layers.append(
                _Layer(
                    offsets[f"{name}.weight"],
                    offsets.get(b),
                    mod.out_features,
                    mod.in_features,
                    None,
                )
            )
        elif isinstance(mod, _ACTIVATIONS) and layers and layers[-1].act is None:
            act = "relu" if isinstance(mod, nn.ReLU) else "tanh"
            last = layers[-1]
            layers[-1] = _Layer(last.w_off, last.b_off, last.out_f, last.in_f, act)
        else:
            return None
    if not layers or layers[-1].act is not None:
        return None
    if layers[0].in_f != math.prod(shape):
        return None
    return layers


GradFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]
DpGradFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
    tuple[torch.Tensor, torch.Tensor],
]


def _products(
    dtype: torch.dtype | None,
) -> tuple[
    Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
]:
    """``bmm`` and ``baddbmm`` in ``dtype`` with float32 results (None: float32)."""
    if dtype is None:
        return torch.bmm, torch.baddbmm

    def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a.to(dtype), b.to(dtype)).float()

    def baddbmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(c.to(dtype), a.to(dtype), b.to(dtype)).float()

    return bmm, baddbmm


def make_grad_fns(
    layers: list[_Layer], dim: int, dtype: torch.dtype | None = None
) -> tuple[GradFn, DpGradFn]:
    """Two batched gradient functions for a cohort of MLPs, their matrix products in
    ``dtype`` (None: float32).

    ``grad_fn(params [K, d], x [K, B, ...], y [K, B], mask [K, B]) -> (grads [K, d], loss [K])``
    (each example flattened to the first layer's width):
    the loss of client k is the mean cross-entropy over its unmasked samples, exactly what
    ``F.cross_entropy`` computes on the unpadded batch. ``dp_grad_fn(..., clip)`` returns
    instead the sum of per-sample gradients each clipped to ``clip`` (DP-SGD).
    """
    bmm, baddbmm = _products(dtype)

    def weight(p: torch.Tensor, layer: _Layer) -> torch.Tensor:
        k = p.shape[0]
        return p[:, layer.w_off : layer.w_off + layer.out_f * layer.in_f].view(
            k, layer.out_f, layer.in_f
        )

    def bias(p: torch.Tensor, layer: _Layer) -> torch.Tensor:
        assert layer.b_off is not None
        return p[:, layer.b_off : layer.b_off + layer.out_f]

    def forward(
        params: torch.Tensor, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Each layer's input and pre-activation, and the logits."""
        inputs, pre = [], []
        h = x.reshape(x.shape[0], x.shape[1], -1)
        for layer in layers:
            w = weight(params, layer)
            inputs.append(h)
            if layer.b_off is None:
                z = bmm(h, w.transpose(1, 2))
            else:
                z = baddbmm(bias(params, layer).unsqueeze(1), h, w.transpose(1, 2))
            pre.append(z)
            h = torch.relu(z) if layer.act == "relu" else torch.tanh(z) if layer.act else z
        return inputs, pre, h

    def output_error(
        logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample d(loss_i)/d(logits) (softmax - onehot, masked), mean loss, count.

        The log-softmax is written out (max, exp, sum, log: torch's own formula) because
        ``torch.log_softmax`` over a short last dimension (10 classes) of ``[K, B, C]``
        is several times slower on the CPU, and the exponentials serve the softmax too.
        """
        count = mask.sum(1).clamp(min=1.0)
        shifted = logits - logits.amax(2, keepdim=True)
        dz = shifted.exp()
        total = dz.sum(2, keepdim=True)
        nll = total.log().squeeze(2) - shifted.gather(2, y.unsqueeze(2)).squeeze(2)
        loss = (nll * mask).sum(1) / count
        dz.div_(total)
        dz.scatter_add_(2, y.unsqueeze(2), -torch.ones_like(dz[:, :, :1]))
        return dz.mul_(mask.unsqueeze(2)), loss, count

    def errors(
        params: torch.Tensor,
        dz: torch.Tensor,
        inputs: list[torch.Tensor],
        pre: list[torch.Tensor],
    ) -> list[torch.Tensor]:
        """Backpropagated error at every layer's output, first layer first."""
        out = [dz]
        for i in range(len(layers) - 1, 0, -1):
            dh = bmm(out[0], weight(params, layers[i]))
            prev = layers[i - 1]
            if prev.act == "relu":
                dh.mul_(pre[i - 1] > 0)
            elif prev.act == "tanh":  # inputs[i] is the previous layer's tanh output
                dh.mul_(1 - inputs[i] * inputs[i])
            out.insert(0, dh)
        return out

    def accumulate(
        params: torch.Tensor,
        errs: list[torch.Tensor],
        inputs: list[torch.Tensor],
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """Sum over the batch of per-sample gradients weighted by ``scale`` [K, B]."""
        grads = torch.empty((params.shape[0], dim), dtype=params.dtype, device=params.device)
        for layer, err, inp in zip(layers, errs, inputs, strict=True):
            scaled = err * scale.unsqueeze(2)
            weight(grads, layer).copy_(bmm(scaled.transpose(1, 2), inp))
            if layer.b_off is not None:
                bias(grads, layer).copy_(scaled.sum(1))
        return grads

    @torch.no_grad()
    def grad_fn(
        params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, pre, logits = forward(params, x)
        dz, loss, count = output_error(logits, y, mask)
        scale = (1.0 / count).unsqueeze(1).expand_as(mask)  # mean over the unmasked samples
        return accumulate(params, errors(params, dz, inputs, pre), inputs, scale), loss

    @torch.no_grad()
    def dp_grad_fn(
        params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, clip: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over each client's batch of per-sample gradients clipped to ``clip`` ([K, d]),
        and the mean loss ([K]).

        Per-sample gradients are never materialized: a sample's weight gradient is the
        outer product of its backpropagated error and its layer input, so its squared norm
        is the product of their squared norms (ghost clipping), and the clipped sum is one
        ``bmm`` per layer with the errors rescaled by each sample's clip factor.

        References: Goodfellow, "Efficient Per-Example Gradient Computations", 2015;
        Li, Tramèr, Liang & Hashimoto, "Large Language Models Can Be Strong Differentially
        Private Learners", ICLR 2022 (ghost clipping).
        """
        inputs, pre, logits = forward(params, x)
        dz, loss, _ = output_error(logits, y, mask)
        errs = errors(params, dz, inputs, pre)
        sq = torch.zeros_like(mask)
        for layer, err, inp in zip(layers, errs, inputs, strict=True):
            e2 = (err * err).sum(2)
            sq += e2 * (inp * inp).sum(2) + (e2 if layer.b_off is not None else 0.0)
        factor = (clip / sq.sqrt().clamp(min=1e-12)).clamp(max=1.0) * mask
        return accumulate(params, errs, inputs, factor), loss

    return grad_fn, dp_grad_fn
