"""fedloom's simulation overhead against a hand-written PyTorch FedAvg loop.

Workload (same for both): digits standardized, 80/20 split (seed 0), Dirichlet(0.5)
label split, MLP 64-32-10, 1 local epoch, batch 32, SGD lr 0.05, FedAvg. The plain
loop deep-copies the global model per client, builds a ``torch.optim.SGD``, visits the
same mini-batches as fedloom (same permutations from the same per-client seeds) and
averages the state dicts weighted by example counts; both draw the same cohorts.

fedloom runs twice, with its default executor (``auto``: the vectorized one for this
MLP) and with the sequential one. All three are warmed up, then their rounds are timed
in turn (a fedloom-vectorized round, a fedloom-sequential round, a plain round) on one
torch thread. fedloom's timed round is the full ``Simulation.step``: selection, the
virtual-time round, training, validation of every update, aggregation, the metrics
record, and (at the last round) evaluation and a checkpoint. ``ratio`` is the default
(vectorized) fedloom over plain; ``sequential_ratio`` the sequential one over plain.

Usage: ``uv run python benchmarks/overhead.py [--json PATH] [--quick] [--repeats N]``
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedloom.assemble import build_simulation
from fedloom.client.schedule import batch_schedule
from fedloom.client.trainer import evaluate_model
from fedloom.config import load_config
from fedloom.records import TrainPlan
from fedloom.runs import RunDirectory
from fedloom.server.sync import client_seed
from fedloom.sim import Simulation

CONFIGS = {"a": (10, 10, 20), "b": (100, 10, 30), "c": (1000, 100, 10)}
PLAN = TrainPlan(local_epochs=1, batch_size=32, lr=0.05)


def make_sim(
    clients: int, per_round: int, rounds: int, out: Path, name: str, executor: str = "auto"
) -> Simulation:
    cfg = load_config(
        None,
        [
            f'name="{name}"',
            f'output_dir="{out}"',
            "seed=0",
            f"rounds={rounds}",
            "threads=1",
            'partition.method="dirichlet"',
            "partition.alpha=0.5",
            f"partition.num_clients={clients}",
            f"server.clients_per_round={per_round}",
            "model.hidden=[32]",
            "client.local_epochs=1",
            "client.batch_size=32",
            "client.lr=0.05",
            f"evaluation.every={rounds}",
            "checkpoint.every=0",
            f'simulation.executor="{executor}"',
        ],
    )
    return build_simulation(cfg, RunDirectory.create(cfg))


class PlainLoop:
    """The hand-written baseline: deepcopy + torch.optim.SGD per client, state-dict average."""

    def __init__(self, sim: Simulation) -> None:
        self.model = copy.deepcopy(sim.trainer.model)
        # fresh parameters (not views of fedloom's flat buffer), same initial values
        for p in self.model.parameters():
            p.data = p.data.clone()
            p.grad = None
        self.data = sim.data.train
        self.x = torch.from_numpy(self.data.x)
        self.y = torch.from_numpy(self.data.y)
        self.rng = np.random.default_rng(0)  # same stream the fedloom server selects with
        self.seed = 0
        self.round = 0
        self.k = sim.config.server.clients_per_round

    def step(self) -> None:
        self.round += 1
        cohort = np.sort(self.rng.choice(self.data.num_clients, size=self.k, replace=False))
        states, weights = [], []
        for cid in cohort:
            lo, hi = int(self.data.offsets[cid]), int(self.data.offsets[cid + 1])
            x, y, n = self.x[lo:hi], self.y[lo:hi], hi - lo
            model = copy.deepcopy(self.model)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            seed = client_seed(self.seed, self.round, int(cid))
            for idx in batch_schedule(n, PLAN, seed):
                index = torch.from_numpy(idx)
                opt.zero_grad()
                F.cross_entropy(model(x[index]), y[index]).backward()
                opt.step()
            states.append(model.state_dict())
            weights.append(n)
        total = float(sum(weights))
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(sum(s[name] * (w / total) for s, w in zip(states, weights, strict=True)))

    def accuracy(self, test: tuple[torch.Tensor, torch.Tensor]) -> float:
        return float(evaluate_model(self.model, *test)[1]["accuracy"].mean())


def bench(label: str, clients: int, per_round: int, rounds: int, out: Path) -> dict:
    for executor in ("auto", "sequential"):
        warm = make_sim(clients, per_round, 2, out, f"warm-{label}-{executor}", executor)
        warm.step()
    PlainLoop(warm).step()

    vec = make_sim(clients, per_round, rounds, out, f"bench-{label}", "auto")
    seq = make_sim(clients, per_round, rounds, out, f"bench-{label}-seq", "sequential")
    plain = PlainLoop(vec)
    spent = {"fedloom": 0.0, "sequential": 0.0, "plain": 0.0}
    for _ in range(rounds):
        for name, runner in (
            ("fedloom", vec.step),
            ("sequential", seq.step),
            ("plain", plain.step),
        ):
            t0 = time.perf_counter()
            runner()
            spent[name] += time.perf_counter() - t0
    return {
        "fedloom_s": spent["fedloom"],
        "sequential_s": spent["sequential"],
        "plain_s": spent["plain"],
        "executor": vec.executor.name,
        "fedloom_acc": vec.evaluate()["accuracy"],
        "sequential_acc": seq.evaluate()["accuracy"],
        "plain_acc": plain.accuracy(vec.engine.evaluator.test_tensors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per config (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (clients, per_round, rounds) in CONFIGS.items():
            rounds = 2 if args.quick else rounds
            runs = [bench(label, clients, per_round, rounds, Path(tmp)) for _ in range(repeats)]
            fed = statistics.median(r["fedloom_s"] for r in runs)
            seq = statistics.median(r["sequential_s"] for r in runs)
            plain = statistics.median(r["plain_s"] for r in runs)
            results[label] = {
                "clients": clients,
                "per_round": per_round,
                "rounds": rounds,
                "executor": runs[0]["executor"],
                "fedloom_s": round(fed, 4),
                "plain_s": round(plain, 4),
                "ratio": round(fed / plain, 3),
                "fedloom_acc": round(runs[0]["fedloom_acc"], 4),
                "plain_acc": round(runs[0]["plain_acc"], 4),
                "sequential_s": round(seq, 4),
                "sequential_ratio": round(seq / plain, 3),
                "sequential_acc": round(runs[0]["sequential_acc"], 4),
            }
    print(f"threads=1 repeats={repeats} (median wall time of the timed rounds)")
    print(
        f"{'cfg':<4}{'clients/round/rounds':<22}{'fedloom s':>10}{'seq s':>8}{'plain s':>9}"
        f"{'ratio':>7}{'seq ratio':>10}{'fed acc':>9}{'seq acc':>9}{'plain acc':>10}"
    )
    for label, r in results.items():
        spec = f"{r['clients']}/{r['per_round']}/{r['rounds']}"
        print(
            f"{label:<4}{spec:<22}{r['fedloom_s']:>10.3f}{r['sequential_s']:>8.3f}"
            f"{r['plain_s']:>9.3f}{r['ratio']:>7.3f}{r['sequential_ratio']:>10.3f}"
            f"{r['fedloom_acc']:>9.4f}{r['sequential_acc']:>9.4f}{r['plain_acc']:>10.4f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"threads": 1, "repeats": repeats, "configs": results}, indent=2)
        )


if __name__ == "__main__":
    main()
