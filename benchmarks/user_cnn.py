"""A user-defined CNN on digit images: accuracy and executor agreement at the issue's setting.

sklearn's digits as ``[n, 1, 8, 8]`` images, Dirichlet(0.5) over 100 clients, 30 rounds of
10 clients (5 local epochs, lr 0.1, batch 16), trained once with each executor from the
same start. Reports each executor's final test accuracy and wall time, and the largest
parameter difference between the two models after 3 and after 30 rounds.

Usage: ``uv run python benchmarks/user_cnn.py [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import fedloom

CONFIG = {
    "seed": 0,
    "server": {"clients_per_round": 10},
    "client": {"local_epochs": 5, "lr": 0.1, "batch_size": 16},
    "evaluation": {"every": 10},
}


class DigitsCNN(nn.Module):
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
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(data: fedloom.FederatedData, executor: str, rounds: int) -> tuple[torch.Tensor, dict]:
    start = time.perf_counter()
    summary = fedloom.simulate(
        {**CONFIG, "rounds": rounds, "simulation": {"executor": executor}},
        task=fedloom.Task(DigitsCNN, input_shape=(1, 8, 8), name="digits_cnn"),
        data=data,
        in_memory=True,
        progress=False,
    )
    flat = torch.cat([v.flatten() for v in summary.state_dict.values()])
    return flat, {
        "accuracy": round(summary.value, 4),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    data = fedloom.FederatedData.from_arrays(
        x, d.target, partition="dirichlet", num_clients=100, alpha=0.5, standardize=True, seed=0
    )
    out: dict = {"config": CONFIG, "results": {}, "max_param_difference": {}}
    for rounds in (3, 30):
        models = {}
        for executor in ("sequential", "vectorized"):
            models[executor], result = train(data, executor, rounds)
            out["results"][f"{executor} {rounds} rounds"] = result
            print(f"{executor:>10} {rounds:>2} rounds: {result}", flush=True)
        diff = float((models["sequential"] - models["vectorized"]).abs().max())
        out["max_param_difference"][f"{rounds} rounds"] = diff
        print(f"max |sequential - vectorized| after {rounds} rounds: {diff:.3g}", flush=True)
    out["targets"] = [
        *(
            {
                "name": f"{ex}: test accuracy after 30 rounds",
                "value": out["results"][f"{ex} 30 rounds"]["accuracy"],
                "goal": ">= 0.90",
                "met": out["results"][f"{ex} 30 rounds"]["accuracy"] >= 0.90,
            }
            for ex in ("sequential", "vectorized")
        ),
        *(
            {
                "name": f"executors agree after {key}",
                "value": value,
                "goal": "<= 1e-5",
                "met": value <= 1e-5,
            }
            for key, value in out["max_param_difference"].items()
        ),
    ]
    for t in out["targets"]:
        print(
            f"target {t['name']}: {t['value']} (goal {t['goal']}) {'met' if t['met'] else 'MISSED'}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
