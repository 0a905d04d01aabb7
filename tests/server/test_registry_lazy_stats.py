"""ClientRegistry.stats() computes online_prob on first read, yet stays a snapshot: a
check-in sweep or a single check-in after stats() does not reach it, and
dataclasses.replace still works on it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedloom.server.registry import ClientRegistry
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
