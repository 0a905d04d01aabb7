"""The run directory: resolved config, metrics log, checkpoints, report.

Layout of ``runs/<name>/``::

    config.toml                  the resolved config the run used
    metrics.jsonl                one JSON record per round and event
    checkpoints/round-000010.npz global model, optimizer state, RNG and monitor state
    report/                      PNG plots and summary

Every file is written atomically (temp file in the same folder, then ``Path.replace``)
so a crash never leaves a half-written checkpoint or config behind. The metrics log is
appended line by line; on resume it is cut back, atomically, to the checkpoint's round
so no round is ever recorded twice. Nothing is thrown away unseen: a line that is not a
valid record (damaged by hand or by the disk) is kept aside in
``metrics.jsonl.damaged-<n>`` before the log is rewritten.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.atomic import atomic_write_bytes, atomic_write_text
from fedloom.config import RunConfig, load_config, to_toml
from fedloom.errors import CheckpointError, ConfigError, StorageError

_CKPT = re.compile(r"^round-(\d{6,})\.npz$")
_META = "__meta__"
# fields the reports compute with
_NUMERIC = (
    "accuracy",
    "loss",
    "fed_accuracy",
    "fed_loss",
    "fed_accuracy_p10",
    "virtual_time",
    "wall_s",
    "rejected",
    "epsilon",
)


def _valid_record(record: object) -> bool:
    """A metrics record: a JSON object with an int ``round``, a str ``event`` and numeric
    metrics (anything else in ``metrics.jsonl`` is damage)."""
    if not isinstance(record, dict):
        return False
    rnd, event = record.get("round"), record.get("event")
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        return False
    if not isinstance(event, str):
        return False
    dropped = record.get("dropped", {})
    if not isinstance(dropped, dict) or not all(_number(n) for n in dropped.values()):
        return False
    return all(_number(record[k]) for k in _NUMERIC if k in record)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def keep_aside(path: Path, data: bytes | None = None, label: str = "damaged") -> Path:
    """Move ``path`` (or write ``data``) to the first free ``<path>.<label>-<n>``: damaged
    files are set aside for inspection, never deleted."""
    n = 1
    while (aside := path.with_name(f"{path.name}.{label}-{n}")).exists():
        n += 1
    if data is None:
        path.replace(aside)
    else:
        atomic_write_bytes(aside, data)
    return aside


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


class RunDirectory:
    """One run's folder on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.toml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")
    report_dir = property(lambda self: self.path / "report")

    @classmethod
    def create(cls, config: RunConfig) -> RunDirectory:
        """A fresh directory ``output_dir/name`` (``name-2``, ``name-3`` ... if taken)."""
        root = Path(config.output_dir)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"output_dir = {str(root)!r} is a file, expected a directory")
        try:
            root.mkdir(parents=True, exist_ok=True)
            path, n = root / config.name, 1
            while True:
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    n += 1
                    path = root / f"{config.name}-{n}"
        except OSError as err:
            raise ConfigError(
                f"output_dir = {str(root)!r}: cannot create the run directory "
                f"{config.name!r} there: {err.strerror or err}"
            ) from None
        run = cls(path)
        try:
            atomic_write_text(run.config_path, to_toml(config))
        except OSError:
            path.rmdir()
            raise
        return run

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        run = cls(path)
        if not run.config_path.is_file():
            hint = ""
            if run.path.is_dir() and not any(
                p.suffix != ".tmp" for p in run.path.iterdir()
            ):  # a run killed while its directory was being created
                hint = "; it is empty: the run stopped before it began, start it again"
            raise CheckpointError(f"{str(path)!r} is not a run directory (no config.toml){hint}")
        return run

    def load_config(self) -> RunConfig:
        return load_config(self.config_path)

    # metrics -----------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl``.

        Not fsynced: a record lost or torn by a crash is after the last checkpoint, and
        resume cuts the log back to that checkpoint and recomputes it.
        """
        line = json.dumps(record, default=_json_default, allow_nan=True)
        try:
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as err:
            raise StorageError(
                f"cannot append to {str(self.metrics_path)!r}: {err.strerror or err}",
                err.errno,
            ) from None

    def _lines(self) -> list[tuple[bytes, dict[str, Any] | None]]:
        """Every line of ``metrics.jsonl`` with its record (None: not a valid record)."""
        if not self.metrics_path.exists():
            return []
        out: list[tuple[bytes, dict[str, Any] | None]] = []
        for raw in self.metrics_path.read_bytes().splitlines():
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):  # also too deep, or an int over 4300 digits
                record = None
            out.append((raw, record if _valid_record(record) else None))
        return out

    def records(self) -> list[dict[str, Any]]:
        """All valid records; damaged lines (a torn last line from a crash, hand edits)
        are skipped here and set aside by ``truncate_records``."""
        return [r for _, r in self._lines() if r is not None]

    def truncate_records(self, last_round: int) -> Path | None:
        """Keep only records up to ``last_round`` (atomic rewrite). Lines that are not
        valid records are first written to ``metrics.jsonl.damaged-<n>``, whose path is
        returned (None when every line was valid)."""
        lines = self._lines()
        damaged = [raw for raw, r in lines if r is None and raw.strip()]
        aside = keep_aside(self.metrics_path, b"\n".join(damaged) + b"\n") if damaged else None
        kept = [r for _, r in lines if r is not None and r["round"] <= last_round]
        kept = [r for r in kept if r.get("event") not in ("stop", "audit")]
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in kept)
        atomic_write_text(self.metrics_path, text)
        return aside

    # checkpoints -------------------------------------------------------------
    def checkpoint_path(self, round: int) -> Path:
        return self.checkpoint_dir / f"round-{round:06d}.npz"

    def save_checkpoint(self, round: int, state: dict, keep: int) -> Path:
        """Write ``state`` (``arrays`` + JSON ``meta``) atomically; keep the newest ``keep``."""
        import io

        buf = io.BytesIO()
        meta = json.dumps(state["meta"], default=_json_default)
        np.savez(buf, **state["arrays"], **{_META: np.array(meta)})
        path = self.checkpoint_path(round)
        atomic_write_bytes(path, buf.getvalue())
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [p for p in self.checkpoint_dir.iterdir() if _CKPT.match(p.name)]
        return sorted(found, key=lambda p: int(_CKPT.match(p.name).group(1)))

    @staticmethod
    def read_checkpoint(path: Path) -> dict:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if k != _META}
                meta = json.loads(str(z[_META]))
        except (
            OSError,
            EOFError,
            ValueError,
            KeyError,
            zipfile.BadZipFile,
            zlib.error,
            json.JSONDecodeError,
            NotImplementedError,  # zipfile: a damaged compression method
            RuntimeError,  # zipfile: a damaged flag that marks a member encrypted
        ) as err:
            reason = str(err) or type(err).__name__
            if path.is_file() and path.stat().st_size == 0:
                reason = "the file is empty"
            raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: {reason}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("round"), int):
            raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: no round in its meta")
        return {"arrays": arrays, "meta": meta}

    def latest_checkpoint(self) -> tuple[Path, dict] | None:
        """The newest readable checkpoint (older ones are tried if the newest is damaged;
        the unreadable ones are listed in ``self.skipped``)."""
        errors = []
        self.skipped: list[str] = []
        for path in reversed(self.checkpoints()):
            try:
                return path, self.read_checkpoint(path)
            except CheckpointError as err:
                errors.append(str(err))
                self.skipped.append(path.name)
        if errors:
            raise CheckpointError(
                "no readable checkpoint: " + "; ".join(errors) + "; the run cannot continue "
                f"from its saved state: start it again with `fedloom run {self.config_path}`"
            )
        return None
