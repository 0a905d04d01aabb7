"""Anomaly screening: robust z-scores of norm, direction and history; history kept only
from unflagged rows; exact checkpoint round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedloom.errors import ConfigError, FedloomError
from fedloom.server.anomaly import MIN_ROWS, SCORES, AnomalyDetector, Screening

D = 64


def honest(rng: np.random.Generator, k: int, mean: np.ndarray, spread: float = 0.5) -> np.ndarray:
    """``k`` honest updates: a common direction plus independent noise."""
    return (mean + spread * rng.normal(size=(k, len(mean)))).astype(np.float32)


def test_scaled_rows_are_norm_outliers() -> None:
    rng = np.random.default_rng(0)
    rows = honest(rng, 30, rng.normal(size=D))
    rows[[3, 11, 20]] *= 100.0
    s = AnomalyDetector(40, D).screen(1, rows, np.arange(30) + 5)
    np.testing.assert_array_equal(s.flagged_ids, [8, 16, 25])
    assert [s.reasons[i] for i in (3, 11, 20)] == ["norm_outlier"] * 3
    assert sum(r is not None for r in s.reasons) == 3
    assert (s.z["norm"][[3, 11, 20]] > 20).all()  # log(100) over a log-norm spread of ~0.1
    assert np.isnan(s.z["history"]).all()  # nobody has a history yet


def test_sign_flipped_rows_are_direction_outliers() -> None:
    rng = np.random.default_rng(1)
    rows = honest(rng, 30, rng.normal(size=D))
    rows[:4] *= -1.0
    s = AnomalyDetector(30, D).screen(1, rows, np.arange(30))
    assert s.flagged[:4].all() and s.flagged[4:].sum() <= 1  # one honest false flag at most
    assert s.reasons[:4] == ("direction_outlier",) * 4
    assert (s.scores["cosine"][:4] < 0).all() and (s.scores["cosine"][4:] > 0).all()


def test_a_sudden_change_is_a_history_outlier() -> None:
    """Each client keeps its own direction; client 0 suddenly sends another one of the
    same size, unremarkable within the round, but far from its own past."""
    rng = np.random.default_rng(2)
    k = 20
    common = rng.normal(size=D)
    own = rng.normal(size=(k, D))
    det = AnomalyDetector(k, D)
    for r in range(1, 4):
        rows = (common + own + 0.05 * rng.normal(size=(k, D))).astype(np.float32)
        det.screen(r, rows, np.arange(k))
    rows = (common + own + 0.05 * rng.normal(size=(k, D))).astype(np.float32)
    rows[0] = common + rng.normal(size=D)
    s = det.screen(4, rows, np.arange(k))
    assert s.flagged[0] and s.flagged[1:].sum() <= 1
    assert s.reasons[0] == "history_outlier"
    assert s.z["history"][0] > 10 * np.nanmax(s.z["history"][1:])
    assert s.z["norm"][0] < 3 and s.z["cosine"][0] < 3


def test_honest_random_rows_are_rarely_flagged() -> None:
    """Independent honest rows: at most one flag in 50 per round at threshold 3."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        det = AnomalyDetector(50, 100, threshold=3.0)
        s = det.screen(1, rng.normal(size=(50, 100)).astype(np.float32), np.arange(50))
        assert s.flagged.sum() <= 1, seed


def test_flagged_rows_do_not_move_their_history() -> None:
    rng = np.random.default_rng(3)
    mean = rng.normal(size=D)
    det = AnomalyDetector(20, D, history_smoothing=0.25)
    first = honest(rng, 20, mean)
    first[9] *= 50.0
    one = det.screen(1, first, np.arange(20))
    assert one.flagged[9] and det.history(9) is None  # a flagged row starts no history
    assert det.known.tolist() == np.flatnonzero(~one.flagged).tolist()
    kept = np.flatnonzero(~one.flagged)
    for cid in kept.tolist():
        np.testing.assert_array_equal(det.history(cid), first[cid])  # the first row
    second = honest(rng, 20, mean)
    second[kept[0]] *= 50.0
    two = det.screen(2, second, np.arange(20))
    assert two.flagged[kept[0]]
    np.testing.assert_array_equal(det.history(int(kept[0])), first[kept[0]])
    a = np.float32(0.25)
    for cid in np.flatnonzero(~two.flagged & ~one.flagged).tolist():
        want = (np.float32(1) - a) * first[cid] + a * second[cid]
        np.testing.assert_array_equal(det.history(cid), want)


def test_too_few_rows_score_nothing() -> None:
    det = AnomalyDetector(5, D)
    rows = np.ones((MIN_ROWS - 1, D), dtype=np.float32)
    rows[0] *= 1000.0
    s = det.screen(1, rows, np.array([0, 1]))
    assert not s.flagged.any() and s.reasons == (None, None)
    assert all(np.isnan(s.z[name]).all() for name in SCORES)
    assert np.isnan(s.score).all()
    empty = det.screen(2, np.empty((0, D), np.float32), np.empty(0, np.int64))
    assert len(empty.flagged) == 0 and empty.record()["flagged"] == []


def test_identical_rows_flag_nothing_and_a_tiny_deviation_is_not_noise() -> None:
    rows = np.tile(np.linspace(-1, 1, D, dtype=np.float32), (12, 1))
    s = AnomalyDetector(12, D).screen(1, rows, np.arange(12))
    assert not s.flagged.any() and np.isfinite(s.score).all()
    rows[5] *= 1.5  # 50% larger than eleven identical rows
    s = AnomalyDetector(12, D).screen(1, rows, np.arange(12))
    np.testing.assert_array_equal(s.flagged_ids, [5])


def test_record_is_compact_json() -> None:
    rng = np.random.default_rng(4)
    rows = honest(rng, 200, rng.normal(size=D))
    rows[7] *= 100.0
    det = AnomalyDetector(200, D)
    det.screen(1, honest(rng, 200, rows[8]), np.arange(200))
    rec = det.screen(2, rows, np.arange(200)).record()
    json.dumps(rec, allow_nan=False)
    assert rec["round"] == 2 and rec["screened"] == 200 and rec["threshold"] == 3.5
    flagged = {f["client"]: f for f in rec["flagged"]}
    assert flagged[7]["reason"] == "norm_outlier"
    assert set(flagged[7]["z"]) == set(SCORES) and flagged[7]["z"]["norm"] > 3
    assert len(rec["flagged"]) < 10
    assert set(rec["median"]) == set(SCORES)


def test_state_dict_round_trip_is_exact() -> None:
    rng = np.random.default_rng(5)
    mean = rng.normal(size=D)
    a = AnomalyDetector(100, D)
    learned: list[int] = []
    for r, ids in enumerate(([3, 50, 7, 99, 1], [50, 2, 7, 64, 3, 10]), start=1):
        rows = honest(rng, len(ids), mean)
        s = a.screen(r, rows, np.array(ids))
        learned += [c for c in np.array(ids)[~s.flagged].tolist() if c not in learned]
    state = a.state_dict()
    assert state["clients"].tolist() == learned  # slot order: first accepted update first
    assert state["history"].shape == (len(learned), D)
    assert state["history"].dtype == np.float32
    b = AnomalyDetector(100, D)
    b.load_state_dict({k: v.copy() for k, v in state.items()})
    ids = np.array([7, 64, 80, 1, 3])
    rows = honest(rng, 5, mean)
    sa, sb = a.screen(3, rows, ids), b.screen(3, rows, ids)
    for name in SCORES:
        np.testing.assert_array_equal(sa.scores[name], sb.scores[name])
        np.testing.assert_array_equal(sa.z[name], sb.z[name])
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
    with pytest.raises(FedloomError, match="history"):
        AnomalyDetector(100, D + 1).load_state_dict(state)
    with pytest.raises(FedloomError, match="unknown client 99"):
        AnomalyDetector(50, D).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, "anomaly.threshold"),
        ({"history_smoothing": 1.5}, "anomaly.history_smoothing"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AnomalyDetector(5, D, **kwargs)


def test_bad_inputs_are_refused_by_name() -> None:
    det = AnomalyDetector(5, D)
    rows = np.ones((3, D), dtype=np.float32)
    with pytest.raises(FedloomError, match="shape"):
        det.screen(1, rows[:, :-1], np.arange(3))
    with pytest.raises(FedloomError, match="twice"):
        det.screen(1, rows, np.array([0, 1, 1]))
    with pytest.raises(FedloomError, match="unknown client 5"):
        det.screen(1, rows, np.array([0, 1, 5]))
    rows[1, 3] = np.nan
    with pytest.raises(FedloomError, match="client 1"):
        det.screen(1, rows, np.arange(3))
    assert isinstance(det.screen(1, np.ones((3, D)), np.arange(3)), Screening)


def test_a_client_that_always_moves_far_is_judged_against_its_own_usual() -> None:
    """Client 0 is honest but erratic (non-IID data: each round its update departs far
    from its past, far more than the others'); it is not flagged once its baseline is
    known. Client 1 is steady until it turns (round 6): flagged as a history outlier."""
    rng = np.random.default_rng(7)
    k = 20
    common = rng.normal(size=D)
    own = rng.normal(size=(k, D))
    noise = np.full((k, 1), 0.05)
    noise[0] = 0.8
    det = AnomalyDetector(k, D)
    flags = []
    for r in range(1, 7):
        rows = (common + own + noise * rng.normal(size=(k, D))).astype(np.float32)
        if r == 6:
            rows[1] = (common + rng.normal(size=D)).astype(np.float32)
        s = det.screen(r, rows, np.arange(k))
        flags.append(set(s.flagged_ids.tolist()))
    assert all(0 not in f for f in flags[2:])  # its first distance only sets its baseline
    assert 1 in flags[-1] and all(1 not in f for f in flags[:-1])


def test_one_false_flag_does_not_lock_a_client_out() -> None:
    """Client 0 sends one oddly large update (flagged, kept out of its history) while the
    model moves on; its history is stale, so its next, ordinary update is judged without
    it (and replaces it) instead of being flagged again and again."""
    rng = np.random.default_rng(11)
    k = 20
    own = rng.normal(size=(k, D))
    det = AnomalyDetector(k, D)
    flags = []
    for r in range(1, 9):
        drift = 0.3 * r * np.ones(D)  # training moves every client's update
        rows = (own + drift + 0.05 * rng.normal(size=(k, D))).astype(np.float32)
        if r == 3:
            rows[0] *= 50.0
        s = det.screen(r, rows, np.arange(k))
        flags.append(set(s.flagged_ids.tolist()))
        if r == 4:
            assert np.isnan(s.z["history"][0])  # its history was stale
    assert 0 in flags[2]
    assert all(0 not in f for f in flags[3:])
