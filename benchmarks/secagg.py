"""SecAgg+ cost against plain (unmasked) aggregation, measured in the same run.

For n clients with d = 100,000 float32 values each, SecAgg+ runs in one process via
``fedloom.secagg.simulate`` with k = 4 * ceil(log2 n) neighbours and threshold
t = k // 3 + 1 (so that with 30% dropouts every client keeps t live share holders with
overwhelming probability; a semi-honest server and no colluding clients assumed), and a
share of the clients dropping just before sending their masked
input (the most expensive case for the server, which must then remove their pairwise
masks). Reported: server time per round, mean client time, bytes uploaded per client
(mean over all n clients: dropped ones send less),
next to plain aggregation (summing the same float32 vectors; each client uploads 4d bytes).

Usage: ``uv run python benchmarks/secagg.py [--json PATH] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from fedloom.secagg import simulate

DIM = 100_000


def one(n: int, dropout: float, dim: int) -> dict:
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    k = min(n - 1, 4 * math.ceil(math.log2(n)))
    t = k // 3 + 1
    dropped = sorted(rng.choice(n, size=int(dropout * n), replace=False).tolist())
    total, report = simulate(
        vectors, threshold=t, neighbours=k, dropouts={"masked_input": dropped}, seed=n
    )
    t0 = time.perf_counter()
    plain = vectors[report.included].sum(axis=0, dtype=np.float64)
    plain_s = time.perf_counter() - t0
    error = float(np.abs(total - plain).max())
    return {
        "n": n,
        "d": dim,
        "dropout": dropout,
        "neighbours": k,
        "threshold": t,
        "server_s": round(report.server_time_s, 4),
        "client_s": round(report.client_time_s, 4),
        "upload_bytes_per_client": round(report.upload_bytes_per_client),
        "plain_upload_bytes_per_client": 4 * dim,
        "plain_server_s": round(plain_s, 5),
        "max_abs_error": error,
    }


def targets_of(rows: list[dict]) -> list[dict]:
    """The protocol's cost targets, on the rows that were measured."""

    def pick(n: int, dropout: float) -> dict | None:
        return next((r for r in rows if r["n"] == n and r["dropout"] == dropout), None)

    out = []
    for n, dropout, goal in ((100, 0.3, 0.5), (1000, 0.3, 5.0)):
        r = pick(n, dropout)
        if r is not None:
            name = f"server s at n = {n}, {dropout:.0%} dropouts"
            out.append(
                {
                    "name": name,
                    "value": r["server_s"],
                    "goal": f"<= {goal}",
                    "met": r["server_s"] <= goal,
                }
            )
    client = max(r["client_s"] for r in rows)
    out.append({"name": "client s (max)", "value": client, "goal": "<= 0.1", "met": client <= 0.1})
    full = [
        r["upload_bytes_per_client"] / r["plain_upload_bytes_per_client"]
        for r in rows
        if r["dropout"] == 0.0
    ]
    up = round(max(full), 3)
    out.append(
        {
            "name": "upload / plain (completing client)",
            "value": up,
            "goal": "<= 1.2",
            "met": up <= 1.2,
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="n = 100 only, d = 10,000")
    args = parser.parse_args()
    sizes, dim = ([100], 10_000) if args.quick else ([100, 500, 1000], DIM)
    rows = []
    print(
        f"{'n':>5} {'drop':>5} {'k':>3} {'t':>3} {'server s':>9} {'client s':>9} "
        f"{'upload/plain':>13} {'plain server s':>15}"
    )
    for n in sizes:
        for dropout in (0.0, 0.1, 0.3):
            r = one(n, dropout, dim)
            rows.append(r)
            ratio = r["upload_bytes_per_client"] / r["plain_upload_bytes_per_client"]
            print(
                f"{n:>5} {dropout:>5.0%} {r['neighbours']:>3} {r['threshold']:>3} "
                f"{r['server_s']:>9.3f} {r['client_s']:>9.4f} {ratio:>13.3f} "
                f"{r['plain_server_s']:>15.5f}",
                flush=True,
            )
    targets = targets_of(rows)
    for t in targets:
        print(
            f"target {t['name']}: {t['value']} (goal {t['goal']}) {'met' if t['met'] else 'MISSED'}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
