"""benchmarks/edge.py --quick runs end to end and writes its JSON: both models' export
reports, the unequal-work runs of every variant, the monitoring overhead and every
built-in model's throughput, the plot, and a targets list whose values are derived from
those measurements. Whether a target is met is not checked: the smoke run (2 training
epochs, 3 rounds, one seed) is too short for that."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "edge.py"


def test_quick_run_writes_reports_runs_overhead_throughput_plot_and_targets(
    tmp_path: Path,
) -> None:
    out = tmp_path / "edge.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result)[-1] == "targets"
    assert (tmp_path / "edge_time_to_accuracy.png").stat().st_size > 0
    models = result["export"]["models"]
    assert set(models) == {"mlp", "lenet"}
    for m in models.values():
        names = {a["name"] for a in m["report"]["artifacts"]}
        assert {"torch", "torch-int8", "onnx", "onnx-int8"} <= names
    runs = result["unequal_work"]["runs"]
    assert {r["variant"] for r in runs} == {"fixed", "adaptive", "adaptive_fednova"}
    for r in runs:
        assert len(r["accuracy"]) == len(r["virtual_time"]) == 3
    fixed = next(r for r in runs if r["variant"] == "fixed")
    adaptive = next(r for r in runs if r["variant"] == "adaptive")
    # the slow devices miss the deadline with fixed work and train partially when adaptive
    assert fixed["dropped_deadline"] > 0 and fixed["partial"] == 0
    assert adaptive["dropped_deadline"] == 0 and adaptive["partial"] > 0
    assert set(result["monitoring"]) == {"mlp", "cnn"}
    kinds = {row["model"] for row in result["throughput"]}
    assert kinds == {"mlp", "logistic", "cnn", "mobilenet", "char"}
    assert all(row["samples_per_s"] > 0 for row in result["throughput"])
    targets = {t["name"]: t for t in result["targets"]}
    summary = result["unequal_work"]["summary"]
    fednova = next(t for n, t in targets.items() if n.startswith("FedNova"))
    assert fednova["value"]["fednova"] == round(summary["adaptive_fednova"]["final_accuracy"], 4)
    assert fednova["met"] == (
        summary["adaptive_fednova"]["final_accuracy"] >= summary["adaptive"]["final_accuracy"]
    )
    overhead = next(t for n, t in targets.items() if n.startswith("progress monitoring"))
    assert overhead["value"] == {
        k: round(v["overhead"], 4) for k, v in result["monitoring"].items()
    }
    size = targets["mlp torch int8 size ratio"]
    rows = {a["name"]: a for a in models["mlp"]["report"]["artifacts"]}
    assert size["value"] == round(rows["torch-int8"]["size_ratio"], 2)
    assert len(targets) == 13
