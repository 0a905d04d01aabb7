"""What one forward pass of a model costs: parameters, FLOPs and activation memory.

The numbers go into a run's start record, so the device profiles of a simulation can
be read against the model: FLOPs of one example's forward pass in its ``nn.Linear`` and
convolution layers (2 per multiply-add, as torch's ``FlopCounterMode`` counts them;
elementwise ops, and matrix products written outside such layers, are not counted),
counted with forward hooks because ``FlopCounterMode`` costs seconds of imports in
every process that starts a run, and the bytes of every leaf module's
output for one example (what a backward pass keeps, up to the elementwise
intermediates between modules). A module called several times (a GRU's recurrent map
at every step) counts every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelStats:
    """``parameters``: trainable and frozen parameter count; ``flops`` and
    ``activation_bytes``: one forward pass on a batch of one example."""

    parameters: int
    flops: int
    activation_bytes: int


def _nbytes(output: object) -> int:
    if isinstance(output, torch.Tensor):
        return output.numel() * output.element_size()
    if isinstance(output, (tuple, list)):
        return sum(_nbytes(o) for o in output)
    if isinstance(output, dict):
        return sum(_nbytes(o) for o in output.values())
    return 0


def model_stats(
    model: nn.Module, input_shape: Sequence[int], input_dtype: torch.dtype = torch.float32
) -> ModelStats:
    """Parameters, FLOPs and activation bytes of ``model`` on one example of
    ``input_shape`` (zeros of ``input_dtype``: token id 0 for a character model).

    The forward pass runs in eval mode without gradients, so BatchNorm's running
    statistics are untouched; every module's training flag is restored after.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros((1, *input_shape), dtype=input_dtype, device=device)
    activation = flops = 0

    def count(module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal activation, flops
        activation += _nbytes(output)
        if isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            flops += 2 * output.numel() * module.in_features
        elif isinstance(module, nn.modules.conv._ConvNd) and isinstance(output, torch.Tensor):
            flops += 2 * output.numel() * module.weight[0].numel()

    modes = {m: m.training for m in model.modules()}
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return ModelStats(
        parameters=sum(p.numel() for p in model.parameters()),
        flops=flops,
        activation_bytes=activation,
    )
