"""A deployment server holds no client data (DESIGN principle 7): it never builds the
dataset or the partition, takes the model spec and the number of clients from the
config, learns each client's facts from its join (example counts, the label histogram
only if the client shares it), refuses a report it cannot trust, and evaluates only on a
central set it is given (``--eval-data``)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from server_thread import start_in_thread

import fedloom.assemble as assemble
from fedloom.assemble import DEPLOYMENT_MAX_EXAMPLES, open_deployment
from fedloom.config import load_config
from fedloom.data.federated import build_federated_data
from fedloom.data.storage import client_dir, read_client, read_eval_set, write_partition
from fedloom.errors import ConfigError, DataError
from fedloom.server.registry import ClientRegistry
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import fedloom_pb2_grpc as rpc
from fedloom.transport.certs import METADATA_CLIENT
from fedloom.transport.client import DeploymentClient
from fedloom.transport.server import ServerOptions

CLIENTS = 3
# the server's config: a data source that cannot load, the model's shape given instead
DATALESS = [
    "rounds=2",
    f"partition.num_clients={CLIENTS}",
    f"server.clients_per_round={CLIENTS}",
    "client.local_epochs=1",
    'data.source="file"',
    'data.path="/nonexistent/clients.csv"',
    "model.num_features=64",
    "model.num_classes=10",
]
OPTIONS = ServerOptions(port=0, insecure=True, linger_s=0.5, client_timeout_s=5.0)


def export_clients(root: Path, *extra: str) -> Path:
    """The clients' folders, written from the built-in digits partition (what each device
    holds; the server never reads them)."""
    config = load_config(None, [*DATALESS[1:3], *extra])
    data = build_federated_data(config.data, config.partition, config.seed)
    write_partition(root / "data", data.train, data.holdout)
    return root / "data"


def no_data(*args: object, **kwargs: object) -> None:
    raise AssertionError("the deployment server built the dataset")


def config_for(root: Path, *extra: str):  # noqa: ANN201
    return load_config(None, [*DATALESS, *extra, f'output_dir="{root / "runs"}"'])


def test_a_server_without_client_data_trains_from_what_clients_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assemble, "build_federated_data", no_data)
    data = export_clients(tmp_path)
    server, thread = start_in_thread(config_for(tmp_path), OPTIONS, timeout_s=120)
    try:
        shares = {0: True, 1: False, 2: False}
        for i in range(CLIENTS):
            client = DeploymentClient(
                f"127.0.0.1:{server.port}",
                client_dir(data, i),
                insecure=True,
                share_labels=shares[i],
            )
            threading.Thread(target=client.run, daemon=True).start()
        thread.join(120)
        assert not thread.is_alive(), "the run did not finish"
    finally:
        server.stop()
    records = server.engine.run_dir.records()
    start = records[0]
    assert start["clients"] == CLIENTS and "accuracy" not in start
    assert "no central evaluation set" in start["evaluation"]
    rounds = [r for r in records if r.get("event") == "round"]
    assert [r["status"] for r in rounds] == ["aggregated", "aggregated"]
    assert all(r["completed"] == CLIENTS and "accuracy" not in r for r in rounds)
    # the registry holds what each client reported at its join, nothing the server computed
    with ClientRegistry(server.engine.run_dir.path / "clients.sqlite") as registry:
        stats = registry.stats()
    train = [read_client(client_dir(data, i))[0] for i in range(CLIENTS)]
    assert stats.data_size.tolist() == [len(t) for t in train]
    counts = np.bincount(train[0].y, minlength=10) / len(train[0])
    shared = -sum(p * math.log(p) for p in counts if p > 0)
    assert stats.label_entropy[0] == pytest.approx(shared)
    # not shared: assumed balanced (the entropy of a uniform histogram)
    assert stats.label_entropy[1:].tolist() == pytest.approx([math.log(10)] * 2)
    assert server.sizes.tolist() == [len(t) for t in train]


def _stub(port: int, name: str) -> tuple[rpc.FedloomStub, tuple]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return rpc.FedloomStub(channel), ((METADATA_CLIENT, name),)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (pb.JoinRequest(num_examples=10**9), "exceeds server.max_examples_per_client"),
        (pb.JoinRequest(num_examples=100, holdout_examples=-1), "holdout_examples = -1"),
        (
            pb.JoinRequest(num_examples=100, label_counts=[50, 49]),
            "label histogram sums to 99",
        ),
        (
            pb.JoinRequest(num_examples=100, label_counts=[1] * 11 + [89]),
            "12 classes",
        ),
        (
            pb.JoinRequest(num_examples=100, label_counts=[101, -1]),
            "negative",
        ),
    ],
    ids=["absurd-count", "negative-holdout", "histogram-sum", "too-many-classes", "negative"],
)
def test_a_join_report_the_server_cannot_trust_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request_: pb.JoinRequest, match: str
) -> None:
    """A client reporting 10**9 examples (above the cap) cannot join, so it cannot weigh
    in FedAvg beyond the cap; a histogram that does not add up is refused too."""
    monkeypatch.setattr(assemble, "build_federated_data", no_data)
    server, thread = start_in_thread(config_for(tmp_path), OPTIONS, timeout_s=120)
    try:
        stub, meta = _stub(server.port, "client-000000")
        with pytest.raises(grpc.RpcError) as err:
            stub.Join(request_, metadata=meta, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert match in err.value.details()
        assert "client-0" in err.value.details()
        # refused clients are not online: the registry still calls them unknown
        assert server.sizes[0] == 0
        # an honest report at the cap is taken (and bounds the client's FedAvg weight)
        ok = stub.Join(pb.JoinRequest(num_examples=DEPLOYMENT_MAX_EXAMPLES), metadata=meta)
        assert ok.client_id == 0 and server.sizes[0] == DEPLOYMENT_MAX_EXAMPLES
    finally:
        server.stop()
        thread.join(30)


def test_the_cap_is_the_config_s_max_examples_per_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assemble, "build_federated_data", no_data)
    config = config_for(tmp_path, "server.max_examples_per_client=500")
    server, thread = start_in_thread(config, OPTIONS, timeout_s=120)
    try:
        stub, meta = _stub(server.port, "client-000001")
        with pytest.raises(grpc.RpcError, match="501 exceeds server.max_examples_per_client"):
            stub.Join(pb.JoinRequest(num_examples=501), metadata=meta, timeout=30)
        stub.Join(pb.JoinRequest(num_examples=500), metadata=meta, timeout=30)
        assert server.sizes[1] == 500
    finally:
        server.stop()
        thread.join(30)


def test_the_model_spec_comes_from_the_config_or_the_eval_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assemble, "build_federated_data", no_data)
    bare = [d for d in DATALESS if not d.startswith("model.")]
    config = load_config(None, [*bare, f'output_dir="{tmp_path / "runs"}"'])
    with pytest.raises(ConfigError, match=r"model.num_features \(or model.input_shape\) and"):
        open_deployment(config, None)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    rng = np.random.default_rng(0)
    path = tmp_path / "eval.npz"
    np.savez(path, x=rng.normal(size=(20, 7)).astype(np.float32), y=np.arange(20) % 4)
    deployed = open_deployment(config, None, eval_data=path)
    assert (deployed.num_features, deployed.num_classes) == (7, 4)
    start = deployed.engine.run_dir.records()[0]
    assert 0 <= start["accuracy"] <= 1  # evaluated on the central set
    # the config's shape and the eval set's must agree
    other = config_for(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"examples have shape \[7\] but the model takes \[64\]"):
        open_deployment(other, None, eval_data=path)


def test_the_built_in_sources_shape_is_the_data_s(tmp_path: Path) -> None:
    """A config naming a built-in source gives the model's shape without loading it."""
    for source in ('"digits"', '"synthetic"'):
        config = load_config(None, [*DATALESS[1:3], f"data.source={source}"])
        data = build_federated_data(config.data, config.partition, config.seed)
        shape = assemble.deployment_shape(config, None)
        assert shape.sample_shape == data.sample_shape
        assert (shape.num_classes, shape.targets) == (data.num_classes, "classes")


def test_a_bad_eval_set_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    with pytest.raises(DataError, match="not found"):
        read_eval_set(path)
    np.savez(path, x=np.zeros((3, 2), np.float32))
    with pytest.raises(DataError, match="missing array 'y'"):
        read_eval_set(path)
    np.savez(path, x=np.full((3, 2), np.nan, np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=str(path)):
        read_eval_set(path)
    np.savez(path, x=np.zeros((0, 2), np.float32), y=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="no examples"):
        read_eval_set(path)
    np.savez(path, x=np.zeros((3, 2), np.float32), y=np.array([0, 1, 5]))
    with pytest.raises(DataError, match=str(path)):
        read_eval_set(path, num_classes=3)


def test_early_stopping_needs_an_evaluation_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assemble, "build_federated_data", no_data)
    """Under secure aggregation clients report no metrics: without --eval-data there is
    nothing to stop on."""
    config = config_for(tmp_path, "stopping.patience=2", "secagg.enabled=true")
    with pytest.raises(ConfigError, match="--eval-data"):
        open_deployment(config, None)
    open_deployment(config_for(tmp_path / "plain", "stopping.patience=2"), None)


def test_the_simulator_refuses_a_model_shape_its_data_contradict(tmp_path: Path) -> None:
    """The simulator holds the data: a config's model shape must be the data's."""
    from fedloom.assemble import start_simulation

    config = load_config(None, [*DATALESS[1:3], "model.num_classes=9", f'output_dir="{tmp_path}"'])
    with pytest.raises(ConfigError, match="model.num_classes = 9, but the data have 10"):
        start_simulation(config)


def test_without_an_eval_set_rounds_record_what_clients_report_on_their_hold_outs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each client evaluates the model it received on its hold-out before training and
    reports it with its update; the round records the example-weighted mean (and the
    10th percentile client), here checked against the initial model evaluated on the
    clients' hold-outs independently."""
    from fedloom.client.trainer import TorchTrainer, evaluate_model
    from fedloom.models import build_model

    monkeypatch.setattr(assemble, "build_federated_data", no_data)
    data = export_clients(tmp_path, "data.client_holdout=0.3")
    server, thread = start_in_thread(config_for(tmp_path), OPTIONS, timeout_s=120)
    try:
        for i in range(CLIENTS):
            target = f"127.0.0.1:{server.port}"
            client = DeploymentClient(target, client_dir(data, i), insecure=True)
            threading.Thread(target=client.run, daemon=True).start()
        thread.join(120)
        assert not thread.is_alive(), "the run did not finish"
    finally:
        server.stop()
    records = server.engine.run_dir.records()
    assert records[0]["evaluation"].startswith("reported by clients")
    first, second = [r for r in records if r.get("event") == "round"]
    assert first["fed_clients"] == second["fed_clients"] == CLIENTS
    config = config_for(tmp_path)
    trainer = TorchTrainer(build_model(config.model, 64, 10, config.seed))
    trainer.flat.load(server.engine.initial_params)
    accuracy, loss, count = [], [], []
    for i in range(CLIENTS):
        holdout = read_client(client_dir(data, i))[1]
        assert holdout is not None and len(holdout.y)
        with torch.no_grad():
            lo, values = evaluate_model(
                trainer.model, torch.from_numpy(holdout.x), torch.from_numpy(holdout.y)
            )
        right = values["accuracy"]
        accuracy.append(right.mean())
        loss.append(lo.mean())
        count.append(len(right))
    w = np.array(count) / sum(count)
    assert first["fed_accuracy"] == pytest.approx(float(w @ np.array(accuracy)), abs=1e-6)
    assert first["fed_loss"] == pytest.approx(float(w @ np.array(loss)), rel=1e-5)
    assert first["fed_accuracy_p10"] == pytest.approx(np.percentile(accuracy, 10), abs=1e-6)
    assert second["fed_accuracy"] != first["fed_accuracy"]  # the next model, reported


@pytest.mark.parametrize(
    ("fields", "kind", "match"),
    [
        ({"eval_loss": float("nan")}, "nonfinite", "eval_loss = nan"),
        ({"eval_accuracy": 1.5}, "malformed", "eval_accuracy = 1.5"),
        ({"eval_loss": -1.0}, "malformed", "eval_loss = -1.0"),
        ({"eval_examples": 11}, "bad_count", "eval_examples = 11, expected 0..10"),
    ],
)
def test_a_reported_evaluation_out_of_range_is_refused(fields: dict, kind: str, match: str) -> None:
    from fedloom.transport.server import reported_evaluation_error

    honest = {"eval_loss": 0.5, "eval_accuracy": 0.8, "eval_examples": 10}
    assert reported_evaluation_error(pb.UploadHeader(**honest), 10) is None
    found = reported_evaluation_error(pb.UploadHeader(**{**honest, **fields}), 10)
    assert found is not None and found[0] == kind and match in found[1]
