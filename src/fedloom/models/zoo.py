"""The built-in models as tasks: what ``model.kind`` names, checked against the data.

A built-in model is a ``Task`` like a user's: a zero-argument factory (the run seed
draws its initial weights), the data's default loss and metrics, and the example shape
it was built for. Combinations that cannot work (a CNN on flat features, a character
model on images, one output per example for token targets) are refused here, with the
kind and the data's shape in the message, before anything trains.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from fedloom.errors import ConfigError
from fedloom.models.char import CharGRU
from fedloom.models.cnn import NORMS, LeNet, Norm
from fedloom.models.mlp import MLP
from fedloom.models.mobilenet import MAX_WIDTH, MIN_SIZE, MobileNetV2
from fedloom.task import Targets, Task

if TYPE_CHECKING:
    from torch import nn

    from fedloom.config import ModelConfig

BUILTIN_KINDS = ("mlp", "logistic", "cnn", "char", "mobilenet")
IMAGE_KINDS = ("cnn", "mobilenet")
TARGETS = ("classes", "tokens", "values")


def _positive(values: Sequence[int]) -> tuple[int, ...] | None:
    """``values`` as Python ints (numpy and protobuf integers included), or None unless
    every one is a positive integer."""
    try:
        ints = tuple(operator.index(v) for v in values)
    except TypeError:
        return None
    return ints if all(i >= 1 for i in ints) else None


def builtin_task(
    kind: str,
    sample_shape: Sequence[int],
    targets: Targets,
    outputs: int,
    hidden: Sequence[int] = (32,),
    norm: Norm = "none",
    width: float = 1.0,
) -> Task:
    """The built-in model ``kind`` for examples of ``sample_shape`` as a task.

    ``outputs``: classes (or vocabulary) for ``"classes"``/``"tokens"`` targets, the
    target width for ``"values"`` (1 for targets ``[n]``). ``hidden``: hidden widths of
    the MLP, of the CNN's head after its conv stages, or of the character model's GRU
    layers (ignored by ``"logistic"`` and ``"mobilenet"``). ``norm`` is the image
    models' normalization, ``width`` MobileNet's width multiplier (0 < width <= 4).
    """
    shape = _positive(sample_shape)
    data = f"examples of shape {list(shape or sample_shape)}"
    if kind not in BUILTIN_KINDS:
        raise ConfigError(
            f"model.kind = {kind!r}: expected one of {', '.join(BUILTIN_KINDS)} (or a module: task)"
        )
    if targets not in TARGETS:
        raise ConfigError(f"targets = {targets!r}: expected one of {', '.join(TARGETS)}")
    if not shape:
        raise ConfigError(f"model.kind = {kind!r}: {data}: expected positive integers")
    least = 1 if targets == "values" else 2
    out = _positive([outputs])
    if out is None or out[0] < least:
        raise ConfigError(
            f"model.kind = {kind!r}: {outputs!r} outputs for {targets} targets; "
            f"expected an integer >= {least}"
        )
    widths = _positive(hidden)
    if widths is None:
        raise ConfigError(f"model.hidden = {list(hidden)}: expected positive integers")
    if norm not in NORMS:
        raise ConfigError(f"model.norm = {norm!r}: expected one of {', '.join(NORMS)}")
    if norm != "none" and kind not in IMAGE_KINDS:
        raise ConfigError(
            f"model.norm = {norm!r} applies to cnn and mobilenet, not model.kind = {kind!r}"
        )
    _check_width(kind, width)
    if targets == "tokens" and kind != "char":
        raise ConfigError(
            f"model.kind = {kind!r} gives one output per example; token targets [n, T] "
            "need model.kind = 'char'"
        )

    factory: partial[nn.Module]
    if kind in ("mlp", "logistic"):
        factory = partial(MLP, shape, () if kind == "logistic" else widths, out[0])
    elif kind == "cnn":
        if len(shape) != 3:
            raise ConfigError(f"model.kind = 'cnn' needs images [C, H, W]; the data has {data}")
        if min(shape[1:]) < 4:
            raise ConfigError(
                f"model.kind = 'cnn' pools twice, so H and W must be >= 4; the data has {data}"
            )
        factory = partial(LeNet, shape, out[0], hidden=widths, norm=norm)
    elif kind == "mobilenet":
        if len(shape) != 3:
            raise ConfigError(
                f"model.kind = 'mobilenet' needs images [C, H, W]; the data has {data}"
            )
        if min(shape[1:]) < MIN_SIZE:
            raise ConfigError(
                f"model.kind = 'mobilenet' downsamples while H and W are >= {MIN_SIZE}, so "
                f"they must be >= {MIN_SIZE}; the data has {data}"
            )
        factory = partial(MobileNetV2, shape, out[0], width=float(width), norm=norm)
    else:
        if len(shape) != 1:
            raise ConfigError(
                f"model.kind = 'char' needs token ids [T] per example; the data has {data}"
            )
        if targets == "values":
            raise ConfigError(
                "model.kind = 'char' predicts characters; regression targets need "
                "mlp, logistic, cnn or mobilenet"
            )
        if not widths:
            raise ConfigError("model.kind = 'char' needs at least one GRU width in model.hidden")
        factory = partial(CharGRU, out[0], widths, per_token=targets == "tokens")
    return Task(factory, input_shape=shape, name=kind)


def _check_width(kind: str, width: float) -> None:
    """``width`` is a finite multiplier in (0, MAX_WIDTH], and not 1 only for mobilenet."""
    try:
        ok = math.isfinite(width) and 0 < width <= MAX_WIDTH
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"model.width = {width!r}: expected a number in (0, {MAX_WIDTH:g}]")
    if width != 1.0 and kind != "mobilenet":
        raise ConfigError(
            f"model.width = {width!r} applies to mobilenet, not model.kind = {kind!r}"
        )


def build_model(config: ModelConfig, in_features: int, num_classes: int, seed: int) -> nn.Module:
    """The configured model for ``in_features`` flat features and ``num_classes``
    classes, with weights drawn from ``seed`` (global RNG left untouched)."""
    task = builtin_task(
        config.kind,
        (in_features,),
        "classes",
        num_classes,
        config.hidden,
        config.norm,
        config.width,
    )
    return task.build_model(seed)
