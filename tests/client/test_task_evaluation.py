"""Evaluation and training follow the task: its loss and metrics (built-in or the user's),
token targets, regression without accuracy, and the keys the records carry."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedloom.client.evaluation import Evaluator
from fedloom.client.trainer import TorchTrainer, evaluate_model
from fedloom.data import ArrayDataset, ClientPartition
from fedloom.params import module_vector
from fedloom.records import TrainPlan
from fedloom.server.registry import ClientRegistry
from fedloom.task import Metric, Task

torch.set_num_threads(1)
SIZES = [6, 0, 4, 10, 5]  # one client without a hold-out


def offsets() -> np.ndarray:
    return np.concatenate([[0], np.cumsum(SIZES)]).astype(np.int64)


def regression_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))


def regression_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)


def within(x: np.ndarray, y: np.ndarray, model: nn.Module):
    with torch.no_grad():
        out = model(torch.from_numpy(x)).squeeze(-1)
    return out - torch.from_numpy(y)


def test_evaluate_model_on_token_targets():
    torch.manual_seed(1)
    vocab, t = 6, 4
    model = nn.Sequential(nn.Embedding(vocab, 5), nn.Linear(5, vocab))
    x = torch.randint(0, vocab, (9, t))
    y = torch.roll(x, -1, dims=1)
    task = Task(model).resolved("tokens")
    loss, metrics = evaluate_model(model, x, y, batch_size=4, task=task)
    with torch.no_grad():
        logits = model(x)
    expected = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
    hits = (logits.argmax(-1) == y).float().mean(1)
    assert loss.shape == (9,) and list(metrics) == ["accuracy"]
    np.testing.assert_allclose(loss, expected.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(metrics["accuracy"], hits.numpy())
    assert len(np.unique(metrics["accuracy"])) > 1  # fractions of tokens, not one value


def test_regression_evaluator_reports_mse_and_mae_without_accuracy(tmp_path):
    model = regression_model()
    test = ArrayDataset(*regression_data(30, 0), None)
    holdout = ClientPartition(*regression_data(sum(SIZES), 1), offsets(), None)
    task = Task(model).resolved("values")
    trainer = TorchTrainer(model, task)
    evaluate = Evaluator(trainer, test, holdout, batch_size=7)
    assert evaluate.task is task  # the trainer's task by default
    params = module_vector(model)
    central = evaluate(params)
    err = within(test.x, test.y, model)
    assert list(central.metrics) == ["mse", "mae", "loss"]
    assert central.metrics["mse"] == pytest.approx(float((err**2).mean()), rel=1e-5)
    assert central.metrics["mae"] == pytest.approx(float(err.abs().mean()), rel=1e-5)
    assert central.metrics["loss"] == pytest.approx(central.metrics["mse"], rel=1e-6)
    assert central.clients is None

    fed = evaluate(params, federated=True)
    keys = ["mse", "mae", "loss", "fed_mse", "fed_mae", "fed_loss", "fed_mse_p90", "fed_clients"]
    assert list(fed.metrics) == keys
    h_err = within(holdout.x, holdout.y, model).numpy().astype(np.float64)
    per_client = [(h_err[a:b] ** 2).mean() for a, b in pairwise(offsets()) if b > a]
    assert fed.metrics["fed_mse"] == pytest.approx(float((h_err**2).mean()), rel=1e-5)
    assert fed.metrics["fed_mse_p90"] == pytest.approx(np.percentile(per_client, 90), rel=1e-5)
    assert fed.metrics["fed_clients"] == 4
    ids, accuracy, loss = fed.clients
    assert ids.tolist() == [0, 2, 3, 4] and accuracy is None
    np.testing.assert_allclose(loss, per_client, rtol=1e-5)

    registry = ClientRegistry(tmp_path / "clients.sqlite")
    registry.register(np.array(SIZES) + 1, np.zeros(len(SIZES)))
    registry.record_evaluation(3, ids, accuracy, loss)  # no accuracy: stored as NULL
    assert np.isnan(registry.summary()[0]["last_accuracy"])
    row = [h for h in registry.history(2) if h["round"] == 3][0]
    assert row["accuracy"] is None and row["eval_loss"] == pytest.approx(loss[1])


def test_classification_keys_are_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    test = ArrayDataset(rng.normal(size=(12, 3)), rng.integers(0, 3, 12), 3)
    n = sum(SIZES)
    holdout = ClientPartition(rng.normal(size=(n, 3)), rng.integers(0, 3, n), offsets(), 3)
    out = Evaluator(TorchTrainer(model), test, holdout, 5)(module_vector(model), True)
    assert list(out.metrics) == [
        "accuracy", "loss", "fed_accuracy", "fed_loss", "fed_accuracy_p10", "fed_clients",
    ]  # fmt: skip
    ids, accuracy, loss = out.clients
    assert accuracy is not None and ((accuracy >= 0) & (accuracy <= 1)).all()
    assert len(ids) == len(accuracy) == len(loss) == 4


def test_custom_loss_and_metric_callables():
    """A user's loss (plain callable) trains and evaluates; a user's metric (plain
    callable: a score, higher is better) is reported with its p10."""

    def huber(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(outputs.squeeze(-1), targets, delta=0.5)

    def within_half(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs.squeeze(-1) - targets).abs() < 0.5).float().mean()

    model = regression_model()
    task = Task(model, loss=huber, metrics={"within_half": within_half}).resolved("values")
    x, y = regression_data(20, 2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss, metrics = evaluate_model(model, xt, yt, batch_size=6, task=task)
    with torch.no_grad():
        out = model(xt).squeeze(-1)
    expected = F.huber_loss(out, yt, delta=0.5, reduction="none")
    np.testing.assert_allclose(loss, expected.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(metrics["within_half"], ((out - yt).abs() < 0.5).float())

    # one SGD step on the whole batch is the step of torch's autograd on the same loss
    reference = regression_model()
    trainer = TorchTrainer(model, task)
    g = torch.from_numpy(module_vector(model))
    delta = torch.empty_like(g)
    m = trainer.train(g, xt, yt, TrainPlan(local_steps=1, batch_size=20, lr=0.1), 0, delta)
    value = huber(reference(xt), yt)
    value.backward()
    step = torch.cat([-0.1 * p.grad.reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(delta, step, atol=1e-6, rtol=1e-5)
    assert m.train_loss == pytest.approx(float(value.detach()), rel=1e-6)

    holdout = ClientPartition(*regression_data(sum(SIZES), 3), offsets(), None)
    test = ArrayDataset(x, y, None)
    fed = Evaluator(trainer, test, holdout, 8)(module_vector(reference), federated=True)
    assert {"within_half", "fed_within_half", "fed_within_half_p10"} <= set(fed.metrics)
    assert "accuracy" not in fed.metrics and fed.clients[1] is None


def test_metric_minimized_uses_the_90th_percentile():
    model = regression_model()
    task = Task(model, metrics={"err": Metric(lambda o, t: (o.squeeze(-1) - t).abs().mean(),
                                               maximize=False)}).resolved("values")  # fmt: skip
    holdout = ClientPartition(*regression_data(sum(SIZES), 3), offsets(), None)
    test = ArrayDataset(*regression_data(5, 4), None)
    out = Evaluator(TorchTrainer(model), test, holdout, 8, task=task)(module_vector(model), True)
    assert "fed_err_p90" in out.metrics and "fed_err_p10" not in out.metrics


def test_dp_sgd_trains_a_cnn_with_buffers_in_train_mode_and_evaluates_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.GroupNorm(1, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 6 * 6, 4),
    )  # fmt: skip
    x = torch.randn(10, 1, 6, 6)
    y = torch.randint(0, 4, (10,))
    trainer = TorchTrainer(model)
    g = torch.from_numpy(module_vector(model))
    out = torch.empty_like(g)
    plan = TrainPlan(local_steps=3, batch_size=4, lr=0.1, dp_sgd_clip=0.3, dp_sgd_noise=0.5)
    m = trainer.train(g, x, y, plan, 5, out)
    assert m.steps == 3 and np.isfinite(m.train_loss) and torch.isfinite(out).all()
    again = torch.empty_like(g)
    trainer.train(g, x, y, plan, 5, again)
    assert torch.equal(out, again) and out.abs().max() > 0  # noise keyed by the seed

    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 4))
    trainer = TorchTrainer(bn)
    g = torch.from_numpy(module_vector(bn))
    trainer.train(g, x, y, TrainPlan(local_steps=2, batch_size=5, lr=0.1), 0, torch.empty_like(g))
    assert int(bn[1].num_batches_tracked) == 2  # trained in train mode
    evaluate_model(bn, x, y)
    assert not bn.training and int(bn[1].num_batches_tracked) == 2  # evaluated in eval mode
