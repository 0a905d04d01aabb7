"""A user's own model code, as a package on a device would hold it (not a test file).

Named in configs as ``model.kind = "module:user_nets:digits_cnn"``; the deployment tests
put this folder on the processes' ``PYTHONPATH`` and start clients with
``--trust user_nets``.
"""

from __future__ import annotations

import numpy as np
from torch import nn

import fedloom


class DigitsCNN(nn.Module):
    """Two conv/pool stages and a small head for [n, 1, 8, 8] digit images."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.features(x))


def digits_cnn(width: int = 16) -> fedloom.Task:
    return fedloom.Task(lambda: DigitsCNN(width), input_shape=(1, 8, 8), name="digits_cnn")


def digits_images(num_clients: int = 100, seed: int = 0) -> fedloom.FederatedData:
    """sklearn's digits as [n, 1, 8, 8] images over ``num_clients`` Dirichlet(0.5) clients."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return fedloom.FederatedData.from_arrays(
        x,
        d.target,
        partition="dirichlet",
        num_clients=num_clients,
        alpha=0.5,
        standardize=True,
        seed=seed,
    )
