"""Training under SecAgg+ against the same run without it, on the default experiment.

Every row runs the built-in default (``fedloom.config`` defaults: digits over 100
Dirichlet(0.5) clients, 10 per round, 50 rounds, MLP, FedAvg; one torch thread) with one
change: SecAgg+ (32-bit ring), SecAgg+ on a 16-bit ring with stochastic rounding
(quantizing compression), central DP-FedAvg with and without SecAgg+, and the
distributed discrete Gaussian (16- and 32-bit rings) at the same epsilon. The DP rows
use the RDP accountant (the only one the distributed mechanism has) with Poisson
sampling. Each row runs seeds 0, 1, 2 (``--seeds``). Reported: mean final test accuracy
(and its range over the seeds), its difference from the reference row's mean (no SecAgg;
central DP without SecAgg for the DP rows), the mean bytes a client uploads per round
(every protocol message; plain float32 otherwise) and its ratio to a float32 upload, the
largest epsilon spent, and the mean wall seconds of a whole run (after one untimed
warm-up round, so no row pays for imports).

Usage: ``uv run python benchmarks/secagg_training.py [--json PATH] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.privacy import accounting

EPSILON = 8.0
DP = ['privacy.accountant="rdp"', f"privacy.target_epsilon={EPSILON}"]
CENTRAL = f"central DP, eps {EPSILON:g}"
ROWS = [
    ("no SecAgg", "no SecAgg", []),
    ("SecAgg+ (32-bit)", "no SecAgg", ["secagg.enabled=true"]),
    (
        "SecAgg+ (16-bit, stochastic rounding)",
        "no SecAgg",
        ["secagg.enabled=true", "secagg.bits=16", 'secagg.rounding="stochastic"'],
    ),
    (CENTRAL, CENTRAL, ['privacy.mode="central"', *DP]),
    (
        f"SecAgg+ + central DP, eps {EPSILON:g}",
        CENTRAL,
        ['privacy.mode="central"', *DP, "secagg.enabled=true"],
    ),
    (
        f"distributed DG (16-bit), eps {EPSILON:g}",
        CENTRAL,
        ['privacy.mode="distributed"', *DP, "secagg.enabled=true", "secagg.bits=16"],
    ),
    (
        f"distributed DG (32-bit), eps {EPSILON:g}",
        CENTRAL,
        ['privacy.mode="distributed"', *DP, "secagg.enabled=true"],
    ),
]


def one(settings: list[str], rounds: int | None, out: Path, seed: int = 0) -> dict:
    extra = [f'output_dir="{out}"', f"seed={seed}", *settings]
    extra += [f"rounds={rounds}"] if rounds else []
    cfg = load_config(None, extra)
    for cache in (accounting._rdp_curve, accounting._compose_groups):
        cache.cache_clear()  # every run pays for its own accounting, as in a fresh process
    start = time.perf_counter()
    sim = start_simulation(cfg)
    summary = sim.run()
    wall = time.perf_counter() - start
    records = [r for r in sim.run_dir.records() if r["event"] == "round"]
    plain = 4 * sim.server.dim
    upload = [r["secagg"].get("upload_bytes", 0.0) for r in records if "secagg" in r]
    row = {
        "accuracy": round(summary.accuracy, 4),
        "upload_bytes_per_client": round(float(np.mean(upload))) if upload else plain,
        "plain_upload_bytes": plain,
        "epsilon": round(records[-1]["epsilon"], 3) if "epsilon" in records[-1] else None,
        "wall_s": round(wall, 2),
        "rounds": summary.rounds,
    }
    if sim.privacy.enabled:
        row["noise_multiplier"] = round(sim.privacy.noise_multiplier, 4)
    return row


def averaged(settings: list[str], rounds: int | None, out: Path, seeds: int) -> dict:
    """:func:`one` for seeds 0 .. seeds-1: mean accuracy (and range), upload, epsilon, wall."""
    runs = [one(settings, rounds, out / str(seed), seed) for seed in range(seeds)]
    accuracy = [r["accuracy"] for r in runs]
    row = {
        key: runs[0][key]
        for key in ("plain_upload_bytes", "rounds", "noise_multiplier")
        if key in runs[0]
    }
    row |= {
        "accuracy": round(float(np.mean(accuracy)), 4),
        "accuracy_min": min(accuracy),
        "accuracy_max": max(accuracy),
        "upload_bytes_per_client": round(
            float(np.mean([r["upload_bytes_per_client"] for r in runs]))
        ),
        "epsilon": None if runs[0]["epsilon"] is None else max(r["epsilon"] for r in runs),
        "wall_s": round(float(np.mean([r["wall_s"] for r in runs])), 2),
        "seeds": seeds,
    }
    return row


def targets_of(rows: list[dict]) -> list[dict]:
    """SecAgg+ without DP changes nothing but the encoding (accuracy within 0.005 of the
    reference), and no DP row spends more than the epsilon it was calibrated for."""
    out = []
    for row in rows:
        if row["name"] == row["reference"]:
            continue
        if row["epsilon"] is None:
            diff = row["accuracy_diff"]
            out.append(
                {
                    "name": f"{row['name']}: accuracy - reference",
                    "value": diff,
                    "goal": "|diff| <= 0.005",
                    "met": abs(diff) <= 0.005,
                }
            )
    for row in rows:
        if row["epsilon"] is not None:
            out.append(
                {
                    "name": f"{row['name']}: epsilon spent",
                    "value": row["epsilon"],
                    "goal": f"<= {EPSILON:g}",
                    "met": row["epsilon"] <= EPSILON,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="5 rounds, one seed")
    parser.add_argument("--seeds", type=int, default=3, help="runs per row (seeds 0, 1, ...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds, seeds = (5, 1) if args.quick else (None, args.seeds)
    results: dict[str, dict] = {}
    print(
        f"{'run':<40} {'accuracy':>8} {'range':>13} {'diff':>7} {'upload B':>9} {'/ f32':>6} "
        f"{'epsilon':>8} {'wall s':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        one(ROWS[-2][2], 1, Path(tmp) / "warm-up")  # imports and first-call costs, untimed
        for i, (name, reference, settings) in enumerate(ROWS):
            row = averaged(settings, rounds, Path(tmp) / str(i), seeds)
            row["name"] = name
            row["reference"] = reference
            base = row if reference == name else results[reference]
            row["accuracy_diff"] = round(row["accuracy"] - base["accuracy"], 4)
            results[name] = row
            ratio = row["upload_bytes_per_client"] / row["plain_upload_bytes"]
            eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.3f}"
            spread = f"{row['accuracy_min']:.4f}-{row['accuracy_max']:.4f}"
            print(
                f"{name:<40} {row['accuracy']:>8.4f} {spread:>13} {row['accuracy_diff']:>+7.4f} "
                f"{row['upload_bytes_per_client']:>9} {ratio:>6.3f} {eps:>8} "
                f"{row['wall_s']:>7.2f}",
                flush=True,
            )
    targets = targets_of(list(results.values()))
    for t in targets:
        print(
            f"target {t['name']}: {t['value']} (goal {t['goal']}) {'met' if t['met'] else 'MISSED'}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"rows": list(results.values()), "targets": targets}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
