"""Atomic file writes: readers see the old file or the new one, never half of one.

Each write goes to a temporary file in the target's folder, is flushed and fsynced,
then renamed over the target with ``Path.replace`` (atomic on POSIX). A write that fails
(disk full, read-only folder) raises ``StorageError`` naming the file and leaves the
previous file as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fedloom.errors import StorageError


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], fsync: bool = True) -> None:
    """Create or replace ``path`` with what ``write`` puts into the open binary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _storage_error(path, err) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, StorageError):
            raise _storage_error(path, err) from None
        raise


def _storage_error(path: Path, err: OSError) -> StorageError:
    kept = " (the previous file is intact)" if path.exists() else ""
    return StorageError(f"cannot write {str(path)!r}: {err.strerror or err}{kept}", err.errno)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
