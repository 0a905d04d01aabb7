"""benchmarks/scale.py --quick runs end to end and writes its JSON: one row per
(registered, cohort) pair with timings and memory, a fit per cohort whose exponent and
linear slope follow from the rows, memory per registered client, the plot, and a targets
list derived from the fit. Whether the target is met is not checked: the smoke run
(2,000 and 8,000 clients, 2 rounds) is too small and too short for that."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scale.py"


def test_quick_run_writes_rows_fit_memory_plot_and_targets(tmp_path: Path) -> None:
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--plot", str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["samples_per_client"] == 4
    rows = result["rows"]
    assert [(r["registered"], r["cohort"]) for r in rows] == [(2000, 50), (8000, 50)]
    for r in rows:
        assert len(r["s_per_round_all"]) == result["timed_rounds"] == 2 and result["passes"] == 1
        assert len(r["s_per_round_passes"]) == 1
        assert abs(r["s_per_round_passes"][0] - r["s_per_round"]) <= 2e-5  # both rounded
        assert abs(r["s_per_round"] - np.median(r["s_per_round_all"])) <= 2e-5
        assert 0 < r["completed_last_round"] <= r["cohort"] * 2  # over-selection at most 2x
        assert r["registry_bytes_per_client"] > 0 and r["peak_rss_mb"] > 0

    (f,) = result["fits"]
    n = np.array([2000.0, 8000.0])
    s = np.array([r["s_per_round"] for r in rows])
    assert f["cohort"] == 50 and f["registered"] == [2000, 8000]
    assert f["exponent"] == round(float(np.polyfit(np.log(n), np.log(s), 1)[0]), 3)
    slope = (s[1] - s[0]) / (n[1] - n[0]) * 1e6
    assert abs(f["linear_us_per_registered_client"] - slope) < 1e-4

    parts = result["components"]
    assert parts["cohort"] == 50 and parts["registered"] == [2000, 8000]
    for label in ("availability sweep", "registry check-in sweep", "selection", "round record"):
        ms = parts[label]["ms"]
        assert ms == [r["components_ms"][label] for r in rows]
        assert parts[label]["exponent"] == round(float(np.polyfit(np.log(n), np.log(ms), 1)[0]), 3)
    for r in rows:  # the timed steps are parts of the round
        assert 0 < sum(r["components_ms"].values()) <= 1e3 * max(r["s_per_round_all"])
        assert r["registry_snapshot_ms"] > 0

    mem = result["memory_per_client"]
    assert mem["data_pool_bytes_per_client"] == 4 * 64 * 4 + 16
    assert mem["registry_bytes_per_client"] == rows[-1]["registry_bytes_per_client"]
    assert set(mem["peak_rss_bytes_per_client_by_cohort"]) == {"50"}

    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(result)[-1] == "targets"
    (target,) = result["targets"]
    assert target["value"] == f["exponent"] and target["met"] == (f["exponent"] < 1)
