"""The asynchronous server's durable inbox: every accepted update, before it is acknowledged.

An asynchronous server buffers updates across server steps, so a crash between a step's
checkpoint and the next would lose updates the clients were told were applied (they
never send them again). The inbox closes that gap: an upload is acknowledged only after
its entry (the upload's header and payload, the step it awaits, when its task was handed
out and when it arrived) is committed to ``inbox.sqlite`` in the run directory (SQLite in
WAL mode with ``synchronous = FULL``: a committed entry survives a killed process and a
power cut). Entries of steps a checkpoint covers are deleted; a server resumed from a
checkpoint of step ``R`` puts every entry awaiting a step after ``R`` back into its
buffer, in arrival order, so each acknowledged update is either in a checkpointed step
or in the buffer again.

The inbox also keeps each client's last acknowledged upload (task and sha256), so a
retry of it after a restart is still acknowledged as a duplicate, and a different
upload for the same task still refused.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from fedloom.errors import StorageError
from fedloom.transport import fedloom_pb2 as pb

FILE = "inbox.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client INTEGER NOT NULL,
    task TEXT NOT NULL,
    step INTEGER NOT NULL,
    handed_out REAL NOT NULL,
    arrival REAL NOT NULL,
    header BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (
    client INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    sha256 BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Entry:
    """One accepted upload: what its client sent, and when."""

    seq: int
    client: int
    task: str
    step: int  # the server step it awaited when accepted
    handed_out: float
    arrival: float
    header: pb.UploadHeader
    payload: bytes


class Inbox:
    """Accepted updates not yet covered by a checkpoint (module docstring). Not
    thread-safe: the server calls it under its own lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
            rows = self._db.execute("SELECT client, task, sha256 FROM applied").fetchall()
        except sqlite3.Error as err:
            raise StorageError(f"cannot open the inbox {str(self.path)!r}: {err}") from None
        self._applied = {int(c): (str(t), bytes(d)) for c, t, d in rows}

    def add(
        self,
        client: int,
        header: pb.UploadHeader,
        payload: bytes,
        step: int,
        handed_out: float,
        arrival: float,
    ) -> None:
        """Commit one accepted upload (durable when this returns)."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT INTO entries (client, task, step, handed_out, arrival, header, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        client,
                        header.task_id,
                        step,
                        handed_out,
                        arrival,
                        header.SerializeToString(deterministic=True),
                        payload,
                    ),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO applied (client, task, sha256) VALUES (?, ?, ?)",
                    (client, header.task_id, header.sha256),
                )
        except sqlite3.Error as err:
            raise StorageError(f"cannot write the inbox {str(self.path)!r}: {err}") from None
        self._applied[client] = (header.task_id, bytes(header.sha256))

    def applied(self, client: int) -> tuple[str, bytes] | None:
        """``client``'s last acknowledged upload: (task id, sha256), None if none."""
        return self._applied.get(client)

    def cover(self, step: int) -> int:
        """Delete the entries a checkpoint of ``step`` holds (awaiting step <= ``step``);
        returns how many."""
        try:
            with self._db:
                gone = self._db.execute("DELETE FROM entries WHERE step <= ?", (step,))
        except sqlite3.Error as err:
            raise StorageError(f"cannot write the inbox {str(self.path)!r}: {err}") from None
        return gone.rowcount

    def after(self, step: int) -> list[Entry]:
        """Entries awaiting a step after ``step``, in arrival order."""
        rows = self._db.execute(
            "SELECT seq, client, task, step, handed_out, arrival, header, payload FROM entries "
            "WHERE step > ? ORDER BY seq",
            (step,),
        ).fetchall()
        return [
            Entry(
                int(seq),
                int(client),
                str(task),
                int(at),
                float(handed_out),
                float(arrival),
                pb.UploadHeader.FromString(bytes(header)),
                bytes(payload),
            )
            for seq, client, task, at, handed_out, arrival, header, payload in rows
        ]

    def remove(self, seq: int) -> None:
        """Delete one entry (an update the resumed server could not buffer again)."""
        with self._db:
            self._db.execute("DELETE FROM entries WHERE seq = ?", (seq,))

    def close(self) -> None:
        self._db.close()
