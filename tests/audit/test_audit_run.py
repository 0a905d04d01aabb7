"""Run-directory checks of ``fedloom audit`` on a tiny finished simulation: the ledger
recomputed from its events (and tampered with), file permissions, the registry's
measured survival under secure aggregation, and seeded randomness in a deployment."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fedloom.api import simulate
from fedloom.audit import audit

CONFIG = {
    "name": "tiny",
    "rounds": 2,
    "partition": {"num_clients": 10},
    "server": {"clients_per_round": 5},
    "client": {"local_epochs": 1},
    "model": {"hidden": [8]},
    "privacy": {"mode": "central", "noise_multiplier": 1.0, "accountant": "rdp"},
    "secagg": {"enabled": True},
    "checkpoint": {"every": 0},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs")
    summary = simulate({**CONFIG, "output_dir": str(out)}, progress=False)
    return summary.path


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_finished_run_ledger_is_consistent(run):
    report = audit(run)
    assert report.kind == "run"
    assert "ledger.consistent" in report.checks("info")
    assert not report.checks() & {"ledger.mismatch", "ledger.over_budget", "files.writable"}
    assert "randomness.seeded" in report.checks("info")  # a simulation, reported only
    dropout = next(f for f in report.findings if f.check == "secagg.dropout")
    assert "registry" in dropout.detail
    assert not report.has_high(), report.sorted()


def test_tampered_ledger_epsilon_is_high(run):
    path = run / "privacy.json"
    data = json.loads(path.read_text())
    data["epsilon"] = data["epsilon"] / 2
    path.write_text(json.dumps(data))
    report = audit(run)
    mismatch = [f for f in report.findings if f.check == "ledger.mismatch"]
    assert [f.severity for f in mismatch] == ["high"]
    assert "privacy.json epsilon" in mismatch[0].detail


def test_budget_exceeded_is_high(run):
    path = run / "privacy.json"
    data = json.loads(path.read_text())
    data["budget"] = {"epsilon": data["epsilon"] / 2, "delta": data["delta"]}
    path.write_text(json.dumps(data))
    assert "ledger.over_budget" in audit(run).checks("high")


def test_permissions(run):
    (run / "clients.sqlite").chmod(0o666)
    key = run / "server.key"
    key.write_text("not a real key")
    key.chmod(0o644)
    report = audit(run)
    assert {"files.writable", "files.key_readable"} <= report.checks("high")
    (run / "clients.sqlite").chmod(0o600)
    key.chmod(0o600)
    for checkpoint in (run / "checkpoints").iterdir():
        checkpoint.chmod(0o644)
    report = audit(run)
    assert "files.readable" in report.checks("medium")
    assert not report.checks() & {"files.writable", "files.key_readable"}


def test_seeded_randomness_in_a_deployment_is_high(run):
    path = run / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["randomness"]["runtime"] = "deployment"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    found = [f for f in audit(run).findings if f.check == "randomness.seeded_deployment"]
    assert found and found[0].severity == "high" and "selection = seed" in found[0].detail
