"""The typed parts of a join and a task: fedloom's records <-> their protobuf messages.

Both ends are fedloom, but a peer may be hostile or broken, so everything read from the
wire is checked before it is used: a bad field raises :class:`MessageError`, one line
naming the message field and its value (the client then refuses the task or the run).
A task's secure-aggregation part is :class:`fedloom.transport.secure_round.SecureTaskSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from fedloom.errors import ConfigError, FedloomError
from fedloom.records import TrainPlan
from fedloom.transport import fedloom_pb2 as pb

if TYPE_CHECKING:
    import torch

# A model a device agrees to build: more parameters than this is not a small edge model
# (and building it could exhaust the device's memory before any other check runs).
MAX_MODEL_PARAMETERS = 1 << 28


class MessageError(FedloomError):
    """A message from the other end fails its checks (malformed, out of range, hostile)."""


def _int(where: str, value: int, minimum: int, maximum: int | None = None) -> int:
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise MessageError(f"{where} = {value}: expected an int {bound}")
    return value


def _real(where: str, value: float, positive: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        sign = ">" if positive else ">="
        raise MessageError(f"{where} = {value!r}: expected a finite number {sign} 0")
    return value


# -- the training plan -----------------------------------------------------------------
def plan_to_pb(plan: TrainPlan) -> pb.TrainPlan:
    msg = pb.TrainPlan(
        local_epochs=plan.local_epochs,
        batch_size=plan.batch_size,
        optimizer=plan.optimizer,
        lr=plan.lr,
        momentum=plan.momentum,
        nesterov=plan.nesterov,
        beta1=plan.betas[0],
        beta2=plan.betas[1],
        eps=plan.eps,
        weight_decay=plan.weight_decay,
        prox_mu=plan.prox_mu,
        dp_sgd_noise=plan.dp_sgd_noise,
    )
    if plan.local_steps is not None:
        msg.local_steps = plan.local_steps
    if plan.dp_sgd_clip is not None:
        msg.dp_sgd_clip = plan.dp_sgd_clip
    return msg


def plan_from_pb(msg: pb.TrainPlan, where: str = "task.plan") -> TrainPlan:
    """The plan in ``msg``, checked by ``TrainPlan`` itself (its bounds and rules)."""
    try:
        return TrainPlan(
            local_epochs=int(msg.local_epochs),
            local_steps=int(msg.local_steps) if msg.HasField("local_steps") else None,
            batch_size=int(msg.batch_size),
            optimizer=msg.optimizer,  # type: ignore[arg-type]  # checked by TrainPlan
            lr=float(msg.lr),
            momentum=float(msg.momentum),
            nesterov=bool(msg.nesterov),
            betas=(float(msg.beta1), float(msg.beta2)),
            eps=float(msg.eps),
            weight_decay=float(msg.weight_decay),
            prox_mu=float(msg.prox_mu),
            dp_sgd_clip=float(msg.dp_sgd_clip) if msg.HasField("dp_sgd_clip") else None,
            dp_sgd_noise=float(msg.dp_sgd_noise),
        )
    except ConfigError as err:  # "plan.lr = -1.0: must be > 0"
        raise MessageError(f"{where}{str(err).removeprefix('plan')}") from None


# -- local DP ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalDP:
    """Local DP a client applies to its update before upload, with its own CSPRNG.

    ``clip``: the L2 (gaussian) or L1 (laplace) bound; ``delta`` is gaussian only.
    """

    mechanism: Literal["gaussian", "laplace"]
    clip: float
    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if self.mechanism not in ("gaussian", "laplace"):
            raise MessageError(
                f"local_dp.mechanism = {self.mechanism!r}: expected 'gaussian' or 'laplace'"
            )
        _real("local_dp.clip", self.clip, positive=True)
        _real("local_dp.epsilon", self.epsilon, positive=True)
        if self.mechanism == "gaussian" and not 0 < self.delta < 1:
            raise MessageError(f"local_dp.delta = {self.delta!r}: expected a number in (0, 1)")

    def to_pb(self) -> pb.LocalDP:
        return pb.LocalDP(
            mechanism=self.mechanism, clip=self.clip, epsilon=self.epsilon, delta=self.delta
        )

    @classmethod
    def from_pb(cls, msg: pb.LocalDP) -> LocalDP:
        mechanism = msg.mechanism  # checked in __post_init__
        return cls(mechanism, float(msg.clip), float(msg.epsilon), float(msg.delta))  # type: ignore[arg-type]

    def apply(self, delta: np.ndarray) -> np.ndarray:
        """Clip and noise ``delta`` with the OS CSPRNG, so that nothing the server sends
        decides the noise (the simulator seeds it instead)."""
        from fedloom.privacy.mechanisms import SecureNoise
        from fedloom.transforms.privacy import LocalNoise

        noise = LocalNoise(self.clip, self.epsilon, self.delta, self.mechanism)
        return np.asarray(noise.privatize(delta, SecureNoise()), dtype=np.float32)


# -- the model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """The model a client builds: the config's kind and hidden widths, the data's shape
    and the seed of the initial weights."""

    kind: Literal["mlp", "logistic"]
    hidden: tuple[int, ...]
    num_features: int
    num_classes: int
    seed: int

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "logistic"):
            raise MessageError(f"model.kind = {self.kind!r}: expected 'mlp' or 'logistic'")
        for i, width in enumerate(self.hidden):
            _int(f"model.hidden[{i}]", width, 1)
        _int("model.num_features", self.num_features, 1)
        _int("model.num_classes", self.num_classes, 2)
        _int("model.seed", self.seed, 0)
        if self.parameters() > MAX_MODEL_PARAMETERS:
            raise MessageError(
                f"model has {self.parameters()} parameters, over {MAX_MODEL_PARAMETERS}"
            )

    def widths(self) -> list[int]:
        hidden = [] if self.kind == "logistic" else list(self.hidden)
        return [self.num_features, *hidden, self.num_classes]

    def parameters(self) -> int:
        """The model's parameter count, known before building it."""
        w = self.widths()
        return sum((a + 1) * b for a, b in zip(w, w[1:], strict=False))

    def to_pb(self) -> pb.ModelSpec:
        return pb.ModelSpec(
            kind=self.kind,
            hidden=list(self.hidden),
            num_features=self.num_features,
            num_classes=self.num_classes,
            seed=self.seed,
        )

    @classmethod
    def from_pb(cls, msg: pb.ModelSpec) -> ModelSpec:
        return cls(
            msg.kind,  # type: ignore[arg-type]  # checked in __post_init__
            tuple(int(h) for h in msg.hidden),
            int(msg.num_features),
            int(msg.num_classes),
            int(msg.seed),
        )

    def build(self) -> torch.nn.Module:
        """The model, with the seed's initial weights (torch is imported only here)."""
        from fedloom.config import ModelConfig
        from fedloom.models import build_model

        config = ModelConfig(kind=self.kind, hidden=self.hidden)
        return build_model(config, self.num_features, self.num_classes, self.seed)
