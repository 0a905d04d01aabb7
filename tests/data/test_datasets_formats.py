"""The standard datasets' readers on small files written here in each published format
(MNIST IDX, CIFAR-10 binary, LEAF JSON, Hugging Face save_to_disk), corrupt files among
them, and a LEAF dataset built into natural clients from a config."""

from __future__ import annotations

import gzip
import json
import struct
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom.config import RunConfig
from fedloom.data.datasets import (
    IDX_IMAGES,
    IDX_LABELS,
    SHAKESPEARE_VOCABULARY,
    load_cifar10,
    load_femnist,
    load_huggingface,
    load_mnist,
    load_shakespeare,
    load_torchvision,
    read_idx,
    read_leaf,
)
from fedloom.data.federated import build_federated_data
from fedloom.errors import ConfigError, DataError


# writers of the published formats -----------------------------------------------------
def write_idx(path: Path, magic: int, array: np.ndarray) -> Path:
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_mnist(folder: Path, rng: np.random.Generator, gz: bool = False) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out: dict[str, Any] = {}
    for prefix, n in (("train", 6), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", IDX_IMAGES, images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", IDX_LABELS, labels)
        out[prefix] = (images, labels)
    return out


def cifar_records(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    raw = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes()
    return raw, images, labels


def write_leaf(root: Path, split: str, name: str, users: dict[str, dict[str, list]]) -> Path:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "users": list(users),
        "num_samples": [len(d["y"]) for d in users.values()],
        "hierarchies": [],
        "user_data": users,
    }
    path = folder / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def femnist_user(rng: np.random.Generator, n: int) -> dict[str, list]:
    return {
        "x": rng.random((n, 784)).round(3).tolist(),
        "y": rng.integers(0, 62, n).tolist(),
    }


def shakespeare_user(rng: np.random.Generator, n: int) -> dict[str, list]:
    chars = np.array(list(SHAKESPEARE_VOCABULARY))
    texts = ["".join(rng.choice(chars, 81)) for _ in range(n)]
    return {"x": [t[:80] for t in texts], "y": [t[80] for t in texts]}


# MNIST --------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path: Path, gz: bool) -> None:
    written = write_mnist(tmp_path, np.random.default_rng(0), gz)
    train, test = load_mnist(tmp_path)
    assert test is not None
    for data, (images, labels) in ((train, written["train"]), (test, written["t10k"])):
        assert data.x.shape == (len(labels), 1, 28, 28) and data.x.dtype == np.float32
        np.testing.assert_allclose(data.x[:, 0] * 255, images, atol=1e-3)
        np.testing.assert_array_equal(data.y, labels)
        assert data.num_classes == 10 and data.targets == "classes"


def test_mnist_torchvision_layout(tmp_path: Path) -> None:
    written = write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(1))
    train, _ = load_mnist(tmp_path)
    np.testing.assert_array_equal(train.y, written["train"][1])


def test_mnist_errors_name_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    write_mnist(tmp_path, rng)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, IDX_IMAGES, np.zeros(6, np.uint8))  # an image magic on a label file
    with pytest.raises(DataError, match=rf"{labels}: magic number 2051, expected 2049"):
        load_mnist(tmp_path)

    write_idx(labels, IDX_LABELS, np.zeros(5, np.uint8))  # 5 labels for 6 images
    with pytest.raises(DataError, match=rf"{labels}: 5 labels for the 6 images"):
        load_mnist(tmp_path)

    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataError, match=rf"{images}: truncated: .* 2352 bytes of data"):
        read_idx(images, IDX_IMAGES)
    images.write_bytes(images.read_bytes()[:6])
    with pytest.raises(DataError, match=rf"{images}: truncated IDX header"):
        read_idx(images, IDX_IMAGES)

    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    write_idx(labels, IDX_LABELS, np.zeros(6, np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte .*not found"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")


def test_mnist_corrupt_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, np.random.default_rng(3), gz=True)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=rf"{bad}: cannot read"):
        load_mnist(tmp_path)


# CIFAR-10 -----------------------------------------------------------------------------
@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_binary(tmp_path: Path, nested: bool) -> None:
    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    batches = [cifar_records(rng, n) for n in (4, 3, 2)]
    for name, (raw, _, _) in zip(
        ("data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"), batches, strict=True
    ):
        (folder / name).write_bytes(raw)
    train, test = load_cifar10(tmp_path)
    assert test is not None
    assert train.x.shape == (7, 3, 32, 32) and test.x.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(train.y, np.concatenate([batches[0][2], batches[1][2]]))
    np.testing.assert_allclose(train.x[4:] * 255, batches[1][1], atol=1e-3)
    np.testing.assert_allclose(test.x * 255, batches[2][1], atol=1e-3)
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0


def test_cifar10_errors_name_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for name in ("data_batch_1.bin", "data_batch_3.bin", "test_batch.bin"):
        (tmp_path / name).write_bytes(cifar_records(rng, 2)[0])
    with pytest.raises(DataError, match=r"data_batch_2\.bin is missing"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    short = tmp_path / "test_batch.bin"
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(DataError, match=rf"{short}: truncated: 6145 bytes"):
        load_cifar10(tmp_path)
    short.unlink()
    with pytest.raises(DataError, match="test_batch.bin not found"):
        load_cifar10(tmp_path)


# torchvision --------------------------------------------------------------------------
def test_torchvision_through_its_dataset_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conversion of torchvision's MNIST (tensor [n, H, W]) and CIFAR10 (array
    [n, H, W, C]) attributes, on stand-ins with the same attributes."""
    rng = np.random.default_rng(6)
    made: dict[tuple[str, bool], Any] = {}

    def fake(name: str, shape: tuple[int, ...]) -> type:
        class Stand:
            def __init__(self, root: str, train: bool, download: bool) -> None:
                assert download is False and Path(root) == tmp_path
                self.data = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
                self.targets = [0, 9, 4]
                made[name, train] = self

        return Stand

    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(  # type: ignore[attr-defined]
        MNIST=fake("MNIST", (28, 28)), CIFAR10=fake("CIFAR10", (32, 32, 3))
    )
    monkeypatch.setitem(sys.modules, "torchvision", module)
    train, test = load_torchvision("MNIST", tmp_path)
    assert train.x.shape == (3, 1, 28, 28) and test.y.tolist() == [0, 9, 4]
    np.testing.assert_allclose(test.x[:, 0] * 255, made["MNIST", False].data, atol=1e-3)
    train, _ = load_torchvision("CIFAR10", tmp_path)
    assert train.x.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(
        train.x * 255, made["CIFAR10", True].data.transpose(0, 3, 1, 2), atol=1e-3
    )
    with pytest.raises(DataError, match="'SVHN' is not supported"):
        load_torchvision("SVHN", tmp_path)  # type: ignore[arg-type]


def test_torchvision_missing_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails
    with pytest.raises(DataError, match="needs torchvision: pip install torchvision"):
        load_torchvision("MNIST", tmp_path)


def test_torchvision_reads_mnist_files(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    written = write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(7))
    train, test = load_torchvision("MNIST", tmp_path)
    np.testing.assert_array_equal(train.y, written["train"][1])
    np.testing.assert_allclose(test.x[:, 0] * 255, written["t10k"][0], atol=1e-3)


# LEAF ---------------------------------------------------------------------------------
def test_femnist_users_are_groups_across_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    a, b, c = femnist_user(rng, 3), femnist_user(rng, 2), femnist_user(rng, 1)
    empty = {"x": [], "y": []}
    write_leaf(tmp_path, "train", "part_0.json", {"f_a": a, "f_empty": empty})
    write_leaf(tmp_path, "train", "part_1.json", {"f_b": b})
    write_leaf(tmp_path, "test", "part_0.json", {"f_b": c, "f_only_test": c})
    leaf = read_leaf(tmp_path, "femnist")
    assert leaf.users == ("f_a", "f_empty", "f_b", "f_only_test")
    train, test = leaf.train, leaf.test
    assert test is not None
    assert train.x.shape == (5, 1, 28, 28) and train.num_classes == 62
    np.testing.assert_allclose(train.x[:3].reshape(3, -1), a["x"], rtol=1e-6)
    np.testing.assert_array_equal(train.y, a["y"] + b["y"])
    np.testing.assert_array_equal(train.groups, [0, 0, 0, 2, 2])
    np.testing.assert_array_equal(test.groups, [2, 3])
    pair = load_femnist(tmp_path)
    np.testing.assert_array_equal(pair[0].x, train.x)


def test_shakespeare_characters_to_vocabulary_ids(tmp_path: Path) -> None:
    assert len(SHAKESPEARE_VOCABULARY) == 80 and len(set(SHAKESPEARE_VOCABULARY)) == 80
    rng = np.random.default_rng(9)
    user = shakespeare_user(rng, 4)
    user["x"][0] = ("To be, or not to be: that is the question.\n" * 2)[:80]
    user["y"][0] = "}"
    write_leaf(tmp_path, "train", "all_data.json", {"ROMEO": user, "NURSE": {"x": [], "y": []}})
    write_leaf(tmp_path, "test", "all_data.json", {"ROMEO": shakespeare_user(rng, 2)})
    train, test = load_shakespeare(tmp_path)
    assert test is not None and len(test) == 2
    assert train.x.shape == (4, 80) and train.x.dtype == np.int64
    assert train.num_classes == 80 and train.targets == "classes"
    decoded = "".join(SHAKESPEARE_VOCABULARY[i] for i in train.x[0])
    assert decoded == user["x"][0]
    assert train.y[0] == SHAKESPEARE_VOCABULARY.index("}") == 79
    assert SHAKESPEARE_VOCABULARY.index("T") == train.x[0, 0]
    np.testing.assert_array_equal(train.groups, [0] * 4)


def test_leaf_errors_name_the_file_and_user(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    with pytest.raises(DataError, match="no .json files"):
        read_leaf(tmp_path, "femnist")
    path = write_leaf(tmp_path, "train", "d.json", {"u1": femnist_user(rng, 2)})
    path.write_text('{"users": ["u1"], "num_samples": [2],', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: not valid LEAF JSON"):
        read_leaf(tmp_path, "femnist")

    doc = {"users": ["u1"], "num_samples": [3], "user_data": {"u1": femnist_user(rng, 2)}}
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: user 'u1' has 2 x and 2 y but num_samples"):
        read_leaf(tmp_path, "femnist")

    doc = {"users": ["u1", "u2"], "num_samples": [2], "user_data": {}}
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError, match="2 users but 1 num_samples"):
        read_leaf(tmp_path, "femnist")

    path.write_text(json.dumps({"users": []}), encoding="utf-8")
    with pytest.raises(DataError, match="needs keys users, num_samples and user_data"):
        read_leaf(tmp_path, "femnist")

    narrow = {"x": [[0.5] * 783], "y": [1]}
    write_leaf(tmp_path, "train", "d.json", {"u1": narrow})
    with pytest.raises(DataError, match=r"user 'u1': x must be rows of 784 numbers"):
        read_leaf(tmp_path, "femnist")
    write_leaf(tmp_path, "train", "d.json", {"u1": {"x": [[0.5] * 784], "y": [62]}})
    with pytest.raises(DataError, match=r"user 'u1': y must be class ids 0..61"):
        read_leaf(tmp_path, "femnist")

    user = shakespeare_user(rng, 3)
    user["x"][2] = user["x"][2][:40] + "é" + user["x"][2][41:]
    write_leaf(tmp_path, "train", "d.json", {"HAMLET": user})
    with pytest.raises(DataError, match=r"user 'HAMLET' sample 2: x character 'é' is not in"):
        read_leaf(tmp_path, "shakespeare")
    user["x"][2] = user["x"][2][:79]
    write_leaf(tmp_path, "train", "d.json", {"HAMLET": user})
    with pytest.raises(DataError, match=r"sample 2: x has 79 characters, expected 80"):
        read_leaf(tmp_path, "shakespeare")


# Hugging Face -------------------------------------------------------------------------
def test_huggingface_images_and_class_labels(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(11)
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "label": datasets.ClassLabel(names=list("abcd")),
            "writer": datasets.Value("string"),
        }
    )

    def split(n: int, writers: list[str]) -> Any:
        images = rng.integers(0, 256, (n, 5, 6, 3), dtype=np.uint8)
        rows = {"img": list(images), "label": rng.integers(0, 3, n).tolist(), "writer": writers}
        return datasets.Dataset.from_dict(rows, features=features), images, rows["label"]

    train_ds, train_images, train_labels = split(3, ["w2", "w1", "w2"])
    test_ds, _, _ = split(2, ["w3", "w1"])
    datasets.DatasetDict(train=train_ds, test=test_ds).save_to_disk(str(tmp_path / "hf"))
    train, test = load_huggingface(tmp_path / "hf", "img", "label", group_column="writer")
    assert test is not None
    assert train.x.shape == (3, 3, 5, 6) and train.x.dtype == np.float32
    np.testing.assert_allclose(train.x * 255, train_images.transpose(0, 3, 1, 2), atol=1e-3)
    np.testing.assert_array_equal(train.y, train_labels)
    assert train.num_classes == 4  # the ClassLabel's, not the largest label seen
    np.testing.assert_array_equal(train.groups, [1, 0, 1])
    np.testing.assert_array_equal(test.groups, [2, 0])  # ids shared across splits

    alone, none = load_huggingface(tmp_path / "hf", "img", "label", test_split=None)
    assert none is None and len(alone) == 3
    with pytest.raises(DataError, match=r"no split 'valid'; splits: train, test"):
        load_huggingface(tmp_path / "hf", "img", "label", test_split="valid")
    with pytest.raises(DataError, match=r"\[train\]: no column 'image'; columns: img, label"):
        load_huggingface(tmp_path / "hf", "image", "label")
    with pytest.raises(DataError, match="column 'writer' holds text"):
        load_huggingface(tmp_path / "hf", "writer", "label")
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        load_huggingface(tmp_path, "img", "label")


def test_huggingface_tokens_and_values(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    tokens = datasets.Dataset.from_dict(
        {"ids": [[1, 2, 3], [4, 5, 6]], "next": [[2, 3, 4], [5, 6, 9]], "v": [0.5, -1.0]}
    )
    tokens.save_to_disk(str(tmp_path / "plain"))
    train, test = load_huggingface(tmp_path / "plain", "ids", "next")
    assert test is None  # a saved Dataset has no splits: all of it is training data
    assert train.x.dtype == np.int64 and train.y.shape == (2, 3)
    assert train.targets == "tokens" and train.num_classes == 10
    values, _ = load_huggingface(tmp_path / "plain", "ids", "v")
    assert values.targets == "values" and values.num_classes is None
    np.testing.assert_array_equal(values.y, [0.5, -1.0])

    datasets.Dataset.from_dict({"ids": [[1], [2, 3]], "y": [0, 1]}).save_to_disk(
        str(tmp_path / "ragged")
    )
    with pytest.raises(DataError, match="column 'ids' holds sequences of different lengths"):
        load_huggingface(tmp_path / "ragged", "ids", "y")


def test_huggingface_missing_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="needs the datasets package: pip install datasets"):
        load_huggingface(tmp_path, "x", "y")


# configs ------------------------------------------------------------------------------
def test_config_fields_for_dataset_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'mnist' needs data.path"):
        RunConfig.model_validate({"data": {"source": "mnist"}})
    with pytest.raises(ValueError, match="needs data.x_column and data.y_column"):
        RunConfig.model_validate({"data": {"source": "huggingface", "path": str(tmp_path)}})
    with pytest.raises(ValueError, match="apply to huggingface, not 'cifar10'"):
        RunConfig.model_validate(
            {"data": {"source": "cifar10", "path": str(tmp_path), "x_column": "img"}}
        )
    leaf = RunConfig.model_validate({"data": {"source": "femnist", "path": str(tmp_path)}})
    assert leaf.partition.method == "natural" and leaf.partition.num_clients == 0
    pooled = RunConfig.model_validate(
        {
            "data": {"source": "shakespeare", "path": str(tmp_path)},
            "partition": {"method": "iid", "num_clients": 20},
        }
    )
    assert pooled.partition.method == "iid"
    with pytest.raises(ValueError, match="'natural' needs per-sample client ids"):
        RunConfig.model_validate(
            {"data": {"source": "mnist", "path": str(tmp_path)}, "partition": {"method": "natural"}}
        )


def test_leaf_natural_clients_from_a_config(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    write_leaf(
        tmp_path,
        "train",
        "all_data_0.json",
        {"f0": femnist_user(rng, 4), "f1": {"x": [], "y": []}, "f2": femnist_user(rng, 3)},
    )
    write_leaf(tmp_path, "test", "all_data_0.json", {"f0": femnist_user(rng, 2)})
    config = RunConfig.model_validate(
        {
            "data": {"source": "femnist", "path": str(tmp_path), "client_holdout": 0.25},
            "server": {"clients_per_round": 2},
        }
    )
    fed = build_federated_data(config.data, config.partition, config.seed)
    assert fed.train.num_clients == 3
    np.testing.assert_array_equal(fed.train.sizes() + fed.holdout.sizes(), [4, 0, 3])
    assert len(fed.test) == 2 and fed.test.x.shape[1:] == (1, 28, 28)  # the source's own
    # standardized with train statistics: the train pixels have mean 0
    assert abs(float(np.concatenate([fed.train.x, fed.holdout.x]).mean())) < 1e-5
    config = RunConfig.model_validate(
        {
            "data": {"source": "femnist", "path": str(tmp_path)},
            "partition": {"method": "natural", "num_clients": 2},
            "server": {"clients_per_round": 2},
        }
    )
    with pytest.raises(DataError, match="partition.num_clients = 2 but .* has 3 users"):
        build_federated_data(config.data, config.partition, config.seed)


def test_shakespeare_config_keeps_ids_and_refuses_class_skew_of_tokens(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    users = {name: shakespeare_user(rng, 5) for name in ("A", "B")}
    write_leaf(tmp_path / "leaf", "train", "d.json", users)
    config = RunConfig.model_validate(
        {
            "data": {"source": "shakespeare", "path": str(tmp_path / "leaf")},
            "server": {"clients_per_round": 2},
        }
    )
    fed = build_federated_data(config.data, config.partition, config.seed)
    assert fed.train.x.dtype == np.int64 and fed.train.num_clients == 2  # not standardized
    assert len(fed.test) == 2  # no test files: test_fraction of the samples

    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict(
        {"ids": rng.integers(0, 9, (8, 4)).tolist(), "next": rng.integers(0, 9, (8, 4)).tolist()}
    ).save_to_disk(str(tmp_path / "hf"))
    data = {"source": "huggingface", "path": str(tmp_path / "hf"), "x_column": "ids"}
    config = RunConfig.model_validate(
        {
            "data": {**data, "y_column": "next"},
            "partition": {"num_clients": 2},
            "server": {"clients_per_round": 2},
        }
    )
    with pytest.raises(ConfigError, match="'dirichlet' splits clients by class label, but"):
        build_federated_data(config.data, config.partition, config.seed)


def test_mnist_config_uses_its_test_files(tmp_path: Path) -> None:
    write_mnist(tmp_path, np.random.default_rng(14))
    config = RunConfig.model_validate(
        {
            "data": {"source": "mnist", "path": str(tmp_path), "standardize": False},
            "partition": {"method": "iid", "num_clients": 2},
            "server": {"clients_per_round": 2},
        }
    )
    fed = build_federated_data(config.data, config.partition, config.seed)
    assert fed.train.x.shape == (6, 1, 28, 28) and len(fed.test) == 3
