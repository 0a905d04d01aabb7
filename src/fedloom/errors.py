"""One exception family for everything fedloom rejects.

Every message names the offending field, client or value so a user can fix the
input without reading the source.
"""

from __future__ import annotations

from enum import StrEnum


class FedloomError(Exception):
    """Base class of every error fedloom raises on purpose."""


class ConfigError(FedloomError):
    """A configuration file or override is missing, malformed or out of range."""


class DataError(FedloomError):
    """A dataset, partition or client data directory is unusable."""


class RejectionKind(StrEnum):
    """Why an update or a client's message was refused: the one vocabulary that the
    server core raises, the registry flags, the transport counts and the records carry
    (a ``str``, so records and counters hold plain names)."""

    NONFINITE = "nonfinite"  # NaN/inf in the update or its statistics
    OVERFLOW = "overflow"  # an L2 norm whose square overflows float32
    WRONG_SHAPE = "wrong_shape"  # wrong length or dtype
    BAD_COUNT = "bad_count"  # example count, steps or epochs out of range
    STALE_VERSION = "stale_version"  # for another round or model version
    STALE_TASK = "stale_task"  # for a task that is not open (transport)
    DUPLICATE = "duplicate"  # a second update for the same round
    UNSELECTED = "unselected"  # from a client outside the cohort
    NO_ROUND = "no_round"  # no round is open
    ALREADY_FAILED = "already_failed"  # the client was already failed this round
    SECURE_ROUND = "secure_round"  # a plain update for a securely aggregated round
    REPLAY = "replay"  # a different update for a task already answered (transport)
    OVERSIZED = "oversized"  # more bytes than declared (transport)
    CORRUPT = "corrupt"  # truncated or failing its checksum (transport)
    MALFORMED = "malformed"  # a message that breaks the protocol's form (transport)
    SECAGG = "secagg"  # a secure-aggregation message the protocol refuses (transport)
    UNKNOWN_CLIENT = "unknown_client"  # an identity that is no client of the run
    STALLED = "stalled"  # a transfer cancelled by the stall watchdog (transport)
    TOO_MANY_TRANSFERS = "too_many_transfers"  # over the per-client transfer cap
    ANOMALY = "anomaly"  # refused by an anomaly check


class UpdateRejected(FedloomError):
    """A client's update was refused (unknown client, wrong shape, NaN/inf, stale, duplicate).

    ``kind`` (a :class:`RejectionKind`) is the reason's type, which runtimes count,
    the registry flags and records carry; ``reason`` says what exactly was wrong.
    """

    def __init__(self, client_id: object, reason: str, kind: RejectionKind) -> None:
        super().__init__(f"update from client {client_id!r} rejected: {reason}")
        self.client_id = client_id
        self.reason = reason
        self.kind = RejectionKind(kind)


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
