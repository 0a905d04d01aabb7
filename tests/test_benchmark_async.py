"""benchmarks/async.py --quick runs end to end and writes its JSON: part 1's rows for
sync, FedBuff and FedAsync with the target derived from sync's final accuracy, part 2's
staleness facts (published values, the refused and counted stale update), the plot, and
the targets list. Speeds and whether part 1's targets are met are not checked: the smoke
run is too short for either. Part 3 (real gRPC processes, minutes) is left out of the
smoke run; its wrapper is checked on a stand-in module whose ``measure`` returns what
``benchmarks/async_deployment.py`` returns."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "async.py"


def _target_shape(targets: list[dict]) -> None:
    for t in targets:
        assert set(t) == {"name", "value", "goal", "met"} and isinstance(t["met"], bool)


def test_quick_run_writes_the_parts_plot_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "async.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-deployment", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Part 1" in done.stdout and "Part 2" in done.stdout
    result = json.loads(out.read_text())
    assert result["quick"] is True

    p1 = result["virtual_time"]
    rows = {r["algorithm"]: r for r in p1["rows"]}
    assert list(rows) == ["sync", "fedbuff", "fedasync"]
    assert math.isclose(p1["target"], p1["sync_final_accuracy"] - 0.01, abs_tol=1e-3)
    assert p1["p95_over_median_compute"] == 10.0
    budget = 10 * p1["rounds"]  # every algorithm aggregates as many updates
    for name, row in rows.items():
        assert row["updates_aggregated_per_seed"] == [budget] * len(p1["seeds"]), name
        assert row["tasks_per_seed"][0] >= budget
        assert 0.0 <= row["final_accuracy"] <= 1.0 and row["virtual_s_total"] > 0
        t = row["virtual_s_to_target"]
        assert t is None or 0 < t <= row["virtual_s_total"]
    assert rows["fedasync"]["server_steps"] == 10 * rows["fedbuff"]["server_steps"]
    for name in ("fedbuff", "fedasync"):
        assert rows[name]["staleness_max"] <= 20  # max_staleness
    assert Path(p1["plot"]).read_bytes().startswith(b"\x89PNG")

    p2 = result["staleness"]
    assert {f["kind"] for f in p2["functions"]} == {"constant", "polynomial", "hinge"}
    assert all(f["max_abs_error"] <= 1e-12 for f in p2["functions"])
    assert p2["by_hand"]["refusal_kind"] == "stale_version"
    assert p2["by_hand"]["next_step_dropped_stale"] == 1
    assert p2["simulated"]["dropped_stale"] > 0
    assert p2["simulated"]["largest_staleness_aggregated"] <= 1

    assert result["deployment"] == {"run": False, "reason": "--no-deployment"}
    targets = result["targets"]
    _target_shape(targets)
    assert len(targets) == 6
    assert targets[2]["met"] and targets[3]["met"]  # part 2 holds at any length
    assert [t["met"] for t in targets[4:]] == [False, False]  # part 3 not run


def _load() -> ModuleType:
    """The benchmark as a module (it sets thread variables on import: restored here)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    sys.path.insert(0, str(SCRIPT.parent))  # as when run as a script: its sibling modules
    try:
        spec = importlib.util.spec_from_file_location("async_benchmark", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))
        for n, value in saved.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


STAND_IN = """
def measure(quick):
    steps = 3 if quick else 8
    run = {"steps": steps}
    return {
        "steps": steps, "sync_wall_s": 20.0, "async_wall_s": 8.0, "ratio": 2.5,
        "sync": run, "fedbuff": run, "kill": {"lost": 0, "finished": True},
        "lost_acknowledged_updates": 0,
    }
"""


def test_part_3_loads_measure_by_path_and_checks_its_targets(tmp_path: Path) -> None:
    bench = _load()
    missing = bench.deployment(True, tmp_path / "absent.py")
    assert missing["run"] is False and "absent.py" in missing["reason"]
    assert [t["met"] for t in bench.deployment_targets(missing)] == [False, False]

    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    p3 = bench.deployment(True, path)
    assert p3["run"] is True and p3["steps"] == 3
    targets = bench.deployment_targets(p3)
    _target_shape(targets)
    assert [t["value"] for t in targets] == [[8.0, 20.0], 0]
    assert [t["met"] for t in targets] == [True, True]
    slower = p3 | {"async_wall_s": 30.0, "kill": {"lost": 1, "finished": True}}
    slower["lost_acknowledged_updates"] = 1
    assert [t["met"] for t in bench.deployment_targets(slower)] == [False, False]

    path.write_text("def measure(quick):\n    raise RuntimeError('server exited (1)')\n")
    failed = bench.deployment(True, path)
    assert failed["run"] is False and "server exited" in failed["reason"]
