"""The registry's state travels with each checkpoint, so a lost or damaged database can be
rebuilt exactly; a damaged database is refused in one line instead of a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import CheckpointError
from fedloom.server.registry import ClientRegistry, Completion


def make(path: Path) -> ClientRegistry:
    reg = ClientRegistry(path)
    reg.register(np.array([10, 20, 30, 40]), np.linspace(0.0, 1.0, 4))
    return reg


def play(reg: ClientRegistry, rounds: range) -> None:
    for r in rounds:
        ids = np.array([r % 4, (r + 1) % 4])
        done = Completion(
            ids=ids[:1],
            duration=np.array([3.0 + r]),
            loss=np.array([1.0 / r]),
            loss_sq=np.array([2.0 / r]),
            num_examples=np.array([10]),
            steps=np.array([2]),
            contribution=np.array([1.0]),
        )
        reg.record_round(r, 10.0 * r, ids, done, {int(ids[1]): "timeout"}, {})


def test_rebuilt_from_snapshot_arrays_replays_identically(tmp_path):
    reg = make(tmp_path / "a.sqlite")
    play(reg, range(1, 4))
    saved = reg.snapshot_arrays()
    assert all(arr.dtype == np.uint8 for arr in saved.values())
    play(reg, range(4, 7))
    final = reg.stats()

    rebuilt = make(tmp_path / "b.sqlite")  # the database was lost: a fresh one
    rebuilt.restore_snapshot_arrays(3, saved)
    assert rebuilt.snapshot_rounds() == [3]
    play(rebuilt, range(4, 7))
    for name in ("selected", "completed", "reliability", "loss", "duration"):
        np.testing.assert_array_equal(getattr(rebuilt.stats(), name), getattr(final, name))


def test_snapshot_arrays_of_another_registry_are_refused(tmp_path):
    small = ClientRegistry(tmp_path / "s.sqlite")
    small.register(np.array([1, 2]), np.zeros(2))
    with pytest.raises(CheckpointError, match="expected"):
        make(tmp_path / "b.sqlite").restore_snapshot_arrays(0, small.snapshot_arrays())


def test_damaged_database_is_one_clear_error(tmp_path):
    path = tmp_path / "clients.sqlite"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(CheckpointError, match=r"clients.sqlite' is unusable: file is not a data"):
        ClientRegistry(path)
    assert path.read_bytes() == b"not sqlite at all" * 100
