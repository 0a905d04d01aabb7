"""Lightweight models for federated training on small devices."""

from fedloom.models.zoo import MLP, build_model

__all__ = ["MLP", "build_model"]
