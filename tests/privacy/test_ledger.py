"""The privacy ledger: running epsilon, privacy.json, append-only resume, views, the budget."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import fedloom.atomic
from fedloom.errors import CheckpointError, ConfigError
from fedloom.privacy import (
    Budget,
    MechanismEvent,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    compose_epsilon,
    epsilon,
)
from fedloom.privacy.ledger import HEADLINES, local_event

DELTA = 1e-5
ROUND = MechanismEvent("gaussian", 1.1, 0.05)
COUNT = MechanismEvent("gaussian", 10.0, 0.05)  # adaptive clipping's noisy count


def run(ledger: PrivacyLedger, rounds: range) -> None:
    for r in rounds:
        ledger.record(r, ROUND, note="update")
        ledger.record(r, COUNT, note="clip count")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_records_are_saved_and_reloaded_identically(tmp_path):
    path = tmp_path / "privacy.json"
    ledger = PrivacyLedger(path, Budget(8.0, DELTA), "rdp")
    assert read(path) == ledger.to_json()  # written from the start
    run(ledger, range(1, 4))
    assert read(path) == ledger.to_json()
    assert path.read_text() == json.dumps(ledger.to_json(), indent=2) + "\n"
    again = PrivacyLedger.load(path)
    assert again.to_json() == ledger.to_json()
    assert (again.accountant, again.budget, again.delta) == ("rdp", Budget(8.0, DELTA), DELTA)
    assert again.events == ledger.events
    assert again.record(4, ROUND) == ledger.record(4, ROUND)  # keeps accounting the same way
    assert [p.name for p in tmp_path.iterdir()] == ["privacy.json"]  # no temporary files left


def test_numpy_parameters_are_saved_as_plain_numbers(tmp_path):
    path = tmp_path / "privacy.json"
    ledger = PrivacyLedger(path, None, "rdp", delta=DELTA)
    event = MechanismEvent(
        "gaussian", np.float32(1.5), np.float64(0.25), np.int64(2), "fixed", np.int64(8)
    )
    ledger.record(np.int64(1), event)
    assert PrivacyLedger.load(path).events == (
        MechanismEvent("gaussian", 1.5, 0.25, 2, "fixed", 8),
    )


def test_json_layout(tmp_path):
    ledger = PrivacyLedger(tmp_path / "privacy.json", Budget(8.0, DELTA), "rdp")
    eps = ledger.record(1, ROUND, "update")
    assert ledger.to_json() == {
        "accountant": "rdp",
        "budget": {"epsilon": 8.0, "delta": DELTA},
        "view": "release",
        "headline": HEADLINES["release"],
        "epsilon": eps,
        "delta": DELTA,
        "events": [
            {
                "round": 1,
                "kind": "gaussian",
                "noise_multiplier": 1.1,
                "sampling_rate": 0.05,
                "count": 1,
                "sampling": "poisson",
                "population": None,
                "note": "update",
                "epsilon_after": eps,
            }
        ],
    }


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "privacy.json"
    ledger = PrivacyLedger(path, None, "rdp", delta=DELTA)
    ledger.record(1, ROUND)
    before = path.read_text()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fedloom.atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        ledger.record(2, ROUND)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["privacy.json"]


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_running_epsilon_is_the_composition_of_the_events(accountant):
    ledger = PrivacyLedger(None, None, accountant, delta=DELTA)
    history = []
    for r, event in enumerate([ROUND, COUNT, ROUND, MechanismEvent("gaussian", 0.9, 0.05)], 1):
        history.append(event)
        eps = ledger.record(r, event)
        assert eps == compose_epsilon(history, DELTA, accountant)
        assert ledger.epsilon() == eps
    assert ledger.events == tuple(history)
    assert [e.epsilon_after for e in ledger.entries] == sorted(
        e.epsilon_after for e in ledger.entries
    )


def test_a_thousand_identical_rounds_are_one_composition():
    ledger = PrivacyLedger(None, None, "rdp", delta=DELTA)
    for r in range(1, 1001):
        eps = ledger.record(r, ROUND)
    assert eps == pytest.approx(epsilon(1.1, 0.05, 1000, DELTA, "rdp"), rel=1e-12)


def test_a_resumed_ledger_keeps_every_release_and_recognises_identical_replays(tmp_path):
    path = tmp_path / "privacy.json"
    ledger = PrivacyLedger(path, Budget(20.0, DELTA), "rdp")
    for attempt in range(1, 6):
        ledger.record(attempt, ROUND, attempt=attempt, digest=f"d{attempt}")
    ledger = PrivacyLedger.load(path)  # restarted from the checkpoint of round 3
    assert len(ledger.entries) == 5, "nothing is forgotten"
    assert ledger.is_charged(4, "d4") and not ledger.is_charged(4, "other")
    assert not ledger.is_charged(6, "d4") and not ledger.is_charged(0, "")
    eps = ledger.record(4, ROUND, attempt=4, digest="other")  # round 4 redone differently
    assert ledger.entries[-1].replay == 1 and len(ledger.charged(4)) == 2
    assert eps == pytest.approx(compose_epsilon([ROUND] * 6, DELTA, "rdp"))
    assert PrivacyLedger.load(path).to_json() == ledger.to_json()


def test_server_view_takes_no_amplification_and_labels_the_model_view():
    ledger = PrivacyLedger(None, None, "rdp", delta=DELTA, view="server")
    eps = ledger.record(1, replace(ROUND, count=3))
    assert eps == pytest.approx(epsilon(1.1, 1.0, 3, DELTA, "rdp"))
    model = epsilon(1.1, 0.05, 3, DELTA, "rdp")
    assert ledger.secondary()["model_epsilon"] == pytest.approx(model)
    assert ledger.to_json()["secondary"]["model_epsilon"] < eps


def test_local_view_is_the_worst_clients_composition_of_its_uploads():
    upload = MechanismEvent("gaussian", 2.0, 0.05)  # sigma / C; one upload: sigma / 2C
    ledger = PrivacyLedger(None, Budget(50.0, DELTA), "rdp", view="local")
    for r in range(1, 9):
        ledger.record(r, upload, clients=[0, r])  # client 0 uploads in all 8 rounds
    assert ledger.participations()[0] == 8
    assert ledger.epsilon() == pytest.approx(epsilon(1.0, 1.0, 8, DELTA, "pld"))  # exact
    assert local_event(upload) == MechanismEvent("gaussian", 1.0)
    assert ledger.secondary()["model_epsilon"] < ledger.epsilon()
    assert ledger.would_exceed([upload], clients=[0]) is False
    once_more = epsilon(1.0, 1.0, 9, DELTA, "pld")
    assert ledger._planned([upload], clients=[5]) < once_more  # client 5 has 1 upload
    assert ledger._planned([upload], clients=[0]) == pytest.approx(once_more)


def test_a_new_ledger_does_not_overwrite_spent_budget(tmp_path):
    path = tmp_path / "privacy.json"
    run(PrivacyLedger(path, Budget(20.0, DELTA), "rdp"), range(1, 3))
    with pytest.raises(CheckpointError, match=r"privacy\.json.*already exists.*load"):
        PrivacyLedger(path, Budget(20.0, DELTA), "rdp")


def test_check_plan_refuses_a_plan_beyond_the_budget():
    ledger = PrivacyLedger(None, Budget(2.0, DELTA), "rdp")
    plan = [MechanismEvent("gaussian", 1.1, 0.05, count=500)]
    planned = compose_epsilon(plan, DELTA, "rdp")
    assert planned > 2.0
    with pytest.raises(PrivacyBudgetExceeded) as info:
        ledger.check_plan(plan)
    assert f"planned epsilon {planned:.4g}" in str(info.value)
    assert "budget epsilon 2" in str(info.value)
    assert (info.value.planned, info.value.budget) == (planned, Budget(2.0, DELTA))
    ledger.check_plan([MechanismEvent("gaussian", 1.1, 0.05, count=20)])  # fits


def test_check_plan_counts_what_was_already_spent():
    ledger = PrivacyLedger(None, Budget(4.0, DELTA), "rdp")
    rest = [MechanismEvent("gaussian", 1.1, 0.05, count=30)]  # epsilon 2.2 alone
    ledger.check_plan(rest)
    ledger.record(1, MechanismEvent("gaussian", 1.1, 0.05, count=130))  # 3.7, then 4.02
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check_plan(rest)


def test_would_exceed_and_remaining():
    budget = Budget(epsilon(1.1, 0.05, 10, DELTA, "rdp"), DELTA)  # exactly ten rounds
    ledger = PrivacyLedger(None, budget, "rdp")
    for r in range(1, 10):
        assert not ledger.would_exceed([ROUND])
        ledger.record(r, ROUND)
    assert ledger.remaining() == pytest.approx(budget.epsilon - ledger.epsilon())
    assert not ledger.would_exceed([ROUND])
    assert ledger.would_exceed([ROUND, ROUND])
    ledger.record(10, ROUND)
    assert ledger.remaining() == 0.0
    assert ledger.would_exceed([ROUND])
    assert not ledger.would_exceed([])


def test_without_a_budget_nothing_is_refused():
    ledger = PrivacyLedger(None, None, "rdp", delta=DELTA)
    plan = [MechanismEvent("gaussian", 0.5, 1.0, count=1000)]
    assert not ledger.would_exceed(plan)
    ledger.check_plan(plan)
    assert ledger.remaining() is None


def test_a_non_private_release_makes_epsilon_infinite(tmp_path):
    path = tmp_path / "privacy.json"
    ledger = PrivacyLedger(path, Budget(1.0, DELTA), "rdp")
    assert ledger.record(1, MechanismEvent("gaussian", 0.0)) == math.inf
    assert PrivacyLedger.load(path).epsilon() == math.inf


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "corrupt privacy ledger"),
        ("[]", "corrupt privacy ledger"),
        ('{"accountant": "rdp"}', "corrupt privacy ledger"),
    ],
)
def test_a_corrupt_file_names_its_path(tmp_path, content, reason):
    path = tmp_path / "privacy.json"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=reason) as info:
        PrivacyLedger.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("noise_multiplier", -1.0),
        ("noise_multiplier", "big"),
        ("kind", "exponential"),
        ("round", -2),
        ("epsilon_after", "3"),
        ("note", 7),
    ],
)
def test_a_corrupt_event_names_the_file(tmp_path, field, value):
    path = tmp_path / "privacy.json"
    run(PrivacyLedger(path, None, "rdp", delta=DELTA), range(1, 2))
    data = read(path)
    data["events"][0][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="corrupt privacy ledger") as info:
        PrivacyLedger.load(path)
    assert str(path) in str(info.value)


def test_a_tampered_total_is_caught(tmp_path):
    path = tmp_path / "privacy.json"
    run(PrivacyLedger(path, Budget(9.0, DELTA), "rdp"), range(1, 3))
    data = read(path)
    data["epsilon"] = 0.1
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="epsilon 0.1 is not the last event's"):
        PrivacyLedger.load(path)
    data = read(path) | {"epsilon": read(path)["events"][-1]["epsilon_after"], "delta": 1e-3}
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="differs from budget.delta"):
        PrivacyLedger.load(path)


def test_a_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read privacy ledger.*missing.json"):
        PrivacyLedger.load(tmp_path / "missing.json")


def test_rounds_may_repeat_after_a_resume_but_are_counts():
    ledger = PrivacyLedger(None, None, "rdp", delta=DELTA)
    ledger.record(5, ROUND)
    ledger.record(5, COUNT)  # several releases in one round are fine
    ledger.record(4, ROUND)  # a replayed round after resume: appended, never rewritten
    assert [e.round for e in ledger.entries] == [5, 5, 4]
    with pytest.raises(ConfigError, match="round = -1"):
        ledger.record(-1, ROUND)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Budget(0.0, DELTA), r"budget\.epsilon = 0\.0: must be > 0"),
        (lambda: Budget(1.0, 1.5), r"budget\.delta = 1\.5: must be in \(0, 1\)"),
        (lambda: PrivacyLedger(None, None), r"delta = None: a ledger without a budget"),
        (lambda: PrivacyLedger(None, Budget(1.0, DELTA), delta=1e-3), r"delta = 0\.001: differs"),
        (lambda: PrivacyLedger(None, None, delta=0.0), r"delta = 0\.0: must be in \(0, 1\)"),
        (lambda: PrivacyLedger(None, None, "gdp", delta=DELTA), r"accountant = 'gdp'"),
    ],
)
def test_bad_parameters(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
