"""Seconds per round and peak memory as registered clients and cohorts grow.

Each (registered, cohort) pair runs in its own process (so peak RSS is its own): a
full ``Simulation`` with a tiered device population and diurnal availability in
virtual time, the vectorized executor, FedAvg, one torch thread. Every registered
client holds 20 samples x 64 features (10 classes) in the compact client pool; an MLP
64-32-10 trains 1 local epoch with batch 32. Rounds 2-4 are timed (round 1 warms up);
evaluation runs only at the end, outside the timing.

Usage: ``uv run python benchmarks/scale.py [--json PATH] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRS = [
    (1_000, 100),
    (1_000, 1_000),
    (10_000, 100),
    (10_000, 1_000),
    (10_000, 10_000),
    (100_000, 100),
    (100_000, 1_000),
    (100_000, 10_000),
]


def one(registered: int, cohort: int, rounds: int) -> dict:
    import numpy as np
    import torch

    from fedloom.assemble import start_simulation
    from fedloom.config import load_config
    from fedloom.data import ArrayDataset, ClientPartition
    from fedloom.data.federated import FederatedData

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = registered * 20
    x = rng.standard_normal(size=(n, 64), dtype=np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    train = ClientPartition(x, y, np.arange(0, n + 1, 20, dtype=np.int64), 10)
    test = ArrayDataset(x[:1000].copy(), y[:1000].copy(), 10)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                f'output_dir="{tmp}"',
                f"rounds={rounds + 1}",
                f"partition.num_clients={registered}",
                f"server.clients_per_round={cohort}",
                "client.local_epochs=1",
                "client.lr=0.05",
                'devices.kind="tiered"',
                'devices.availability="diurnal"',
                f"evaluation.every={rounds + 1}",
                "checkpoint.every=0",
                'simulation.executor="vectorized"',
            ],
        )
        sim = start_simulation(cfg, data=FederatedData(train, None, test))
        sim.step()  # warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            rec = sim.step()
            times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "registered": registered,
        "cohort": cohort,
        "s_per_round": round(statistics.median(times), 4),
        "peak_rss_mb": round(peak_mb, 1),
        "completed_last_round": rec["completed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="only the 1k and 10k rows, 1 round")
    parser.add_argument("--one", nargs=2, type=int, metavar=("REGISTERED", "COHORT"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.rounds)))
        return
    pairs = [p for p in PAIRS if p[0] <= 10_000] if args.quick else PAIRS
    rounds = 1 if args.quick else args.rounds
    rows = []
    print(f"{'registered':>10} {'cohort':>7} {'s/round':>9} {'peak RSS MB':>12} {'completed':>10}")
    for registered, cohort in pairs:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(registered),
                str(cohort),
                "--rounds",
                str(rounds),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{registered:>10} {cohort:>7} {row['s_per_round']:>9.3f} "
            f"{row['peak_rss_mb']:>12.0f} {row['completed_last_round']:>10}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": 1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
