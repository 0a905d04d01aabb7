"""fedloom's simulation overhead against hand-written PyTorch FedAvg loops.

Configurations (SGD, batch 32, lr 0.05, FedAvg, one torch thread):
- tiny (1 local epoch over 1-14 samples per client in b and c; in a, 10 clients share
  the training set: one or a few SGD steps, which mostly measures per-client setup):
  digits standardized, 80/20 split (seed 0), Dirichlet(0.5) label split, MLP 64-32-10;
  ``a`` 10 clients, all per round, 20 rounds; ``b`` 100 clients, 10 per round, 30
  rounds; ``c`` 1,000 clients, 100 per round, 10 rounds;
- realistic (5 local epochs over 500 samples per client: 80 steps each): Gaussian
  features labelled by a noisy random linear teacher (a ``.npz`` file, 80/20 split, IID
  clients); ``d`` the MLP, 20 clients, 10 per round, 5 rounds; ``e`` the built-in CNN
  (conv 16 and 32, head 64) on the features as ``[1, 8, 8]`` images, 10 clients, 5 per
  round, 3 rounds (fewer clients and rounds than ``d``: a CNN update costs about 0.3 s).

Runs, all on the same cohorts and mini-batches (the simulator's selection stream and
per-client seeds):
- ``vectorized`` and ``sequential``: fedloom's ``Simulation.step`` with that executor:
  selection, the virtual-time round, training, validation of every update, aggregation,
  the metrics record, and (at the last round) evaluation and a checkpoint (the
  hand-written loops evaluate at the last round too, but write no checkpoint);
- ``plain_reused``: the fair one-client-at-a-time loop (one module and one SGD reused,
  ``vector_to_parameters`` at each client's start, ``zero_grad(set_to_none=False)``, one
  running weighted sum; ``sim_throughput.reused_loop``);
- ``plain_vmap``: the fair batched loop (``torch.func.vmap(grad(loss))`` over the
  cohort's stacked parameters, one running weighted sum; ``sim_throughput.vmap_loop``);
- ``plain_deepcopy`` (tiny configurations only, historical): deepcopy and a new SGD per
  client, every client's model kept and averaged by a generator (the baseline of the
  earliest figures).

Every run is warmed up, then the rounds are timed in turn (interleaved: a round of
each run, then the next round of each), and the whole is repeated ``--repeats`` times
(median). Ratios are wall time over wall time: below 1, fedloom is faster.
``auto`` is the executor ``simulation.executor = "auto"`` picked for the configuration.

Usage: ``uv run python benchmarks/overhead.py [--json PATH] [--quick] [--repeats N]
[--configs a,b,c,d,e]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sim_throughput import Train, deepcopy_loop, reused_loop, vmap_loop
from targets import finish
from torch import nn

from fedloom.assemble import build_simulation
from fedloom.client.schedule import client_seeds
from fedloom.client.trainer import evaluate_model
from fedloom.config import load_config
from fedloom.data import ClientPartition
from fedloom.params import module_vector
from fedloom.records import TrainPlan
from fedloom.runs import RunDirectory
from fedloom.sim import Simulation


@dataclass(frozen=True)
class Setting:
    clients: int
    per_round: int
    rounds: int
    epochs: int = 1
    samples: int = 0  # per client, for the Gaussian data; 0: digits
    model: str = "mlp"

    @property
    def realistic(self) -> bool:
        return self.samples > 0


CONFIGS = {
    "a": Setting(10, 10, 20),
    "b": Setting(100, 10, 30),
    "c": Setting(1000, 100, 10),
    "d": Setting(20, 10, 5, epochs=5, samples=500),
    "e": Setting(10, 5, 3, epochs=5, samples=500, model="cnn"),
}
QUICK_SAMPLES = 100  # --quick: realistic clients hold 100 samples (16 steps each)
TEST_FRACTION = 0.2


def gaussian_file(out: Path, s: Setting, images: bool) -> Path:
    """A ``.npz`` of Gaussian features labelled by a noisy linear teacher, sized so the
    80/20 split leaves ``s.samples`` training samples for each of ``s.clients``."""
    path = out / f"gaussian-{s.clients}-{s.samples}-{'img' if images else 'vec'}.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        n = round(s.clients * s.samples / (1 - TEST_FRACTION))
        x = rng.normal(size=(n, 64)).astype(np.float32)
        teacher = rng.normal(size=(64, 10)).astype(np.float32)
        y = np.argmax(x @ teacher + rng.normal(size=(n, 10)), axis=1).astype(np.int64)
        np.savez(path, x=x.reshape(-1, 1, 8, 8) if images else x, y=y)
    return path


def make_sim(s: Setting, out: Path, name: str, executor: str) -> Simulation:
    data = (
        [
            'data.source="file"',
            f'data.path="{gaussian_file(out, s, images=s.model == "cnn")}"',
            f"data.test_fraction={TEST_FRACTION}",
            'partition.method="iid"',
        ]
        if s.realistic
        else ['partition.method="dirichlet"', "partition.alpha=0.5"]
    )
    model = ["model.kind='cnn'", "model.hidden=[64]"] if s.model == "cnn" else []
    cfg = load_config(
        None,
        [
            f'name="{name}"',
            f'output_dir="{out}"',
            "seed=0",
            f"rounds={s.rounds}",
            "threads=1",
            *data,
            *model,
            f"partition.num_clients={s.clients}",
            f"server.clients_per_round={s.per_round}",
            f"client.local_epochs={s.epochs}",
            "client.batch_size=32",
            "client.lr=0.05",
            f"evaluation.every={s.rounds}",
            "checkpoint.every=0",
            f'simulation.executor="{executor}"',
        ],
    )
    return build_simulation(cfg, RunDirectory.create(cfg))


class PlainRun:
    """A hand-written FedAvg run: the simulator's cohorts (same selection stream) and
    per-client seeds, each round's update from ``train``, applied to the global vector."""

    def __init__(
        self, sim: Simulation, make: Callable[[nn.Module, ClientPartition], Train]
    ) -> None:
        model = copy.deepcopy(sim.trainer.model)
        for p in model.parameters():  # own storage, not views of fedloom's flat buffer
            p.data = p.data.clone()
            p.grad = None
        self.model = model
        self.g = module_vector(model)
        self.data = sim.data.train
        self.train = make(copy.deepcopy(model), self.data)
        self.plan = TrainPlan(local_epochs=sim.config.client.local_epochs, batch_size=32, lr=0.05)
        self.rng = np.random.default_rng(0)  # the stream the fedloom server selects with
        self.round = 0
        self.rounds = sim.config.rounds
        self.k = sim.config.server.clients_per_round
        self.test = sim.engine.evaluator.test_tensors
        self.accuracy: float | None = None

    def step(self) -> None:
        """One round; the last also evaluates on the test set, as the simulation does."""
        self.round += 1
        cohort = np.sort(self.rng.choice(self.data.num_clients, size=self.k, replace=False))
        seeds = client_seeds(0, self.round, cohort)
        self.g = self.g + self.train(self.g, cohort, seeds, self.plan)
        if self.round == self.rounds:
            vector = torch.from_numpy(self.g.copy())
            nn.utils.vector_to_parameters(vector, self.model.parameters())
            self.accuracy = float(evaluate_model(self.model, *self.test)[1]["accuracy"].mean())


BASELINES: dict[str, Callable[[nn.Module, ClientPartition], Train]] = {
    "plain_reused": reused_loop,
    "plain_vmap": lambda model, data: vmap_loop(model, data, chunk=1000),
    "plain_deepcopy": deepcopy_loop,
}


def bench(label: str, s: Setting, out: Path) -> dict:
    """One repeat: warm every run up on a 2-round simulation, then time fresh runs'
    rounds interleaved."""
    plain_names = [n for n in BASELINES if n != "plain_deepcopy" or not s.realistic]
    warm = make_sim(s, out, f"warm-{label}-auto", "auto")
    auto = warm.executor.name
    for executor in ("vectorized", "sequential"):
        make_sim(s, out, f"warm-{label}-{executor}", executor).step()
    for name in plain_names:
        PlainRun(warm, BASELINES[name]).step()

    sims = {e: make_sim(s, out, f"bench-{label}-{e}", e) for e in ("vectorized", "sequential")}
    plain = {n: PlainRun(sims["vectorized"], BASELINES[n]) for n in plain_names}
    runners: dict[str, Callable[[], object]] = {e: sim.step for e, sim in sims.items()}
    runners |= {n: run.step for n, run in plain.items()}
    spent = dict.fromkeys(runners, 0.0)
    for _ in range(s.rounds):
        for name, runner in runners.items():
            t0 = time.perf_counter()
            runner()
            spent[name] += time.perf_counter() - t0
    acc = {e: sim.evaluate()["accuracy"] for e, sim in sims.items()}
    acc |= {n: run.accuracy for n, run in plain.items()}
    return {"auto": auto, "seconds": spent, "accuracy": acc}


def summarize(s: Setting, runs: list[dict]) -> dict:
    """Median seconds of each run over the repeats and the ratios fedloom is judged by."""
    secs = {
        n: round(statistics.median(r["seconds"][n] for r in runs), 4) for n in runs[0]["seconds"]
    }
    ratios = {
        "sequential/plain_reused": secs["sequential"] / secs["plain_reused"],
        "vectorized/plain_vmap": secs["vectorized"] / secs["plain_vmap"],
        "auto/best_plain": secs[runs[0]["auto"]] / min(secs["plain_reused"], secs["plain_vmap"]),
    }
    if "plain_deepcopy" in secs:  # historical
        ratios["vectorized/plain_deepcopy"] = secs["vectorized"] / secs["plain_deepcopy"]
        ratios["sequential/plain_deepcopy"] = secs["sequential"] / secs["plain_deepcopy"]
    return {
        "clients": s.clients,
        "per_round": s.per_round,
        "rounds": s.rounds,
        "local_epochs": s.epochs,
        "samples_per_client": s.samples or "1-14 (digits, Dirichlet 0.5)",
        "model": s.model,
        "auto": runs[0]["auto"],
        "seconds": secs,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "accuracy": {k: round(v, 4) for k, v in runs[0]["accuracy"].items()},
    }


def targets_of(results: dict[str, dict]) -> list[dict]:
    """Each fedloom executor is not slower than the hand-written loop that does the same
    work the same way (time ratio <= 1)."""
    out = []
    for label, r in results.items():
        for ratio in ("sequential/plain_reused", "vectorized/plain_vmap"):
            value = r["ratios"][ratio]
            out.append(
                {
                    "name": f"{label} ({r['model']}, {r['local_epochs']} epoch(s)): time {ratio}",
                    "value": value,
                    "goal": "<= 1",
                    "met": value <= 1,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results to this file")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: 2 rounds, 1 repeat, realistic clients of {QUICK_SAMPLES} samples",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats per config (median)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated labels")
    args = parser.parse_args()
    labels = [c for c in args.configs.split(",") if c]
    if not labels or any(c not in CONFIGS for c in labels):
        parser.error(f"--configs {args.configs!r}: expected labels from {', '.join(CONFIGS)}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            s = CONFIGS[label]
            if args.quick:
                samples = min(s.samples, QUICK_SAMPLES)
                s = Setting(s.clients, s.per_round, 2, s.epochs, samples, s.model)
            runs = [bench(label, s, Path(tmp)) for _ in range(repeats)]
            r = results[label] = summarize(s, runs)
            spec = f"{s.clients}/{s.per_round}/{s.rounds} {s.model} {s.epochs} ep"
            print(f"{label}  {spec}  auto={r['auto']}", flush=True)
            print("   s: " + "  ".join(f"{n} {v:.3f}" for n, v in r["seconds"].items()))
            print("   ratio: " + "  ".join(f"{n} {v:.3f}" for n, v in r["ratios"].items()))
            print("   acc: " + "  ".join(f"{n} {v:.4f}" for n, v in r["accuracy"].items()))
    print(f"threads=1 repeats={repeats} (median wall time of the timed rounds)")
    finish(
        {
            "threads": 1,
            "repeats": repeats,
            "configs": results,
            "total_s": round(time.perf_counter() - t0, 1),
            "targets": targets_of(results),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
