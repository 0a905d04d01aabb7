"""Where centralized datasets come from: bundled digits, FedProx synthetic data, user files.

Also the two centralized preprocessing steps every source needs before partitioning: a random
train/test split and train-fitted standardization.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from fedloom.data.arrays import ArrayDataset
from fedloom.errors import DataError


def load_digits() -> ArrayDataset:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn (no download), raw 0..16.

    References: Alpaydin & Kaynak 1998, "Optical Recognition of Handwritten Digits" (UCI).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return ArrayDataset(bunch.data.astype(np.float32), bunch.target.astype(np.int64), 10)


def synthetic_fedprox(
    num_clients: int,
    alpha: float,
    beta: float,
    rng: np.random.Generator,
    num_features: int = 60,
    num_classes: int = 10,
    size_mean_log: float = 4.0,
    size_sigma_log: float = 2.0,
    min_samples: int = 50,
    max_samples: int | None = None,
) -> ArrayDataset:
    """FedProx Synthetic(alpha, beta): per-client softmax-regression tasks with power-law sizes.

    For client k: u_k ~ N(0, alpha^2), B_k ~ N(0, beta^2), W_k ~ N(u_k, 1) [C x F],
    b_k ~ N(u_k, 1) [C], v_k ~ N(B_k, 1) [F], x ~ N(v_k, diag(j^-1.2, j = 1..F)) and
    y = argmax(W_k x + b_k) (= argmax of the softmax). alpha controls how much the local models
    differ, beta how much the local feature distributions differ. Following the authors'
    reference generator (``np.random.normal(0, alpha)``), alpha and beta are standard
    deviations, not variances. This is the non-IID variant; ``groups`` holds each sample's
    client index.

    Client sizes: ``floor(LogNormal(size_mean_log, size_sigma_log)) + min_samples``, clipped to
    ``max_samples`` when given. The defaults (4, 2, 50, uncapped) are the reference generator's.

    References: Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx),
    Section 5.1; Shamir et al. 2014 (the synthetic setup it extends).
    """
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    if not (alpha >= 0 and beta >= 0):
        raise DataError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if num_features < 1 or num_classes < 2:
        raise DataError(
            f"need num_features >= 1 and num_classes >= 2, got num_features={num_features}, "
            f"num_classes={num_classes}"
        )
    if size_sigma_log < 0:
        raise DataError(f"size_sigma_log must be >= 0, got {size_sigma_log}")
    if min_samples < 1:
        raise DataError(f"min_samples must be >= 1, got {min_samples}")
    if max_samples is not None and max_samples < min_samples:
        raise DataError(f"max_samples={max_samples} is below min_samples={min_samples}")

    raw = rng.lognormal(size_mean_log, size_sigma_log, num_clients)
    sizes = np.floor(raw).astype(np.int64) + min_samples
    if max_samples is not None:
        sizes = np.minimum(sizes, max_samples)

    k, f, c = num_clients, num_features, num_classes
    u = rng.normal(0.0, alpha, k)
    b_mean = rng.normal(0.0, beta, k)
    v = rng.normal(b_mean[:, None], 1.0, (k, f))
    w = rng.normal(u[:, None, None], 1.0, (k, c, f))
    b = rng.normal(u[:, None], 1.0, (k, c))
    std = np.arange(1, f + 1, dtype=np.float64) ** -0.6  # sqrt of Sigma_jj = j^-1.2

    groups = np.repeat(np.arange(k, dtype=np.int64), sizes)
    x = v[groups] + rng.standard_normal((groups.size, f)) * std
    y = np.empty(groups.size, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(k):
        rows = slice(offsets[i], offsets[i + 1])
        y[rows] = np.argmax(x[rows] @ w[i].T + b[i], axis=1)
    return ArrayDataset(x.astype(np.float32), y, num_classes, groups)


def _integral(values: np.ndarray) -> np.ndarray:
    """Float labels or ids as int64 when they are whole numbers (1.0 is class 1); refuses
    fractional ones, which would each become a class of their own (a regression target)."""
    if not np.isfinite(values).all():
        raise ValueError("contains NaN/inf")
    fractional = np.flatnonzero(values != np.round(values))
    if fractional.size:
        raise ValueError(
            f"{values[fractional[0]]!r} (row {fractional[0] + 1}) is not a whole number: "
            "fractional values would each become a class of their own; give integer or "
            "string class labels"
        )
    return values.astype(np.int64)


def _encode(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary labels/ids to 0..K-1 in sorted order of their (integer or string) value."""
    if values.dtype.kind in "US":
        try:
            values = values.astype(np.int64)
        except ValueError:
            try:
                values = _integral(values.astype(np.float64))
            except ValueError as exc:
                if "whole number" in str(exc) or "NaN" in str(exc):
                    raise
                values = np.char.strip(values)
    elif values.dtype.kind == "f":
        values = _integral(values)
    elif values.dtype.kind not in "iub":
        raise ValueError(f"unsupported dtype {values.dtype}")
    uniques, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), int(uniques.size)


def _column_index(header: list[str], column: str | int, role: str, path: Path) -> int:
    """Resolve a column given by name or (possibly negative) position, naming it on error."""
    if isinstance(column, str):
        matches = [i for i, name in enumerate(header) if name.strip() == column]
        if not matches:
            raise DataError(f"{path}: {role} column {column!r} not found; columns: {header}")
        if len(matches) > 1:
            raise DataError(f"{path}: {role} column {column!r} appears {len(matches)} times")
        return matches[0]
    if not -len(header) <= column < len(header):
        raise DataError(
            f"{path}: {role} column index {column} is out of range for {len(header)} columns"
        )
    return column % len(header)


def _read_csv(
    path: Path, label_column: str | int, group_column: str | int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """Return (float64 features, label text, group text or None, feature column names).

    pandas' C parser reads the features straight into float64 (a large file never passes
    through Python lists); a file it cannot read cleanly is scanned again row by row to
    name the first bad row, field count or cell."""
    header = _csv_header(path)
    label_at = _column_index(header, label_column, "label", path)
    group_at = None if group_column is None else _column_index(header, group_column, "group", path)
    if group_at == label_at:
        raise DataError(f"{path}: label and group columns are the same ({header[label_at]!r})")
    feature_at = [i for i in range(len(header)) if i not in (label_at, group_at)]
    text_at = [label_at] if group_at is None else [label_at, group_at]
    import pandas as pd

    try:
        frame = pd.read_csv(
            path,
            header=0,
            names=list(range(len(header))),  # positions: header names may repeat
            dtype={**dict.fromkeys(feature_at, np.float64), **dict.fromkeys(text_at, str)},
            keep_default_na=False,  # a label "NA" is a label; an empty feature is refused
            na_values={i: [""] for i in feature_at},  # short rows are diagnosed below
            skip_blank_lines=True,
            encoding="utf-8",
            engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:  # a non-numeric cell, a long row
        _diagnose_csv(path, header, feature_at)
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows below the header")
    x = frame[feature_at].to_numpy(dtype=np.float64)
    # a short row's missing fields read as NaN features or empty text: scan for them (an
    # empty label in a whole row is a label, and the scan passes it)
    if not np.isfinite(x).all() or (frame[text_at] == "").to_numpy().any():
        _diagnose_csv(path, header, feature_at)
    names = [header[i] for i in feature_at]
    groups = None if group_at is None else frame[group_at].to_numpy(dtype=str)
    return x, frame[label_at].to_numpy(dtype=str), groups, names


def _csv_header(path: Path) -> list[str]:
    """The first non-blank row of the file (its column names)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            header = next((row for row in csv.reader(fh) if row), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc
    if header is None:
        raise DataError(f"{path}: empty file, expected a header row")
    return header


def _diagnose_csv(path: Path, header: list[str], feature_at: list[int]) -> None:
    """Raise naming the first problem of a CSV the fast reader refused or read with gaps:
    a row whose field count differs from the header, a non-numeric feature cell, or a
    NaN/inf feature (data rows numbered from 1, blank lines not counted). Streams the
    file, so only the problem's row is ever held."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = (row for row in csv.reader(fh) if row)
            next(rows)  # the header
            for r, row in enumerate(rows, start=1):
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: data row {r} has {len(row)} fields but the header has "
                        f"{len(header)}"
                    )
                for j in feature_at:
                    try:
                        value = float(row[j])
                    except ValueError as exc:
                        raise DataError(
                            f"{path}: feature column {header[j]!r} is not numeric in data row "
                            f"{r} ({exc})"
                        ) from exc
                    if not np.isfinite(value):
                        raise DataError(
                            f"{path}: feature column {header[j]!r} has NaN/inf in data row {r}"
                        )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc


def _read_npz(
    path: Path, group_column: str | int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return (x, y, groups or None) from an .npz archive."""
    if group_column is not None and not isinstance(group_column, str):
        raise DataError(
            f"{path}: for .npz files group_column must be an array name, got {group_column!r}"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read .npz archive: {exc}") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r}; found {sorted(arrays)}")
    if group_column is not None:
        if group_column not in arrays:
            raise DataError(f"{path}: missing group array {group_column!r}; found {sorted(arrays)}")
        group_key: str | None = group_column
    else:
        group_key = next((k for k in ("groups", "client_id") if k in arrays), None)
    return arrays["x"], arrays["y"], None if group_key is None else arrays[group_key]


def load_arrays(
    path: str | Path, label_column: str | int = -1, group_column: str | int | None = None
) -> ArrayDataset:
    """Load a user dataset from ``.npz`` (arrays ``x`` ``[n, ...]``, ``y``, optional
    ``groups``/``client_id``) or ``.csv`` (header row; label column by name or index,
    optional client-id column, every other column a numeric feature). An integer ``x`` in an
    ``.npz`` is kept as ids (token or category ids); store real features as floats.

    Labels (integers or strings) are re-coded to ``0..C-1`` in sorted order of their distinct
    values, so ``num_classes`` is the number of distinct labels in this file; client ids are
    re-coded the same way into ``groups``. ``label_column`` applies to CSV only; for .npz,
    ``group_column`` may name the groups array.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"data path {path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        x, labels, groups, names = _read_csv(path, label_column, group_column)
        if x.shape[1] == 0:
            raise DataError(f"{path}: no feature columns besides the label/group columns")
    elif suffix == ".npz":
        x, labels, groups = _read_npz(path, group_column)
        if x.ndim < 2 or x.size == 0:
            raise DataError(
                f"{path}: array 'x' must be non-empty [samples, ...] (at least 2-D), "
                f"got shape {x.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise DataError(
                f"{path}: array 'y' must be 1-D with {x.shape[0]} labels, got shape {labels.shape}"
            )
    else:
        raise DataError(f"{path}: unknown extension {path.suffix!r}; expected .npz or .csv")
    try:
        y, num_classes = _encode(labels)
    except ValueError as exc:
        raise DataError(f"{path}: labels cannot be used: {exc}") from exc
    codes = None
    if groups is not None:
        try:
            codes, _ = _encode(np.asarray(groups).reshape(-1))
        except ValueError as exc:
            raise DataError(f"{path}: client ids cannot be used: {exc}") from exc
    try:
        return ArrayDataset(x, y, num_classes, codes)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def train_test_split(
    data: ArrayDataset, test_fraction: float, rng: np.random.Generator
) -> tuple[ArrayDataset, ArrayDataset]:
    """Random (train, test) split of whole samples; both sides keep ``groups``.

    The test side gets ``round(test_fraction * n)`` samples, at least 1 and at most n - 1;
    rows keep their original relative order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(data)
    if n < 2:
        raise DataError(f"train_test_split needs at least 2 samples, got {n}")
    n_test = min(max(round(test_fraction * n), 1), n - 1)
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.choice(n, size=n_test, replace=False)] = True
    return data.subset(~is_test), data.subset(is_test)


def standardize(train: ArrayDataset, *others: ArrayDataset) -> tuple[ArrayDataset, ...]:
    """Z-score every input element (each pixel, each feature) with mean/std fitted on
    ``train`` only (zero std -> 1), applied to all. Integer inputs (token or category ids)
    are returned unchanged: ids have no scale to normalize.

    Fitting on train alone keeps test statistics from leaking into preprocessing.
    """
    if len(train) == 0:
        raise DataError("standardize: the training set is empty")
    for i, other in enumerate(others):
        if other.sample_shape != train.sample_shape:
            raise DataError(
                f"standardize: dataset #{i + 1} has {other.num_features} features of shape "
                f"{list(other.sample_shape)} but train has {train.num_features} of shape "
                f"{list(train.sample_shape)}"
            )
        if other.x.dtype != train.x.dtype:
            raise DataError(
                f"standardize: dataset #{i + 1} has {other.x.dtype} inputs but train has "
                f"{train.x.dtype}"
            )
    if np.issubdtype(train.x.dtype, np.integer):
        return (train, *others)
    x = train.x.astype(np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return tuple(
        ArrayDataset(((d.x - mean) / std).astype(np.float32), d.y, d.num_classes, d.groups)
        for d in (train, *others)
    )
