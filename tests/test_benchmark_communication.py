"""benchmarks/communication.py --quick runs end to end and writes its JSON: the three
parts, sane values (ratios, accuracies, bytes) and the targets list. Speeds and whether
a target is met are not checked: the smoke run is too short for either."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_the_parts_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "communication.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "communication.py"),
            "--quick",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Part 1" in done.stdout and "Part 3" in done.stdout
    result = json.loads(out.read_text())
    assert result["quick"] is True

    codecs = result["codecs"]
    rows = {r["codec"]: r for r in codecs["rows"]}
    assert list(rows)[0] == "float32" and rows["float32"]["ratio"] == 1.0
    assert math.isclose(codecs["target"], codecs["float32_final_accuracy"] - 0.01, abs_tol=1e-3)
    for row in rows.values():
        assert row["ratio"] >= 1.0 and 0.0 <= row["final_accuracy"] <= 1.0
        assert len(row["final_accuracy_per_seed"]) == len(codecs["seeds"])
        b = row["bytes_to_target"]
        assert b is None or (b > 0 and row["reduction"] > 0)
    assert 1.9 < rows["fp16"]["ratio"] <= 2.0  # half the bytes, less a header per payload
    assert rows["topk 0.01 + EF"]["ratio"] > 20

    bandwidth = result["bandwidth"]
    assert {r["config"] for r in bandwidth["rows"]} >= {"float32", "adaptive topk + EF"}
    assert bandwidth["best_fixed"].startswith("topk")
    assert 100 <= bandwidth["uplinks"]["up_kbps_min"] <= bandwidth["uplinks"]["up_kbps_max"]
    assert bandwidth["uplinks"]["up_kbps_max"] <= 100_000
    for row in bandwidth["rows"]:
        times = row["virtual_s_per_seed"]
        assert len(times) == len(bandwidth["seeds"])
        assert all(t is None or t > 0 for t in times)

    wire = result["wire"]
    assert wire["finished"] and wire["rounds_done"] == wire["rounds"]
    assert wire["uploads"] == wire["rounds"] * wire["clients"]
    assert wire["transport_bytes_up"] == wire["payload_bytes"] == wire["simulator_bytes_up"]
    assert wire["proxy_bytes_up"] > wire["payload_bytes"]  # framing, headers, polls
    assert wire["framing_bytes_up"] == wire["proxy_bytes_up"] - wire["payload_bytes"]
    assert 0.0 <= wire["max_abs_diff_vs_simulator"] < 1e-2

    targets = result["targets"]
    assert len(targets) >= 4
    for t in targets:
        assert set(t) == {"name", "value", "goal", "met"} and isinstance(t["met"], bool)
