"""Typed records exchanged between the server core, clients and runtimes.

The protocol is these dataclasses (and protobuf on the wire), never dicts with
string keys shared by convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


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


@dataclass(frozen=True)
class Dispatch:
    """The server's request that ``client_id`` trains global model ``version``."""

    client_id: int
    round: int
    version: int
    plan: TrainPlan
    seed: int


@dataclass(frozen=True)
class ClientMetrics:
    """What a client reports about its local work."""

    train_loss: float
    steps: int
    epochs: float


@dataclass(frozen=True)
class Update:
    """A client's answer to a ``Dispatch``: its model delta (local minus global)."""

    client_id: int
    round: int
    version: int
    delta: np.ndarray
    num_examples: int
    metrics: ClientMetrics


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
    extra: dict[str, float] = field(default_factory=dict)
