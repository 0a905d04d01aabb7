"""Server optimizers: how the global model moves given the cohort's aggregated update.

The aggregated client update ``delta`` (mean of ``local - global``) is treated as a
pseudo-gradient pointing downhill, so every optimizer *adds* a step along it. Optimizers
are immutable config objects; all mutable state is an explicit ``dict[str, np.ndarray]``
(float arrays shaped like ``params`` plus a 0-d int64 ``"step"``) so a run can write it
into an ``.npz`` checkpoint and resume bit-for-bit. ``step`` never mutates its inputs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import numpy as np

from fedloom.errors import ConfigError, FedloomError

State = dict[str, np.ndarray]


class ServerOptimizer(Protocol):
    """A server update rule: ``init`` builds the state, ``step`` applies one round."""

    @property
    def name(self) -> str: ...

    def init(self, params: np.ndarray) -> State: ...

    def step(
        self, params: np.ndarray, delta: np.ndarray, state: State
    ) -> tuple[np.ndarray, State]: ...


def _check_positive(field: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{field} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{field} must be finite, got {value!r}")


def _check_unit_interval(field: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(f"{field} must be in [0, 1), got {value!r}")


def _prepare(
    params: np.ndarray, delta: np.ndarray, state: State, keys: tuple[str, ...]
) -> np.ndarray:
    """Check shapes and state keys; return ``delta`` in the dtype of ``params``.

    Mismatched shapes would otherwise broadcast silently into a wrong model.
    """
    if delta.shape != params.shape:
        raise FedloomError(f"delta has shape {delta.shape}, expected {params.shape} like params")
    for key in ("step", *keys):
        if key not in state:
            raise FedloomError(f"optimizer state is missing {key!r}; present: {sorted(state)}")
    for key in keys:
        if state[key].shape != params.shape:
            raise FedloomError(
                f"optimizer state {key!r} has shape {state[key].shape}, expected {params.shape}"
            )
    return delta.astype(params.dtype, copy=False)


def _next_step(state: State) -> np.ndarray:
    return np.array(int(state["step"]) + 1, dtype=np.int64)


@dataclass(frozen=True)
class FedAvg:
    """Plain server SGD on the pseudo-gradient: ``x + lr * delta``.

    With ``lr = 1`` the global model becomes the (weighted) average of the client models.
    References: McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017.
    """

    name: ClassVar[str] = "fedavg"
    lr: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("lr", self.lr)

    def init(self, params: np.ndarray) -> State:
        return {"step": np.array(0, dtype=np.int64)}

    def step(self, params: np.ndarray, delta: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        delta = _prepare(params, delta, state, ())
        lr = params.dtype.type(self.lr)
        return params + lr * delta, {"step": _next_step(state)}


@dataclass(frozen=True)
class FedAvgM:
    """Server momentum: ``m = momentum * m + delta``; ``x + lr * m``.

    Momentum smooths the round-to-round noise of non-IID cohorts. With ``nesterov`` the
    step looks ahead: ``x + lr * (momentum * m + delta)`` using the updated ``m``.
    References: Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", arXiv:1909.06335, 2019.
    """

    name: ClassVar[str] = "fedavgm"
    lr: float = 1.0
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        _check_positive("lr", self.lr)
        _check_unit_interval("momentum", self.momentum)
        if not isinstance(self.nesterov, bool):
            raise ConfigError(f"nesterov must be true or false, got {self.nesterov!r}")

    def init(self, params: np.ndarray) -> State:
        return {"step": np.array(0, dtype=np.int64), "m": np.zeros_like(params)}

    def step(self, params: np.ndarray, delta: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        delta = _prepare(params, delta, state, ("m",))
        f = params.dtype.type
        beta, lr = f(self.momentum), f(self.lr)
        m = beta * state["m"] + delta
        direction = beta * m + delta if self.nesterov else m
        return params + lr * direction, {"step": _next_step(state), "m": m}


class _Adaptive(ABC):
    """Shared Algorithm 2 of Reddi et al.; subclasses supply the second-moment update.

    ``m`` starts at 0 and ``v`` at ``tau**2``: the paper requires ``v_{-1} >= tau**2``,
    and no bias correction is applied, exactly as in the paper.
    """

    lr: float
    beta1: float
    tau: float

    def _validate(self) -> None:
        _check_positive("lr", self.lr)
        _check_unit_interval("beta1", self.beta1)
        _check_positive("tau", self.tau)

    @abstractmethod
    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        """``v_t`` from ``v_{t-1}`` and the squared pseudo-gradient."""

    def init(self, params: np.ndarray) -> State:
        return {
            "step": np.array(0, dtype=np.int64),
            "m": np.zeros_like(params),
            "v": np.full_like(params, self.tau**2),
        }

    def step(self, params: np.ndarray, delta: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        delta = _prepare(params, delta, state, ("m", "v"))
        f = params.dtype.type
        beta1 = f(self.beta1)
        m = beta1 * state["m"] + (f(1) - beta1) * delta
        v = self._second_moment(state["v"], delta * delta)
        new_params = params + f(self.lr) * m / (np.sqrt(v) + f(self.tau))
        return new_params, {"step": _next_step(state), "m": m, "v": v}


@dataclass(frozen=True)
class FedAdagrad(_Adaptive):
    """Adagrad on the server: ``v = v + delta**2`` (``m``, ``v`` start at 0, ``tau**2``).

    References: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2.
    """

    name: ClassVar[str] = "fedadagrad"
    lr: float = 0.1
    beta1: float = 0.0
    tau: float = 1e-3

    def __post_init__(self) -> None:
        self._validate()

    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        return v + sq


@dataclass(frozen=True)
class FedAdam(_Adaptive):
    """Adam on the server: ``v = beta2 * v + (1 - beta2) * delta**2``, no bias correction.

    ``m`` starts at 0 and ``v`` at ``tau**2`` (the paper requires ``v_{-1} >= tau**2``).
    References: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2.
    """

    name: ClassVar[str] = "fedadam"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        self._validate()
        _check_unit_interval("beta2", self.beta2)

    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        beta2 = v.dtype.type(self.beta2)
        return beta2 * v + (v.dtype.type(1) - beta2) * sq


@dataclass(frozen=True)
class FedYogi(_Adaptive):
    """Yogi on the server: ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)``.

    Unlike Adam, ``v`` changes additively, so the effective step size grows more slowly
    when gradients shrink. ``m`` starts at 0 and ``v`` at ``tau**2`` (the paper requires
    ``v_{-1} >= tau**2``).
    References: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2.
    """

    name: ClassVar[str] = "fedyogi"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        self._validate()
        _check_unit_interval("beta2", self.beta2)

    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        return v - (v.dtype.type(1) - v.dtype.type(self.beta2)) * sq * np.sign(v - sq)


_OPTIMIZERS: dict[str, type[FedAvg | FedAvgM | FedAdagrad | FedAdam | FedYogi]] = {
    cls.name: cls for cls in (FedAvg, FedAvgM, FedAdagrad, FedAdam, FedYogi)
}


def make_server_optimizer(name: str, **kwargs: Any) -> ServerOptimizer:
    """Build a server optimizer by config name, rejecting unknown names and hyperparameters."""
    if name not in _OPTIMIZERS:
        raise ConfigError(
            f"server optimizer {name!r} is unknown; valid names: {', '.join(_OPTIMIZERS)}"
        )
    cls = _OPTIMIZERS[name]
    valid = [f.name for f in fields(cls)]
    for key in kwargs:
        if key not in valid:
            raise ConfigError(
                f"server optimizer {name!r} has no hyperparameter {key!r}; valid: {valid}"
            )
    return cls(**kwargs)
