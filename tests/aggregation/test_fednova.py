"""FedNova's normalized averaging (Wang et al., NeurIPS 2020): the normalization
vectors on hand-computed inputs and against the clients' own local solver, the
aggregate on a hand-computed cohort, FedAvg when steps are equal, the unbiased fixed
point on quadratics where FedAvg is pulled toward the client with the most steps, and
the config rules that go with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom.aggregation import FedNova, ReduceContext, WeightedMean, build_reducer, fednova_norm
from fedloom.client import local_optim
from fedloom.config import load_config
from fedloom.errors import ConfigError, FedloomError
from fedloom.records import TrainPlan
from fedloom.server.reduction import Reduction


def ctx(steps) -> ReduceContext:
    k = len(steps)
    return ReduceContext(np.arange(k), np.random.default_rng(0), steps=np.asarray(steps))


def reduce(reducer: FedNova, rows, weights, steps) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return reducer.finish(reducer.partial(np.asarray(rows, np.float32), w, ctx(steps)), w.sum())


# ------------------------------------------------------------------------ normalization


def test_sgd_normalization_is_the_step_count() -> None:
    assert fednova_norm(np.array([0, 1, 3, 7])).tolist() == [0.0, 1.0, 3.0, 7.0]


def test_momentum_normalization_by_hand() -> None:
    # sum_{j=1..tau} (1 - 0.9^j) / 0.1: 1; 1 + 1.9; 1 + 1.9 + 2.71 + 3.439 + 4.0951
    a = fednova_norm(np.array([0, 1, 2, 5]), momentum=0.9)
    np.testing.assert_allclose(a, [0.0, 1.0, 2.9, 13.1441], rtol=1e-12)


def test_prox_normalization_by_hand() -> None:
    # alpha = lr * mu = 0.1: sum_{k<tau} 0.9^k = 1; 1.9; 1 + 0.9 + 0.81 + 0.729 + 0.6561
    a = fednova_norm(np.array([0, 1, 2, 5]), lr=0.1, prox_mu=1.0)
    np.testing.assert_allclose(a, [0.0, 1.0, 1.9, 4.0951], rtol=1e-12)


@pytest.mark.parametrize(
    "plan",
    [TrainPlan(lr=0.05), TrainPlan(lr=0.05, momentum=0.9), TrainPlan(lr=0.05, prox_mu=2.0)],
    ids=["sgd", "momentum", "prox"],
)
def test_normalization_is_what_the_clients_solver_does_with_a_constant_gradient(plan) -> None:
    # with every loss gradient equal to g, Delta = -lr * ||a||_1 * g
    steps = [1, 2, 5, 13]
    for tau, expected in zip(
        steps, fednova_norm(np.array(steps), plan.momentum, plan.lr, plan.prox_mu), strict=True
    ):
        params = torch.zeros(1, 1, dtype=torch.float64)
        anchor = params.clone()
        state = local_optim.init_state(plan, params)
        for _ in range(tau):
            local_optim.step(plan, params, torch.ones_like(params), state, anchor)
        assert float(-params[0, 0] / plan.lr) == pytest.approx(expected, rel=1e-12)


def test_a_momentum_close_to_one_keeps_its_precision() -> None:
    tau = np.arange(1, 40)
    direct = [sum((1 - 0.999**j) / 0.001 for j in range(1, t + 1)) for t in tau]
    np.testing.assert_allclose(fednova_norm(tau, momentum=0.999), direct, rtol=1e-9)


@pytest.mark.parametrize(
    ("steps", "needle"),
    [([1, -2], "steps[1] = -2.0"), ([np.nan], "steps[0] = nan"), ([1.5], "steps[0] = 1.5")],
)
def test_bad_steps_are_refused(steps, needle) -> None:
    with pytest.raises(FedloomError, match="whole numbers >= 0") as err:
        fednova_norm(np.array(steps, dtype=np.float64))
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"momentum": 1.0}, "client.momentum = 1.0"),
        ({"momentum": 0.5, "lr": 0.1, "prox_mu": 0.1}, "client.momentum and client.prox_mu"),
        ({"prox_mu": 0.1}, "client.lr = None"),
        ({"prox_mu": -1.0, "lr": 0.1}, "client.prox_mu = -1.0"),
    ],
)
def test_bad_solver_settings_are_refused(kwargs, needle) -> None:
    with pytest.raises(ConfigError) as err:
        FedNova(**kwargs)
    assert needle in str(err.value)


# ---------------------------------------------------------------------------- aggregate


def test_three_clients_by_hand() -> None:
    rows = [[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]]
    # p = (1/4, 1/4, 1/2), a = (1, 2, 4): tau_eff = 2.75; sum p_i Delta_i / a_i = (0.75, 0.75)
    out = reduce(FedNova(), rows, [1, 1, 2], [1, 2, 4])
    np.testing.assert_allclose(out, [2.0625, 2.0625], rtol=1e-6)
    fedavg = reduce(WeightedMean(), rows, [1, 1, 2], [1, 2, 4])
    np.testing.assert_allclose(fedavg, [2.25, 2.5], rtol=1e-6)


def test_a_row_without_steps_leaves_the_average() -> None:
    rows = [[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [0.0, 0.0]]
    out = reduce(FedNova(), rows, [1, 1, 2, 4], [1, 2, 4, 0])
    np.testing.assert_allclose(out, [2.0625, 2.0625], rtol=1e-6)
    assert not reduce(FedNova(), [[0.0, 0.0]], [3], [0]).any()


@pytest.mark.parametrize("reducer", [FedNova(), FedNova(momentum=0.9), FedNova(0, 0.1, 0.5)])
def test_equal_steps_are_fedavg_exactly(reducer) -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(7, 50)).astype(np.float32)
    weights = rng.integers(1, 100, size=7).astype(np.float64)
    ours = reduce(reducer, rows, weights, [6] * 7)
    fedavg = WeightedMean().finish(WeightedMean().partial(rows, weights), weights.sum())
    assert np.array_equal(ours, fedavg)


def test_the_server_passes_each_rows_steps() -> None:
    rows = np.array([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]], dtype=np.float32)
    w, steps = np.array([1.0, 1.0, 2.0]), np.array([1, 2, 4])
    reduction = Reduction(FedNova(), seed=0)
    total = reduction.partial(rows, w, np.arange(3), np.zeros(2), 1, steps=steps)
    np.testing.assert_allclose(reduction.finish(total, w.sum()), [2.0625, 2.0625], rtol=1e-6)
    with pytest.raises(FedloomError, match=r"local steps \(ReduceContext.steps\)"):
        reduction.partial(rows, w, np.arange(3), np.zeros(2), 1)
    with pytest.raises(FedloomError, match=r"steps has shape \(2,\)"):
        reduction.partial(rows, w, np.arange(3), np.zeros(2), 1, steps=steps[:2])


def _local_gd(x: np.ndarray, centres: np.ndarray, h: np.ndarray, lr: float, steps) -> np.ndarray:
    """Each client's exact local gradient descent on F_i(x) = h_i/2 ||x - c_i||^2 from
    ``x`` for its own number of steps: the updates ``x_i - x`` ``[K, d]``."""
    tau = np.asarray(steps)
    y = np.tile(x, (len(tau), 1))
    for s in range(int(tau.max())):
        y -= ((s < tau) * lr * h)[:, None] * (y - centres)
    return y - x


def _fixed_point(reducer, centres, h, weights, steps, lr: float, rounds: int) -> np.ndarray:
    """The global model after ``rounds`` server steps (server learning rate 1)."""
    x = np.zeros(centres.shape[1])
    w = np.asarray(weights, dtype=np.float64)
    for _ in range(rounds):
        rows = _local_gd(x, centres, h, lr, steps).astype(np.float32)
        x = x + reducer.finish(reducer.partial(rows, w, ctx(steps)), w.sum())
    return x


def test_a_client_with_ten_times_the_steps_does_not_pull_the_model_to_its_optimum() -> None:
    centres = np.array([[0.0, 0.0], [1.0, -1.0], [4.0, 2.0]])
    h = np.array([1.0, 2.0, 0.5])
    weights, steps = [3.0, 2.0, 1.0], [2, 2, 20]
    p = np.asarray(weights) / sum(weights)
    optimum = (p * h) @ centres / (p * h).sum()  # argmin sum_i p_i F_i
    errors = {}
    for lr in (0.02, 0.005):  # about 20 / (lr tau_eff h) rounds: converged
        nova = _fixed_point(FedNova(), centres, h, weights, steps, lr, int(7 / lr))
        errors[lr] = float(np.linalg.norm(nova - optimum))
    # FedAvg's fixed point weighs client i by p_i (1 - (1 - lr h_i)^tau_i): the many-step
    # client's optimum pulls it far off
    fedavg = _fixed_point(WeightedMean(), centres, h, weights, steps, 0.02, 350)
    skew = p * (1 - (1 - 0.02 * h) ** np.asarray(steps))
    np.testing.assert_allclose(fedavg, skew @ centres / skew.sum(), atol=1e-4)
    assert np.linalg.norm(fedavg - optimum) > 1.0
    # FedNova's residual is of first order in the learning rate (the paper's bound)
    assert errors[0.02] < 0.05
    assert errors[0.005] < errors[0.02] / 3


# -------------------------------------------------------------------------------- config


def test_build_reducer_takes_the_clients_plan() -> None:
    reducer = build_reducer("fednova", {}, plan=TrainPlan(lr=0.2, prox_mu=0.5))
    assert isinstance(reducer, FedNova)
    assert (reducer.momentum, reducer.lr, reducer.prox_mu) == (0.0, 0.2, 0.5)
    plain = build_reducer("fednova", {}, rows=1)
    assert (plain.momentum, plain.prox_mu) == (0.0, 0.0)
    with pytest.raises(ConfigError, match="aggregation.params.mu = 0.1 is not a parameter"):
        build_reducer("fednova", {"mu": 0.1})
    with pytest.raises(ConfigError, match="aggregation.bucketing = 2 with aggregation.rule"):
        build_reducer("fednova", {}, 2)
    with pytest.raises(ConfigError, match="client.optimizer = 'adam'"):
        build_reducer("fednova", {}, plan=TrainPlan(optimizer="adam"))


def test_config_accepts_fednova() -> None:
    config = load_config(
        None, ['aggregation.rule="fednova"', "client.momentum=0.9", "server.clients_per_round=3"]
    )
    assert config.aggregation.rule == "fednova" and config.aggregation.robust


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (['client.optimizer="adam"'], "client.optimizer = 'adam'"),
        (["client.momentum=0.9", "client.nesterov=true"], "client.nesterov = true"),
        (["client.momentum=0.9", "client.prox_mu=0.01"], "client.momentum and client.prox_mu"),
        (["secagg.enabled=true"], "secagg.enabled = true"),
    ],
)
def test_config_refuses_fednova_with(sets, needle) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ['aggregation.rule="fednova"', *sets])
    assert "aggregation.rule = 'fednova'" in str(err.value) and needle in str(err.value)
