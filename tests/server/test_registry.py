"""Client registry: learned statistics, validation, SQLite log, snapshots and exact restore."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import CheckpointError, ConfigError, FedloomError, UpdateRejected
from fedloom.errors import RejectionKind as K
from fedloom.server.registry import FLAGS, ClientRegistry, Completion, UnknownClient
from fedloom.server.stats import ClientStats

TABLES = ("clients", "participation", "evaluations", "checkins", "snapshots")


def refusal(reason: str, kind: K) -> UpdateRejected:
    return UpdateRejected(0, reason, kind)


def make(tmp_path: Path, n: int = 5, **kwargs: float) -> ClientRegistry:
    reg = ClientRegistry(tmp_path / "clients.sqlite", **kwargs)
    reg.register(np.arange(n) * 10 + 1, np.linspace(0.0, 2.0, n))
    return reg


def completion(ids: list[int] | np.ndarray, duration: float = 10.0, **fields) -> Completion:
    """A completion of ``ids`` with defaults for the fields not given."""
    ids = np.asarray(ids, dtype=np.int64)
    m = len(ids)
    values = {
        "duration": np.full(m, duration) if np.ndim(duration) == 0 else duration,
        "loss": np.full(m, 1.0),
        "loss_sq": np.full(m, 2.0),
        "num_examples": np.full(m, 32, dtype=np.int64),
        "steps": np.full(m, 4, dtype=np.int64),
        "contribution": np.full(m, 1.0 / max(m, 1)),
    }
    values.update(fields)
    return Completion(ids=ids, **values)


def counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def assert_same_stats(a: ClientStats, b: ClientStats) -> None:
    for f in dataclasses.fields(ClientStats):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype, f.name
        np.testing.assert_array_equal(x, y, err_msg=f.name)


def assert_unchanged(reg: ClientRegistry, call: Callable[[], object], exc: type, match: str):
    """``call`` raises ``exc`` and leaves the registry's state and every table as they were."""
    before, rows = reg.stats(), counts(reg.path)
    with pytest.raises(exc, match=match):
        call()
    assert_same_stats(reg.stats(), before)
    assert counts(reg.path) == rows


def play(reg: ClientRegistry, rounds: range) -> None:
    """A deterministic mix of every kind of call, a function of the round number only."""
    n = reg.num_clients
    for r in rounds:
        rng = np.random.default_rng(r)
        t = r * 1800.0
        reg.observe_availability(t, np.flatnonzero(rng.random(n) < 0.6))
        reg.check_in(int(rng.integers(n)), t + 60.0, bool(rng.random() < 0.5))
        sel = np.sort(rng.choice(n, size=6, replace=False))
        done = sel[:3]
        reg.record_round(
            r,
            t + 900.0,
            sel,
            completion(
                done,
                duration=float(rng.uniform(5, 50)),
                loss=rng.uniform(0, 2, 3),
                contribution=rng.dirichlet(np.ones(3)),
            ),
            failed={int(sel[3]): "timeout"},
            rejected={
                int(sel[4]): refusal("stale update", K.STALE_VERSION),
                int(sel[5]): refusal("delta contains 2 NaN/inf values", K.NONFINITE),
            },
        )
        reg.record_evaluation(r, sel[:2], rng.uniform(0, 1, 2), rng.uniform(0, 3, 2))


def test_fresh_registry_has_priors_and_stats_are_copies(tmp_path: Path) -> None:
    with make(tmp_path, n=4) as reg:
        s = reg.stats()
        assert reg.num_clients == s.num_clients == 4
        assert s.data_size.dtype == np.int64 and s.data_size.tolist() == [1, 11, 21, 31]
        np.testing.assert_array_equal(s.reliability, 0.5)
        assert s.online_prob.dtype == np.float32 and s.online_prob.shape == (4, 24)
        np.testing.assert_array_equal(s.online_prob, 0.5)
        assert np.isnan(s.loss).all() and np.isnan(s.duration).all()
        assert s.flags.dtype == np.int32 and not s.flags.any()
        s.selected[:] = 7
        s.online_prob[:] = 0.0
        assert not reg.stats().selected.any()
        np.testing.assert_array_equal(reg.stats().online_prob, 0.5)


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="decay = 1.5"):
        ClientRegistry(tmp_path / "a.sqlite", decay=1.5)
    with pytest.raises(ConfigError, match="duration_smoothing = 0"):
        ClientRegistry(tmp_path / "b.sqlite", duration_smoothing=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data_size": np.ones((2, 2), np.int64)}, r"data_size has shape \(2, 2\)"),
        ({"data_size": np.array([3, -1, 2])}, "data_size = -1 for client 1"),
        ({"data_size": np.array([3.0, 1.0, 2.0])}, "data_size has dtype float64"),
        ({"data_size": np.array([], np.int64), "label_entropy": []}, "data_size is empty"),
        ({"label_entropy": np.array([0.1, np.nan, 0.2])}, "label_entropy = nan for client 1"),
        ({"label_entropy": np.zeros(2)}, r"label_entropy has shape \(2,\), expected \(3,\)"),
        ({"tier": np.array([0, -2, 1])}, "tier = -2 for client 1"),
        ({"compute_ms_per_sample": np.array([1.0, 2.0, np.inf])}, "= inf for client 2"),
        ({"up_kbps": np.array([100.0, 0.0, 5.0])}, "up_kbps = 0.0 for client 1"),
        ({"down_kbps": np.array([1.0, 2.0])}, r"down_kbps has shape \(2,\)"),
    ],
)
def test_register_rejects_bad_profiles(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"data_size": np.array([3, 1, 2]), "label_entropy": np.array([0.1, 0.5, 0.2])}
    reg = ClientRegistry(tmp_path / "clients.sqlite")
    with pytest.raises(FedloomError, match=match):
        reg.register(**(args | kwargs))
    assert reg.num_clients == 0 and counts(reg.path)["clients"] == 0


def test_register_on_existing_db_verifies_the_federation(tmp_path: Path) -> None:
    make(tmp_path, n=5, decay=0.9).close()
    reg = ClientRegistry(tmp_path / "clients.sqlite")
    assert reg.num_clients == 5
    assert reg.stats().data_size.tolist() == [1, 11, 21, 31, 41]
    reg.register(np.arange(5) * 10 + 1, np.linspace(0.0, 2.0, 5))  # same profile: accepted
    with pytest.raises(FedloomError, match="was built for 5 clients, register.. got 6"):
        reg.register(np.arange(6), np.zeros(6))
    with pytest.raises(FedloomError, match="data_size = 21 for client 2; register.. got 99"):
        reg.register(np.array([1, 11, 99, 31, 41]), np.linspace(0.0, 2.0, 5))
    assert counts(reg.path)["clients"] == 5
    reg.close()


def test_record_round_learns_reliability_duration_loss_and_flags(tmp_path: Path) -> None:
    reg = make(tmp_path, n=5, decay=0.5, duration_smoothing=0.25)
    reg.record_round(
        1,
        100.0,
        np.array([0, 1, 2, 4]),
        completion([0], duration=10.0, loss=np.array([1.5]), loss_sq=np.array([3.0])),
        failed={1: "timeout"},
        rejected={
            2: refusal("delta contains 3 NaN/inf values", K.NONFINITE),
            3: refusal("stale update for round 0", K.STALE_VERSION),
        },
    )
    s = reg.stats()
    assert s.selected.tolist() == [1, 1, 1, 0, 1]
    assert s.completed.tolist() == [1, 0, 0, 0, 0]
    assert s.last_round.tolist() == [1, 1, 1, 0, 1]
    np.testing.assert_allclose(s.reliability, [2 / 3, 1 / 3, 1 / 3, 0.5, 1 / 3])
    assert s.duration[0] == 10.0 and s.loss[0] == 1.5 and s.loss_sq[0] == 3.0
    assert np.isnan(s.duration[1:]).all()
    nonfinite = FLAGS["rejected_update"] | FLAGS["nonfinite_update"]
    assert s.flags.tolist() == [
        0,
        0,
        nonfinite,
        FLAGS["rejected_update"] | FLAGS["stale_update"],
        0,
    ]

    # Second round: discounting, EWMA of duration, NaN loss_sq keeps the last report.
    reg.record_round(
        2, 200.0, np.array([0]), completion([0], 30.0, loss_sq=np.array([np.nan])), {}, {}
    )
    s = reg.stats()
    a, b = 0.5 * 1 + 1, 0.0
    assert s.reliability[0] == pytest.approx((a + 1) / (a + b + 2))
    assert s.duration[0] == pytest.approx(0.25 * 30.0 + 0.75 * 10.0)
    assert s.loss[0] == 1.0 and s.loss_sq[0] == 3.0
    assert s.selected[0] == 2 and s.completed[0] == 2 and s.last_round[0] == 2

    assert [(h["round"], h["outcome"]) for h in reg.history(0)] == [
        (1, "completed"),
        (2, "completed"),
    ]
    assert reg.history(1) == [
        {
            "round": 1, "time": 100.0, "outcome": "failed", "reason": "timeout",
            "duration": None, "loss": None, "num_examples": None, "steps": None,
            "contribution": None, "accuracy": None, "eval_loss": None,
        }
    ]  # fmt: skip
    assert reg.history(3)[0]["outcome"] == "rejected"  # rejected without being selected
    assert reg.history(4)[0]["outcome"] == "failed" and reg.history(4)[0]["reason"] is None
    first = reg.history(0)[0]
    assert (first["duration"], first["loss"], first["num_examples"], first["steps"]) == (
        10.0,
        1.5,
        32,
        4,
    )
    assert counts(reg.path)["participation"] == 6
    reg.close()


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        (K.NONFINITE, {"nonfinite_update"}),
        (K.STALE_VERSION, {"stale_update"}),
        (K.STALE_TASK, {"stale_update"}),
        (K.WRONG_SHAPE, {"oversized_update"}),
        (K.OVERSIZED, {"oversized_update"}),
        (K.DUPLICATE, set()),
        (K.ANOMALY, {"anomalous_update"}),
    ],
)
def test_rejection_kinds_set_flags(tmp_path: Path, kind: K, names: set[str]) -> None:
    # the kind decides, never the wording: this reason mentions NaN, size and staleness
    reason = "a stale NaN of odd size"
    with make(tmp_path) as reg:
        reg.record_round(1, 0.0, np.array([2]), completion([]), {}, {2: refusal(reason, kind)})
        assert reg.history(2)[0]["reason"] == reason
        flags = int(reg.stats().flags[2])
        assert flags == sum(FLAGS[n] for n in names | {"rejected_update"})
        assert set(reg.summary()[2]["flags"]) == names | {"rejected_update"}


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: ([0, 9], completion([0]), {}, {}), UnknownClient, "selected: unknown client 9"),
        (lambda: ([0, -1], completion([0]), {}, {}), UnknownClient, "unknown client -1"),
        (lambda: ([0, 0], completion([0]), {}, {}), FedloomError, "selected = 0 for client 0"),
        (lambda: ([[0, 1]], completion([0]), {}, {}), FedloomError, r"selected has shape \(1, 2\)"),
        (lambda: ([0.0], completion([]), {}, {}), FedloomError, "selected has dtype float64"),
        (lambda: ([0], completion([7]), {}, {}), UnknownClient, "completion.ids: unknown client 7"),
        (lambda: ([0], completion([1]), {}, {}), FedloomError, "client 1 was not selected"),
        (
            lambda: ([0, 1], completion([0]), {2: "x"}, {}),
            FedloomError,
            "client 2 was not selected",
        ),
        (
            lambda: ([0, 1], completion([0]), {8: "x"}, {}),
            UnknownClient,
            "failed: unknown client 8",
        ),
        (
            lambda: ([0, 1], completion([0]), {}, {0: refusal("stale", K.STALE_VERSION)}),
            FedloomError,
            "client 0 has more",
        ),
        (
            lambda: ([0, 1], completion([0]), {1: "a"}, {1: refusal("b", K.DUPLICATE)}),
            FedloomError,
            "client 1 has more",
        ),
        (
            lambda: ([0, 1], completion([0]), {}, {1: "stale"}),
            FedloomError,
            "rejection of client 1 = 'stale', expected an UpdateRejected",
        ),
        (lambda: ([0, 1], completion([0]), {"1": "a"}, {}), FedloomError, "failed client id = '1'"),
        (lambda: ([0, 1], completion([0]), {1: None}, {}), FedloomError, "reason for client 1"),
    ],
)
def test_record_round_rejects_bad_input_and_changes_nothing(
    tmp_path: Path, call: Callable, exc: type, match: str
) -> None:
    with make(tmp_path) as reg:
        reg.record_round(1, 10.0, np.array([0, 1]), completion([0]), {1: "timeout"}, {})
        selected, comp, failed, rejected = call()
        assert_unchanged(
            reg,
            lambda: reg.record_round(2, 20.0, np.array(selected), comp, failed, rejected),
            exc,
            match,
        )


@pytest.mark.parametrize(
    ("round", "time", "match"),
    [
        (1, 20.0, "round = 1, expected a round after the last recorded round 1"),
        (True, 20.0, r"round = True \(bool\), expected an int"),
        (2.0, 20.0, r"round = 2.0 \(float\)"),
        (2, math.nan, "time = nan"),
        (2, -1.0, "time = -1.0"),
    ],
)
def test_record_round_rejects_bad_round_or_time(
    tmp_path: Path, round: object, time: object, match: str
) -> None:
    with make(tmp_path) as reg:
        reg.record_round(1, 10.0, np.array([0]), completion([0]), {}, {})
        assert_unchanged(
            reg,
            lambda: reg.record_round(round, time, np.array([1]), completion([1]), {}, {}),
            FedloomError,
            match,
        )


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"duration": np.array([1.0])}, r"completion.duration has shape \(1,\), expected \(2,\)"),
        ({"duration": np.array([1.0, -2.0])}, "completion.duration = -2.0 for client 4"),
        ({"loss": np.array([1.0, 2.0, 3.0])}, r"completion.loss has shape \(3,\)"),
        ({"num_examples": np.array([1.0, 2.0])}, "completion.num_examples has dtype float64"),
        ({"steps": np.array([-1, 2])}, "completion.steps = -1 for client 3"),
        ({"contribution": np.array(["a", "b"])}, "completion.contribution has dtype <U1"),
    ],
)
def test_completion_validates_its_arrays(fields: dict, match: str) -> None:
    with pytest.raises(FedloomError, match=match):
        completion([3, 4], **fields)
    with pytest.raises(FedloomError, match="completion.ids = 3 for client 3, expected distinct"):
        completion([3, 4, 3])


def test_non_finite_client_statistics_are_kept_as_unknown(tmp_path: Path) -> None:
    """A loss, squared loss or contribution a client's report makes infinite or NaN is
    recorded as unknown (NaN): the round is logged and the previous values stay."""
    with make(tmp_path) as reg:
        reg.record_round(1, 10.0, np.array([0, 1]), completion([0, 1]), {}, {})
        bad = completion(
            [0, 1],
            loss=np.array([np.inf, 0.5]),
            loss_sq=np.array([-np.inf, np.nan]),
            contribution=np.array([np.nan, np.inf]),
        )
        reg.record_round(2, 20.0, np.array([0, 1]), bad, {}, {})
        s = reg.stats()
        assert s.loss[:2].tolist() == [1.0, 0.5] and s.loss_sq[:2].tolist() == [2.0, 2.0]
        assert s.completed[:2].tolist() == [2, 2]
        rows = reg.summary()
        assert rows[0]["mean_contribution"] == 0.5 == rows[1]["mean_contribution"]
        assert [h["outcome"] for h in reg.history(0)] == ["completed", "completed"]


def test_learned_online_prob_matches_a_diurnal_pattern(tmp_path: Path) -> None:
    n, days = 200, 40
    hours = np.arange(24)
    day_people = np.arange(n) < n // 2
    p_day = np.where((hours >= 8) & (hours < 20), 0.9, 0.1)
    truth = np.where(day_people[:, None], p_day, 1.0 - p_day)  # [N, 24]
    rng = np.random.default_rng(0)
    with make(tmp_path, n=n) as reg:
        for t in np.arange(days * 24) * 3600.0 + 1800.0:
            h = int(t // 3600) % 24
            reg.observe_availability(t, np.flatnonzero(rng.random(n) < truth[:, h]))
        s = reg.stats()
        assert np.abs(s.online_prob - truth).mean() < 0.05
        assert np.abs(s.online_prob - truth).max() < 0.3
        day, night = np.arange(n // 2), np.arange(n // 2, n)
        within = s.predicted_online(day, 10 * 3600.0, 10.5 * 3600.0)
        assert within.dtype == np.float64 and within.shape == (n // 2,)
        assert within.mean() == pytest.approx(0.9, abs=0.05)
        across = s.predicted_online(night, 10 * 3600.0, 21 * 3600.0 + 24 * 3600.0)
        assert across.mean() == pytest.approx(0.1 * 0.9, abs=0.03)
        assert counts(reg.path)["checkins"] == 0  # the simulation path is in-memory


def test_observe_availability_rejects_bad_input(tmp_path: Path) -> None:
    with make(tmp_path) as reg:
        assert_unchanged(
            reg,
            lambda: reg.observe_availability(0.0, np.array([True, False, True, False, True])),
            FedloomError,
            r"online has dtype bool, expected client ids \(use np.flatnonzero",
        )
        assert_unchanged(
            reg, lambda: reg.observe_availability(0.0, np.array([1, 5])), UnknownClient, "5"
        )
        assert_unchanged(
            reg, lambda: reg.observe_availability(-5.0, np.array([1])), FedloomError, "-5.0"
        )


def test_check_in_learns_and_logs(tmp_path: Path) -> None:
    with make(tmp_path) as reg:
        reg.check_in(2, 3 * 3600.0 + 5, online=True)
        reg.check_in(np.int64(2), 3 * 3600 + 50, online=np.bool_(False))
        reg.check_in(2, 27 * 3600.0, True)  # the same hour bin, a day later
        p = reg.stats().online_prob
        assert p[2, 3] == pytest.approx((2 + 1) / (3 + 2))
        assert (np.delete(p[2], 3) == 0.5).all() and (p[[0, 1, 3, 4]] == 0.5).all()
        reg.record_round(1, 30 * 3600.0, np.array([2]), completion([2]), {}, {})
        reg.check_in(2, 31 * 3600.0, True)
        with sqlite3.connect(reg.path) as db:
            rows = db.execute("SELECT round, client_id, time, online FROM checkins").fetchall()
        assert rows == [
            (1, 2, 10805.0, 1),
            (1, 2, 10850.0, 0),
            (1, 2, 97200.0, 1),
            (2, 2, 111600.0, 1),
        ]
        assert reg.summary()[2]["last_seen"] == 111600.0
        assert math.isnan(reg.summary()[0]["last_seen"])


@pytest.mark.parametrize(
    ("client_id", "time", "online", "exc", "match"),
    [
        (
            9,
            0.0,
            True,
            UnknownClient,
            "check-in client_id: unknown client 9 .registered ids are 0..4",
        ),
        (-1, 0.0, True, UnknownClient, "unknown client -1"),
        (True, 0.0, True, FedloomError, r"check-in client_id = True \(bool\), expected an int"),
        ("3", 0.0, True, FedloomError, r"check-in client_id = '3' \(str\)"),
        (3.0, 0.0, True, FedloomError, r"check-in client_id = 3.0 \(float\)"),
        (None, 0.0, True, FedloomError, "check-in client_id = None"),
        (3, math.nan, True, FedloomError, "check-in time of client 3 = nan"),
        (3, math.inf, True, FedloomError, "check-in time of client 3 = inf"),
        (3, -1.0, True, FedloomError, "check-in time of client 3 = -1.0"),
        (3, "noon", True, FedloomError, "check-in time of client 3 = 'noon'"),
        (3, False, True, FedloomError, "check-in time of client 3 = False"),
        (3, 0.0, 1, FedloomError, r"check-in online of client 3 = 1 \(int\), expected a bool"),
        (3, 0.0, "yes", FedloomError, "check-in online of client 3 = 'yes'"),
        (3, 0.0, None, FedloomError, "check-in online of client 3 = None"),
    ],
)
def test_malformed_check_in_changes_nothing(
    tmp_path: Path, client_id: object, time: object, online: object, exc: type, match: str
) -> None:
    with make(tmp_path) as reg:
        reg.check_in(3, 100.0, True)
        assert_unchanged(reg, lambda: reg.check_in(client_id, time, online), exc, match)


def test_restore_then_replay_gives_identical_state(tmp_path: Path) -> None:
    with make(tmp_path, n=30) as reg:
        play(reg, range(1, 4))
        reg.snapshot(3)
        play(reg, range(4, 8))
        expected, rows = reg.stats(), counts(reg.path)
        histories = [reg.history(c) for c in range(30)]
        summary = reg.summary()

        reg.restore(3)
        assert counts(reg.path)["participation"] < rows["participation"]
        play(reg, range(4, 8))
        assert_same_stats(reg.stats(), expected)
        assert counts(reg.path) == rows
        assert [reg.history(c) for c in range(30)] == histories
        assert str(reg.summary()) == str(summary)  # str: NaN != NaN in a plain ==


def test_restore_deletes_what_came_after_the_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "clients.sqlite"
    with make(tmp_path, n=30) as reg:
        play(reg, range(1, 3))
        reg.snapshot(2)
        at_two = reg.stats()
        rows = counts(path)
        play(reg, range(3, 6))
        reg.snapshot(5)
        reg.check_in(0, 10.0, True)  # arrives during round 6
        assert counts(path)["participation"] == rows["participation"] + 3 * 6

        reg.restore(2)
        assert_same_stats(reg.stats(), at_two)
        assert counts(path) == rows  # later participation, evaluations, check-ins, snapshots
        assert reg.snapshot_rounds() == [2]
        assert max(h["round"] for c in range(30) for h in reg.history(c)) == 2

        with pytest.raises(
            CheckpointError, match=r"no snapshot of round 4; available rounds: \[2\]"
        ):
            reg.restore(4)
    with ClientRegistry(tmp_path / "empty.sqlite") as empty:
        with pytest.raises(CheckpointError, match="round 0; available rounds: none"):
            empty.restore(0)


def test_snapshots_keep_the_newest_and_match_the_recorded_round(tmp_path: Path) -> None:
    with make(tmp_path) as reg:
        reg.snapshot(0)
        for r in range(1, 6):
            reg.record_round(r, r * 10.0, np.array([r % 5]), completion([r % 5]), {}, {})
            reg.snapshot(r, keep=2)
        assert reg.snapshot_rounds() == [4, 5]
        reg.snapshot(5, keep=2)  # re-snapshotting a round replaces it
        assert reg.snapshot_rounds() == [4, 5]
        with pytest.raises(
            FedloomError, match="snapshot round = 4, expected the last recorded round 5"
        ):
            reg.snapshot(4)
        with pytest.raises(FedloomError, match="keep = 0, expected an int >= 1"):
            reg.snapshot(5, keep=0)


def test_reopen_sees_newest_snapshot_and_history(tmp_path: Path) -> None:
    path = tmp_path / "clients.sqlite"
    with make(tmp_path, n=30) as reg:
        play(reg, range(1, 5))
        reg.snapshot(4)
        expected = reg.stats()
        histories = [reg.history(c) for c in range(30)]
        play(reg, range(5, 6))  # logged after the newest snapshot
        logged = counts(path)

    with ClientRegistry(path) as reg:
        assert_same_stats(reg.stats(), expected)
        assert [reg.history(c)[: len(h)] for c, h in enumerate(histories)] == histories
        assert counts(path) == logged
        # Round 5 is logged but not in the snapshot: recording it again needs a restore.
        with pytest.raises(FedloomError, match="round 5 is already logged .* restore"):
            play(reg, range(5, 6))
    with ClientRegistry(path) as reg:
        reg.restore(4)
        play(reg, range(5, 7))
        reg.snapshot(6)
        assert reg.stats().last_round.max() == 6


def test_reliability_ranks_clients_by_their_completion_probability(tmp_path: Path) -> None:
    spearmanr = pytest.importorskip("scipy.stats").spearmanr
    n, k, rounds = 50, 20, 50
    rng = np.random.default_rng(7)
    p_complete = rng.uniform(0.05, 0.95, n)
    with make(tmp_path, n=n, decay=0.95) as reg:
        for r in range(1, rounds + 1):
            sel = np.sort(rng.choice(n, size=k, replace=False))
            done = sel[rng.random(k) < p_complete[sel]]
            reg.record_round(r, r * 60.0, sel, completion(done), {}, {})
        rho = spearmanr(reg.stats().reliability, p_complete).statistic
    assert rho >= 0.8


def test_evaluations_feed_summary_and_history(tmp_path: Path) -> None:
    with make(tmp_path, n=3) as reg:
        contribution = np.array([0.25, 0.75])
        reg.record_round(
            1, 5.0, np.array([0, 1]), completion([0, 1], contribution=contribution), {}, {}
        )
        reg.record_round(
            2, 9.0, np.array([0]), completion([0], contribution=np.array([1.0])), {}, {}
        )
        reg.record_evaluation(2, np.array([0, 2]), np.array([0.5, 0.75]), np.array([1.2, 0.4]))
        rows = reg.summary()
        assert [row["id"] for row in rows] == [0, 1, 2]
        assert rows[0]["mean_contribution"] == pytest.approx(0.625)
        assert rows[1]["mean_contribution"] == 0.75 and math.isnan(rows[2]["mean_contribution"])
        assert rows[0]["last_accuracy"] == 0.5 and math.isnan(rows[1]["last_accuracy"])
        assert rows[2]["last_accuracy"] == 0.75
        assert rows[0]["selected"] == 2 and rows[0]["completed"] == 2 and rows[0]["flags"] == []
        assert (rows[1]["tier"], rows[1]["data_size"]) == (-1, 11)
        assert math.isnan(rows[1]["up_kbps"])
        assert rows[0]["reliability"] == pytest.approx(reg.stats().reliability[0])
        history = reg.history(0)
        assert [(h["round"], h["accuracy"], h["eval_loss"]) for h in history] == [
            (1, None, None),
            (2, 0.5, 1.2),
        ]
        only_evaluated = reg.history(2)
        assert len(only_evaluated) == 1 and only_evaluated[0]["outcome"] is None
        assert (only_evaluated[0]["round"], only_evaluated[0]["accuracy"]) == (2, 0.75)

        evaluate = reg.record_evaluation
        assert_unchanged(
            reg, lambda: evaluate(3, np.array([1]), np.array([1.5]), np.array([0.1])),
            FedloomError, "accuracy = 1.5 for client 1, expected <= 1",
        )  # fmt: skip
        assert_unchanged(
            reg, lambda: evaluate(3, np.array([1, 5]), np.ones(2), np.ones(2)), UnknownClient, "5"
        )
        assert_unchanged(
            reg, lambda: evaluate(3, np.array([1]), np.ones(2), np.ones(1)),
            FedloomError, r"accuracy has shape \(2,\), expected \(1,\)",
        )  # fmt: skip
        assert_unchanged(
            reg, lambda: evaluate(2, np.array([1, 2]), np.ones(2), np.ones(2)),
            FedloomError, "round 2: an evaluation of client 2 is already logged",
        )  # fmt: skip
        with pytest.raises(UnknownClient, match="client_id: unknown client 3"):
            reg.history(3)


def test_context_manager_closes_the_database(tmp_path: Path) -> None:
    with make(tmp_path) as reg:
        pass
    with pytest.raises(sqlite3.ProgrammingError):
        reg.history(0)


def test_hundred_thousand_clients_register_and_snapshot(tmp_path: Path) -> None:
    n = 100_000
    rng = np.random.default_rng(1)
    path = tmp_path / "clients.sqlite"
    with ClientRegistry(path) as reg:
        reg.register(
            rng.integers(10, 1000, n),
            rng.uniform(0, 2.3, n),
            tier=rng.integers(0, 3, n),
            compute_ms_per_sample=rng.uniform(1, 50, n),
            up_kbps=rng.uniform(100, 10_000, n),
            down_kbps=rng.uniform(1_000, 50_000, n),
        )
        for r in range(1, 3):
            reg.observe_availability(r * 3600.0, np.flatnonzero(rng.random(n) < 0.3))
            sel = np.sort(rng.choice(n, size=10_000, replace=False))
            reg.record_round(r, r * 3600.0, sel, completion(sel[:9_000]), {}, {})
            reg.snapshot(r)
        expected = reg.stats()
    assert path.stat().st_size < 60 * 2**20  # closing checkpointed the WAL into the file
    with ClientRegistry(path) as reg:
        assert reg.num_clients == n
        assert_same_stats(reg.stats(), expected)
    assert path.stat().st_size < 60 * 2**20
