"""Client selection and dropout handling in virtual time (3 seeds each, means reported).

1. Oort vs uniform: 200 clients, digits split into shards of 2 classes per client,
   10 clients per round, 20% of the devices 10x slower (50 vs 5 ms per sample). The
   speedup is uniform's virtual time to reach the target accuracy over Oort's; the
   accuracy delta compares final accuracy (mean of the last 10 evaluations), Oort minus
   uniform, in points.
2. Dropouts: 100 clients (Dirichlet 0.5), 10 per round, every dispatched device crashes
   with probability 0.3; over-selection ``auto`` and a quorum of 5. Compared with the
   same run without failures: final accuracy delta in points, and the fewest updates
   any aggregated round used.
3. Reliability: 50 clients whose hidden failure probabilities are drawn uniformly from
   [0, 0.6], 25 per round, uniform selection, 50 rounds; Spearman correlation between
   the registry's reliability scores and the true completion probabilities.

Usage: ``uv run python benchmarks/selection.py [--json PATH] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.report import time_to_target
from fedloom.sim import Simulation

SEEDS = (0, 1, 2)
QUORUM = 5


def write_trace(path: Path, compute_ms: np.ndarray, failure: np.ndarray) -> Path:
    with path.open("w") as f:
        for i, (c, p) in enumerate(zip(compute_ms, failure, strict=True)):
            f.write(
                json.dumps(
                    {
                        "client": i,
                        "compute_ms_per_sample": float(c),
                        "up_kbps": 10000,
                        "down_kbps": 50000,
                        "latency_ms": 50,
                        "failure_prob": float(p),
                    }
                )
                + "\n"
            )
    return path


def run(tmp: Path, name: str, sets: list[str]) -> Simulation:
    cfg = load_config(None, [f'output_dir="{tmp}"', f'name="{name}"', "checkpoint.every=0", *sets])
    sim = start_simulation(cfg)
    sim.run()
    return sim


def evals(sim: Simulation) -> list[dict]:
    return [r for r in sim.run_dir.records() if r.get("event") == "round" and "accuracy" in r]


def final_accuracy(sim: Simulation) -> float:
    return float(np.mean([r["accuracy"] for r in evals(sim)[-10:]]))


def oort_vs_uniform(tmp: Path, seed: int, rounds: int, target: float) -> dict:
    rng = np.random.default_rng([seed, 99])
    compute = np.where(rng.random(200) < 0.2, 50.0, 5.0)
    trace = write_trace(tmp / f"slow-{seed}.jsonl", compute, np.zeros(200))
    common = [
        f"seed={seed}",
        f"rounds={rounds}",
        'partition.method="shards"',
        "partition.num_clients=200",
        "partition.classes_per_client=2",
        "server.clients_per_round=10",
        'devices.kind="trace"',
        f'devices.trace="{trace}"',
    ]
    out = {}
    for strategy in ("uniform", "oort"):
        sim = run(tmp, f"{strategy}-{seed}", [*common, f'selection.strategy="{strategy}"'])
        tta = time_to_target(sim.run_dir.records(), "accuracy", target)
        out[strategy] = {"tta": tta, "acc": final_accuracy(sim)}
    return out


def dropouts(tmp: Path, seed: int, rounds: int) -> dict:
    common = [
        f"seed={seed}",
        f"rounds={rounds}",
        "partition.num_clients=100",
        "server.clients_per_round=10",
    ]
    base = run(tmp, f"nodrop-{seed}", common)
    drop = run(
        tmp,
        f"drop-{seed}",
        [
            *common,
            "devices.failure_prob=0.3",
            'server.over_selection="auto"',
            f"server.quorum={QUORUM}",
        ],
    )
    aggregated = [
        r["completed"]
        for r in drop.run_dir.records()
        if r.get("event") == "round" and r["status"] == "aggregated"
    ]
    return {
        "base": final_accuracy(base),
        "drop": final_accuracy(drop),
        "min_aggregated": min(aggregated),
        "skipped": sum(r.get("status") == "skipped" for r in drop.run_dir.records()),
    }


def reliability(tmp: Path, seed: int, rounds: int) -> float:
    rng = np.random.default_rng([seed, 98])
    failure = rng.uniform(0.0, 0.6, 50)
    trace = write_trace(tmp / f"fail-{seed}.jsonl", np.full(50, 5.0), failure)
    sim = run(
        tmp,
        f"rel-{seed}",
        [
            f"seed={seed}",
            f"rounds={rounds}",
            "partition.num_clients=50",
            "server.clients_per_round=25",
            'devices.kind="trace"',
            f'devices.trace="{trace}"',
        ],
    )
    rho = spearmanr(sim.registry.stats().reliability, 1.0 - failure).statistic
    return float(rho)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer rounds")
    parser.add_argument("--target", type=float, default=0.9, help="accuracy for time-to-target")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = SEEDS[:1] if args.quick else SEEDS
    oort_rounds, drop_rounds = (40, 20) if args.quick else (200, 60)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ou = [oort_vs_uniform(tmp, s, oort_rounds, args.target) for s in seeds]
        dr = [dropouts(tmp, s, drop_rounds) for s in seeds]
        rel = [reliability(tmp, s, 50) for s in seeds]

    def mean_tta(strategy: str) -> float:
        times = [o[strategy]["tta"] for o in ou]
        return float("nan") if None in times else statistics.mean(times)

    speedup = mean_tta("uniform") / mean_tta("oort")
    result = {
        "oort_speedup": round(speedup, 3),
        "oort_acc_delta": round(
            100 * statistics.mean(o["oort"]["acc"] - o["uniform"]["acc"] for o in ou), 2
        ),
        "dropout_acc_delta": round(100 * statistics.mean(d["drop"] - d["base"] for d in dr), 2),
        "min_aggregated": min(d["min_aggregated"] for d in dr),
        "quorum": QUORUM,
        "reliability_spearman": round(statistics.mean(rel), 3),
        "target_accuracy": args.target,
        "seeds": list(seeds),
        "per_seed": {"oort_vs_uniform": ou, "dropouts": dr, "reliability_spearman": rel},
    }
    print(f"1. Oort vs uniform ({len(seeds)} seeds, target {args.target}):")
    for s, o in zip(seeds, ou, strict=True):
        print(
            f"   seed {s}: time to target uniform {o['uniform']['tta']} s, oort "
            f"{o['oort']['tta']} s; final acc uniform {o['uniform']['acc']:.4f}, "
            f"oort {o['oort']['acc']:.4f}"
        )
    print(f"   speedup {result['oort_speedup']}x, accuracy delta {result['oort_acc_delta']} pts")
    print(
        f"2. 30% dropouts: accuracy delta {result['dropout_acc_delta']} pts, fewest "
        f"aggregated {result['min_aggregated']} (quorum {QUORUM}); per seed {dr}"
    )
    print(f"3. reliability Spearman {result['reliability_spearman']} (per seed {rel})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
