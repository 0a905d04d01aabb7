"""Quantization-aware training: int8 fake quantization of Linear and Conv layers.

A model that will run int8 on a device (dynamic quantization: per-output-channel
symmetric int8 weights, each input quantized per tensor to uint8 with its scale and zero
point from the batch's min and max, as ``torch.ao.quantization.quantize_dynamic`` and
ONNX Runtime's ``DynamicQuantizeLinear`` do) loses accuracy it never trained against.
QAT trains through the rounding instead: the forward pass sees the dequantized values
q(x), and the backward pass treats q as the identity, the straight-through estimator
written as ``x + (q(x) - x).detach()``.

Everything here is plain tensor arithmetic without observers or module state, so
``torch.func.vmap(grad(...))`` trains a whole cohort with it (each client's input ranges
are its own batch's), and the model keeps its parameter names: the fake-quantized
weights are handed to ``torch.func.functional_call`` in place of the real ones, and
inputs are quantized by forward pre-hooks that live only for one call. The flat
parameter layout (``fedloom.params.FlatModule``) and checkpoints are those of the float
model.

References: Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018; Bengio, Léonard & Courville, "Estimating
or Propagating Gradients Through Stochastic Neurons for Conditional Computation", 2013
(straight-through estimator).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

QUANTIZED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHT_MIN, WEIGHT_MAX = -128, 127  # qint8
INPUT_MIN, INPUT_MAX = 0, 255  # quint8
_EPS = torch.finfo(torch.float32).eps  # the smallest scale, as torch.ao's observers


def straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in the forward pass, the identity's gradient in the backward pass."""
    return x + (q - x).detach()


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 scale of ``w`` (channels along dim 0), shaped to
    broadcast against it: max |w| over the channel / 127.5 (torch.ao's
    ``PerChannelMinMaxObserver`` with ``per_channel_symmetric``)."""
    amax = w.detach().abs().flatten(1).amax(1)
    scale = (amax / ((WEIGHT_MAX - WEIGHT_MIN) / 2)).clamp(min=_EPS)
    return scale.view(-1, *([1] * (w.dim() - 1)))


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded to per-output-channel symmetric int8 and back, with a
    straight-through gradient."""
    scale = weight_scale(w)
    q = torch.clamp(torch.round(w.detach() / scale), WEIGHT_MIN, WEIGHT_MAX) * scale
    return straight_through(w, q)


def input_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor affine uint8 scale and zero point of ``x`` from its min and max, the
    range widened to hold 0 (so zero is exact), as dynamic quantization chooses them."""
    lo = x.detach().min().clamp(max=0.0)
    hi = x.detach().max().clamp(min=0.0)
    scale = ((hi - lo) / (INPUT_MAX - INPUT_MIN)).clamp(min=_EPS)
    zero_point = torch.clamp(torch.round(INPUT_MIN - lo / scale), INPUT_MIN, INPUT_MAX)
    return scale, zero_point


def fake_quant_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` (computed in float32) rounded to per-tensor affine uint8 and back, with a
    straight-through gradient."""
    x = x.float()
    scale, zero_point = input_qparams(x)
    q = torch.clamp(torch.round(x.detach() / scale) + zero_point, INPUT_MIN, INPUT_MAX)
    return straight_through(x, (q - zero_point) * scale)


def quantized_weights(model: nn.Module) -> frozenset[str]:
    """Names (as in ``named_parameters``) of the weights of ``model``'s Linear and Conv
    layers."""
    return frozenset(
        f"{name}.weight" if name else "weight"
        for name, mod in model.named_modules()
        if isinstance(mod, QUANTIZED_LAYERS)
    )


def _quantize_input(_module: nn.Module, args: tuple) -> tuple:
    return (fake_quant_input(args[0]), *args[1:])


@contextmanager
def fake_quantized_inputs(model: nn.Module) -> Iterator[None]:
    """Within the block, every Linear and Conv layer of ``model`` sees its input
    fake-quantized (forward pre-hooks, removed on exit)."""
    handles = [
        mod.register_forward_pre_hook(_quantize_input)
        for mod in model.modules()
        if isinstance(mod, QUANTIZED_LAYERS)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class FakeQuantForward:
    """``model``'s forward with int8 fake-quantized Linear/Conv weights and inputs:
    ``forward(params, *args)`` for a mapping of parameter names to tensors (the model's
    own parameters, or ``torch.func`` views of a flat vector); gradients reach ``params``
    straight through the rounding."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.weights = quantized_weights(model)

    def __call__(self, params: Mapping[str, torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call  # imported on first use: it is slow to load

        swapped = {n: fake_quant_weight(p) if n in self.weights else p for n, p in params.items()}
        with fake_quantized_inputs(self.model):
            return functional_call(self.model, swapped, args)
