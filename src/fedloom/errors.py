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
    """A client's update was refused (unknown client, wrong shape, NaN/inf, stale, duplicate)."""

    def __init__(self, client_id: object, reason: str) -> None:
        super().__init__(f"update from client {client_id!r} rejected: {reason}")
        self.client_id = client_id
        self.reason = reason


class CheckpointError(FedloomError):
    """A checkpoint or run directory cannot be read or does not match the run."""
