"""benchmarks/gpu_round.py runs on the CPU with tiny cohorts: its fedloom round and its
plain vmap loop reach the same model, its fedloom round copies no client's delta to the
host, and the JSON ends with targets derived from its own rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_on_the_cpu_writes_rows_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "gpu_round.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_round.py"),
            "--quick",
            "--dp",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert list(result)[-1] == "targets"
    assert result["central_dp"] is True and result["device"] == "cpu"
    rows = result["rows"]
    assert [r["cohort"] for r in rows] == [20, 60]
    for r in rows:
        assert r["max_abs_model_diff_vs_plain"] <= 1e-5
        assert r["delta_rows_copied"] == 0
        assert 0 < r["host_bytes_per_round"] < r["cohort"] * result["parameters"] * 4
        for name in ("fedloom_round", "train_only", "plain_vmap"):
            assert r[name]["updates_per_s"] > 0
    targets = {t["name"]: t for t in result["targets"]}
    assert targets["fedloom round's model agrees with the plain vmap loop's (FedAvg, lr 1)"]["met"]
    copied = targets["client deltas (rows of the model's size) copied to the host, check rounds"]
    assert copied["met"] and copied["value"] == 0
    ratio = next(t for name, t in targets.items() if name.startswith("full round / plain vmap"))
    expected = rows[-1]["fedloom_round"]["updates_per_s"] / rows[-1]["plain_vmap"]["updates_per_s"]
    assert abs(ratio["value"] - expected) < 1e-3 and ratio["met"] == (ratio["value"] >= 1)
    assert not any("10,000" in name for name in targets)  # the GPU goal only on a GPU
    assert "target" in proc.stdout


def test_bad_cohorts_are_refused_by_name() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_round.py"), "--cohorts", "10,x"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "--cohorts '10,x'" in proc.stderr
