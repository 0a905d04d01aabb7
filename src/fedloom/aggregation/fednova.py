"""FedNova: normalized averaging, so unequal local work does not bias the objective.

A client that runs ``tau_i`` local steps from the global model ``x`` returns
``Delta_i = x_i - x = -eta G_i a_i``: its stochastic gradients ``G_i`` combined by a
vector ``a_i`` that its local solver fixes. FedAvg's ``sum_i p_i Delta_i`` therefore
weighs client ``i`` by ``p_i ||a_i||_1``, and with unequal ``tau_i`` it converges to a
stationary point of ``sum_i p_i ||a_i||_1 F_i / sum_j p_j ||a_j||_1`` rather than of
``sum_i p_i F_i`` (the objective inconsistency). FedNova divides each update by its
``||a_i||_1`` (the normalized gradient) and rescales the average by the effective step
count ``tau_eff = sum_i p_i ||a_i||_1``::

    aggregate = tau_eff * sum_i p_i Delta_i / ||a_i||_1,   p_i = n_i / sum_j n_j

``||a_i||_1`` for the local solvers the paper derives (``rho``: heavy-ball momentum,
``eta``: client learning rate, ``mu``: FedProx's proximal coefficient):

- SGD: ``tau_i``;
- SGD with momentum: ``(tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)``;
- FedProx: ``(1 - (1 - eta mu)^tau_i) / (eta mu)``.

``tau_eff`` only scales the server's step; the fixed point is ``sum_i p_i F_i``'s for any
choice. The reference implementation uses ``sum_i p_i tau_i`` for FedProx; this one uses
the paper's ``sum_i p_i ||a_i||_1`` for every solver. Weight decay is treated as part of
the gradient, as in the reference implementation. A row with no local steps carries no
gradient: its ``||a_i||_1`` is 0 and it leaves the average (the others' ``p_i`` are
renormalized), so the aggregate is what the round would give without it.

References: Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem
in Heterogeneous Federated Optimization", NeurIPS 2020 (github.com/JYWa/FedNova).
"""

from __future__ import annotations

import math

import numpy as np

from fedloom.aggregation.mean import check_weights, weighted_sum
from fedloom.aggregation.reducer import ReduceContext
from fedloom.errors import ConfigError, FedloomError
from fedloom.records import TrainPlan


def fednova_norm(
    steps: np.ndarray,
    momentum: float = 0.0,
    lr: float | None = None,
    prox_mu: float = 0.0,
) -> np.ndarray:
    """``||a_i||_1`` (float64, one per entry of ``steps``) for SGD, SGD with heavy-ball
    ``momentum``, or FedProx's ``prox_mu`` with client learning rate ``lr`` (module
    docstring). 0 steps give 0."""
    _check_solver(momentum, lr, prox_mu)
    tau = _check_steps(steps)
    if momentum:
        rho = float(momentum)
        geometric = -np.expm1(tau * math.log(rho)) / (1.0 - rho)  # (1 - rho^tau) / (1 - rho)
        return (tau - rho * geometric) / (1.0 - rho)
    if prox_mu:
        assert lr is not None
        alpha = float(lr) * float(prox_mu)
        if alpha < 1.0:  # 1 - (1 - alpha)^tau without cancellation for a small alpha
            return -np.expm1(tau * math.log1p(-alpha)) / alpha
        return (1.0 - (1.0 - alpha) ** tau) / alpha
    return tau


class FedNova:
    """FedNova's normalized average of the rows, weighted by the given weights (FedAvg's
    example counts), with each row's local steps from ``ctx.steps``. Not decomposable:
    ``tau_eff`` needs every row's steps before any row is scaled. Build it from the
    clients' plan with :meth:`for_plan`."""

    decomposable = False
    min_rows = 1
    needs_reference = False

    def __init__(self, momentum: float = 0.0, lr: float | None = None, prox_mu: float = 0.0):
        _check_solver(momentum, lr, prox_mu)
        self.momentum, self.lr, self.prox_mu = float(momentum), lr, float(prox_mu)

    @classmethod
    def for_plan(cls, plan: TrainPlan) -> FedNova:
        """The normalization of the local solver ``plan`` describes (SGD only)."""
        if plan.optimizer != "sgd" or plan.nesterov:
            what = (
                "client.nesterov = true"
                if plan.nesterov
                else f"client.optimizer = {plan.optimizer!r}"
            )
            raise ConfigError(
                f"aggregation.rule = 'fednova' with {what}: its normalization is derived for "
                "SGD with heavy-ball momentum or a proximal term"
            )
        return cls(plan.momentum, plan.lr, plan.prox_mu)

    def norm(self, steps: np.ndarray) -> np.ndarray:
        """``||a_i||_1`` of each row's ``steps`` under this reducer's local solver."""
        return fednova_norm(steps, self.momentum, self.lr, self.prox_mu)

    def partial(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None = None
    ) -> np.ndarray:
        """The aggregate times the weight sum (float64 ``[d]``), so that ``finish``'s
        division returns the aggregate. Each row's coefficient is
        ``w_i * sum_j p_j (a_j / a_i)``: with equal steps every ratio is exactly 1 and
        the result is FedAvg's weighted sum bit for bit."""
        x = np.asarray(rows)
        if x.ndim != 2 or x.shape[0] == 0:
            raise FedloomError(f"rows must be a non-empty [K, d] matrix, got shape {x.shape}")
        k = x.shape[0]
        w = check_weights(weights, k)
        if ctx is None or ctx.steps is None:
            raise FedloomError(
                "aggregation.rule = 'fednova' needs each row's local steps "
                "(ReduceContext.steps), got None"
            )
        steps = np.asarray(ctx.steps)
        if steps.shape != (k,):
            raise FedloomError(f"steps has shape {steps.shape}, expected ({k},) to match rows")
        a = self.norm(steps)
        active = w * (a > 0)  # rows without local steps leave the average
        if active.sum() == 0:
            return np.zeros(x.shape[1], dtype=np.float64)
        safe = np.where(a > 0, a, 1.0)
        ratio = (active[None, :] * (a[None, :] / safe[:, None])).sum(axis=1) / active.sum()
        return weighted_sum(x, active * ratio) * (w.sum() / active.sum())

    def finish(self, total: np.ndarray, weight: float) -> np.ndarray:
        return (total / weight).astype(np.float32)


def _check_steps(steps: np.ndarray) -> np.ndarray:
    tau = np.asarray(steps, dtype=np.float64)
    if tau.ndim != 1:
        raise FedloomError(f"steps must be one count per row, got shape {tau.shape}")
    bad = np.flatnonzero(~np.isfinite(tau) | (tau < 0) | (tau != np.floor(tau)))
    if bad.size:
        i = int(bad[0])
        raise FedloomError(f"steps[{i}] = {float(tau[i])}: local steps must be whole numbers >= 0")
    return tau


def _check_solver(momentum: float, lr: float | None, prox_mu: float) -> None:
    if isinstance(momentum, bool) or not (math.isfinite(momentum) and 0.0 <= momentum < 1.0):
        raise ConfigError(f"client.momentum = {momentum!r} must be in [0, 1) for fednova")
    if isinstance(prox_mu, bool) or not (math.isfinite(prox_mu) and prox_mu >= 0.0):
        raise ConfigError(f"client.prox_mu = {prox_mu!r} must be a finite number >= 0")
    if momentum and prox_mu:
        raise ConfigError(
            "aggregation.rule = 'fednova' with both client.momentum and client.prox_mu: "
            "the normalization covers one of them at a time"
        )
    if prox_mu and (lr is None or isinstance(lr, bool) or not (math.isfinite(lr) and lr > 0)):
        raise ConfigError(
            f"client.lr = {lr!r}: fednova's proximal normalization needs the clients' "
            "learning rate (a finite number > 0)"
        )
