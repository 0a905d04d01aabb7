"""Per-client directory layout, so a real client process can load just its own data.

Layout under ``root``::

    manifest.json            {"format": 1, "num_clients", "num_classes", "num_features",
                              "has_holdout"}
    client-000000/train.npz  arrays x (float32 [n, f]), y (int64 [n]) and client_id (the
                             client it belongs to, so a device cannot use another's folder)
    client-000000/holdout.npz   (only when a hold-out partition was written)
    ...

Every file is written to a temporary file in its final directory and then renamed over the
target, so readers never see a half-written file. The manifest is removed first and written
last: a directory without a manifest is an incomplete write.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.atomic import atomic_write
from fedloom.data.arrays import ArrayDataset, ClientPartition
from fedloom.errors import DataError

FORMAT = 1
MANIFEST = "manifest.json"
TRAIN_FILE = "train.npz"
HOLDOUT_FILE = "holdout.npz"


def client_dir(root: Path, i: int) -> Path:
    """Folder of client ``i`` under ``root``."""
    return root / f"client-{i:06d}"


def _write_npz(path: Path, x: np.ndarray, y: np.ndarray, client_id: int) -> None:
    cid = np.array(client_id, dtype=np.int64)
    atomic_write(path, lambda fh: np.savez(fh, x=x, y=y, client_id=cid), fsync=False)


def write_partition(
    root: str | Path, train: ClientPartition, holdout: ClientPartition | None = None
) -> None:
    """Write one folder per client (train and optional hold-out shard) plus a manifest."""
    root = Path(root)
    if holdout is not None:
        for field in ("num_clients", "num_classes", "num_features"):
            if getattr(holdout, field) != getattr(train, field):
                raise DataError(
                    f"holdout {field}={getattr(holdout, field)} does not match "
                    f"train {field}={getattr(train, field)}"
                )
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is an existing file, expected a folder to write clients into")
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)
    for i in range(train.num_clients):
        folder = client_dir(root, i)
        folder.mkdir(exist_ok=True)
        _write_npz(folder / TRAIN_FILE, *train.client(i), i)
        if holdout is not None:
            _write_npz(folder / HOLDOUT_FILE, *holdout.client(i), i)
        else:
            (folder / HOLDOUT_FILE).unlink(missing_ok=True)
    manifest = {
        "format": FORMAT,
        "num_clients": train.num_clients,
        "num_classes": train.num_classes,
        "num_features": train.num_features,
        "has_holdout": holdout is not None,
    }
    text = json.dumps(manifest, indent=2).encode()
    atomic_write(root / MANIFEST, lambda fh: fh.write(text), fsync=False)


def _read_manifest(path: Path) -> dict[str, Any]:
    """Parse and check a manifest, naming the file on any problem."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: manifest not found (missing or incomplete partition)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: corrupt manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: corrupt manifest: expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: unsupported format {manifest.get('format')!r}, expected {FORMAT}")
    for key in ("num_clients", "num_classes", "num_features"):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(
                f"{path}: manifest field {key!r} must be an integer >= 0, got {value!r}"
            )
    if not isinstance(manifest.get("has_holdout"), bool):
        raise DataError(f"{path}: manifest field 'has_holdout' must be true or false")
    return manifest


# np.load parses each array header with ast.literal_eval, which CPython 3.11 does not
# make thread-safe (concurrent calls can raise "AST constructor recursion depth
# mismatch"): client threads in one process read their folders one at a time.
_NPZ_LOCK = threading.Lock()


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load ``x`` and ``y`` from one client file, naming the file on any problem."""
    try:
        with _NPZ_LOCK, np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DataError(f"{path}: corrupt client file, missing array {missing[0]!r}")
            return archive["x"], archive["y"]
    except FileNotFoundError as exc:
        raise DataError(f"{path}: client data file not found") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: corrupt client file: {exc}") from exc


def _load_shard(path: Path, num_classes: int, num_features: int | None) -> ArrayDataset:
    """One validated client file as a dataset; errors name the file."""
    x, y = _read_npz(path)
    try:
        data = ArrayDataset(x, y, num_classes)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    if num_features is not None and data.num_features != num_features:
        raise DataError(
            f"{path}: has {data.num_features} features but the manifest says {num_features}"
        )
    return data


def _pool(shards: list[ArrayDataset], num_classes: int, num_features: int) -> ClientPartition:
    sizes = np.array([len(s) for s in shards], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
    x = np.concatenate([s.x for s in shards]) if shards else np.zeros((0, num_features))
    y = np.concatenate([s.y for s in shards]) if shards else np.zeros(0, dtype=np.int64)
    return ClientPartition(x, y, offsets, num_classes)


def read_partition(root: str | Path) -> tuple[ClientPartition, ClientPartition | None]:
    """Read back what :func:`write_partition` wrote: ``(train, holdout or None)``."""
    root = Path(root)
    manifest = _read_manifest(root / MANIFEST)
    num_classes, num_features = manifest["num_classes"], manifest["num_features"]
    folders = [client_dir(root, i) for i in range(manifest["num_clients"])]
    train = [_load_shard(f / TRAIN_FILE, num_classes, num_features) for f in folders]
    if not manifest["has_holdout"]:
        return _pool(train, num_classes, num_features), None
    held = [_load_shard(f / HOLDOUT_FILE, num_classes, num_features) for f in folders]
    return _pool(train, num_classes, num_features), _pool(held, num_classes, num_features)


def recorded_client(dir: str | Path) -> int | None:
    """The client id ``fedloom data export`` recorded in the folder's ``train.npz`` (None
    in folders written without one); a device checks it against its certificate's name."""
    path = Path(dir) / TRAIN_FILE
    try:
        with _NPZ_LOCK, np.load(path, allow_pickle=False) as archive:
            if "client_id" not in archive.files:
                return None
            value = archive["client_id"]
    except FileNotFoundError as exc:
        raise DataError(f"{path}: client data file not found") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: corrupt client file: {exc}") from exc
    if value.shape != () or not np.issubdtype(value.dtype, np.integer) or value < 0:
        raise DataError(f"{path}: client_id must be one integer >= 0, got {value!r}")
    return int(value)


def read_client(dir: str | Path) -> tuple[ArrayDataset, ArrayDataset | None]:
    """One client's ``(train, holdout or None)`` from its folder.

    ``num_classes`` (and whether a hold-out must exist) comes from the parent folder's manifest
    when there is one; a stand-alone client folder (copied to a device on its own) uses
    ``max label + 1`` over its own files and reads ``holdout.npz`` only if present.
    """
    dir = Path(dir)
    if not dir.is_dir():
        raise DataError(f"client folder {dir} does not exist")
    manifest_path = dir.parent / MANIFEST
    holdout_path = dir / HOLDOUT_FILE
    if manifest_path.exists():
        manifest = _read_manifest(manifest_path)
        num_classes, num_features = manifest["num_classes"], manifest["num_features"]
        has_holdout = manifest["has_holdout"]
    else:
        has_holdout = holdout_path.exists()
        labels = [_read_npz(p)[1] for p in (dir / TRAIN_FILE, holdout_path) if p.exists()]
        integer = [y for y in labels if y.size and np.issubdtype(y.dtype, np.integer)]
        num_classes = max([1, *(int(y.max()) + 1 for y in integer)])
        num_features = None
    train = _load_shard(dir / TRAIN_FILE, num_classes, num_features)
    holdout = _load_shard(holdout_path, num_classes, num_features) if has_holdout else None
    return train, holdout


def write_eval_set(path: str | Path, data: ArrayDataset) -> None:
    """A central evaluation set as ``.npz`` (``x`` float32 [n, f], ``y`` int64 [n]): what
    a deployment server may be given (``fedloom server --eval-data``), never client data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, x=data.x, y=data.y)
    os.replace(tmp, path)


def read_eval_set(path: str | Path, num_classes: int | None = None) -> ArrayDataset:
    """A central evaluation set from ``path`` (see :func:`write_eval_set`), validated:
    finite features, integer labels in ``[0, num_classes)`` (default: the largest label
    + 1), at least one example. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--eval-data {str(path)!r}: file not found")
    x, y = _read_npz(path)
    if len(y) == 0:
        raise DataError(f"{path}: the evaluation set has no examples")
    try:
        if num_classes is None:
            if not np.issubdtype(y.dtype, np.integer):
                raise DataError(f"labels y must be integers, got {y.dtype}")
            num_classes = max(2, int(y.max()) + 1)
        return ArrayDataset(x, y, num_classes)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
