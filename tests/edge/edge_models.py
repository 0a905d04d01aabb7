"""Shared data and models of the edge tests: sklearn's digits (standardized) and small
classifiers trained on its first 1400 examples, each built once per process."""

from functools import cache

import numpy as np
import torch
from sklearn.datasets import load_digits

from fedloom.models.cnn import LeNet
from fedloom.models.mlp import MLP

TRAIN = 1400


@cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = ((d.data - d.data.mean(0)) / (d.data.std(0) + 1e-8)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(d.target)


def images() -> torch.Tensor:
    return digits()[0].reshape(-1, 1, 8, 8)


@torch.enable_grad()
def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 8):
    """Plain mini-batch SGD (torch.optim's first step costs seconds of imports)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.05 * p.grad
    return model.eval()


@cache
def mlp() -> torch.nn.Module:
    """The digits MLP 64-256-256-10."""
    torch.manual_seed(0)
    x, y = digits()
    return fit(MLP(64, (256, 256), 10), x[:TRAIN], y[:TRAIN])


@cache
def lenet() -> torch.nn.Module:
    """fedloom's LeNet on [n, 1, 8, 8] digit images."""
    torch.manual_seed(0)
    return fit(LeNet((1, 8, 8), 10), images()[:TRAIN], digits()[1][:TRAIN])
