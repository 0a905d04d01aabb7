"""Registry reputation: the policy's math through record_screening/admit, the decisions
and reputation logs, persistence across reopen and exact snapshot restore."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import ConfigError, FedloomError
from fedloom.runs import RunDirectory
from fedloom.server.anomaly import SCORES, AnomalyDetector, Decision, ReputationPolicy, Screening
from fedloom.server.registry import ClientRegistry, Completion

N = 6
POLICY = ReputationPolicy(decay=0.7, quarantine_below=0.4, probation_rounds=3)


def make(path: Path, n: int = N) -> ClientRegistry:
    reg = ClientRegistry(path)
    reg.register(np.full(n, 10), np.ones(n))
    return reg


def screening(round: int, ids: list[int], flagged: list[int]) -> Screening:
    """A screening of ``ids`` in which ``flagged`` are norm outliers (z = 9)."""
    cid = np.array(ids, dtype=np.int64)
    bad = np.isin(cid, flagged)
    z = {
        "norm": np.where(bad, 9.0, 0.5),
        "cosine": np.full(len(ids), -0.5),
        "history": np.full(len(ids), math.nan),
    }
    return Screening(
        round=round,
        client_ids=cid,
        scores={name: np.zeros(len(ids)) for name in SCORES},
        z=z,
        score=np.fmax(z["norm"], z["cosine"]),
        flagged=bad,
        reasons=tuple("norm_outlier" if b else None for b in bad.tolist()),
        threshold=3.0,
    )


def play(
    reg: ClientRegistry,
    round: int,
    flagged: list[int],
    clamped: list[int] = (),
    policy: ReputationPolicy = POLICY,
) -> tuple[np.ndarray, list, list]:
    """One round: admit, select every admitted client, record, screen, snapshot."""
    blocked, releases = reg.admit(round, policy)
    ids = np.flatnonzero(~blocked)
    m = len(ids)
    completion = Completion(
        ids=ids,
        duration=np.full(m, 1.0),
        loss=np.full(m, 1.0),
        loss_sq=np.full(m, 1.0),
        num_examples=np.full(m, 10),
        steps=np.full(m, 1),
        contribution=np.full(m, 1.0 / m),
    )
    reg.record_round(round, float(round), ids, completion, {}, {})
    s = screening(round, ids.tolist(), [c for c in flagged if c in ids])
    decisions = reg.record_screening(round, s, policy, clamped=clamped)
    reg.snapshot(round, keep=100)
    return blocked, releases, decisions


def rounds_to_quarantine(decay: float, below: float) -> int:
    """Consecutive flags from reputation 1 until it falls below ``below``: decay**n < below."""
    return math.floor(math.log(below) / math.log(decay)) + 1


def test_a_client_flagged_every_round_is_quarantined_released_and_requarantined(
    tmp_path: Path,
) -> None:
    reg = make(tmp_path / "clients.sqlite")
    n = rounds_to_quarantine(POLICY.decay, POLICY.quarantine_below)
    for r in range(1, n):
        _, _, decisions = play(reg, r, flagged=[2])
        assert [(d.client, d.action, d.reason) for d in decisions] == [(2, "flag", "norm_outlier")]
        assert decisions[0].reputation == pytest.approx(POLICY.decay**r)
        assert not reg.quarantined(r + 1).any()
    _, _, decisions = play(reg, n, flagged=[2])
    (d,) = decisions
    assert (d.action, d.until) == ("quarantine", n + POLICY.probation_rounds)
    assert d.reputation == pytest.approx(POLICY.decay**n) and d.reputation < 0.4
    assert d.scores == {"norm": 9.0, "cosine": -0.5, "history": None}
    for r in range(n + 1, n + POLICY.probation_rounds + 1):  # held, not selectable
        blocked, releases, decisions = play(reg, r, flagged=[2])
        assert np.flatnonzero(blocked).tolist() == [2] and releases == [] and decisions == []
    r = n + POLICY.probation_rounds + 1
    blocked, releases, _ = play(reg, r, flagged=[])
    assert not blocked.any()
    assert [(x.client, x.action, x.reason) for x in releases] == [
        (2, "release", "quarantine_served")
    ]
    assert releases[0].reputation == POLICY.release_reputation == 0.7
    row = reg.summary()[2]
    assert (row["quarantined"], row["probation"]) == (False, POLICY.probation_rounds - 1)
    # one more flag on probation: back in quarantine at once, for twice as long
    _, _, (again,) = play(reg, r + 1, flagged=[2])
    assert again.action == "requarantine"
    assert again.until == r + 1 + 2 * POLICY.probation_rounds
    assert reg.quarantined(again.until)[2] and not reg.quarantined(again.until + 1)[2]
    assert reg.summary()[2]["quarantined_until"] == again.until


def test_probation_served_forgives_and_clean_rounds_restore_trust(tmp_path: Path) -> None:
    reg = make(tmp_path / "clients.sqlite")
    r = 0
    for _ in range(rounds_to_quarantine(POLICY.decay, POLICY.quarantine_below)):
        r += 1
        play(reg, r, flagged=[4])
    for _ in range(2 * POLICY.probation_rounds):
        r += 1
        play(reg, r, flagged=[])  # held, then released and clean on probation
    row = reg.summary()[4]
    assert (row["quarantined"], row["probation"]) == (False, 0)
    expected = 1 - (1 - POLICY.release_reputation) * POLICY.decay**POLICY.probation_rounds
    assert row["reputation"] == pytest.approx(expected)
    for _ in range(2):  # from ~0.9, two flags are not enough
        r += 1
        assert play(reg, r, flagged=[4])[2][0].action == "flag"
    r += 1
    (d,) = play(reg, r, flagged=[4])[2]
    assert (d.action, d.until) == ("quarantine", r + POLICY.probation_rounds)  # not doubled


def test_clamped_counts_lower_reputation_like_flags(tmp_path: Path) -> None:
    reg = make(tmp_path / "clients.sqlite")
    _, _, decisions = play(reg, 1, flagged=[1], clamped=[1, 3])
    got = {(d.client, d.action, d.reason) for d in decisions}
    assert got == {(1, "flag", "norm_outlier"), (3, "flag", "count_clamped")}
    rows = reg.summary()
    assert rows[1]["reputation"] == rows[3]["reputation"] == pytest.approx(POLICY.decay)
    assert rows[0]["reputation"] == 1.0 and rows[0]["quarantined_until"] == 0


def test_unscored_rows_count_neither_way(tmp_path: Path) -> None:
    reg = make(tmp_path / "clients.sqlite")
    play(reg, 1, flagged=[0])
    few = AnomalyDetector(N, 4).screen(2, np.ones((2, 4), np.float32), np.array([0, 1]))
    assert reg.record_screening(2, few, POLICY, clamped=[1]) == [
        Decision(2, 1, "flag", "count_clamped", POLICY.decay)
    ]
    assert reg.summary()[0]["reputation"] == pytest.approx(POLICY.decay)  # unchanged
    reg.close()


def test_decisions_and_reputation_tables(tmp_path: Path) -> None:
    path = tmp_path / "clients.sqlite"
    reg = make(path)
    for r in range(1, 5):
        play(reg, r, flagged=[0] if r <= 3 else [])
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT round, client_id, action, reason, norm_z, cosine_z, history_z, "
            "quarantined_until FROM decisions ORDER BY round"
        ).fetchall()
        reps = db.execute("SELECT round, client_id FROM reputation ORDER BY round").fetchall()
    assert rows == [
        (1, 0, "flag", "norm_outlier", 9.0, -0.5, None, 0),
        (2, 0, "flag", "norm_outlier", 9.0, -0.5, None, 0),
        (3, 0, "quarantine", "norm_outlier", 9.0, -0.5, None, 3 + POLICY.probation_rounds),
    ]
    assert reps == [(1, 0), (2, 0), (3, 0)]  # held in round 4: nothing changed
    assert [d["action"] for d in reg.decisions(0)] == ["flag", "flag", "quarantine"]
    assert reg.decisions(1) == []
    history = reg.reputation_history()
    assert [(h["round"], h["action"]) for h in history] == [
        (1, "flag"),
        (2, "flag"),
        (3, "quarantine"),
    ]
    assert history[-1]["reputation"] == pytest.approx(POLICY.decay**3)
    reg.close()


def test_reopen_and_restore_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "clients.sqlite"
    reg = make(path)
    for r in range(1, 4):
        play(reg, r, flagged=[5])
    summary = reg.summary()
    reg.close()
    with ClientRegistry(path) as again:  # the newest snapshot carries the reputation
        assert str(again.summary()) == str(summary)  # str: NaN != NaN in a plain ==
        assert again.quarantined(4)[5]
    reg = ClientRegistry(path)
    later = [play(reg, r, flagged=[1] if r == 5 else [])[1:] for r in range(4, 9)]
    state, log = reg.summary(), reg.decisions()
    reg.restore(4)
    assert [d["round"] for d in reg.decisions()] == [1, 2, 3]  # round 5's flag is gone
    assert max(h["round"] for h in reg.reputation_history()) <= 4
    replay = [play(reg, r, flagged=[1] if r == 5 else [])[1:] for r in range(5, 9)]
    assert replay == later[1:]
    assert str(reg.summary()) == str(state) and reg.decisions() == log
    saved = reg.snapshot_arrays()
    reg.close()
    rebuilt = make(tmp_path / "rebuilt.sqlite")
    rebuilt.restore_snapshot_arrays(8, saved)
    assert [r["reputation"] for r in rebuilt.summary()] == [r["reputation"] for r in state]
    rebuilt.close()


def test_rounds_are_recorded_once_and_in_order(tmp_path: Path) -> None:
    reg = make(tmp_path / "clients.sqlite")
    play(reg, 1, flagged=[0])
    with pytest.raises(FedloomError, match="last screened round 1"):
        reg.record_screening(1, screening(1, [0, 1, 2], [0]), POLICY)
    with pytest.raises(FedloomError, match="screening of round 2 recorded as round 3"):
        reg.record_screening(3, screening(2, [0, 1, 2], []), POLICY)
    with pytest.raises(FedloomError, match="admit round = 1"):
        reg.admit(1, POLICY)
    with pytest.raises(FedloomError, match="unknown client 9"):
        reg.record_screening(2, screening(2, [0, 1, 9], []), POLICY)
    assert reg.decisions()[-1]["round"] == 1 and reg.summary()[1]["reputation"] == 1.0
    reg.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"decay": 1.0}, "anomaly.reputation_decay"),
        ({"quarantine_below": -0.1}, "anomaly.quarantine_below"),
        ({"probation_rounds": 0}, "anomaly.probation_rounds"),
    ],
)
def test_bad_policy_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ReputationPolicy(**kwargs)


def test_clients_command_shows_reputation_and_plots_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedloom.cli import app
    from fedloom.config import RunConfig

    run = RunDirectory.create(RunConfig(output_dir=str(tmp_path), name="robust"))
    with make(run.path / "clients.sqlite") as reg:
        for r in range(1, 6):
            play(reg, r, flagged=[0, 3] if r <= 3 else [3])
    result = CliRunner().invoke(app, ["clients", str(run.path), "--top", "0"])
    assert result.exit_code == 0, result.output
    assert "0.34" in result.output and "held" in result.output  # (narrow: cells wrap)
    assert (run.report_dir / "clients_reputation.png").stat().st_size > 1000


def test_a_snapshot_from_before_reputations_restores_with_every_client_trusted(
    tmp_path: Path,
) -> None:
    """A run checkpointed before the reputation columns existed resumes: its snapshot
    lacks them, and every client starts fully trusted and free."""
    reg = make(tmp_path / "a.sqlite")
    play(reg, 1, flagged=[0])
    old = {
        name: blob
        for name, blob in reg.snapshot_arrays().items()
        if name not in ("reputation", "quarantined", "quarantined_until", "probation", "strikes")
    }
    fresh = make(tmp_path / "b.sqlite")
    fresh.restore_snapshot_arrays(1, old)
    rows = {r["id"]: r for r in fresh.summary()}
    assert rows[0]["reputation"] == 1.0 and not rows[0]["quarantined"]
    assert not fresh.quarantined(2).any()


def test_an_anomalous_refusal_sets_its_own_registry_flag(tmp_path: Path) -> None:
    from fedloom.errors import RejectionKind, UpdateRejected

    reg = make(tmp_path / "a.sqlite")
    ids = np.array([0, 1], dtype=np.int64)
    completion = Completion(
        ids=ids[1:],
        duration=np.ones(1),
        loss=np.ones(1),
        loss_sq=np.ones(1),
        num_examples=np.full(1, 10),
        steps=np.ones(1, dtype=np.int64),
        contribution=np.ones(1),
    )
    refusal = UpdateRejected(0, "anomalous update: norm_outlier", RejectionKind.ANOMALY)
    reg.record_round(1, 1.0, ids, completion, {}, {0: refusal})
    flags = {r["id"]: r["flags"] for r in reg.summary()}
    assert flags[0] == ["rejected_update", "anomalous_update"] and flags[1] == []
