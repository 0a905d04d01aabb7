"""A user-defined CNN, trained federated on scikit-learn's digits as 8x8 images.

The model is plain PyTorch; fedloom only needs it wrapped in a ``Task``. The digits are
split over 100 clients by a Dirichlet(0.5) label distribution, 10 clients train per
round, and the trained weights come back in ``summary.state_dict``, ready to load into a
fresh model.

    uv run python examples/custom_cnn.py            # 30 rounds
    uv run python examples/custom_cnn.py --quick    # 5 rounds, a smoke run
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import fedloom


class CNN(nn.Module):
    """Two 3x3 conv stages (8x8 -> 4x4 -> 2x2) and a two-layer head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 30")
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[:, None]  # [n, 1, 8, 8] in [0, 1]
    data = fedloom.FederatedData.from_arrays(
        x,
        digits.target,
        partition="dirichlet",
        num_clients=100,
        alpha=0.5,
        standardize=True,
        seed=0,
    )
    task = fedloom.Task(CNN, input_shape=(1, 8, 8), name="digits_cnn")
    config = {
        "rounds": 5 if args.quick else 30,
        "server": {"clients_per_round": 10},
        "client": {"local_epochs": 5, "lr": 0.1, "batch_size": 16},
        "evaluation": {"every": 5},
    }

    def on_round(report: fedloom.RoundReport) -> None:
        if report.metrics:  # evaluated rounds only
            print(
                f"round {report.round:3d}  accuracy {report.accuracy:.3f}  loss {report.loss:.3f}"
            )

    summary = fedloom.simulate(
        config, task=task, data=data, on_round=on_round, progress=False, in_memory=True
    )

    model = CNN()
    model.load_state_dict(summary.state_dict)
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.test.x)).argmax(1).numpy()
    accuracy = float((predicted == data.test.y).mean())
    print(
        f"custom_cnn: {summary.rounds} rounds, test accuracy {accuracy:.3f} "
        f"(reported {summary.value:.3f}, best {summary.best_value:.3f})"
    )


if __name__ == "__main__":
    main()
