"""FedAvg on IID digits against the same MLP trained centrally.

FedAvg: examples/digits_iid.toml (10 IID clients, all every round, 5 local epochs,
30 rounds, batch 32, lr 0.05). Central: the same model, initialisation, split and
optimizer on the pooled training set for the same number of epochs (150).

Usage: ``uv run python benchmarks/iid_vs_central.py [--json PATH] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from fedloom.assemble import start_simulation
from fedloom.client.trainer import TorchTrainer, evaluate_model
from fedloom.config import load_config
from fedloom.records import TrainPlan

EXAMPLE = Path(__file__).parents[1] / "examples" / "digits_iid.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        extra = [f'output_dir="{tmp}"'] + (["rounds=3"] if args.quick else [])
        cfg = load_config(EXAMPLE, extra)
        sim = start_simulation(cfg)
        initial = sim.server.params.copy()
        fed = sim.run()

        central = TorchTrainer(sim.trainer.model)
        data = sim.data.train
        epochs = cfg.rounds * cfg.client.local_epochs
        plan = TrainPlan(local_epochs=epochs, batch_size=cfg.client.batch_size, lr=cfg.client.lr)
        out = torch.empty(central.dim)
        central.train(
            torch.from_numpy(initial),
            torch.from_numpy(data.x),
            torch.from_numpy(data.y),
            plan,
            seed=cfg.seed,
            out=out,
        )
        test = sim.engine.evaluator.test_tensors
        acc = float(evaluate_model(central.model, *test)[1]["accuracy"].mean())
    result = {
        "fedavg_accuracy": round(fed.accuracy, 4),
        "central_accuracy": round(acc, 4),
        "rounds": cfg.rounds,
        "central_epochs": epochs,
    }
    print(
        f"FedAvg (10 IID clients, {cfg.rounds} rounds x {cfg.client.local_epochs} epochs): "
        f"{fed.accuracy:.4f}"
    )
    print(f"central ({epochs} epochs, same model and optimizer):           {acc:.4f}")
    print(f"ratio FedAvg / central: {fed.accuracy / acc:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
