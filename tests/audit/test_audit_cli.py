"""``fedloom audit`` on the command line: deliberately weak configs exit 1 with every
expected high finding, clean ones exit 0, bad input is one line and exit 2, and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedloom.cli import app

runner = CliRunner()
EXAMPLE = Path(__file__).parents[2] / "examples" / "digits_iid.toml"

WEAK_SECAGG = """
name = "weak"
[server]
clients_per_round = 10
[secagg]
enabled = true
threshold = 1.0
[devices]
failure_prob = 0.1
"""

WEAK_KRUM = """
name = "weak-krum"
[server]
clients_per_round = 5
[aggregation]
rule = "krum"
"""


def run_json(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["audit", *args, "--json", "-"])
    return result.exit_code, json.loads(result.stdout)


def test_weak_secagg_config_fails_with_every_finding(tmp_path):
    path = tmp_path / "weak.toml"
    path.write_text(WEAK_SECAGG)
    code, data = run_json(str(path), "--insecure", "--byzantine-fraction", "0.2")
    assert code == 1
    by = {(f["check"], f["severity"]) for f in data["findings"]}
    assert {
        ("transport.no_tls", "high"),
        ("privacy.off", "medium"),
        ("secagg.dropout", "high"),
        ("aggregation.byzantine", "high"),
    } <= by
    assert data["kind"] == "config" and data["counts"]["high"] == 3
    assert [f["severity"] for f in data["findings"]][:3] == ["high"] * 3  # sorted


def test_weak_krum_config_fails(tmp_path):
    path = tmp_path / "krum.toml"
    path.write_text(WEAK_KRUM)
    code, data = run_json(str(path), "--byzantine-fraction", "0.4")
    assert code == 1
    krum = next(f for f in data["findings"] if f["check"] == "aggregation.byzantine")
    assert krum["severity"] == "high" and "2f + 2" in krum["detail"]
    assert runner.invoke(app, ["audit", str(path)]).exit_code == 0  # no fraction, no finding


def test_example_table_and_json_file(tmp_path):
    out = tmp_path / "audit.json"
    result = runner.invoke(app, ["audit", str(EXAMPLE), "--json", str(out)])
    assert result.exit_code == 0, result.stdout
    assert "0 high, 2 medium, 0 low, 1 info" in result.stdout
    assert "privacy.off" in result.stdout
    assert json.loads(out.read_text())["counts"] == {"high": 0, "medium": 2, "low": 0, "info": 1}


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = runner.invoke(app, ["audit", str(tmp_path / "missing.toml")])
    assert missing.exit_code == 2 and "error:" in missing.stdout
    assert "no such config file or run directory" in missing.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("[secagg]\nthreshold = 0.3\n")
    result = runner.invoke(app, ["audit", str(broken)])
    assert result.exit_code == 2 and "secagg.threshold" in result.stdout
    assert runner.invoke(app, ["audit", str(tmp_path)]).exit_code == 2  # not a run directory
    bad = runner.invoke(app, ["audit", str(EXAMPLE), "--byzantine-fraction", "2"])
    assert bad.exit_code == 2 and "--byzantine-fraction" in bad.stdout
