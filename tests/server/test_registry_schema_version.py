"""clients.sqlite carries its schema version (PRAGMA user_version): a database written
before versioning is adopted, one from a newer fedloom is refused (never set aside as
damaged nor misread)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import CheckpointError, FedloomError
from fedloom.server.registry import SCHEMA_VERSION, ClientRegistry
from fedloom.sim.recovery import prepare_registry


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def set_user_version(path: Path, version: int) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


def registry_with_clients(path: Path) -> None:
    with ClientRegistry(path) as registry:
        registry.register(np.array([3, 5]), np.array([0.5, 1.0]))


def test_a_new_registry_is_stamped_with_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "clients.sqlite"
    registry_with_clients(path)
    assert SCHEMA_VERSION >= 1 and user_version(path) == SCHEMA_VERSION


def test_an_unversioned_registry_is_adopted_with_its_clients(tmp_path: Path) -> None:
    path = tmp_path / "clients.sqlite"
    registry_with_clients(path)
    set_user_version(path, 0)  # as written before versioning
    with ClientRegistry(path) as registry:
        assert registry.num_clients == 2
        assert registry.data_sizes(np.array([0, 1])).tolist() == [3, 5]
    assert user_version(path) == SCHEMA_VERSION


def test_a_newer_registry_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "clients.sqlite"
    registry_with_clients(path)
    set_user_version(path, SCHEMA_VERSION + 1)
    with pytest.raises(
        FedloomError, match=f"schema version {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION}"
    ) as err:
        ClientRegistry(path)
    assert not isinstance(err.value, CheckpointError)  # not "damaged"
    with pytest.raises(FedloomError, match="newer fedloom"):
        prepare_registry(path)  # a resume refuses it instead of rebuilding over it
    assert path.exists() and not list(tmp_path.glob("*.damaged-*"))
    assert user_version(path) == SCHEMA_VERSION + 1
