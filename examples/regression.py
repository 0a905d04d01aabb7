"""Federated linear regression: float targets get a mean-squared-error task by default.

``y = x @ w + noise`` with 10 features, split IID over 20 clients. The task names only
the model; fedloom sees float targets and picks the MSE loss and the ``mse`` and ``mae``
metrics (no accuracy). A custom metric, R^2, is added next to them; it is the one the
run's summary leads with, since it comes first.

    uv run python examples/regression.py            # 20 rounds
    uv run python examples/regression.py --quick    # 5 rounds, a smoke run
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import fedloom

FEATURES = 10
NOISE = 0.1


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a batch."""
    return ((outputs.squeeze(-1) - targets) ** 2).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 20")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    w = rng.normal(size=FEATURES)
    x = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    y = (x @ w + NOISE * rng.normal(size=len(x))).astype(np.float32)
    data = fedloom.FederatedData.from_arrays(x, y, partition="iid", num_clients=20, seed=0)
    print(f"targets: {data.targets}, {data.num_features} features")

    config = {
        "rounds": 5 if args.quick else 20,
        "server": {"clients_per_round": 5},
        "client": {"local_epochs": 1, "lr": 0.05, "batch_size": 16},
    }

    # the default loss and metrics for float targets: MSE loss, mse and mae
    summary = fedloom.simulate(
        config,
        task=fedloom.Task(lambda: nn.Linear(FEATURES, 1), name="linear"),
        data=data,
        progress=False,
        in_memory=True,
    )
    assert "accuracy" not in summary.metrics, summary.metrics
    print(f"metrics reported: {', '.join(sorted(summary.metrics))}")
    print(
        f"regression: {summary.rounds} rounds, test {summary.metric} {summary.value:.4f} "
        f"(noise variance {NOISE**2:.4f})"
    )

    # the same model with R^2 (higher is better) as the leading metric, and mse beside it.
    # A metric must be a batch mean: fedloom evaluates it per example (one-example
    # batches) and averages, so R^2 is written against a fixed variance, the training
    # targets', not the batch's (a single example has none).
    variance = float(np.var(data.train.y))

    def r2(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Coefficient of determination, 1 - MSE / Var(y) (1 is a perfect fit)."""
        return 1 - mse(outputs, targets) / variance

    metrics = {"r2": fedloom.Metric(r2, maximize=True), "mse": fedloom.Metric(mse, maximize=False)}
    summary = fedloom.simulate(
        config,
        task=fedloom.Task(lambda: nn.Linear(FEATURES, 1), metrics=metrics, name="linear_r2"),
        data=data,
        progress=False,
        in_memory=True,
    )
    print(f"regression: test r2 {summary.value:.4f}, best {summary.best_value:.4f}")

    learned = summary.state_dict["weight"].numpy().ravel()
    print(f"largest weight error: {np.abs(learned - w).max():.4f}")


if __name__ == "__main__":
    main()
