"""The typed task and join messages: what the server sends round-trips exactly, and a
hostile or broken message is refused in one line naming the field and its value, before
the device trains, allocates or sends anything."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from fedloom.config import load_config
from fedloom.data.federated import build_federated_data
from fedloom.data.storage import client_dir, write_partition
from fedloom.errors import ConfigError
from fedloom.records import TrainPlan
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport.client import DeploymentClient
from fedloom.transport.messages import (
    MAX_MODEL_PARAMETERS,
    LocalDP,
    MessageError,
    ModelSpec,
    plan_from_pb,
    plan_to_pb,
)

PLANS = [
    TrainPlan(),
    TrainPlan(local_epochs=2, local_steps=7, batch_size=3, lr=0.01, momentum=0.9, nesterov=True),
    TrainPlan(optimizer="adam", betas=(0.5, 0.75), eps=1e-6, weight_decay=1e-3, prox_mu=0.1),
    TrainPlan(dp_sgd_clip=0.5, dp_sgd_noise=1.1),
]


def wire(msg):  # noqa: ANN001, ANN201 - through bytes, as the peer reads it
    return type(msg).FromString(msg.SerializeToString())


@pytest.mark.parametrize("plan", PLANS)
def test_plan_round_trips_exactly(plan: TrainPlan) -> None:
    assert plan_from_pb(wire(plan_to_pb(plan))) == plan


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lr": -1.0}, r"task\.plan\.lr = -1\.0: must be > 0"),
        ({"lr": math.nan}, r"task\.plan\.lr = nan: expected a finite number"),
        ({"local_epochs": 0}, r"task\.plan\.local_epochs = 0: must be >= 1"),
        ({"local_steps": 0}, r"task\.plan\.local_steps = 0: must be >= 1"),
        ({"batch_size": -5}, r"task\.plan\.batch_size = -5"),
        ({"optimizer": "rmsprop"}, r"task\.plan\.optimizer = 'rmsprop'"),
        ({"beta2": 1.0}, r"task\.plan\.betas\[1\] = 1\.0: must be < 1"),
        ({"momentum": 1.5}, r"task\.plan\.momentum = 1\.5: must be < 1"),
        ({"dp_sgd_clip": 0.0}, r"task\.plan\.dp_sgd_clip = 0\.0: must be > 0"),
        ({"nesterov": True}, r"task\.plan\.nesterov = True needs"),
    ],
)
def test_hostile_plan_is_refused_naming_the_field(change: dict, match: str) -> None:
    msg = plan_to_pb(TrainPlan())
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(MessageError, match=match):
        plan_from_pb(wire(msg))


def test_an_empty_plan_is_refused() -> None:
    with pytest.raises(MessageError, match="local_epochs = 0"):
        plan_from_pb(pb.TrainPlan())


def test_local_dp_round_trips_and_refuses_bad_values() -> None:
    spec = LocalDP("laplace", 2.0, 4.0, 0.0)
    assert LocalDP.from_pb(wire(spec.to_pb())) == spec
    for msg, match in [
        (pb.LocalDP(mechanism="none", clip=1, epsilon=1, delta=1e-5), "mechanism = 'none'"),
        (pb.LocalDP(mechanism="gaussian", clip=1, epsilon=0, delta=1e-5), "epsilon = 0.0"),
        (pb.LocalDP(mechanism="gaussian", clip=math.inf, epsilon=1, delta=1e-5), "clip = inf"),
        (pb.LocalDP(mechanism="gaussian", clip=1, epsilon=1, delta=1.0), "delta = 1.0"),
    ]:
        with pytest.raises(MessageError, match=match):
            LocalDP.from_pb(wire(msg))


def test_model_spec_knows_its_size_before_building() -> None:
    spec = ModelSpec("mlp", (16, 8), (10,), "classes", 3, 7)
    assert ModelSpec.from_pb(wire(spec.to_pb())) == spec
    _, model = spec.build()
    assert spec.known_parameters() == sum(p.numel() for p in model.parameters())
    logistic = ModelSpec("logistic", (16,), (10,), "classes", 3, 7)  # hidden widths ignored
    assert logistic.known_parameters() == 11 * 3
    cnn = ModelSpec("cnn", (32,), (1, 8, 8), "classes", 10, 7, "group")
    assert ModelSpec.from_pb(wire(cnn.to_pb())) == cnn and cnn.known_parameters() is None
    task, model = cnn.build()
    assert task.name == "cnn" and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    for msg, match in [
        (pb.ModelSpec(kind="resnet", num_features=4, num_classes=2), "model.kind = 'resnet'"),
        (pb.ModelSpec(kind="mlp", num_features=4, num_classes=2, targets="x"), "targets = 'x'"),
        (pb.ModelSpec(kind="cnn", input_shape=[1, 8, 8, 2, 2], num_classes=2), "input_shape"),
        (pb.ModelSpec(kind="cnn", input_shape=[1, 8, 8], num_classes=2, norm="x"), "norm = 'x'"),
        (pb.ModelSpec(kind="mlp", hidden=[0], num_features=4, num_classes=2), r"hidden\[0\] = 0"),
        (pb.ModelSpec(kind="mlp", num_features=4, num_classes=1), "num_classes = 1"),
        (pb.ModelSpec(kind="mlp", num_features=4, num_classes=2, seed=-1), "seed = -1"),
        (
            pb.ModelSpec(kind="mlp", hidden=[1 << 20, 1 << 20], num_features=4, num_classes=2),
            f"over {MAX_MODEL_PARAMETERS}",
        ),
    ]:
        with pytest.raises(MessageError, match=match):
            ModelSpec.from_pb(wire(msg))


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeploymentClient]:
    """A device client with real data, connected to nothing: what it refuses, it refuses
    before it calls the server."""
    root = tmp_path_factory.mktemp("device")
    config = load_config(None, ["partition.num_clients=2", "server.clients_per_round=2"])
    data = build_federated_data(config.data, config.partition, config.seed)
    write_partition(root, data.train, data.holdout)
    client = DeploymentClient("127.0.0.1:1", client_dir(root, 0), insecure=True)
    yield client
    client.channel.close()


def test_device_refuses_a_model_whose_size_does_not_match(device: DeploymentClient) -> None:
    spec = ModelSpec("mlp", (4,), (64,), "classes", 10, 0)
    reply = pb.JoinReply(dim=spec.known_parameters() + 1, model=spec.to_pb())
    with pytest.raises(MessageError, match=r"dim = \d+, but the model has \d+ parameters"):
        device._setup(reply)
    with pytest.raises(MessageError, match="model is missing"):
        device._setup(pb.JoinReply(dim=10))
    device._setup(pb.JoinReply(dim=spec.known_parameters(), model=spec.to_pb()))
    assert device.dim == spec.known_parameters()


def test_device_refuses_code_it_does_not_trust_and_data_that_does_not_fit(
    device: DeploymentClient,
) -> None:
    """A server naming a module: model makes the device import that code: refused unless
    the device trusts the package. A built-in model its data cannot feed is refused at
    join, before any round."""
    hostile = ModelSpec(
        "module:subprocess:run", (), (64,), "classes", 10, 0, "none", '{"args": "true"}'
    )
    with pytest.raises(
        MessageError, match="does not trust; start the client with --trust subprocess"
    ):
        device._setup(pb.JoinReply(dim=10, model=hostile.to_pb()))
    cnn = ModelSpec("cnn", (8,), (1, 8, 8), "classes", 10, 0)
    with pytest.raises(
        ConfigError,
        match=r"takes inputs of shape \[1, 8, 8\], but the data.s examples have shape \[64\]",
    ):
        device._setup(pb.JoinReply(dim=10, model=cnn.to_pb()))


@pytest.mark.parametrize(
    ("task", "match"),
    [
        (pb.Task(kind=pb.Task.TRAIN, task_id="t"), "task.plan is missing"),
        (pb.Task(kind=pb.Task.TRAIN, task_id="t", plan=pb.TrainPlan()), "local_epochs = 0"),
        (
            pb.Task(kind=pb.Task.TRAIN, task_id="t", plan=plan_to_pb(TrainPlan()), max_steps=-2),
            "task.max_steps = -2",
        ),
        (
            pb.Task(
                kind=pb.Task.TRAIN,
                task_id="t",
                plan=plan_to_pb(TrainPlan()),
                local_dp=pb.LocalDP(mechanism="gaussian", clip=-1.0, epsilon=1.0, delta=1e-5),
            ),
            "local_dp.clip = -1.0",
        ),
    ],
)
def test_device_refuses_a_hostile_task_before_any_work(
    device: DeploymentClient,
    task: pb.Task,
    match: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    called = threading.Event()
    monkeypatch.setattr(device, "_download", lambda version: called.set())
    before = device.stats.refused
    device._work(task)
    assert not called.is_set()  # nothing downloaded, trained or sent
    assert device.stats.refused == before + 1
    assert any(match in r.getMessage() for r in caplog.records)


def test_each_task_part_is_a_typed_message() -> None:
    names = {f.name for f in pb.Task.DESCRIPTOR.fields}
    assert not any(n.endswith("_json") for n in names)
    assert pb.Task.DESCRIPTOR.fields_by_name["plan"].message_type.name == "TrainPlan"
    assert {f.name for f in pb.JoinReply.DESCRIPTOR.fields} >= {"model"}
    assert np.all([not f.name.endswith("_json") for f in pb.JoinReply.DESCRIPTOR.fields])
