"""Readers for the standard federated-learning datasets, from files the user already has.

Nothing here downloads: each reader parses the files in their published format (MNIST's
IDX, CIFAR-10's binary batches, LEAF's JSON, a Hugging Face dataset saved with
``save_to_disk``) and returns ``(train, test)`` as ``ArrayDataset``s, ``test`` being None
where the source has no test split. Images become float32 ``[n, C, H, W]`` in ``[0, 1]``;
text becomes int64 token ids. A missing, truncated or inconsistent file is one
``DataError`` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedloom.data.arrays import ArrayDataset
from fedloom.errors import DataError

Split = tuple[ArrayDataset, ArrayDataset | None]

IDX_IMAGES = 2051  # magic number of an IDX file of uint8 images [n, rows, cols]
IDX_LABELS = 2049  # magic number of an IDX file of uint8 labels [n]
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then the channel-major 3x32x32 image

FEMNIST_CLASSES = 62  # digits, upper- and lower-case letters
# LEAF's Shakespeare vocabulary (models/utils/language_utils.py, ALL_LETTERS): a
# character's id is its index here. LEAF has no out-of-vocabulary id (``find`` gives -1),
# so a character outside it is refused.
SHAKESPEARE_VOCABULARY = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
SHAKESPEARE_LENGTH = 80  # characters of context per sample (LEAF's SEQ_LENGTH)
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10")


def _existing(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"{what} folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{what} path {root} is not a folder")
    return root


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None


# MNIST (IDX) ---------------------------------------------------------------------------
def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array in IDX file ``path`` (optionally .gz), checking that its magic
    number is ``magic`` and that its size is exactly what the header promises.

    IDX header: a big-endian uint32 magic number ``0x08nn`` (0x08 = uint8, nn = number
    of dimensions), then one big-endian uint32 per dimension.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    found = int(np.frombuffer(raw, ">u4", count=1)[0])
    if found != magic:
        raise DataError(f"{path}: magic number {found}, expected {magic} (not this IDX file)")
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        problem = "truncated" if len(raw) - header < expected else "trailing bytes"
        raise DataError(
            f"{path}: {problem}: the header promises {dims} = {expected} bytes of data, "
            f"the file has {len(raw) - header}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _idx_file(root: Path, name: str) -> Path:
    folders = (root, root / "MNIST" / "raw")
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"MNIST file {name} (or {name}.gz) not found in {' or '.join(map(str, folders))}"
    )


def _mnist_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (_idx_file(root, name) for name in MNIST_FILES[split])
    images = read_idx(image_file, IDX_IMAGES)
    labels = read_idx(label_file, IDX_LABELS)
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{label_file}: {labels.shape[0]} labels for the {images.shape[0]} images "
            f"of {image_file}"
        )
    if labels.size and labels.max() >= 10:
        raise DataError(f"{label_file}: label {int(labels.max())} is not a digit 0..9")
    x = images[:, None].astype(np.float32) / 255.0
    return x, labels.astype(np.int64)


def load_mnist(root: str | Path) -> Split:
    """MNIST (or Fashion-MNIST, same files) from its four IDX files, each possibly .gz,
    in ``root`` or torchvision's ``root/MNIST/raw``: x float32 ``[n, 1, 28, 28]`` in
    ``[0, 1]``, y the 10 classes.

    References: LeCun et al. 1998, "Gradient-Based Learning Applied to Document
    Recognition".
    """
    root = _existing(root, "MNIST")
    train_x, train_y = _mnist_split(root, "train")
    test_x, test_y = _mnist_split(root, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{root}: train images are {train_x.shape[2:]} but test images {test_x.shape[2:]}"
        )
    return ArrayDataset(train_x, train_y, 10), ArrayDataset(test_x, test_y, 10)


# CIFAR-10 (binary version) -------------------------------------------------------------
def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    if not raw or len(raw) % CIFAR10_RECORD:
        raise DataError(
            f"{path}: truncated: {len(raw)} bytes is not a whole number of "
            f"{CIFAR10_RECORD}-byte CIFAR-10 records"
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= 10)
    if bad.size:
        raise DataError(f"{path}: record {bad[0]} has label {labels[bad[0]]}, not 0..9")
    x = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, labels


def load_cifar10(root: str | Path) -> Split:
    """CIFAR-10's binary version: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (those
    present, numbered from 1 without gaps) and ``test_batch.bin``, in
    ``root/cifar-10-batches-bin`` or ``root`` itself: x float32 ``[n, 3, 32, 32]`` in
    ``[0, 1]``, y the 10 classes.

    References: Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images".
    """
    root = _existing(root, "CIFAR-10")
    folder = root / CIFAR10_FOLDER if (root / CIFAR10_FOLDER).is_dir() else root
    numbers = sorted(
        int(m.group(1))
        for p in folder.glob("data_batch_*.bin")
        if (m := re.fullmatch(r"data_batch_(\d+)\.bin", p.name))
    )
    if not numbers:
        raise DataError(f"CIFAR-10 file data_batch_1.bin not found in {folder}")
    gap = next((i for i, n in enumerate(numbers, 1) if n != i), None)
    if gap is not None:
        raise DataError(f"CIFAR-10 file {folder / f'data_batch_{gap}.bin'} is missing")
    test_file = folder / "test_batch.bin"
    if not test_file.is_file():
        raise DataError(f"CIFAR-10 file test_batch.bin not found in {folder}")
    batches = [_cifar_batch(folder / f"data_batch_{n}.bin") for n in numbers]
    test_x, test_y = _cifar_batch(test_file)
    train = ArrayDataset(
        np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]), 10
    )
    return train, ArrayDataset(test_x, test_y, 10)


# torchvision ---------------------------------------------------------------------------
def load_torchvision(
    name: Literal["MNIST", "FashionMNIST", "CIFAR10"], root: str | Path
) -> tuple[ArrayDataset, ArrayDataset]:
    """A torchvision dataset already in ``root`` (``download=False``), as arrays: images
    float32 ``[n, C, H, W]`` in ``[0, 1]``, 10 classes. torchvision is optional."""
    if name not in TORCHVISION_DATASETS:
        raise DataError(
            f"torchvision dataset {name!r} is not supported; supported: "
            f"{', '.join(TORCHVISION_DATASETS)}"
        )
    try:
        from torchvision import datasets as tv
    except ImportError:
        raise DataError(
            f"reading {name} through torchvision needs torchvision: pip install torchvision "
            "(or read the files directly: load_mnist, load_cifar10)"
        ) from None
    root = _existing(root, f"torchvision {name}")
    out = []
    for train in (True, False):
        try:
            ds = getattr(tv, name)(str(root), train=train, download=False)
        except (RuntimeError, OSError) as err:
            raise DataError(f"{root}: torchvision {name}: {err}") from None
        images = np.asarray(ds.data)
        # MNIST's images are [n, H, W]; CIFAR10's [n, H, W, C]
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(images, dtype=np.float32) / 255.0
        out.append(ArrayDataset(x, np.asarray(ds.targets, dtype=np.int64), 10))
    return out[0], out[1]


# LEAF (JSON) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LeafData:
    """A LEAF dataset: ``groups`` of both splits index ``users`` (train files first, then
    users found only in test files), so user ``i`` is natural client ``i`` even when it
    has no training samples."""

    train: ArrayDataset
    test: ArrayDataset | None
    users: tuple[str, ...]


def _leaf_json(path: Path) -> tuple[list[str], dict[str, Any]]:
    """``(users, user_data)`` of one LEAF file, checked against its ``num_samples``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not valid LEAF JSON: {err}") from None
    if not isinstance(doc, dict) or not {"users", "num_samples", "user_data"} <= doc.keys():
        found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise DataError(
            f"{path}: a LEAF file needs keys users, num_samples and user_data; found {found}"
        )
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    if not (isinstance(users, list) and isinstance(counts, list) and isinstance(data, dict)):
        raise DataError(f"{path}: users and num_samples must be lists, user_data an object")
    if len(users) != len(counts):
        raise DataError(f"{path}: {len(users)} users but {len(counts)} num_samples")
    if len(set(users)) != len(users):
        raise DataError(f"{path}: a user is listed twice")
    for user, count in zip(users, counts, strict=True):
        record = data.get(user)
        if not isinstance(record, dict) or not {"x", "y"} <= record.keys():
            raise DataError(f"{path}: user {user!r} has no user_data with x and y")
        nx, ny = len(record["x"]), len(record["y"])
        if not nx == ny == count:
            raise DataError(
                f"{path}: user {user!r} has {nx} x and {ny} y but num_samples says {count}"
            )
    return [str(u) for u in users], data


def _femnist_user(record: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(record["x"], dtype=np.float32)
        y = np.asarray(record["y"])
    except (ValueError, TypeError) as err:
        raise DataError(f"{where}: x must be rows of 784 numbers: {err}") from None
    if y.size == 0:
        return np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64)
    if x.ndim != 2 or x.shape[1] != 784:
        raise DataError(f"{where}: x must be rows of 784 numbers, got shape {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= FEMNIST_CLASSES:
        raise DataError(f"{where}: y must be class ids 0..{FEMNIST_CLASSES - 1}")
    return x.reshape(-1, 1, 28, 28), y.astype(np.int64)


_CHAR_IDS = np.full(128, -1, dtype=np.int64)
_CHAR_IDS[[ord(c) for c in SHAKESPEARE_VOCABULARY]] = np.arange(len(SHAKESPEARE_VOCABULARY))


def _char_ids(texts: list[Any], length: int, where: str, what: str) -> np.ndarray:
    """Strings of ``length`` characters as vocabulary ids ``[n, length]``."""
    if not all(isinstance(t, str) for t in texts):
        raise DataError(f"{where}: every {what} must be a string")
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    bad = np.flatnonzero(lengths != length)
    if bad.size:
        raise DataError(
            f"{where} sample {bad[0]}: {what} has {lengths[bad[0]]} characters, expected {length}"
        )
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), "<u4").astype(np.int64)
    ids = np.where(codes < 128, _CHAR_IDS[np.minimum(codes, 127)], -1)
    unknown = np.flatnonzero(ids < 0)
    if unknown.size:
        at = unknown[0]
        raise DataError(
            f"{where} sample {at // length}: {what} character {chr(codes[at])!r} is not in "
            "LEAF's Shakespeare vocabulary"
        )
    return ids.reshape(len(texts), length)


def _shakespeare_user(record: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    x = _char_ids(record["x"], SHAKESPEARE_LENGTH, where, "x")
    return x, _char_ids(record["y"], 1, where, "y").reshape(-1)


_LEAF_READERS = {
    "femnist": (_femnist_user, FEMNIST_CLASSES),
    "shakespeare": (_shakespeare_user, len(SHAKESPEARE_VOCABULARY)),
}


def _leaf_split(files: list[Path], users: dict[str, int], kind: str) -> ArrayDataset:
    """One split's files as one dataset; users not seen before are appended to ``users``."""
    read, num_classes = _LEAF_READERS[kind]
    xs, ys, groups = [], [], []
    for path in files:
        names, data = _leaf_json(path)
        for name in names:
            x, y = read(data[name], f"{path}: user {name!r}")
            xs.append(x)
            ys.append(y)
            groups.append(np.full(y.shape[0], users.setdefault(name, len(users)), np.int64))
    if not ys:
        raise DataError(f"LEAF {kind}: the files in {files[0].parent} list no users")
    return ArrayDataset(np.concatenate(xs), np.concatenate(ys), num_classes, np.concatenate(groups))


def read_leaf(root: str | Path, kind: Literal["femnist", "shakespeare"]) -> LeafData:
    """A LEAF dataset from ``root/train/*.json`` and ``root/test/*.json`` (as LEAF's
    preprocessing writes them; the test folder is optional), with its users.

    Each file holds ``users``, ``num_samples`` and ``user_data[user] = {x, y}``
    (``hierarchies``, if present, is ignored). FEMNIST: x rows of 784 floats become
    ``[n, 1, 28, 28]``, y one of 62 classes. Shakespeare: x strings of 80 characters
    become int64 character ids ``[n, 80]``, y the next character's id, over LEAF's
    80-character vocabulary.

    References: Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings".
    """
    if kind not in _LEAF_READERS:
        raise DataError(f"unknown LEAF dataset {kind!r}; known: {', '.join(_LEAF_READERS)}")
    root = _existing(root, f"LEAF {kind}")
    train_files = sorted((root / "train").glob("*.json"))
    if not train_files:
        raise DataError(f"LEAF {kind}: no .json files in {root / 'train'}")
    test_files = sorted((root / "test").glob("*.json"))
    users: dict[str, int] = {}
    train = _leaf_split(train_files, users, kind)
    test = _leaf_split(test_files, users, kind) if test_files else None
    return LeafData(train, test, tuple(users))


def load_femnist(root: str | Path) -> Split:
    """LEAF's FEMNIST (see :func:`read_leaf`); ``groups`` are the writers."""
    leaf = read_leaf(root, "femnist")
    return leaf.train, leaf.test


def load_shakespeare(root: str | Path) -> Split:
    """LEAF's Shakespeare (see :func:`read_leaf`); ``groups`` are the speaking roles."""
    leaf = read_leaf(root, "shakespeare")
    return leaf.train, leaf.test


# Hugging Face datasets -----------------------------------------------------------------
def _hf_values(ds: Any, column: str, where: str) -> np.ndarray:
    """One column as numpy, or a DataError naming the columns there are."""
    if column not in ds.column_names:
        raise DataError(f"{where}: no column {column!r}; columns: {', '.join(ds.column_names)}")
    return ds.with_format("numpy", columns=[column])[:][column]


def _hf_column(ds: Any, column: str, where: str) -> np.ndarray:
    """A numeric column: images ``[n, C, H, W]`` float32 in ``[0, 1]``, numbers and
    equal-length sequences of numbers as they are."""
    import datasets

    values = _hf_values(ds, column, where)
    if values.dtype == object:
        raise DataError(f"{where}: column {column!r} holds sequences of different lengths")
    if values.dtype.kind in "US":
        raise DataError(f"{where}: column {column!r} holds text; map it to integer token ids first")
    if isinstance(ds.features[column], datasets.Image):
        images = values[:, None] if values.ndim == 3 else values.transpose(0, 3, 1, 2)
        scale = np.iinfo(values.dtype).max if values.dtype.kind in "iu" else 1.0
        return np.ascontiguousarray(images, dtype=np.float32) / np.float32(scale)
    return values


def _hf_targets(ys: list[np.ndarray], xs: list[np.ndarray], feature: Any) -> int | None:
    """num_classes of the targets: a ClassLabel's count, else (integers) one more than
    the largest id in any split (token targets: in x too); None for real values."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return int(feature.num_classes)
    if ys[0].dtype.kind == "f":
        return None
    tokens = ys[0].ndim == 2
    ids = [*ys, *(x for x in xs if tokens and x.dtype.kind in "iub")]
    return max((int(a.max()) for a in ids if a.size), default=0) + 1


def load_huggingface(
    path: str | Path,
    x_column: str,
    y_column: str,
    split: str = "train",
    test_split: str | None = "test",
    group_column: str | None = None,
) -> Split:
    """A Hugging Face dataset saved with ``save_to_disk``, through the optional
    ``datasets`` package: ``split`` is the training data and ``test_split`` (None: none)
    the test set; a saved ``Dataset`` (no splits) is all training data.

    ``x_column``: images (``Image`` feature) become float32 ``[n, C, H, W]`` in
    ``[0, 1]``; integers become int64 token ids; floats float32. ``y_column``: a
    ``ClassLabel`` or integers are class labels (``[n]``) or token targets (``[n, T]``),
    floats regression targets. ``group_column``: each row's client id (any values),
    for natural partitions.
    """
    try:
        import datasets
    except ImportError:
        raise DataError(
            "reading a Hugging Face dataset needs the datasets package: pip install datasets"
        ) from None
    path = _existing(path, "Hugging Face dataset")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a dataset saved with save_to_disk: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        wanted = [split] if test_split is None else [split, test_split]
        for name in wanted:
            if name not in loaded:
                raise DataError(f"{path}: no split {name!r}; splits: {', '.join(loaded)}")
        parts = [loaded[name] for name in wanted]
    else:
        wanted, parts = ["train"], [loaded]
    where = [f"{path} [{name}]" for name in wanted]
    xs = [_hf_column(ds, x_column, w) for ds, w in zip(parts, where, strict=True)]
    ys = [_hf_column(ds, y_column, w) for ds, w in zip(parts, where, strict=True)]
    num_classes = _hf_targets(ys, xs, parts[0].features[y_column])
    xs = [x.astype(np.int64) if x.dtype.kind in "iub" else x.astype(np.float32) for x in xs]
    ys = [y.astype(np.float32) if num_classes is None else y.astype(np.int64) for y in ys]
    groups: list[np.ndarray | None] = [None] * len(parts)
    if group_column is not None:
        ids = [_hf_values(ds, group_column, w) for ds, w in zip(parts, where, strict=True)]
        _, codes = np.unique(np.concatenate(ids), return_inverse=True)
        cuts = np.cumsum([len(i) for i in ids])[:-1]
        groups = np.split(codes.reshape(-1).astype(np.int64), cuts)
    out = []
    for x, y, g, w in zip(xs, ys, groups, where, strict=True):
        try:
            out.append(ArrayDataset(x, y, num_classes, g))
        except DataError as err:
            raise DataError(f"{w}: {err}") from None
    return out[0], out[1] if len(out) > 1 else None
