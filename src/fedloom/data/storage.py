"""Per-client directory layout, so a real client process can load just its own data.

Layout under ``root``::

    manifest.json            {"format": 2, "num_clients", "num_classes" (null for
                              regression), "num_features", "sample_shape", "x_dtype"
                              ("float32" or "int64"), "targets", "has_holdout"}
    client-000000/train.npz  arrays x ([n, *sample_shape]), y (labels [n], tokens [n, T]
                             or regression targets) and client_id (the client it belongs
                             to, so a device cannot use another's folder)
    client-000000/holdout.npz   (only when a hold-out partition was written)
    ...

Format 1 manifests (2-D float features and class labels, without ``sample_shape``,
``x_dtype`` and ``targets``) are still read.

Every file is written to a temporary file in its final directory and then renamed over the
target, so readers never see a half-written file. The manifest is removed first and written
last: a directory without a manifest is an incomplete write.
"""

from __future__ import annotations

import json
import math
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.atomic import atomic_write
from fedloom.data.arrays import ArrayDataset, ClientPartition
from fedloom.errors import DataError

FORMAT = 2
READABLE = (1, 2)
MANIFEST = "manifest.json"
TRAIN_FILE = "train.npz"
HOLDOUT_FILE = "holdout.npz"
TARGETS = ("classes", "tokens", "values")
X_DTYPES = ("float32", "int64")


@dataclass(frozen=True)
class _Layout:
    """What every shard of a partition must agree on (from the manifest)."""

    num_classes: int | None
    sample_shape: tuple[int, ...]
    x_dtype: str
    targets: str


def client_dir(root: Path, i: int) -> Path:
    """Folder of client ``i`` under ``root``."""
    return root / f"client-{i:06d}"


def _write_npz(path: Path, x: np.ndarray, y: np.ndarray, client_id: int) -> None:
    cid = np.array(client_id, dtype=np.int64)
    atomic_write(path, lambda fh: np.savez(fh, x=x, y=y, client_id=cid), fsync=False)


def _describe(part: ClientPartition) -> dict[str, Any]:
    return {
        "num_clients": part.num_clients,
        "num_classes": part.num_classes,
        "num_features": part.num_features,
        "sample_shape": list(part.sample_shape),
        "x_dtype": str(part.x.dtype),
        "targets": part.targets,
    }


def write_partition(
    root: str | Path, train: ClientPartition, holdout: ClientPartition | None = None
) -> None:
    """Write one folder per client (train and optional hold-out shard) plus a manifest."""
    root = Path(root)
    described = _describe(train)
    if holdout is not None:
        for field, value in _describe(holdout).items():
            if value != described[field]:
                raise DataError(
                    f"holdout {field}={value} does not match train {field}={described[field]}"
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
    manifest = {"format": FORMAT, **described, "has_holdout": holdout is not None}
    text = json.dumps(manifest, indent=2).encode()
    atomic_write(root / MANIFEST, lambda fh: fh.write(text), fsync=False)


def _count(path: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{path}: manifest field {key!r} must be an integer >= 0, got {value!r}")
    return value


def _read_manifest(path: Path) -> tuple[dict[str, Any], _Layout]:
    """Parse and check a manifest (format 1 or 2), naming the file on any problem."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: manifest not found (missing or incomplete partition)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: corrupt manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: corrupt manifest: expected a JSON object")
    version = manifest.get("format")
    if version not in READABLE:
        raise DataError(f"{path}: unsupported format {version!r}, expected one of {list(READABLE)}")
    _count(path, "num_clients", manifest.get("num_clients"))
    features = _count(path, "num_features", manifest.get("num_features"))
    if not isinstance(manifest.get("has_holdout"), bool):
        raise DataError(f"{path}: manifest field 'has_holdout' must be true or false")
    if version == 1:  # 2-D float features, class labels
        num_classes = _count(path, "num_classes", manifest.get("num_classes"))
        return manifest, _Layout(num_classes, (features,), "float32", "classes")
    targets = manifest.get("targets")
    if targets not in TARGETS:
        raise DataError(
            f"{path}: manifest field 'targets' must be one of {list(TARGETS)}, got {targets!r}"
        )
    num_classes = manifest.get("num_classes")
    if targets == "values":
        if num_classes is not None:
            raise DataError(
                f"{path}: manifest field 'num_classes' must be null for regression targets, "
                f"got {num_classes!r}"
            )
    else:
        num_classes = _count(path, "num_classes", num_classes)
    shape = manifest.get("sample_shape")
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise DataError(
            f"{path}: manifest field 'sample_shape' must be a list of integers >= 0, got {shape!r}"
        )
    if math.prod(shape) != features:
        raise DataError(
            f"{path}: manifest sample_shape {shape} holds {math.prod(shape)} values but "
            f"num_features is {features}"
        )
    x_dtype = manifest.get("x_dtype")
    if x_dtype not in X_DTYPES:
        raise DataError(
            f"{path}: manifest field 'x_dtype' must be one of {list(X_DTYPES)}, got {x_dtype!r}"
        )
    return manifest, _Layout(num_classes, tuple(shape), x_dtype, targets)


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


def _load_shard(path: Path, num_classes: int | None, layout: _Layout | None) -> ArrayDataset:
    """One validated client file as a dataset; one whose sample shape, input dtype or
    targets disagree with the manifest's ``layout`` is refused. Errors name the file."""
    x, y = _read_npz(path)
    try:
        data = ArrayDataset(x, y, num_classes)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    if layout is None:
        return data
    for what, found, expected in (
        ("sample shape", list(data.sample_shape), list(layout.sample_shape)),
        ("inputs of dtype", str(data.x.dtype), layout.x_dtype),
        ("targets", data.targets, layout.targets),
    ):
        if found != expected:
            raise DataError(f"{path}: has {what} {found} but the manifest says {expected}")
    return data


def _pool(shards: list[ArrayDataset], layout: _Layout) -> ClientPartition:
    sizes = np.array([len(s) for s in shards], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
    if shards:
        x = np.concatenate([s.x for s in shards])
        y = np.concatenate([s.y for s in shards])
    else:
        x = np.zeros((0, *layout.sample_shape), dtype=layout.x_dtype)
        y_dtype = np.float32 if layout.targets == "values" else np.int64
        y = np.zeros((0, 1) if layout.targets == "tokens" else (0,), dtype=y_dtype)
    return ClientPartition(x, y, offsets, layout.num_classes)


def read_partition(root: str | Path) -> tuple[ClientPartition, ClientPartition | None]:
    """Read back what :func:`write_partition` wrote: ``(train, holdout or None)``."""
    root = Path(root)
    manifest, layout = _read_manifest(root / MANIFEST)
    folders = [client_dir(root, i) for i in range(manifest["num_clients"])]
    train = [_load_shard(f / TRAIN_FILE, layout.num_classes, layout) for f in folders]
    if not manifest["has_holdout"]:
        return _pool(train, layout), None
    held = [_load_shard(f / HOLDOUT_FILE, layout.num_classes, layout) for f in folders]
    return _pool(train, layout), _pool(held, layout)


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

    The layout (``num_classes``, sample shape, and whether a hold-out must exist) comes from
    the parent folder's manifest when there is one; a stand-alone client folder (copied to
    a device on its own) reads ``holdout.npz`` only if present and takes its targets from
    its own files: float ``y`` is regression, integer ``y`` class labels (or tokens) with
    ``max label + 1`` classes.
    """
    dir = Path(dir)
    if not dir.is_dir():
        raise DataError(f"client folder {dir} does not exist")
    manifest_path = dir.parent / MANIFEST
    holdout_path = dir / HOLDOUT_FILE
    layout: _Layout | None = None
    if manifest_path.exists():
        manifest, layout = _read_manifest(manifest_path)
        has_holdout, num_classes = manifest["has_holdout"], layout.num_classes
    else:
        has_holdout, num_classes = holdout_path.exists(), None
        labels = [_read_npz(p)[1] for p in (dir / TRAIN_FILE, holdout_path) if p.exists()]
        if not any(y.dtype.kind == "f" for y in labels):
            integer = [y for y in labels if y.size and np.issubdtype(y.dtype, np.integer)]
            num_classes = max([1, *(int(y.max()) + 1 for y in integer)])
    train = _load_shard(dir / TRAIN_FILE, num_classes, layout)
    holdout = _load_shard(holdout_path, num_classes, layout) if has_holdout else None
    return train, holdout


def write_eval_set(path: str | Path, data: ArrayDataset) -> None:
    """A central evaluation set as ``.npz`` (``x`` [n, ...], ``y`` as the dataset holds
    it): what a deployment server may be given (``fedloom server --eval-data``), never
    client data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, x=data.x, y=data.y)
    os.replace(tmp, path)


def read_eval_set(path: str | Path, num_classes: int | None = None) -> ArrayDataset:
    """A central evaluation set from ``path`` (see :func:`write_eval_set`), validated:
    inputs as ``ArrayDataset`` takes them, integer labels in ``[0, num_classes)``
    (default: the largest label + 1) or, when ``num_classes`` is None and ``y`` is float,
    regression targets; at least one example. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--eval-data {str(path)!r}: file not found")
    x, y = _read_npz(path)
    if len(y) == 0:
        raise DataError(f"{path}: the evaluation set has no examples")
    try:
        if num_classes is None and np.issubdtype(y.dtype, np.integer):
            num_classes = max(2, int(y.max()) + 1)
        return ArrayDataset(x, y, num_classes)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
