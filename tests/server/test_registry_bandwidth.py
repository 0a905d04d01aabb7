"""Measured link speeds (deployment transfers) learned by the client registry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import FedloomError
from fedloom.server.registry import ClientRegistry


def registry(tmp_path: Path) -> ClientRegistry:
    reg = ClientRegistry(tmp_path / "clients.sqlite", duration_smoothing=0.5)
    reg.register(np.array([10, 20, 30]), np.zeros(3))
    return reg


def test_bandwidth_is_a_moving_average_that_ignores_missing_measurements(tmp_path: Path) -> None:
    with registry(tmp_path) as reg:
        reg.record_bandwidth(np.array([0, 2]), np.array([1000.0, np.nan]), np.array([4000.0, 80.0]))
        reg.record_bandwidth(np.array([0]), np.array([3000.0]), np.array([np.nan]))
        rows = reg.summary()
    assert rows[0]["measured_up_kbps"] == 2000.0  # 0.5 * 1000 + 0.5 * 3000
    assert rows[0]["measured_down_kbps"] == 4000.0  # unchanged by a NaN
    assert math.isnan(rows[1]["measured_up_kbps"]) and math.isnan(rows[2]["measured_up_kbps"])
    assert rows[2]["measured_down_kbps"] == 80.0


def test_bandwidth_survives_snapshot_and_restore(tmp_path: Path) -> None:
    with registry(tmp_path) as reg:
        reg.record_bandwidth(np.array([1]), np.array([500.0]), np.array([900.0]))
        reg.snapshot(0)
        reg.record_bandwidth(np.array([1]), np.array([1500.0]), np.array([100.0]))
        reg.restore(0)
        assert reg.summary()[1]["measured_up_kbps"] == 500.0


def test_bad_bandwidth_measurements_are_refused(tmp_path: Path) -> None:
    with registry(tmp_path) as reg:
        with pytest.raises(FedloomError, match="measured_up_kbps"):
            reg.record_bandwidth(np.array([0]), np.array([-1.0]), np.array([1.0]))
        with pytest.raises(FedloomError):
            reg.record_bandwidth(np.array([7]), np.array([1.0]), np.array([1.0]))
