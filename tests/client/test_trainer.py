"""Local training: batch schedules, SGD/momentum/FedProx against torch references, evaluation."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedloom.client.trainer import TorchTrainer, batch_schedule, evaluate_model
from fedloom.errors import FedloomError
from fedloom.params import module_vector
from fedloom.records import ClientMetrics, TrainPlan

torch.set_num_threads(1)

IN, HIDDEN, CLASSES = 5, 7, 3


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return x, y


def flat_of(model: nn.Module) -> torch.Tensor:
    return torch.from_numpy(module_vector(model))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- batch_schedule


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    batch_size=st.integers(1, 16),
    epochs=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_epochs_are_permutations(n: int, batch_size: int, epochs: int, seed: int) -> None:
    plan = TrainPlan(local_epochs=epochs, batch_size=batch_size)
    batches = batch_schedule(n, plan, seed)
    per_epoch = math.ceil(n / batch_size)
    assert len(batches) == epochs * per_epoch
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert b.dtype.kind == "i"
    for e in range(epochs):
        epoch = np.concatenate(batches[e * per_epoch : (e + 1) * per_epoch])
        np.testing.assert_array_equal(np.sort(epoch), np.arange(n))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    batch_size=st.integers(1, 16),
    steps=st.integers(1, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_local_steps_cycles_epochs(n: int, batch_size: int, steps: int, seed: int) -> None:
    plan = TrainPlan(local_epochs=5, local_steps=steps, batch_size=batch_size)
    batches = batch_schedule(n, plan, seed)
    assert len(batches) == steps  # local_steps overrides local_epochs
    per_epoch = math.ceil(n / batch_size)
    for start in range(0, steps, per_epoch):
        chunk = np.concatenate(batches[start : start + per_epoch])
        if start + per_epoch <= steps:  # a full epoch: a permutation
            np.testing.assert_array_equal(np.sort(chunk), np.arange(n))
        else:  # the cut-short last epoch: distinct indices
            assert len(np.unique(chunk)) == len(chunk)
            assert chunk.min() >= 0 and chunk.max() < n
    # the prefix of a longer run is the same schedule
    longer_plan = TrainPlan(local_steps=steps + per_epoch, batch_size=batch_size)
    longer = batch_schedule(n, longer_plan, seed)
    for a, b in zip(batches, longer, strict=False):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_schedule() -> None:
    plan = TrainPlan(local_epochs=3, batch_size=4)
    a, b = batch_schedule(23, plan, 7), batch_schedule(23, plan, 7)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_differ() -> None:
    plan = TrainPlan(local_epochs=2, batch_size=4)
    schedules = [np.concatenate(batch_schedule(20, plan, s)) for s in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not np.array_equal(schedules[i], schedules[j])


def test_epochs_are_reshuffled() -> None:
    plan = TrainPlan(local_epochs=2, batch_size=5)
    batches = batch_schedule(20, plan, 3)
    assert not np.array_equal(np.concatenate(batches[:4]), np.concatenate(batches[4:]))


@pytest.mark.parametrize("n", [0, -1])
def test_no_examples_raises(n: int) -> None:
    with pytest.raises(FedloomError, match="at least one example"):
        batch_schedule(n, TrainPlan(), 0)


@pytest.mark.parametrize(("n", "batch_size"), [(10, 4), (33, 32)])
def test_batches_are_full_except_the_last(n: int, batch_size: int) -> None:
    sizes = [len(b) for b in batch_schedule(n, TrainPlan(local_epochs=1, batch_size=batch_size), 0)]
    full, last = divmod(n, batch_size)
    assert sizes == [batch_size] * full + ([last] if last else [])


# --------------------------------------------------------------------------- TorchTrainer


def reference_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: TrainPlan,
    seed: int,
) -> tuple[torch.Tensor, list[float]]:
    """Plain torch.optim.SGD over the same batches, plus the FedProx term on the gradient."""
    opt = torch.optim.SGD(
        model.parameters(),
        lr=plan.lr,
        momentum=plan.momentum,
        weight_decay=plan.weight_decay,
        nesterov=plan.nesterov,
    )
    anchor = [p.detach().clone() for p in model.parameters()]
    losses = []
    model.train()
    for idx in batch_schedule(len(y), plan, seed):
        index = torch.from_numpy(idx)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()
        if plan.prox_mu:
            with torch.no_grad():
                for p, w0 in zip(model.parameters(), anchor, strict=True):
                    p.grad.add_(p - w0, alpha=plan.prox_mu)
        opt.step()
        losses.append(float(loss.detach()))
    return flat_of(model), losses


PLANS = {
    "sgd": TrainPlan(local_epochs=2, batch_size=8, lr=0.1),
    "momentum_wd": TrainPlan(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "nesterov": TrainPlan(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, nesterov=True),
    "nesterov_wd_steps": TrainPlan(
        local_steps=11, batch_size=6, lr=0.05, momentum=0.5, nesterov=True, weight_decay=1e-2
    ),
    "prox_momentum": TrainPlan(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, prox_mu=0.3),
}


@pytest.mark.parametrize("plan", list(PLANS.values()), ids=list(PLANS))
def test_trainer_matches_torch_sgd(plan: TrainPlan) -> None:
    model = make_model(0)
    reference = copy.deepcopy(model)  # before TorchTrainer rebinds the parameters
    global_params = flat_of(model)
    global_copy = global_params.clone()
    x, y = make_data(50, seed=1)
    seed = 1234

    trainer = TorchTrainer(model)
    assert trainer.dim == global_params.numel()
    out = torch.full_like(global_params, float("nan"))
    metrics = trainer.train(global_params, x, y, plan, seed, out)

    expected, losses = reference_train(reference, x, y, plan, seed)
    local = trainer.flat.params.detach().clone()
    assert max_abs(local, expected) < 1e-6
    assert max_abs(flat_of(model), expected) < 1e-6
    assert torch.equal(out, local - global_params)
    assert max_abs(out, expected - global_params) < 1e-6
    assert float(out.abs().max()) > 1e-3  # it actually trained
    assert torch.equal(global_params, global_copy)  # the input is not modified

    batches = batch_schedule(len(y), plan, seed)
    assert isinstance(metrics, ClientMetrics)
    assert metrics.steps == len(batches)
    assert metrics.epochs == pytest.approx(sum(len(b) for b in batches) / len(y))
    assert metrics.train_loss == pytest.approx(np.mean(losses), rel=1e-5)


def test_metrics_epochs_with_local_steps() -> None:
    plan = TrainPlan(local_steps=3, batch_size=4, lr=0.1)
    model = make_model(0)
    g = flat_of(model)
    x, y = make_data(20, seed=2)
    metrics = TorchTrainer(model).train(g, x, y, plan, 0, torch.empty_like(g))
    assert metrics.steps == 3
    assert metrics.epochs == pytest.approx(12 / 20)


def test_fedprox_shrinks_the_update() -> None:
    x, y = make_data(40, seed=3)
    base = TrainPlan(local_epochs=3, batch_size=8, lr=0.1)
    norms = {}
    for mu in (0.0, 1.0):
        model = make_model(0)
        g = flat_of(model)
        out = torch.empty_like(g)
        TorchTrainer(model).train(g, x, y, replace(base, prox_mu=mu), 5, out)
        norms[mu] = float(out.norm())
    assert 0 < norms[1.0] < norms[0.0]


def test_fedprox_first_step_is_plain_sgd() -> None:
    """At step one w == w_global, so the proximal term contributes nothing."""
    x, y = make_data(16, seed=4)
    deltas = []
    for mu in (0.0, 2.0):
        model = make_model(0)
        g = flat_of(model)
        out = torch.empty_like(g)
        plan = TrainPlan(local_steps=1, batch_size=8, prox_mu=mu)
        TorchTrainer(model).train(g, x, y, plan, 9, out)
        deltas.append(out)
    assert torch.equal(deltas[0], deltas[1])


def test_fedprox_two_steps_match_manual_loop() -> None:
    mu, lr = 0.7, 0.2
    plan = TrainPlan(local_steps=2, batch_size=8, lr=lr, prox_mu=mu)
    x, y = make_data(16, seed=5)
    model = make_model(0)
    manual = copy.deepcopy(model)
    g = flat_of(model)
    out = torch.empty_like(g)
    TorchTrainer(model).train(g, x, y, plan, 11, out)

    w0 = [p.detach().clone() for p in manual.parameters()]
    for idx in batch_schedule(len(y), plan, 11):
        index = torch.from_numpy(idx)
        for p in manual.parameters():
            p.grad = None
        F.cross_entropy(manual(x[index]), y[index]).backward()
        with torch.no_grad():
            for p, p0 in zip(manual.parameters(), w0, strict=True):
                p -= lr * (p.grad + mu * (p - p0))
    expected = flat_of(manual) - g
    assert max_abs(out, expected) < 1e-6
    # and the proximal term mattered on the second step
    no_prox = make_model(0)
    out0 = torch.empty_like(g)
    TorchTrainer(no_prox).train(g, x, y, TrainPlan(local_steps=2, batch_size=8, lr=lr), 11, out0)
    assert max_abs(out, out0) > 1e-6


def test_reused_trainer_does_not_leak_state() -> None:
    x1, y1 = make_data(30, seed=6)
    x2, y2 = make_data(24, seed=7)
    plan1 = TrainPlan(
        local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, nesterov=True, prox_mu=0.5
    )
    plan2 = TrainPlan(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3)
    model = make_model(0)
    fresh_model = copy.deepcopy(model)
    g = flat_of(model)

    shared = TorchTrainer(model)
    out1, out2 = torch.empty_like(g), torch.empty_like(g)
    shared.train(g, x1, y1, plan1, 1, out1)
    shared.train(g, x2, y2, plan2, 2, out2)

    alone = torch.empty_like(g)
    TorchTrainer(fresh_model).train(g, x2, y2, plan2, 2, alone)
    assert torch.equal(out2, alone)
    assert not torch.equal(out1, out2)

    # and a third client without momentum or prox after all that is also clean
    plan3 = TrainPlan(local_epochs=1, batch_size=5, lr=0.1)
    out3 = torch.empty_like(g)
    shared.train(g, x1, y1, plan3, 3, out3)
    alone3 = torch.empty_like(g)
    TorchTrainer(make_model(0)).train(g, x1, y1, plan3, 3, alone3)
    assert torch.equal(out3, alone3)


def test_trainer_after_evaluation_still_trains_identically() -> None:
    x, y = make_data(20, seed=8)
    plan = TrainPlan(local_epochs=1, batch_size=5, lr=0.1)
    model = make_model(0)
    g = flat_of(model)
    trainer = TorchTrainer(model)
    first = torch.empty_like(g)
    trainer.train(g, x, y, plan, 0, first)
    evaluate_model(model, x, y)
    second = torch.empty_like(g)
    trainer.train(g, x, y, plan, 0, second)
    assert torch.equal(first, second)


# --------------------------------------------------------------------------- evaluate_model


@pytest.mark.parametrize("batch_size", [1, 7, 1024])
def test_evaluate_model_matches_cross_entropy(batch_size: int) -> None:
    model = make_model(2)
    x, y = make_data(20, seed=9)
    losses, metrics = evaluate_model(model, x, y, batch_size=batch_size)
    correct = metrics["accuracy"]
    with torch.no_grad():
        logits = model(x)
        expected = F.cross_entropy(logits, y, reduction="none").numpy()
        expected_correct = (logits.argmax(dim=1) == y).numpy()
    assert list(metrics) == ["accuracy"]
    assert losses.shape == (20,) and correct.shape == (20,)
    np.testing.assert_allclose(losses, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(correct, expected_correct.astype(np.float32))
    assert 0 < correct.sum() < 20  # both outcomes occur, so the check is not vacuous


def test_evaluate_model_on_flat_module_and_empty_input() -> None:
    model = make_model(0)
    TorchTrainer(model)  # parameters now live in flat buffers
    x, y = make_data(5, seed=10)
    losses, _ = evaluate_model(model, x, y)
    assert losses.shape == (5,) and np.isfinite(losses).all()
    empty_l, empty_m = evaluate_model(model, x[:0], y[:0])
    assert empty_l.shape == (0,) and empty_m["accuracy"].shape == (0,)
