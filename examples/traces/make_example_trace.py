"""Regenerate ``mixed_devices.jsonl``: 200 tiered devices with night-time availability.

Each client gets one online window per day over two days (a ``period`` of 48 h, so the
pattern repeats): it starts around 22:00 +- 2 h plus a per-client time-zone offset of up to
6 h, and lasts 20-50 % of a day, with the start and length jittered from day to day.

Run from anywhere: ``uv run python examples/traces/make_example_trace.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fedloom.sim.availability import DAY_S, IntervalTrace
from fedloom.sim.devices import tiered_population
from fedloom.sim.traces import write_trace

NUM_CLIENTS = 200
DAYS = 2
SEED = 0
OUT = Path(__file__).with_name("mixed_devices.jsonl")


def night_windows(n: int, rng: np.random.Generator) -> IntervalTrace:
    """One jittered window per day and client, wrapped into the ``DAYS``-day period."""
    period = DAYS * DAY_S
    base_start_h = 22.0 + rng.uniform(-2.0, 2.0, n) + rng.uniform(0.0, 6.0, n)
    base_fraction = rng.uniform(0.2, 0.5, n)
    intervals: list[list[tuple[float, float]]] = []
    for i in range(n):
        pieces: list[tuple[float, float]] = []
        for day in range(DAYS):
            start = (day * 24.0 + base_start_h[i] + rng.normal(0.0, 0.5)) * 3600.0
            length = np.clip(base_fraction[i] + rng.normal(0.0, 0.03), 0.05, 0.9) * DAY_S
            start, end = start % period, start % period + length
            if end > period:  # wraps past the end of the trace: split
                pieces += [(0.0, end - period), (start, period)]
            else:
                pieces.append((start, end))
        intervals.append(_merge(sorted((round(s), round(e)) for s, e in pieces)))
    return IntervalTrace.from_intervals(intervals, period)


def _merge(pairs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in pairs:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def main() -> None:
    rng = np.random.default_rng(SEED)
    pop = tiered_population(NUM_CLIENTS, rng)
    pop = replace(
        pop,
        # fewer digits keep the example readable
        compute_ms_per_sample=pop.compute_ms_per_sample.round(2),
        memory_mb=pop.memory_mb.round(),
        up_kbps=pop.up_kbps.round(),
        down_kbps=pop.down_kbps.round(),
        latency_ms=pop.latency_ms.round(1),
        availability=night_windows(NUM_CLIENTS, rng),
    )
    write_trace(OUT, pop)
    print(f"wrote {len(pop)} clients to {OUT}")


if __name__ == "__main__":
    main()
