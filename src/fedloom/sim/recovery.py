"""What a resumed run checks and repairs before it continues, and how a run stops on a
signal without losing its place.

A run's files can be damaged between a crash and its resume (a torn or empty checkpoint, a
damaged or deleted ``clients.sqlite``, a hand-edited ``config.toml``, a lost
``privacy.json``). Each is either repaired from what the checkpoints hold (the registry's
state travels in every checkpoint) or refused with one line saying what is wrong and how
to recover. Damaged files are never deleted: they are kept aside as
``<name>.damaged-<n>``, for inspection.
"""

from __future__ import annotations

import logging
import signal
import threading
import tomllib
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from fedloom.config import RunConfig, parse_config, to_toml
from fedloom.errors import CheckpointError, ConfigError
from fedloom.runs import RunDirectory, keep_aside
from fedloom.server.registry import ClientRegistry

log = logging.getLogger("fedloom")

# settings a resumed run may change: how long it runs and how it uses the machine,
# never what it computes
MAY_CHANGE = (
    "rounds",
    "threads",
    "output_dir",
    "name",
    "simulation.device",
    "simulation.memory_budget_mb",
    "simulation.memory_limit_mb",
    "simulation.server_chain",
)


def _may_change(setting: str) -> bool:
    return setting in MAY_CHANGE or setting.startswith("checkpoint.")


def config_text(config: RunConfig) -> str:
    """The config as a checkpoint keeps it, to notice later edits of ``config.toml``."""
    return to_toml(config)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: str, current: RunConfig, path: Path) -> dict[str, list[Any]]:
    """Settings of ``current`` that differ from the ``saved`` config text, as
    ``{setting: [saved value, current value]}``; raises ``CheckpointError`` if any of them
    changes what the run computes."""
    try:
        before = parse_config(tomllib.loads(saved), "the checkpoint's copy")
    except (tomllib.TOMLDecodeError, ConfigError):
        return {}  # written by another version: nothing to compare against
    old = _flat(before.model_dump(mode="json"))
    new = _flat(current.model_dump(mode="json"))
    changed = {
        key: [old.get(key), new.get(key)]
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    }
    refused = {k: v for k, v in changed.items() if not _may_change(k)}
    if refused:
        shown = ", ".join(f"{k} = {v[1]!r} (was {v[0]!r})" for k, v in refused.items())
        raise CheckpointError(
            f"{str(path)!r} was edited after the run started: {shown}; a resumed run must "
            "keep the settings it computed with: put the old values back, or start a new "
            "run with the new ones (only rounds, threads, checkpoint.* and "
            "simulation.device/memory settings may change on resume)"
        )
    return changed


def set_aside_damaged_checkpoints(run: RunDirectory, names: list[str]) -> list[str]:
    """Move the unreadable newer checkpoints out of the way (a later save of the same
    round would replace them), keeping them as ``*.damaged-<n>``; returns the new names."""
    return [keep_aside(run.checkpoint_dir / name).name for name in names]


def prepare_registry(path: Path) -> str | None:
    """Check the registry database at ``path`` before a resume opens it: a damaged one is
    kept aside (with its WAL files) so a fresh one can be rebuilt from the checkpoint.
    Returns what happened (None: the database is usable)."""
    if not path.exists():
        return "missing: rebuilt from the checkpoint (earlier participation history is lost)"
    try:
        ClientRegistry(path).close()
    except CheckpointError as err:
        aside = keep_aside(path)
        for suffix in ("-wal", "-shm"):
            extra = path.with_name(path.name + suffix)
            if extra.exists():
                extra.replace(aside.with_name(aside.name + suffix))
        log.warning("%s; kept aside as %s, rebuilt from the checkpoint", err, aside.name)
        return f"damaged ({err}): kept aside as {aside.name}, rebuilt from the checkpoint"
    return None


def check_ledger(run: RunDirectory, config: RunConfig) -> None:
    """Refuse to resume a private run whose ledger (``privacy.json``) is gone: what it had
    already released would be forgotten, and the budget overspent."""
    if config.privacy.mode == "off" or not run.checkpoints():
        return
    ledger = run.path / "privacy.json"
    if not ledger.is_file():
        raise CheckpointError(
            f"{str(ledger)!r} is missing, but privacy.mode = {config.privacy.mode!r}: without "
            "the ledger the privacy already spent is unknown, so the run cannot continue; "
            "restore privacy.json from a backup, or start a new run with "
            f"`fedloom run {run.config_path}`"
        )


class StopSignals:
    """While rounds run, SIGINT (Ctrl-C) and SIGTERM only ask the run to stop after the
    current round, so it can save a checkpoint first; a second signal stops it at once.

    Installed only in the main thread (where Python delivers signals); elsewhere it never
    catches anything.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.caught: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old = signal.signal(sig, self._handle)
                self._old[sig] = signal.SIG_DFL if old is None else old
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.caught is not None:  # the second one: stop now
            self._restore()
            raise KeyboardInterrupt
        self.caught = signal.Signals(signum).name
        log.warning("%s: stopping after this round (send it again to stop at once)", self.caught)

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()
