"""The run directory: resolved config, metrics log, checkpoints, report.

Layout of ``runs/<name>/``::

    config.toml                  the resolved config the run used
    metrics.jsonl                one JSON record per round and event
    checkpoints/round-000010.npz global model, optimizer state, RNG and monitor state
    report/                      PNG plots and summary

Every file is written atomically (temp file in the same folder, then ``Path.replace``)
so a crash never leaves a half-written checkpoint or config behind. The metrics log is
appended line by line; on resume it is cut back, atomically, to the checkpoint's round
so no round is ever recorded twice.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.atomic import atomic_write_bytes, atomic_write_text
from fedloom.config import RunConfig, load_config, to_toml
from fedloom.errors import CheckpointError

_CKPT = re.compile(r"^round-(\d{6,})\.npz$")
_META = "__meta__"


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
        root.mkdir(parents=True, exist_ok=True)
        path, n = root / config.name, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
                path = root / f"{config.name}-{n}"
        run = cls(path)
        atomic_write_text(run.config_path, to_toml(config))
        return run

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        run = cls(path)
        if not run.config_path.is_file():
            raise CheckpointError(f"{str(path)!r} is not a run directory (no config.toml)")
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
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def records(self) -> list[dict[str, Any]]:
        """All complete records (a torn last line from a crash is ignored)."""
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_records(self, last_round: int) -> None:
        """Keep only records up to ``last_round`` (atomic rewrite)."""
        kept = [r for r in self.records() if int(r.get("round", 0)) <= last_round]
        kept = [r for r in kept if r.get("event") not in ("stop", "audit")]
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in kept)
        atomic_write_text(self.metrics_path, text)

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
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: {err}") from None
        return {"arrays": arrays, "meta": meta}

    def latest_checkpoint(self) -> tuple[Path, dict] | None:
        """The newest readable checkpoint (older ones are tried if the newest is damaged)."""
        errors = []
        for path in reversed(self.checkpoints()):
            try:
                return path, self.read_checkpoint(path)
            except CheckpointError as err:
                errors.append(str(err))
        if errors:
            raise CheckpointError("no readable checkpoint: " + "; ".join(errors))
        return None
