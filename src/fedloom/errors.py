"""One exception family for everything fedloom rejects.

Every message names the offending field, client or value so a user can fix the
input without reading the source.
"""

from __future__ import annotations


class FedloomError(Exception):
    """Base class of every error fedloom raises on purpose."""


class ConfigError(FedloomError):
    """A configuration file or override is missing, malformed or out of range."""


class DataError(FedloomError):
    """A dataset, partition or client data directory is unusable."""


class UpdateRejected(FedloomError):
    """A client's update was refused (unknown client, wrong shape, NaN/inf, stale, duplicate).

    ``kind`` is the reason's type, a short name that runtimes count and record
    (``nonfinite``, ``overflow``, ``wrong_shape``, ``stale_version``, ``bad_count``, or
    ``rejected`` for the rest); ``reason`` says what exactly was wrong.
    """

    def __init__(self, client_id: object, reason: str, kind: str = "rejected") -> None:
        super().__init__(f"update from client {client_id!r} rejected: {reason}")
        self.client_id = client_id
        self.reason = reason
        self.kind = kind


class CheckpointError(FedloomError):
    """A checkpoint or run directory cannot be read or does not match the run."""


class StorageError(FedloomError, OSError):
    """A file could not be written (disk full, read-only folder, no permission); the
    previous version of the file is left intact. Also an ``OSError``, for callers that
    handle the operating system's errors."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class RunInterrupted(FedloomError):
    """A run stopped on a signal (Ctrl-C, SIGTERM) between two rounds, after saving a
    checkpoint it can be resumed from."""

    def __init__(self, signal_name: str, round: int, path: object) -> None:
        super().__init__(
            f"run interrupted by {signal_name} after round {round}; a checkpoint was saved: "
            f"continue with `fedloom run --resume {path}`"
        )
        self.signal_name = signal_name
        self.round = round
