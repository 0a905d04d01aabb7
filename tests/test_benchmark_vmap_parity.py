"""benchmarks/vmap_parity.py --quick runs end to end and writes its JSON: one row per
workload and thread count with both implementations' rates and their ratio, the
aggregates of fedloom's round and the plain vmap loop agreeing, and the targets list
last. Speeds and whether the ratio goals are met are not checked: the smoke run is too
short for either."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "vmap_parity.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_quick_run_rows_agreement_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "vmap_parity.json"
    done = _run(
        "--quick", "--threads", "1", "--only", "mlp_digits tiny,cnn_digits tiny", "--json", str(out)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result)[-1] == "targets"
    assert result["repeats"] == 1
    rows = result["rows"]
    assert list(rows) == [
        "mlp_digits tiny, 1 thread",
        "cnn_digits tiny, 1 thread",
    ]
    for key, row in rows.items():
        rates = row["updates_per_s"]
        assert set(rates) == {"fedloom", "plain"} and min(rates.values()) > 0, key
        seconds = row["round_s"]
        assert abs(row["ratio"] - seconds["plain"] / seconds["fedloom"]) <= 0.01, key
        assert row["max_abs_aggregate_diff"] <= 1e-4, key  # the same math
        assert row["threads"] == 1 and row["clients"] >= 1
    assert rows["mlp_digits tiny, 1 thread"]["backend"] == "bmm"
    assert rows["cnn_digits tiny, 1 thread"]["backend"] == "vmap"
    assert rows["mlp_digits tiny, 1 thread"]["local_epochs"] == 1
    # the engine caps the batch by the largest client's data; both sides train that plan
    tiny = rows["mlp_digits tiny, 1 thread"]
    assert tiny["batch_size"] == tiny["samples_per_client"][1] < 32
    targets = result["targets"]
    for t in targets:
        assert set(t) == {"name", "value", "goal", "met"} and isinstance(t["met"], bool)
    assert len(targets) == len(rows) + 1
    assert targets[-1]["met"] is True  # the aggregates agree
    assert targets[0]["value"] == rows["mlp_digits tiny, 1 thread"]["ratio"]


def test_only_that_matches_nothing_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("vmap_parity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vmap_parity", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["vmap_parity.py", "--quick", "--only", "resnet"])
    with pytest.raises(SystemExit):
        module.main()
    assert "--only = 'resnet' matches no workload" in capsys.readouterr().err
