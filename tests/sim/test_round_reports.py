"""Round callbacks receive a typed RoundReport that agrees with the round's record."""

from __future__ import annotations

import math
from pathlib import Path

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.records import RoundReport, RoundResult


def test_on_round_gets_typed_reports_matching_the_records(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=3",
            "partition.num_clients=12",
            "server.clients_per_round=4",
            "devices.failure_prob=0.3",
            'devices.kind="lognormal"',
            "evaluation.every=2",
            'privacy.mode="central"',
            "privacy.noise_multiplier=1.0",
            'privacy.accountant="rdp"',
        ],
    )
    sim = start_simulation(config)
    reports: list[RoundReport] = []
    sim.run(on_round=reports.append)
    records = [r for r in sim.run_dir.records() if r.get("event") == "round"]
    assert len(reports) == len(records) >= 3
    for report, record in zip(reports, records, strict=True):
        assert isinstance(report, RoundReport) and isinstance(report.result, RoundResult)
        assert report.round == record["round"] and report.attempt == record["attempt"]
        assert report.result.status == record["status"]
        assert [e.to_json() for e in report.result.excluded] == record["excluded"]
        assert report.epsilon == record["epsilon"] and math.isfinite(report.epsilon)
        if "accuracy" in record:
            assert report.accuracy == record["accuracy"] and report.loss == record["loss"]
        else:
            assert report.accuracy is None and report.metrics == {}
    assert any(r.accuracy is not None for r in reports)
    assert any(r.accuracy is None for r in reports)
