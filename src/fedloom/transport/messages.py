"""The typed parts of a join and a task: fedloom's records <-> their protobuf messages.

Both ends are fedloom, but a peer may be hostile or broken, so everything read from the
wire is checked before it is used: a bad field raises :class:`MessageError`, one line
naming the message field and its value (the client then refuses the task or the run).
A task's secure-aggregation part is :class:`fedloom.transport.secure_round.SecureTaskSpec`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from fedloom.edge.profiles import DeviceProfile
from fedloom.errors import ConfigError, FedloomError
from fedloom.records import TrainPlan
from fedloom.transport import fedloom_pb2 as pb

if TYPE_CHECKING:
    import torch

    from fedloom.compression.codec import Codec
    from fedloom.compression.pipeline import Compression
    from fedloom.task import ResolvedTask

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
        precision=plan.precision,
        qat=plan.qat,
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
            precision=msg.precision or "fp32",  # type: ignore[arg-type]  # checked by TrainPlan
            qat=bool(msg.qat),
        )
    except ConfigError as err:  # "plan.lr = -1.0: must be > 0"
        raise MessageError(f"{where}{str(err).removeprefix('plan')}") from None


# -- the device profile ------------------------------------------------------------------
def profile_to_pb(profile: DeviceProfile) -> pb.DeviceProfile:
    msg = pb.DeviceProfile(
        name=profile.name,
        memory_mb=profile.memory_mb,
        int8=profile.int8,
        fp16=profile.fp16,
        bf16=profile.bf16,
        threads=profile.threads,
        arch=profile.arch,
    )
    if profile.ms_per_sample is not None:
        msg.ms_per_sample = profile.ms_per_sample
    return msg


def profile_from_pb(msg: pb.DeviceProfile, where: str = "join.profile") -> DeviceProfile:
    """The profile a client declared, checked by ``DeviceProfile`` itself."""
    try:
        return DeviceProfile(
            name=msg.name,
            memory_mb=float(msg.memory_mb),
            int8=bool(msg.int8),
            fp16=bool(msg.fp16),
            bf16=bool(msg.bf16),
            threads=int(msg.threads),
            arch=msg.arch,  # type: ignore[arg-type]  # checked by DeviceProfile
            ms_per_sample=float(msg.ms_per_sample) if msg.HasField("ms_per_sample") else None,
        )
    except ConfigError as err:  # "device profile 'x': threads = 0 must be in [1, 1024]"
        raise MessageError(f"{where}: {err}") from None


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
_BUILTIN = ("mlp", "logistic", "cnn", "char", "mobilenet")
_TARGETS = ("classes", "tokens", "values")
_NORMS = ("none", "group", "batch")
MAX_INPUT_RANK = 4  # one example: features, tokens, or channels x height x width (+1)
MAX_INPUT_SIZE = 1 << 24
MAX_WIDTH = 4.0  # mobilenet's width multiplier (ModelConfig.width, models.mobilenet)


@dataclass(frozen=True)
class ModelSpec:
    """The model a client builds: the config's kind (a built-in one, or a task by import
    path) with its settings, the shape of one example, what the targets are, the output
    width (classes, or the regression target's width) and the seed of the initial weights.
    ``width`` is mobilenet's width multiplier (0 < width <= 4; 0 on the wire means 1).

    A ``module:`` kind makes the client import code the server names, so a client builds
    one only from a module it was told to trust (``fedloom client --trust PACKAGE``); the
    server never decides what code a device runs.
    """

    kind: str
    hidden: tuple[int, ...]
    input_shape: tuple[int, ...]
    targets: Literal["classes", "tokens", "values"]
    outputs: int
    seed: int
    norm: str = "none"
    options_json: str = ""
    width: float = 1.0

    def __post_init__(self) -> None:
        from fedloom.task import MODULE_PREFIX

        if self.kind not in _BUILTIN and not (
            self.kind.startswith(MODULE_PREFIX) and self.kind.count(":") == 2
        ):
            raise MessageError(
                f"model.kind = {self.kind!r}: expected one of {_BUILTIN} or "
                f"'{MODULE_PREFIX}package.module:attribute'"
            )
        for i, width in enumerate(self.hidden):
            _int(f"model.hidden[{i}]", width, 1)
        if not 1 <= len(self.input_shape) <= MAX_INPUT_RANK:
            raise MessageError(
                f"model.input_shape = {list(self.input_shape)}: expected 1..{MAX_INPUT_RANK} sizes"
            )
        for i, size in enumerate(self.input_shape):
            _int(f"model.input_shape[{i}]", size, 1, MAX_INPUT_SIZE)
        if math.prod(self.input_shape) > MAX_INPUT_SIZE:  # exact: an int64 product wraps
            raise MessageError(f"model.input_shape = {list(self.input_shape)}: too large")
        if self.targets not in _TARGETS:
            raise MessageError(f"model.targets = {self.targets!r}: expected one of {_TARGETS}")
        _int("model.num_classes", self.outputs, 1 if self.targets == "values" else 2)
        _int("model.seed", self.seed, 0)
        if self.norm not in _NORMS:
            raise MessageError(f"model.norm = {self.norm!r}: expected one of {_NORMS}")
        if not (isinstance(self.width, (int, float)) and 0 < self.width <= MAX_WIDTH):
            raise MessageError(f"model.width = {self.width!r}: expected 0 < width <= {MAX_WIDTH:g}")
        known = self.known_parameters()
        if known is not None and known > MAX_MODEL_PARAMETERS:
            raise MessageError(f"model has {known} parameters, over {MAX_MODEL_PARAMETERS}")
        self.options()

    def options(self) -> dict:
        """A ``module:`` task's keyword arguments (checked: a JSON object)."""
        if not self.options_json:
            return {}
        try:
            value = json.loads(self.options_json)
        except (ValueError, RecursionError) as err:  # also too deep, or an int over 4300 digits
            raise MessageError(f"model.options_json: {err}") from None
        if not isinstance(value, dict):
            raise MessageError("model.options_json must be a JSON object")
        return value

    def known_parameters(self) -> int | None:
        """The parameter count of an MLP, known before building it (None for other kinds,
        which are counted once built)."""
        if self.kind not in ("mlp", "logistic"):
            return None
        hidden = [] if self.kind == "logistic" else list(self.hidden)
        w = [math.prod(self.input_shape), *hidden, self.outputs]
        return sum((a + 1) * b for a, b in zip(w, w[1:], strict=False))

    def to_pb(self) -> pb.ModelSpec:
        return pb.ModelSpec(
            kind=self.kind,
            hidden=list(self.hidden),
            num_features=int(np.prod(self.input_shape)),
            num_classes=self.outputs,
            seed=self.seed,
            input_shape=list(self.input_shape),
            targets=self.targets,
            norm=self.norm,
            options_json=self.options_json,
            width=self.width,
        )

    @classmethod
    def from_pb(cls, msg: pb.ModelSpec) -> ModelSpec:
        shape = tuple(int(s) for s in msg.input_shape) or (int(msg.num_features),)
        return cls(
            msg.kind,
            tuple(int(h) for h in msg.hidden),
            shape,
            msg.targets or "classes",  # type: ignore[arg-type]  # checked in __post_init__
            int(msg.num_classes),
            int(msg.seed),
            msg.norm or "none",
            msg.options_json,
            msg.width or 1.0,
        )

    def build(self, trust: tuple[str, ...] = ()) -> tuple[ResolvedTask, torch.nn.Module]:
        """The task and its model with the seed's initial weights (torch is imported only
        here). A ``module:`` kind is imported only from a package in ``trust``."""
        from fedloom.models import builtin_task
        from fedloom.task import MODULE_PREFIX, import_task

        if self.kind.startswith(MODULE_PREFIX):
            check_trusted(f"model.kind = {self.kind!r}", self.kind[len(MODULE_PREFIX) :], trust)
            task = import_task(self.kind, self.options())
        else:
            task = builtin_task(
                self.kind,
                self.input_shape,
                self.targets,
                self.outputs,
                self.hidden,
                self.norm,
                self.width,
            )
        resolved = task.resolved(self.targets)
        return resolved, task.build_model(self.seed)


def check_trusted(what: str, path: str, trust: tuple[str, ...]) -> None:
    """Refuse code a server names (``package.module:attribute``) unless its package is one
    the client trusts: importing a module runs it, and a hostile server must not pick
    what a device executes."""
    module = path.partition(":")[0]
    if not any(module == t or module.startswith(t + ".") for t in trust):
        top = module.split(".")[0]
        raise MessageError(
            f"{what}: the server names code in {module!r}, which this client does not "
            f"trust; start the client with --trust {top} to let it run that package's code"
        )


@dataclass(frozen=True)
class CompressionSpec:
    """How a client encodes its uploads and decodes its downloads
    (``JoinReply.compression``): built-in codecs' names ("" for none) and keyword
    arguments, error feedback and DGC warm-up. Only built-in codecs travel, so a server
    never makes a client import code."""

    codec: str = ""
    params_json: str = "{}"
    error_feedback: bool = False
    warmup_rounds: int = 0
    download: str = ""
    download_params_json: str = "{}"

    def __post_init__(self) -> None:
        from fedloom.compression.codec import codec_names

        for field in ("codec", "download"):
            name = getattr(self, field)
            if name and name not in codec_names():
                raise MessageError(
                    f"compression.{field} = {name!r}: expected one of {codec_names()}"
                )
        _int("compression.warmup_rounds", self.warmup_rounds, 0, 1 << 31)
        self.params("params_json")
        self.params("download_params_json")

    def params(self, field: str) -> dict:
        try:
            value = json.loads(getattr(self, field) or "{}")
        except (ValueError, RecursionError) as err:  # also too deep, or an int over 4300 digits
            raise MessageError(f"compression.{field}: {err}") from None
        if not isinstance(value, dict):
            raise MessageError(f"compression.{field} must be a JSON object")
        return value

    def upload(self, shapes: list[tuple[int, ...]]) -> Compression | None:
        """The upload codec for a model of ``shapes`` (None: float32 rows)."""
        from fedloom.compression.pipeline import Compression

        if not self.codec:
            return None
        try:
            return Compression.build(
                self.codec,
                self.params("params_json"),
                shapes,
                self.error_feedback,
                self.warmup_rounds,
            )
        except ConfigError as err:
            raise MessageError(f"join reply: {err}") from None

    def download_codec(self, shapes: list[tuple[int, ...]]) -> Codec | None:
        """The codec of compressed downloads (None: float32 models)."""
        from fedloom.compression.codec import make_codec

        if not self.download:
            return None
        try:
            return make_codec(self.download, self.params("download_params_json"), shapes)
        except ConfigError as err:
            raise MessageError(f"join reply: {err}") from None

    def to_pb(self) -> pb.CompressionSpec:
        return pb.CompressionSpec(
            codec=self.codec,
            params_json=self.params_json,
            error_feedback=self.error_feedback,
            warmup_rounds=self.warmup_rounds,
            download=self.download,
            download_params_json=self.download_params_json,
        )

    @classmethod
    def from_pb(cls, msg: pb.CompressionSpec) -> CompressionSpec:
        return cls(
            msg.codec,
            msg.params_json,
            bool(msg.error_feedback),
            int(msg.warmup_rounds),
            msg.download,
            msg.download_params_json,
        )
