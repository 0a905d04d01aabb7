"""benchmarks/robustness.py --quick runs end to end and writes its JSON: the norm bound
probed from honest updates, the attack x defence tables for both partitions, the backdoor
rows, the anomaly screening's quarantine facts, two heatmaps, and a targets list whose
values are derived from the measured tables. Whether a target is met is not checked: the
smoke run (2 rounds, one seed, a subset of the grid) is too short for that."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "robustness.py"
ATTACKS = ["none", "sign_flip", "scaling", "alie", "ipm"]
DEFENCES = [
    "mean",
    "median",
    "geometric_median",
    "centered_clip+bucketing",
    "median+bucketing",
    "geometric_median+bucketing",
]


def _points(x: float) -> float:
    return round(100.0 * x, 2)


def test_quick_run_writes_tables_backdoor_anomaly_plots_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "robustness.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "iid/momentum=0.9" in done.stdout and "Backdoor" in done.stdout
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["seeds"] == [0]
    assert result["setup"]["clients"] == 25 and result["setup"]["malicious"] == [0, 1, 2, 3, 4]

    bounds = result["norm_bound"]
    assert set(bounds) == {"iid/momentum=0.9", "noniid/momentum=0.9"}
    for b in bounds.values():
        low, high = b["honest_norm_p10_p90"]
        assert 0 < low <= b["max_norm"] <= high  # the median honest norm
        assert b["updates"] == 25 * result["setup"]["rounds"]

    tables = result["grid"]["tables"]
    assert set(tables) == {"iid/momentum=0.9", "noniid/momentum=0.9"}
    assert result["grid"]["runs"] == 2 * len(ATTACKS) * len(DEFENCES)
    for t in tables.values():
        assert list(t["mean_accuracy"]) == ATTACKS
        for a in ATTACKS:
            assert list(t["mean_accuracy"][a]) == DEFENCES
            for d in DEFENCES:
                (acc,) = t["accuracy_per_seed"][a][d]
                assert 0.0 <= acc <= 1.0
                assert math.isclose(t["mean_accuracy"][a][d], acc, abs_tol=1e-4)

    bd = result["backdoor"]
    labels = [r["defence"] for r in bd["rows"]]
    assert labels == ["no attack (mean)", "mean", "norm_bound", "median", "anomaly+reputation"]
    assert bd["max_norm"] == bounds["iid/momentum=0.9"]["max_norm"]
    for r in bd["rows"]:
        assert 0.0 <= r["main_accuracy"] <= 1.0 and 0.0 <= r["backdoor_accuracy"] <= 1.0

    an = result["anomaly"]
    assert an["settings"]["enabled"] is True and an["attack"] == "scaling"
    (seed,) = an["per_seed"]
    assert len(seed["first_quarantine_round_of_malicious"]) == 5
    assert not set(seed["honest_ever_quarantined"]) & {0, 1, 2, 3, 4}
    assert seed["honest_quarantined_fraction"] == len(seed["honest_ever_quarantined"]) / 20

    for plot in result["plots"]:
        assert Path(plot).read_bytes().startswith(b"\x89PNG")

    targets = result["targets"]
    for t in targets:
        assert set(t) == {"name", "value", "goal", "met"} and isinstance(t["met"], bool)
    assert len(targets) == 14
    iid = tables["iid/momentum=0.9"]["mean_accuracy"]
    base = iid["none"]["mean"]
    best, losers, strong, cc = targets[0:4]
    robust = DEFENCES[1:]
    for a in ATTACKS[1:]:
        top = max(iid[a][d] for d in robust)
        assert best["value"][a]["drop"] == _points(base - top)
        assert iid[a][best["value"][a]["best"]] == top
    assert best["met"] == all(v["drop"] <= 5 for v in best["value"].values())
    assert losers["value"] == {a: _points(base - iid[a]["mean"]) for a in losers["value"]}
    assert set(losers["value"]) == {"alie", "ipm", "sign_flip", "scaling"}
    assert losers["met"] == all(v >= 20 for v in losers["value"].values())
    assert cc["value"] == _points(base - iid["alie"]["centered_clip+bucketing"])
    assert cc["met"] == (cc["value"] <= 3)
    # momentum 0 and the strong variants are not in the smoke run: their checks say so
    for t in [strong, *targets[4:8], *targets[10:12]]:
        assert t["value"].startswith("not run") and t["met"] is False
    none = tables["noniid/momentum=0.9"]["mean_accuracy"]["none"]
    for t, rule in zip(targets[8:10], ["median", "geometric_median"], strict=True):
        lost = _points(none["mean"] - none[rule])
        recovered = _points(none[f"{rule}+bucketing"] - none[rule])
        assert t["value"] == {"lost": lost, "recovered": recovered}
        assert t["met"] == (recovered >= lost / 2)
    rounds_t, honest_t = targets[12:14]
    assert rounds_t["value"] == an["worst_rounds_to_quarantine_all"]
    assert rounds_t["met"] == (rounds_t["value"] is not None and rounds_t["value"] <= 5)
    assert honest_t["value"] == round(seed["honest_quarantined_fraction"], 4)
    assert honest_t["met"] == (honest_t["value"] < 0.05)
