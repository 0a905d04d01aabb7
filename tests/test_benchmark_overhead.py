"""benchmarks/overhead.py --quick runs a tiny and a realistic MLP configuration end to end:
fedloom's two executors and the hand-written loops train the same cohorts on the same
batches (so they reach the same accuracy), and the ratios and targets in its JSON are
derived from the seconds it measured. Whether a target is met is not checked: a smoke
run of 2 rounds is too short for that."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "overhead.py"


def test_quick_run_times_fedloom_against_the_fair_loops_on_both_workloads(
    tmp_path: Path,
) -> None:
    out = tmp_path / "overhead.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--configs", "b,d", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result)[-1] == "targets"
    tiny, realistic = result["configs"]["b"], result["configs"]["d"]
    assert (tiny["model"], tiny["local_epochs"]) == ("mlp", 1)
    assert (realistic["local_epochs"], realistic["samples_per_client"]) == (5, 100)
    assert set(tiny["seconds"]) == {
        "vectorized",
        "sequential",
        "plain_reused",
        "plain_vmap",
        "plain_deepcopy",
    }
    assert set(realistic["seconds"]) == {"vectorized", "sequential", "plain_reused", "plain_vmap"}
    for r in (tiny, realistic):
        accuracy = list(r["accuracy"].values())
        assert max(accuracy) - min(accuracy) <= 2e-3, r["accuracy"]  # the same training
        s = r["seconds"]
        assert r["ratios"]["sequential/plain_reused"] == round(
            s["sequential"] / s["plain_reused"], 3
        )
        assert r["ratios"]["vectorized/plain_vmap"] == round(s["vectorized"] / s["plain_vmap"], 3)
    targets = result["targets"]
    assert len(targets) == 4
    for t in targets:
        label, ratio = t["name"][0], t["name"].rsplit("time ", 1)[1]
        assert t["value"] == result["configs"][label]["ratios"][ratio]
        assert t["met"] == (t["value"] <= 1)
    assert "target d (mlp, 5 epoch(s)): time vectorized/plain_vmap" in done.stdout


def test_unknown_config_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports sim_throughput, targets
    spec = importlib.util.spec_from_file_location("overhead_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["overhead.py", "--configs", "a,z"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    assert "--configs 'a,z'" in capsys.readouterr().err
