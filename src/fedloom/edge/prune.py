"""Global magnitude pruning of a trained model, and a size measure that shows its gain.

The weights of every Linear and convolution layer compete in one pool and the smallest
in absolute value are set to zero (``torch.nn.utils.prune.global_unstructured`` with
``L1Unstructured``), so layers with many small weights lose more than others (Han et
al., "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS
2015; Blalock et al., "What is the State of Neural Network Pruning?", MLSys 2020, on
global vs layer-wise magnitude pruning). torch's pruning reparametrizes a module
(``weight_orig`` and a mask) and ``prune.remove`` re-registers the weight last, which
would reorder the parameters that fedloom's flat layouts follow; so the masks are
computed on a copy and the pruned weights copied into the model's own parameters: a
plain module, same names, order and ``Parameter`` objects.

Zeros do not shrink a dense ``torch.save`` file; :func:`compressed_bytes` measures the
state dict as a compressed archive (``np.savez_compressed``: runs of zeros deflate to
almost nothing), the size a pruned model takes to ship.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from fedloom.errors import ConfigError

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def sparsity(model: nn.Module) -> float:
    """The fraction of zeros among the Linear and convolution weights of ``model``."""
    weights = [getattr(m, name) for m, name in _weights(model)]
    if not weights:
        raise ConfigError("the model has no Linear or convolution weights to measure")
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def prune_global(model: nn.Module, fraction: float) -> float:
    """Zero the ``fraction`` of all Linear and convolution weights smallest in
    magnitude, in place (as ``torch.nn.utils.prune`` does), leaving a plain module;
    returns the sparsity reached (ties and weights already zero can add to it)."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ConfigError(f"prune fraction = {fraction!r} must be a number in [0, 1)")
    if not 0 <= fraction < 1:
        raise ConfigError(f"prune fraction = {fraction!r} must be in [0, 1)")
    params = _weights(model)
    if not params:
        raise ConfigError("the model has no Linear or convolution weights to prune")
    if fraction > 0:
        pruned = _weights(copy.deepcopy(model))
        prune.global_unstructured(pruned, pruning_method=prune.L1Unstructured, amount=fraction)
        with torch.no_grad():
            for (module, name), (masked, _) in zip(params, pruned, strict=True):
                getattr(module, name).copy_(masked.weight)
    return sparsity(model)


def compressed_bytes(model: nn.Module) -> int:
    """Bytes of the model's float state dict saved with ``np.savez_compressed``."""
    arrays = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor) or value.is_quantized:
            raise ConfigError(f"state dict entry {key!r}: compressed size needs a float model")
        arrays[key] = value.detach().cpu().numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getbuffer().nbytes
