"""benchmarks/privacy_attacks.py --quick runs end to end and writes its JSON: membership
attack metrics for no defence and DP at epsilon 1 and 8 (SecAgg pointing at no defence),
inversion PSNR/SSIM for every defence, and a targets list whose values are derived from
those measurements. Whether a target is met is not checked: the smoke run (60 members, 5
rounds, 3 clients, 60 inversion steps) is too small for that."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "privacy_attacks.py"
DEFENCES = ["none", "dp_eps1", "dp_eps8", "secagg", "topk0.1"]


def test_quick_run_writes_attack_results_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "privacy_attacks.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and list(result)[-1] == "targets"

    mia = result["membership"]
    assert mia["members"] == mia["non_members"] == 60
    runs = mia["runs"]
    assert list(runs) == DEFENCES[:4] and runs["secagg"]["same_as"] == "none"
    for name in DEFENCES[:3]:
        for attack in ("loss", "lira"):
            row = runs[name][attack]
            assert 0 <= row["auc"] <= 1 and 0 <= row["tpr_at_1pct_fpr"] <= 1
            assert math.isclose(row["balanced_accuracy"], (1 + row["advantage"]) / 2, abs_tol=1e-3)
            if name != "none":
                assert row["bound_excess_lower95"] <= row["bound_excess"]
                assert row["bound_violated"] == (row["bound_excess_lower95"] > 0)

    inv = result["inversion"]["results"]
    assert list(inv) == ["none", "dp_eps1", "dp_eps8", "secagg", "topk0.1"]
    for r in inv.values():
        assert r["psnr"] > 0 and -1 <= r["ssim"] <= 1

    targets = result["targets"]
    for t in targets:
        assert set(t) == {"name", "value", "goal", "met"} and isinstance(t["met"], bool)
    assert len(targets) == 8
    for t, eps in zip(targets[:2], ("1", "8"), strict=True):
        base, dp = runs["none"]["lira"], runs[f"dp_eps{eps}"]["lira"]
        assert t["value"] == {
            "none": base["auc"],
            "dp": dp["auc"],
            "drop": round(base["auc"] - dp["auc"], 4),
        }
        need = 2 * math.hypot(base["auc_stderr"], dp["auc_stderr"])
        assert t["met"] == (t["value"]["drop"] > need)
    for t, name in zip(targets[2:6], DEFENCES[1:], strict=True):
        drop = round(inv["none"]["psnr"] - inv[name]["psnr"], 2)
        assert t["value"] == {
            "none": inv["none"]["psnr"],
            "defended": inv[name]["psnr"],
            "drop_db": drop,
        }
        assert t["met"] == (drop >= 3.0)
    for t, eps in zip(targets[6:], ("1", "8"), strict=True):
        r = runs[f"dp_eps{eps}"]
        assert t["value"] == max(
            r["loss"]["bound_excess_lower95"], r["lira"]["bound_excess_lower95"]
        )
        assert t["met"] == (t["value"] <= 0)
