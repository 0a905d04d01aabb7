"""Lightweight models for federated training on small devices: an MLP for any example
shape, a LeNet-style CNN and a MobileNetV2-style network for images and a GRU character
model, each a ``Task`` built from a seed (``builtin_task``), and what one forward pass
costs (``model_stats``)."""

from fedloom.models.char import CharGRU, GRULayer
from fedloom.models.cnn import LeNet
from fedloom.models.mlp import MLP
from fedloom.models.mobilenet import MobileNetV2
from fedloom.models.stats import ModelStats, model_stats
from fedloom.models.zoo import BUILTIN_KINDS, build_model, builtin_task

__all__ = [
    "BUILTIN_KINDS",
    "MLP",
    "CharGRU",
    "GRULayer",
    "LeNet",
    "MobileNetV2",
    "ModelStats",
    "build_model",
    "builtin_task",
    "model_stats",
]
