"""Typed records exchanged between the server core, clients and runtimes.

The protocol is these dataclasses (and protobuf on the wire), never dicts with
string keys shared by convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

from fedloom.errors import RejectionKind, UpdateRejected


@dataclass(frozen=True)
class TrainPlan:
    """What a client is asked to do in one round (sized per client by the server)."""

    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    dp_sgd_clip: float | None = None  # sample-level DP-SGD: per-sample gradient L2 bound
    dp_sgd_noise: float = 0.0  # DP-SGD noise multiplier (noise stddev / dp_sgd_clip)


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


@dataclass(frozen=True)
class ClientMetrics:
    """What a client reports about its local work."""

    train_loss: float
    steps: int
    epochs: float
    train_loss_sq: float = float("nan")  # mean squared batch loss (Oort's statistical utility)


@dataclass(frozen=True)
class Update:
    """A client's answer to a ``Dispatch``: its model delta (local minus global)."""

    client_id: int
    round: int
    version: int
    delta: np.ndarray
    num_examples: int
    metrics: ClientMetrics


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
