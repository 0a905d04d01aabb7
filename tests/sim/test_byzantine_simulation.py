"""Byzantine clients in the simulator, seen from the run's records: a robust rule and
anomaly screening with reputation against simulated attacks, in rounds and asynchronous
buffers, and a resumed run that replays the attack and the defences exactly."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom import metrics
from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config
from fedloom.runs import RunDirectory

MALICIOUS = [0, 1, 2]


def config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=6",
            "partition.num_clients=12",
            'partition.method="iid"',
            "server.clients_per_round=12",
            f"attack.clients={MALICIOUS}",
            'simulation.executor="sequential"',
            "evaluation.every=100",
            "checkpoint.every=2",
            *extra,
        ],
    )


def rounds(sim) -> list[dict]:
    return [r for r in sim.run_dir.records() if r["event"] == "round"]


def test_scaling_attackers_are_refused_and_quarantined_while_honest_clients_are_not(
    tmp_path,
) -> None:
    sim = start_simulation(
        config(
            tmp_path,
            'attack.kind="scaling"',
            "attack.params={factor=50.0}",
            "anomaly.enabled=true",  # default reputation: three flags in a row quarantine
            "anomaly.probation_rounds=10",
        )
    )
    sim.run()
    records = rounds(sim)
    metrics.validate(records)
    first = records[0]
    flagged = {f["client"] for f in first["anomaly"]["flagged"]}
    assert set(MALICIOUS) <= flagged
    refused = {e["client"] for e in first["excluded"] if e["kind"] == "anomaly"}
    assert set(MALICIOUS) <= refused and len(refused - set(MALICIOUS)) <= 1
    assert first["completed"] == 12 - len(refused)
    quarantined = {
        d["client"] for r in records for d in r.get("reputation", []) if d["action"] == "quarantine"
    }
    assert set(MALICIOUS) <= quarantined and len(quarantined - set(MALICIOUS)) <= 1
    assert all(
        d["round"] == 3
        for r in records
        for d in r.get("reputation", [])
        if d["action"] == "quarantine" and d["client"] in MALICIOUS
    )
    # quarantined clients are no longer selected
    assert records[-1]["selected"] == 12 - len(quarantined)
    summary = {r["id"]: r for r in sim.registry.summary()}
    assert all(summary[c]["quarantined"] for c in MALICIOUS)
    assert all(summary[c]["selected"] == 3 for c in MALICIOUS)
    assert all("anomalous_update" in summary[c]["flags"] for c in MALICIOUS)


@pytest.mark.parametrize("rule", ["mean", "median"])
def test_a_robust_rule_keeps_training_under_a_sign_flip_the_mean_does_not(tmp_path, rule):
    sim = start_simulation(
        config(
            tmp_path,
            "rounds=8",
            'attack.kind="sign_flip"',
            "attack.params={scale=30.0}",
            f'aggregation.rule="{rule}"',
        )
    )
    summary = sim.run()
    if rule == "median":
        assert summary.accuracy > 0.7
    else:
        assert summary.accuracy < 0.3


@pytest.mark.parametrize(
    "extra",
    [
        ('attack.kind="alie"', 'aggregation.rule="centered_clip"', "aggregation.bucketing=2"),
        (
            'attack.kind="backdoor"',
            "anomaly.enabled=true",
            'aggregation.rule="median"',  # over each buffer's staleness-weighted rows
            'asynchronous.mode="fedbuff"',
            "asynchronous.buffer_size=4",
            "asynchronous.concurrency=8",
            'devices.kind="lognormal"',
        ),
    ],
    ids=["alie-centered-clip", "backdoor-fedbuff-median-anomaly"],
)
def test_a_resumed_attacked_run_equals_the_uninterrupted_one(tmp_path, extra) -> None:
    full = start_simulation(config(tmp_path / "a", *extra))
    full.run()
    crashed = start_simulation(config(tmp_path / "b", *extra))
    for _ in range(3):  # checkpoint after round 2; round 3 is lost in the "crash"
        crashed.step()
    path = crashed.run_dir.path
    del crashed
    resumed = resume_simulation(path)
    assert resumed.server.round == 2
    resumed.run()
    assert np.array_equal(resumed.server.params, full.server.params)
    ours = [r for r in RunDirectory(path).records() if r["event"] == "round"]
    theirs = rounds(full)
    for key in ("anomaly", "reputation", "excluded"):
        assert [r.get(key) for r in ours[-3:]] == [r.get(key) for r in theirs[-3:]]
