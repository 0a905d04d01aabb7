"""Seconds per round and memory per registered client as registered clients and
cohorts grow, with the growth fitted.

Each (registered, cohort) pair runs in its own process (so peak RSS is its own): a
full ``Simulation`` with a tiered device population and diurnal availability in
virtual time, the vectorized executor, FedAvg with uniform selection, one torch
thread. Every registered client holds 4 samples x 64 features (10 classes) in the
compact client pool (4, not more, so that 1,000,000 clients fit a 24 GiB machine);
an MLP 64-32-10 trains 1 local epoch with batch 32. Round 1 warms up, the next
``--rounds`` are timed; every pair runs ``--passes`` times, the passes in alternating
order, and the median over all timed rounds is reported. Evaluation runs only at the end.

Memory per registered client is measured two ways: the registry's own working state
(``ClientRegistry.nbytes`` over its clients, plus ``clients.sqlite`` on disk), and
the difference in peak RSS between the largest and the smallest registry at equal
cohort, over the difference in clients (data pool included: 4 x 64 float32 features,
an int64 label and an int64 offset = 1,040 bytes a client).

Growth: ``numpy.polyfit`` of log(s/round) on log(registered) at each cohort (the
exponent; 1 = linear in registered clients) and a straight line s/round = a + b N
(b: the marginal cost of one more registered client per round).

Usage: ``uv run python benchmarks/scale.py [--json PATH] [--plot PATH] [--quick]``
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import finish  # noqa: E402

REGISTERED = [10_000, 100_000, 1_000_000]
COHORTS = [100, 1_000, 10_000]
QUICK_REGISTERED = [2_000, 8_000]
QUICK_COHORTS = [50]
SAMPLES = 4  # per client
FEATURES = 64
DATA_BYTES_PER_CLIENT = SAMPLES * FEATURES * 4 + 8 + 8  # features, label, offset
PLOT = Path(__file__).resolve().parent / "results" / "scale_s_per_round.png"


def one(registered: int, cohort: int, rounds: int) -> dict[str, Any]:
    """One (registered, cohort) pair in this process: setup, a warm-up round, then
    ``rounds`` timed rounds."""
    import torch

    from fedloom.assemble import start_simulation
    from fedloom.config import load_config
    from fedloom.data import ArrayDataset, ClientPartition
    from fedloom.data.federated import FederatedData

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = registered * SAMPLES
    x = rng.standard_normal(size=(n, FEATURES), dtype=np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    train = ClientPartition(x, y, np.arange(0, n + 1, SAMPLES, dtype=np.int64), 10)
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
        t0 = time.perf_counter()
        sim = start_simulation(cfg, data=FederatedData(train, None, test))
        setup_s = time.perf_counter() - t0
        rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        spent = _time_components(sim)
        sim.step()  # warm-up
        times = []
        parts: dict[str, list[float]] = {name: [] for name in spent}
        for _ in range(rounds):
            for name in spent:
                spent[name] = 0.0
            t0 = time.perf_counter()
            rec = sim.step()
            times.append(time.perf_counter() - t0)
            for name, s in spent.items():
                parts[name].append(s)
        registry = sim.registry
        registry_bytes = registry.nbytes
        sqlite_bytes = sum(p.stat().st_size for p in registry.path.parent.glob("clients.sqlite*"))
        t0 = time.perf_counter()
        registry.snapshot(sim.engine.attempts)  # what every checkpoint adds
        snapshot_s = time.perf_counter() - t0
    return {
        "registered": registered,
        "cohort": cohort,
        "s_per_round": round(statistics.median(times), 5),
        "s_per_round_all": [round(t, 5) for t in times],
        "setup_s": round(setup_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_after_setup_mb": round(rss_setup, 1),
        "registry_bytes_per_client": round(registry_bytes / registered, 1),
        "sqlite_bytes_per_client": round(sqlite_bytes / registered, 1),
        "completed_last_round": rec["completed"],
        "components_ms": {k: round(statistics.median(v) * 1e3, 3) for k, v in parts.items()},
        "registry_snapshot_ms": round(snapshot_s * 1e3, 1),
    }


# The per-round steps timed on their own: (label, object path from the Simulation, method).
COMPONENTS = [
    ("availability sweep", "virtual_time", "available"),
    ("registry check-in sweep", "registry", "observe_availability"),
    ("admission", "engine", "admit"),
    ("registry stats", "registry", "stats"),
    ("selection", "engine.server", "begin_round"),
    ("registry record", "registry", "record_round"),
    ("round record", "engine", "append"),
]


def _time_components(sim: Any) -> dict[str, float]:
    """Wrap each of ``COMPONENTS``' methods on its instance so that the seconds spent in
    it add up in the returned dict (reset it before each round)."""
    spent = dict.fromkeys((label for label, _, _ in COMPONENTS), 0.0)
    for label, path, method in COMPONENTS:
        obj = sim
        for attr in path.split("."):
            obj = getattr(obj, attr)
        inner = getattr(obj, method)

        def timed(*args: Any, _inner: Any = inner, _label: str = label, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _inner(*args, **kw)
            finally:
                spent[_label] += time.perf_counter() - t0

        setattr(obj, method, timed)
    return spent


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One pair's passes as one row: the median over every timed round of every pass,
    each pass's median, and the largest peak RSS."""
    row = dict(runs[0])
    every = [t for r in runs for t in r["s_per_round_all"]]
    row["s_per_round"] = round(statistics.median(every), 5)
    row["s_per_round_all"] = every
    row["s_per_round_passes"] = [r["s_per_round"] for r in runs]
    for key in ("peak_rss_mb", "peak_rss_after_setup_mb", "setup_s"):
        row[key] = max(r[key] for r in runs)
    return row


def fit(rows: list[dict[str, Any]], cohort: int) -> dict[str, Any] | None:
    """The growth of s/round in registered clients at one cohort: the log-log slope
    (exponent) and the linear slope (seconds per round per registered client)."""
    pts = sorted((r["registered"], r["s_per_round"]) for r in rows if r["cohort"] == cohort)
    if len(pts) < 2:
        return None
    n = np.array([p[0] for p in pts], dtype=np.float64)
    s = np.array([p[1] for p in pts], dtype=np.float64)
    exponent, log_c = np.polyfit(np.log(n), np.log(s), 1)
    b, a = np.polyfit(n, s, 1)
    return {
        "cohort": cohort,
        "registered": n.astype(int).tolist(),
        "exponent": round(float(exponent), 3),
        # between the two largest registries, where fixed per-round costs weigh least
        "exponent_largest_step": round(float(np.log(s[-1] / s[-2]) / np.log(n[-1] / n[-2])), 3),
        "loglog_intercept": round(float(log_c), 4),
        "linear_intercept_s": round(float(a), 5),
        "linear_us_per_registered_client": round(float(b) * 1e6, 5),
        "ms_per_round_per_100k_registered": round(float(b) * 1e8, 3),
    }


def component_fits(rows: list[dict[str, Any]], cohort: int) -> dict[str, Any]:
    """Each timed step's milliseconds per round against registered clients at one
    cohort, and its log-log growth exponent."""
    at = sorted((r for r in rows if r["cohort"] == cohort), key=lambda r: r["registered"])
    n = np.log([r["registered"] for r in at])
    out: dict[str, Any] = {"cohort": cohort, "registered": [r["registered"] for r in at]}
    for label, _, _ in COMPONENTS:
        ms = [max(r["components_ms"][label], 1e-3) for r in at]
        out[label] = {"ms": ms, "exponent": round(float(np.polyfit(n, np.log(ms), 1)[0]), 3)}
    ms = [r["registry_snapshot_ms"] for r in at]
    out["registry snapshot (per checkpoint)"] = {
        "ms": ms,
        "exponent": round(float(np.polyfit(n, np.log(ms), 1)[0]), 3),
    }
    return out


def memory(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes per registered client: the registry's own state, and the difference in peak
    RSS between the largest and the smallest registry at each cohort."""
    per_cohort = {}
    for c in sorted({r["cohort"] for r in rows}):
        at = sorted((r for r in rows if r["cohort"] == c), key=lambda r: r["registered"])
        if len(at) >= 2 and at[-1]["registered"] > at[0]["registered"]:
            d_rss = (at[-1]["peak_rss_mb"] - at[0]["peak_rss_mb"]) * 2**20
            d_n = at[-1]["registered"] - at[0]["registered"]
            per_cohort[str(c)] = round(d_rss / d_n, 1)
    largest = max(rows, key=lambda r: r["registered"])
    return {
        "registry_bytes_per_client": largest["registry_bytes_per_client"],
        "sqlite_bytes_per_client": largest["sqlite_bytes_per_client"],
        "data_pool_bytes_per_client": DATA_BYTES_PER_CLIENT,
        "peak_rss_bytes_per_client_by_cohort": per_cohort,
    }


def plot(path: Path, rows: list[dict[str, Any]], fits: list[dict[str, Any]]) -> Path:
    """s/round against registered clients (log-log), one colour per cohort, with the
    fitted power law dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for k, f in enumerate(fits):
        pts = sorted(
            (r["registered"], r["s_per_round"]) for r in rows if r["cohort"] == f["cohort"]
        )
        n, s = zip(*pts, strict=True)
        ax.plot(n, s, "o-", color=f"C{k}", label=f"cohort {f['cohort']:,}")
        grid = np.geomspace(min(n), max(n), 20)
        ax.plot(
            grid,
            np.exp(f["loglog_intercept"]) * grid ** f["exponent"],
            "--",
            color=f"C{k}",
            lw=0.8,
            label=f"fit: N^{f['exponent']:.2f}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("registered clients N")
    ax.set_ylabel("seconds per round")
    ax.set_title("Round cost against registered clients")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def targets(fits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-round cost sub-linear in registered clients at the smallest cohort."""
    if not fits:
        return [
            {
                "name": "per-round cost growth exponent in registered clients",
                "value": "not run (fewer than two registry sizes)",
                "goal": "< 1",
                "met": False,
            }
        ]
    f = min(fits, key=lambda f: f["cohort"])
    lo, hi = f["registered"][0], f["registered"][-1]
    return [
        {
            "name": (
                f"per-round cost growth exponent in registered clients at cohort "
                f"{f['cohort']} ({lo:,} to {hi:,} registered)"
            ),
            "value": f["exponent"],
            "goal": "< 1 (sub-linear)",
            "met": f["exponent"] < 1.0,
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2k and 8k registered, cohort 50, inline"
    )
    parser.add_argument("--one", nargs=2, type=int, metavar=("REGISTERED", "COHORT"))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per pass")
    parser.add_argument("--passes", type=int, default=2, help="runs of every pair, interleaved")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.rounds)))
        return
    registered = QUICK_REGISTERED if args.quick else REGISTERED
    cohorts = QUICK_COHORTS if args.quick else COHORTS
    rounds = 2 if args.quick else args.rounds
    passes = 1 if args.quick else args.passes
    pairs = [(n, c) for n in registered for c in cohorts if c < n]
    start = time.perf_counter()
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {p: [] for p in pairs}
    print(f"pass {'registered':>10} {'cohort':>7} {'s/round':>9} {'peak RSS MB':>12}")
    for k in range(passes):  # alternate the order, so that load drift hits all pairs alike
        for n, c in pairs if k % 2 == 0 else pairs[::-1]:
            if args.quick:  # a smoke run: in this process (its peak RSS is then shared)
                run = one(n, c, rounds)
            else:
                cmd = [sys.executable, __file__, "--one", str(n), str(c), "--rounds", str(rounds)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"scale: --one {n} {c} failed:\n{out.stderr[-3000:]}")
                run = json.loads(out.stdout.strip().splitlines()[-1])
            runs[(n, c)].append(run)
            print(
                f"{k + 1:>4} {n:>10} {c:>7} {run['s_per_round']:>9.4f} {run['peak_rss_mb']:>12.0f}"
            )
    rows = [merge(runs[p]) for p in pairs]
    fits = [f for c in cohorts if (f := fit(rows, c)) is not None]
    for f in fits:
        print(
            f"cohort {f['cohort']}: s/round ~ N^{f['exponent']} "
            f"(N^{f['exponent_largest_step']} over the last step), "
            f"+{f['ms_per_round_per_100k_registered']} ms per round per 100k registered"
        )
    parts = component_fits(rows, min(cohorts)) if fits else None
    if parts is not None:
        print(f"cohort {parts['cohort']}, ms per round at {parts['registered']} registered:")
        for label, v in parts.items():
            if isinstance(v, dict):
                print(f"  {label:<36} {v['ms']}  ~N^{v['exponent']}")
    mem = memory(rows)
    print(f"memory per registered client: {json.dumps(mem)}")
    result: dict[str, Any] = {
        "quick": args.quick,
        "threads": 1,
        "samples_per_client": SAMPLES,
        "timed_rounds": rounds,
        "passes": passes,
        "rows": rows,
        "fits": fits,
        "components": parts,
        "memory_per_client": mem,
    }
    if fits:
        result["plot"] = str(plot(args.plot, rows, fits))
    result["total_s"] = round(time.perf_counter() - start, 1)
    result["targets"] = targets(fits)
    finish(result, args.json)


if __name__ == "__main__":
    main()
