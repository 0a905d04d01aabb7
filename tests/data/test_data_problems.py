"""Data that would train silently wrong is refused, naming the problem: a single class,
fractional labels, complex features, and a device using another client's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.data.arrays import ArrayDataset
from fedloom.data.federated import build_federated_data
from fedloom.data.sources import load_arrays
from fedloom.data.storage import client_dir, read_client, recorded_client, write_partition
from fedloom.errors import DataError


def file_config(path: Path, *extra: str):
    return load_config(
        None, ['data.source="file"', f'data.path="{path}"', "partition.num_clients=2", *extra]
    )


def test_single_class_dataset_is_refused(tmp_path):
    path = tmp_path / "one.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 3)), y=np.full(40, 7))
    cfg = file_config(path, "server.clients_per_round=2")
    with pytest.raises(DataError, match=r"data.path = .*one.npz.*same label \(class 0\)"):
        build_federated_data(cfg.data, cfg.partition, cfg.seed)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_fractional_labels_are_refused(tmp_path, suffix):
    x = np.random.default_rng(0).normal(size=(20, 2))
    y = np.linspace(0.0, 1.0, 20)  # a regression target
    path = tmp_path / f"reg{suffix}"
    if suffix == ".npz":
        np.savez(path, x=x, y=y)
    else:
        rows = ["a,b,target", *(f"{r[0]},{r[1]},{t}" for r, t in zip(x, y, strict=True))]
        path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="not a whole number.*integer or string class labels"):
        load_arrays(path)


@pytest.mark.parametrize("labels", [[0.0, 1.0, 2.0, 1.0], ["0.0", "1.0", "2.0", "1.0"]])
def test_whole_number_float_labels_are_classes(tmp_path, labels):
    path = tmp_path / "ok.csv"
    path.write_text("a,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels)))
    data = load_arrays(path)
    assert data.num_classes == 3 and data.y.tolist() == [0, 1, 2, 1]


def test_complex_features_are_refused(tmp_path):
    x = np.ones((4, 2), dtype=np.complex64) * (1 + 2j)
    with pytest.raises(DataError, match="complex dtype complex64.*imaginary part"):
        ArrayDataset(x, np.array([0, 1, 0, 1]), 2)
    path = tmp_path / "c.npz"
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="complex"):
        load_arrays(path)


def exported(tmp_path: Path) -> Path:
    cfg = load_config(None, ["partition.num_clients=3", "server.clients_per_round=2"])
    data = build_federated_data(cfg.data, cfg.partition, cfg.seed)
    write_partition(tmp_path / "data", data.train, data.holdout)
    return tmp_path / "data"


def test_exported_folders_record_their_client(tmp_path):
    root = exported(tmp_path)
    assert [recorded_client(client_dir(root, i)) for i in range(3)] == [0, 1, 2]
    train, _ = read_client(client_dir(root, 1))  # the extra array does not disturb reading
    assert len(train) > 0


def test_device_refuses_another_clients_folder(tmp_path):
    """A device named client-0 (its certificate's name) pointed at client 1's folder, even
    one copied under client 0's folder name, is refused before it connects."""
    from fedloom.transport.client import DeploymentClient

    root = exported(tmp_path)
    with pytest.raises(DataError, match="holds the data of client 1.*'client-0'"):
        DeploymentClient("127.0.0.1:1", client_dir(root, 1), name="client-0", insecure=True)
    copied = tmp_path / "elsewhere" / "client-000000"
    copied.parent.mkdir()
    client_dir(root, 1).rename(copied)
    with pytest.raises(DataError, match="holds the data of client 1"):
        DeploymentClient("127.0.0.1:1", copied, insecure=True)
    own = DeploymentClient("127.0.0.1:1", client_dir(root, 2), name="client-2", insecure=True)
    own.channel.close()
