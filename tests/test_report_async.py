"""The run report of an asynchronous run: its rounds are server steps, it plots accuracy
against virtual time and the staleness of every aggregated update, and its summary
counts steps, staleness and updates dropped as too stale; synchronous runs are unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedloom.config import RunConfig
from fedloom.report import is_asynchronous, staleness_totals, summary_rows, write_plots
from fedloom.runs import RunDirectory

TASK = {"metrics": ["accuracy"], "maximize": ["accuracy"]}


def _step(n: int, accuracy: float, staleness: dict[str, int], dropped: int) -> dict[str, Any]:
    return {
        "round": n,
        "event": "round",
        "status": "aggregated",
        "rejected": dropped,
        "wall_s": 0.25,
        "accuracy": accuracy,
        "loss": 1.0 - accuracy,
        "virtual_time": 10.0 * n,
        "staleness": staleness,
        "dropped_stale": dropped,
        "contributors": list(range(sum(staleness.values()))),
    }


STEPS = [
    {"round": 0, "event": "start", "task": TASK, "accuracy": 0.1, "loss": 2.3},
    _step(1, 0.5, {"0": 3}, 0),
    _step(2, 0.7, {"0": 1, "1": 2}, 0),
    _step(3, 0.6, {"1": 1, "3": 2}, 2),
]


def _run(tmp_path: Path, records: list[dict[str, Any]]) -> RunDirectory:
    run = RunDirectory.create(RunConfig(name="async", output_dir=tmp_path))
    for r in records:
        run.append(r)
    return run


def test_staleness_is_summed_over_steps_by_value():
    assert is_asynchronous(STEPS)
    assert staleness_totals(STEPS) == {0: 4, 1: 3, 3: 2}
    assert not is_asynchronous([{"event": "round", "round": 1, "accuracy": 0.5}])


def test_summary_counts_steps_staleness_and_dropped_updates(tmp_path):
    rows = dict(summary_rows(_run(tmp_path, STEPS)))
    assert "rounds" not in rows
    assert rows["server steps"] == "3"
    assert rows["updates aggregated"] == "9"
    # mean (0*4 + 1*3 + 3*2) / 9 = 1.00; the 5th of 9 sorted values is 1
    assert rows["staleness (mean / median / max)"] == "1.00 / 1 / 3"
    assert rows["updates dropped as too stale"] == "2"
    assert rows["best test accuracy"] == "0.7000 (step 2)"
    assert rows["virtual time"] == "30.0 s"
    assert rows["training wall time"] == "0.75 s (0.250 s/step)"


def test_plots_accuracy_against_virtual_time_and_a_staleness_histogram(tmp_path):
    run = _run(tmp_path, STEPS)
    plots = {p.name for p in write_plots(run)}
    assert plots == {"accuracy.png", "loss.png", "accuracy_vs_time.png", "staleness.png"}
    assert (run.report_dir / "staleness.png").read_bytes().startswith(b"\x89PNG")


def test_a_synchronous_run_gets_no_staleness_plot_or_rows(tmp_path):
    records = [
        {k: v for k, v in r.items() if k not in ("staleness", "dropped_stale", "contributors")}
        for r in STEPS
    ]
    run = _run(tmp_path, records)
    assert {p.name for p in write_plots(run)} == {
        "accuracy.png",
        "loss.png",
        "accuracy_vs_time.png",
    }
    rows = dict(summary_rows(run))
    assert rows["rounds"] == "3" and rows["best test accuracy"] == "0.7000 (round 2)"
    assert not any("stale" in k or k == "server steps" for k in rows)
