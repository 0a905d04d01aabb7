"""Typed records exchanged between the server core, clients and runtimes.

The protocol is these dataclasses (and protobuf on the wire), never dicts with
string keys shared by convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

from fedloom.errors import ConfigError, RejectionKind, UpdateRejected

# One source of truth for a client's training settings: TrainPlan's defaults and these
# bounds (pydantic's names: ge, gt, lt). ``ClientConfig`` takes both from here, and a
# TrainPlan checks them on construction, wherever it comes from (config, code, the wire).
PLAN_BOUNDS: dict[str, dict[str, float]] = {
    "local_epochs": {"ge": 1},
    "local_steps": {"ge": 1},
    "batch_size": {"ge": 1},
    "lr": {"gt": 0},
    "momentum": {"ge": 0, "lt": 1},
    "betas": {"ge": 0, "lt": 1},  # each of the two
    "eps": {"gt": 0},
    "weight_decay": {"ge": 0},
    "prox_mu": {"ge": 0},
    "dp_sgd_clip": {"gt": 0},
    "dp_sgd_noise": {"ge": 0},
}
_INT_FIELDS = ("local_epochs", "local_steps", "batch_size")
_OPTIMIZERS = ("sgd", "adam")
_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainPlan:
    """What a client is asked to do in one round (sized per client by the server).

    Checked on construction (bounds in ``PLAN_BOUNDS``): a bad value raises ``ConfigError``
    naming the field and the value, so a plan from a config, from code or from the wire
    is refused before any training.
    """

    local_epochs: int = 5
    local_steps: int | None = None
    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    dp_sgd_clip: float | None = None  # sample-level DP-SGD: per-sample gradient L2 bound
    dp_sgd_noise: float = 0.0  # DP-SGD noise multiplier (noise stddev / dp_sgd_clip)
    # the arithmetic of the forward and backward passes (autocast; parameters and the
    # optimizer stay float32): what the server chose for the device (edge.profiles)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    qat: bool = False  # quantization-aware training: int8 fake-quantized weights and inputs

    def __post_init__(self) -> None:
        for name, bounds in PLAN_BOUNDS.items():
            value = getattr(self, name)
            if value is None and name in ("local_steps", "dp_sgd_clip"):
                continue
            if name == "betas":
                if not isinstance(value, tuple) or len(value) != 2:
                    raise ConfigError(f"plan.betas = {value!r}: expected two numbers")
                for i, beta in enumerate(value):
                    _check_bound(f"betas[{i}]", beta, bounds, integer=False)
            else:
                _check_bound(name, value, bounds, integer=name in _INT_FIELDS)
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(f"plan.optimizer = {self.optimizer!r}: expected one of {_OPTIMIZERS}")
        if not isinstance(self.nesterov, bool):
            raise ConfigError(f"plan.nesterov = {self.nesterov!r}: expected a bool")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("plan.nesterov = True needs plan.momentum > 0")
        if self.optimizer == "adam" and self.momentum:
            raise ConfigError(
                f"plan.momentum = {self.momentum!r} applies to sgd; adam uses plan.betas"
            )
        if self.dp_sgd_noise and self.dp_sgd_clip is None:
            raise ConfigError(f"plan.dp_sgd_noise = {self.dp_sgd_noise!r} needs plan.dp_sgd_clip")
        if self.precision not in _PRECISIONS:
            raise ConfigError(f"plan.precision = {self.precision!r}: expected one of {_PRECISIONS}")
        if not isinstance(self.qat, bool):
            raise ConfigError(f"plan.qat = {self.qat!r}: expected a bool")


def _check_bound(name: str, value: object, bounds: dict[str, float], integer: bool) -> None:
    """Raise ``ConfigError`` unless ``value`` is a finite number (an int if ``integer``)
    within ``bounds``."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = "an int" if integer else "a number"
        raise ConfigError(f"plan.{name} = {value!r}: expected {want}")
    if not math.isfinite(value):
        raise ConfigError(f"plan.{name} = {value!r}: expected a finite number")
    for op, limit in bounds.items():
        ok = {"ge": value >= limit, "gt": value > limit, "lt": value < limit}[op]
        if not ok:
            sign = {"ge": ">=", "gt": ">", "lt": "<"}[op]
            raise ConfigError(f"plan.{name} = {value!r}: must be {sign} {limit:g}")


@dataclass(frozen=True)
class Dispatch:
    """The server's request that ``client_id`` trains global model ``version``."""

    client_id: int
    round: int
    version: int
    plan: TrainPlan
    seed: int
    deadline: float | None = None  # time by which the update must arrive (runtime's clock)
    max_steps: int | None = None  # partial work: at most this many local steps
    compression: float | None = None  # the codec's setting for this client's upload


@dataclass(frozen=True)
class ClientMetrics:
    """What a client reports about its local work."""

    train_loss: float
    steps: int
    epochs: float
    train_loss_sq: float = float("nan")  # mean squared batch loss (Oort's statistical utility)
    # progress monitoring: the batch losses of a few evenly spaced steps (first and last
    # included), read once after training (no per-step synchronization)
    loss_samples: tuple[float, ...] = ()


@dataclass(frozen=True)
class Update:
    """A client's answer to a ``Dispatch``: its model delta (local minus global), or,
    under compression, the encoded ``payload`` of it (``delta`` then empty until the
    server decodes it)."""

    client_id: int
    round: int
    version: int
    delta: np.ndarray
    num_examples: int
    metrics: ClientMetrics
    payload: bytes | None = None


@dataclass(frozen=True, eq=False)
class ClientOutcomes:
    """Per-client facts of one round's aggregated updates (rows in cohort order)."""

    ids: np.ndarray  # int64 [M]
    num_examples: np.ndarray  # int64 [M]
    train_loss: np.ndarray  # float64 [M]
    train_loss_sq: np.ndarray  # float64 [M]
    steps: np.ndarray  # int64 [M]
    contribution: np.ndarray  # float64 [M]: w_i <delta_i, Delta> / (W |Delta|^2), sums to 1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientOutcomes):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name), equal_nan=True)
            for f in fields(self)
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def empty(cls) -> ClientOutcomes:
        z = np.zeros(0)
        return cls(z.astype(np.int64), z.astype(np.int64), z, z, z.astype(np.int64), z)


@dataclass(frozen=True)
class Exclusion:
    """A client left out of a round's aggregate, and why.

    ``outcome`` is ``"rejected"`` (its update was refused; ``kind`` is a
    :class:`~fedloom.errors.RejectionKind`) or ``"failed"`` (it did not deliver: ``kind``
    is the failure reason the runtime gave, such as ``disconnected``, ``deadline`` or
    ``surplus``); ``detail`` says what exactly happened.
    """

    client_id: int
    outcome: Literal["rejected", "failed"]
    kind: str
    detail: str

    @classmethod
    def rejected(cls, client_id: int, err: UpdateRejected) -> Exclusion:
        return cls(int(client_id), "rejected", RejectionKind(err.kind), err.reason)

    @classmethod
    def failed(cls, client_id: int, reason: str) -> Exclusion:
        return cls(int(client_id), "failed", reason, reason)

    def to_json(self) -> dict[str, object]:
        """The form ``metrics.jsonl`` records carry."""
        return {
            "client": self.client_id,
            "outcome": self.outcome,
            "kind": str(self.kind),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class RoundReport:
    """What a round callback receives (``Simulation.run(on_round=...)``) once a round is
    recorded: its result, the evaluation made after it (metric name -> value, empty when
    the round was not evaluated), the privacy spent so far (None without DP) and its wall
    time. The same round's line in ``metrics.jsonl`` carries these and the runtime's own
    fields."""

    result: RoundResult
    attempt: int
    metrics: dict[str, float] = field(default_factory=dict)
    epsilon: float | None = None
    wall_s: float = 0.0

    @property
    def round(self) -> int:
        return self.result.round

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")

    @property
    def loss(self) -> float | None:
        return self.metrics.get("loss")


@dataclass(frozen=True)
class RoundResult:
    """What happened in one synchronous round, as recorded in ``metrics.jsonl``."""

    round: int
    selected: tuple[int, ...]
    completed: tuple[int, ...]
    failed: tuple[int, ...]
    rejected: int
    num_examples: int
    train_loss: float
    update_norm: float
    status: str = "aggregated"  # aggregated | empty | skipped (below quorum) | retry
    clients: ClientOutcomes = field(default_factory=ClientOutcomes.empty)
    skip_reason: str | None = None  # set by SyncServer.skip_round
    # (client, declared, used): example counts clamped to the client's bound (FedAvg weight)
    clamped: tuple[tuple[int, int, int], ...] = ()
    # who is not in the aggregate and why: refused updates (also from clients outside the
    # cohort) and selected clients that did not deliver, by client id. Under a sharded run
    # (torch.distributed, allreduce) a rank knows only the refusals it saw itself.
    excluded: tuple[Exclusion, ...] = ()
