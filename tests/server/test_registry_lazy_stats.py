"""ClientRegistry.stats() makes each column (online_prob included) on first read, yet
stays a snapshot: a check-in sweep, a check-in, a recorded round or a client's report
after stats() does not reach it, and dataclasses.replace still works on it."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import RejectionKind, UpdateRejected
from fedloom.server.registry import ClientRegistry, Completion
from fedloom.server.stats import ClientStats


def _registry(tmp_path: Path, n: int = 5) -> ClientRegistry:
    reg = ClientRegistry(tmp_path / "clients.sqlite")
    reg.register(np.arange(1, n + 1), np.zeros(n))
    return reg


def test_snapshot_taken_before_a_sweep_does_not_see_it(tmp_path: Path) -> None:
    with _registry(tmp_path) as reg:
        reg.observe_availability(3 * 3600.0, np.array([0, 1]))
        before = reg.stats()
        expected = np.full((5, 24), 0.5, dtype=np.float32)
        expected[[0, 1], 3] = 2 / 3
        expected[[2, 3, 4], 3] = 1 / 3
        reg.observe_availability(3 * 3600.0 + 60, np.array([0, 0, 2]))  # repeats count once
        reg.check_in(4, 5 * 3600.0, online=False)
        np.testing.assert_allclose(before.online_prob, expected)
        after = reg.stats().online_prob
        assert after[0, 3] == pytest.approx(3 / 4) and after[2, 3] == pytest.approx(2 / 4)
        assert after[1, 3] == pytest.approx(2 / 4) and after[4, 5] == pytest.approx(1 / 3)


def test_snapshot_read_late_equals_one_read_at_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with _registry(tmp_path, n=50) as reg:
        held = []
        for k in range(30):
            t = k * 1800.0
            reg.observe_availability(t, np.flatnonzero(rng.random(50) < 0.4))
            s = reg.stats()
            held.append((s, s.online_prob.copy() if k % 2 else None))
        prob = None
        for s, at_once in held:
            if at_once is not None:
                np.testing.assert_array_equal(s.online_prob, at_once)
            prob = s.online_prob
        np.testing.assert_array_equal(prob, reg.stats().online_prob)


def test_replace_and_fields_work_on_a_lazy_snapshot(tmp_path: Path) -> None:
    with _registry(tmp_path) as reg:
        s = reg.stats()
        assert isinstance(s, ClientStats)
        t = replace(s, online_prob=np.ones((5, 24), dtype=np.float32))
        assert (t.online_prob == 1).all() and (s.online_prob == 0.5).all()
        u = replace(s, selected=np.full(5, 3))
        assert u.selected.tolist() == [3] * 5 and (u.online_prob == 0.5).all()
        assert s.predicted_online(np.array([1, 2]), 0.0, 7200.0).tolist() == [0.25, 0.25]


def _completion(ids: list[int], loss: float) -> Completion:
    m = len(ids)
    return Completion(
        ids=np.array(ids, dtype=np.int64),
        duration=np.full(m, 10.0),
        loss=np.full(m, loss),
        loss_sq=np.full(m, loss * loss),
        num_examples=np.full(m, 8, dtype=np.int64),
        steps=np.full(m, 1, dtype=np.int64),
        contribution=np.full(m, 1.0 / m),
    )


def test_snapshot_taken_before_a_round_or_report_does_not_see_them(tmp_path: Path) -> None:
    with _registry(tmp_path) as reg:
        reg.record_round(1, 100.0, np.array([0, 1, 2]), _completion([0, 1], 2.0), {2: "x"}, {})
        first = reg.stats()
        eager = {name: getattr(reg.stats(), name).copy() for name in _COLUMNS}
        refused = {3: UpdateRejected(3, "bad", RejectionKind.NONFINITE)}
        reg.record_round(2, 200.0, np.array([0, 4]), _completion([4], 5.0), {0: "y"}, refused)
        reg.report(1, 99, 0.5)
        for name in _COLUMNS:
            np.testing.assert_array_equal(getattr(first, name), eager[name], err_msg=name)
        now = reg.stats()
        assert now.selected.tolist() == [2, 1, 1, 0, 1] and now.data_size[1] == 99
        assert now.flags[3] != 0 and now.loss[4] == 5.0 and now.last_round[0] == 2
        assert now.reliability[0] < first.reliability[0]


_COLUMNS = (
    "data_size",
    "label_entropy",
    "selected",
    "completed",
    "reliability",
    "last_round",
    "loss",
    "loss_sq",
    "duration",
    "online_prob",
    "flags",
)


def test_every_field_of_client_stats_is_listed() -> None:
    assert {f.name for f in fields(ClientStats)} == set(_COLUMNS)
