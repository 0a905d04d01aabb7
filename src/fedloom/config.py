"""Every setting of a run, validated by pydantic before any work starts.

A config is a TOML file (see ``examples/``) whose sections mirror the classes below;
``--set section.key=value`` overrides single values. Unknown keys, wrong types and
out-of-range values raise ``ConfigError`` naming the field and the offending value.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedloom.errors import ConfigError
from fedloom.records import PLAN_BOUNDS, TrainPlan


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SyntheticConfig(_Section):
    """FedProx Synthetic(alpha, beta) generator settings (Li et al., 2020)."""

    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    num_features: int = Field(60, ge=1)
    num_classes: int = Field(10, ge=2)


FOLDER_SOURCES = ("mnist", "cifar10", "femnist", "shakespeare", "huggingface")
LEAF_SOURCES = ("femnist", "shakespeare")  # partitioned by their users: natural by default


class DataConfig(_Section):
    """Where the data comes from (``fedloom.data``): bundled digits, FedProx synthetic
    data, a user's .npz/.csv file, or a standard dataset read from a folder the user has
    (MNIST's IDX files, CIFAR-10's binary batches, LEAF's FEMNIST or Shakespeare JSON, a
    Hugging Face dataset saved with ``save_to_disk``); nothing is downloaded."""

    source: Literal[
        "digits", "synthetic", "file", "mnist", "cifar10", "femnist", "shakespeare", "huggingface"
    ] = "digits"
    path: Path | None = Field(None, description="the file (file) or folder (dataset sources)")
    label_column: str | int = -1
    group_column: str | int | None = Field(
        None, description="per-sample client ids: a file's column or a huggingface column"
    )
    x_column: str | None = Field(None, description="huggingface: the input column")
    y_column: str | None = Field(None, description="huggingface: the target column")
    train_split: str = Field("train", description="huggingface: the training split")
    test_split: str = Field(
        "test", description='huggingface: the test split ("": take test_fraction of train)'
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="held out for testing when the source has no test split"
    )
    standardize: bool = True
    client_holdout: float = Field(0.0, ge=0, lt=1)
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _path_for_files(self) -> DataConfig:
        if self.path is None and self.source == "file":
            raise ValueError("data.source = 'file' needs data.path (a .npz or .csv file)")
        if self.path is None and self.source in FOLDER_SOURCES:
            raise ValueError(
                f"data.source = {self.source!r} needs data.path (the folder of its files; "
                "nothing is downloaded)"
            )
        if self.source == "huggingface":
            if self.x_column is None or self.y_column is None:
                raise ValueError(
                    "data.source = 'huggingface' needs data.x_column and data.y_column"
                )
            if self.group_column is not None and not isinstance(self.group_column, str):
                raise ValueError("data.group_column must be a column name for huggingface")
            if self.test_split == self.train_split:
                raise ValueError(
                    f"data.test_split = data.train_split = {self.train_split!r}: the test set "
                    "would be the training data"
                )
        elif self.x_column is not None or self.y_column is not None:
            raise ValueError(
                f"data.x_column and data.y_column apply to huggingface, not {self.source!r}"
            )
        return self


class PartitionConfig(_Section):
    method: Literal["iid", "dirichlet", "shards", "natural"] = "dirichlet"
    num_clients: int = Field(100, ge=0)
    alpha: float = Field(0.5, gt=0)
    classes_per_client: int = Field(2, ge=1)
    min_size: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _clients_needed(self) -> PartitionConfig:
        if self.method != "natural" and self.num_clients < 1:
            raise ValueError(f"partition.num_clients must be >= 1 for {self.method!r}")
        return self


BUILTIN_MODELS = ("mlp", "logistic", "cnn", "char", "mobilenet")
_OPTION = str | int | float | bool | list[str | int | float | bool]


class ModelConfig(_Section):
    """The model: a built-in kind (``fedloom.models``) or a user task by import path,
    ``"module:package.module:attribute"`` (``fedloom.task.import_task``)."""

    kind: str = Field(
        "mlp", description="mlp, logistic, cnn, char, mobilenet or module:pkg.mod:attr"
    )
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = (32,)
    norm: Literal["none", "group", "batch"] = Field(
        "none",
        description="cnn, mobilenet: normalization (group trains vectorized; batch has buffers)",
    )
    width: float = Field(
        1.0, gt=0, le=4, description="mobilenet: width multiplier of every layer's channels"
    )
    options: dict[str, _OPTION] = Field(
        default_factory=dict, description="keyword arguments of a module: task factory"
    )
    input_shape: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(
        None, description="one example's shape (deployment; the simulator checks the data)"
    )
    # the data's shape, for a deployment server (which holds no data); the simulator
    # checks them against the data it builds
    num_features: int | None = Field(None, ge=1, description="input features (deployment)")
    num_classes: int | None = Field(None, ge=2, description="classes (deployment)")
    targets: Literal["classes", "tokens", "values"] | None = Field(
        None, description="what y holds (deployment; the simulator reads the data)"
    )

    @model_validator(mode="after")
    def _known_kind(self) -> ModelConfig:
        from fedloom.task import MODULE_PREFIX

        if self.width != 1.0 and self.kind != "mobilenet":
            raise ValueError(f"model.width = {self.width} applies to mobilenet, not {self.kind!r}")
        if self.kind in BUILTIN_MODELS:
            if self.options:
                raise ValueError(f"model.options apply to module: tasks, not {self.kind!r}")
            return self
        if not re.fullmatch(rf"{MODULE_PREFIX}[\w.]+:[\w.]+", self.kind):
            raise ValueError(
                f"model.kind = {self.kind!r}: expected one of {', '.join(BUILTIN_MODELS)} "
                f"or '{MODULE_PREFIX}package.module:attribute'"
            )
        return self


_PLAN = TrainPlan()  # the defaults of a client's training settings (bounds: PLAN_BOUNDS)
_BETA = Annotated[float, Field(**PLAN_BOUNDS["betas"])]


class ClientConfig(_Section):
    """A client's training settings: ``TrainPlan``'s defaults and bounds (records.py)."""

    local_epochs: int = Field(_PLAN.local_epochs, **PLAN_BOUNDS["local_epochs"])
    local_steps: int | None = Field(_PLAN.local_steps, **PLAN_BOUNDS["local_steps"])
    batch_size: int = Field(_PLAN.batch_size, **PLAN_BOUNDS["batch_size"])
    optimizer: Literal["sgd", "adam"] = _PLAN.optimizer
    lr: float = Field(_PLAN.lr, **PLAN_BOUNDS["lr"])
    momentum: float = Field(_PLAN.momentum, description="SGD only", **PLAN_BOUNDS["momentum"])
    nesterov: bool = _PLAN.nesterov
    betas: tuple[_BETA, _BETA] = _PLAN.betas
    eps: float = Field(_PLAN.eps, **PLAN_BOUNDS["eps"])
    weight_decay: float = Field(_PLAN.weight_decay, **PLAN_BOUNDS["weight_decay"])
    prox_mu: float = Field(_PLAN.prox_mu, **PLAN_BOUNDS["prox_mu"])
    dp_sgd_clip_norm: float | None = Field(
        _PLAN.dp_sgd_clip,
        description="sample-level DP-SGD: clip each per-sample gradient",
        **PLAN_BOUNDS["dp_sgd_clip"],
    )
    dp_sgd_noise_multiplier: float = Field(_PLAN.dp_sgd_noise, **PLAN_BOUNDS["dp_sgd_noise"])

    @model_validator(mode="after")
    def _a_valid_plan(self) -> ClientConfig:
        """The rules between settings are TrainPlan's (one place), named as in the config."""
        try:
            values = {_PLAN_NAMES.get(k, k): v for k, v in self.model_dump().items()}
            TrainPlan(**{k: v for k, v in values.items() if k in _PLAN.__dataclass_fields__})
        except ConfigError as err:
            message = str(err)
            for plan_name, config_name in _PLAN_NAMES.items():
                message = message.replace(f"plan.{config_name}", f"client.{plan_name}")
            raise ValueError(message.replace("plan.", "client.")) from None
        return self


# ClientConfig's names for TrainPlan's fields, where they differ
_PLAN_NAMES = {"dp_sgd_clip_norm": "dp_sgd_clip", "dp_sgd_noise_multiplier": "dp_sgd_noise"}


class FedAvgConfig(_Section):
    name: Literal["fedavg"] = "fedavg"
    lr: float = Field(1.0, gt=0)


class FedAvgMConfig(_Section):
    name: Literal["fedavgm"]
    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False


class _AdaptiveConfig(_Section):
    lr: float = Field(0.01, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


class FedAdagradConfig(_AdaptiveConfig):
    name: Literal["fedadagrad"]
    lr: float = Field(0.1, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)


class FedAdamConfig(_AdaptiveConfig):
    name: Literal["fedadam"]
    beta2: float = Field(0.99, ge=0, lt=1)


class FedYogiConfig(_AdaptiveConfig):
    name: Literal["fedyogi"]
    beta2: float = Field(0.99, ge=0, lt=1)


OptimizerConfig = Annotated[
    FedAvgConfig | FedAvgMConfig | FedAdagradConfig | FedAdamConfig | FedYogiConfig,
    Field(discriminator="name"),
]


class ServerConfig(_Section):
    clients_per_round: int = Field(10, ge=1)
    optimizer: OptimizerConfig = FedAvgConfig()
    deadline_s: float | None = Field(None, gt=0, description="round deadline, virtual seconds")
    over_selection: float | Literal["auto"] = Field(
        1.0, description="dispatch this many times clients_per_round ('auto': 1 / reliability)"
    )
    quorum: int | None = Field(None, ge=1, description="fewest updates a round may aggregate")
    quorum_policy: Literal["skip", "retry"] = "skip"
    max_retries: int = Field(3, ge=0)
    accept_partial: bool = Field(
        False, description="stragglers train only the steps that fit the deadline"
    )
    max_examples_per_client: int | None = Field(
        None,
        ge=1,
        description="most examples one update may weigh in FedAvg (larger counts are clamped)",
    )

    @model_validator(mode="after")
    def _dropout_settings(self) -> ServerConfig:
        if isinstance(self.over_selection, float) and not 1.0 <= self.over_selection <= 10.0:
            raise ValueError(f"server.over_selection = {self.over_selection} is not in [1, 10]")
        if self.quorum is not None and self.quorum > self.clients_per_round:
            raise ValueError(
                f"server.quorum = {self.quorum} exceeds server.clients_per_round = "
                f"{self.clients_per_round}"
            )
        if self.accept_partial and self.deadline_s is None:
            raise ValueError("server.accept_partial = true needs server.deadline_s")
        return self


class SelectionConfig(_Section):
    """Which clients train each round (see fedloom.server.selection)."""

    strategy: Literal[
        "uniform", "availability", "data_quality", "reliability", "power_of_choice", "oort"
    ] = "uniform"
    max_share: float | None = Field(
        None, gt=0, le=1, description="fairness guard: cap on the share of rounds per client"
    )
    params: dict[str, float | int | bool] = Field(
        default_factory=dict, description="strategy parameters, e.g. exploration = 0.9"
    )


class PrivacyConfig(_Section):
    """User-level differential privacy (see fedloom.privacy; distributed: fedloom.secagg)."""

    mode: Literal["off", "central", "local", "distributed"] = Field(
        "off", description="distributed: clients add discrete Gaussian shares under secagg"
    )
    local_epsilon: float | None = Field(
        None, gt=0, description="local mode: each upload is (local_epsilon, delta)-LDP"
    )
    local_mechanism: Literal["gaussian", "laplace"] = Field(
        "gaussian", description="local mode: analytic Gaussian (L2 clip) or Laplace (L1 clip)"
    )
    clip_norm: float = Field(1.0, gt=0, description="L2 bound on each client's update")
    noise_multiplier: float | None = Field(
        None, ge=0, description="noise stddev / clip norm; or calibrate from target_epsilon"
    )
    target_epsilon: float | None = Field(None, gt=0, description="calibrate noise for the run")
    delta: float | None = Field(None, gt=0, lt=1, description="default: 1 / N^1.1")
    accountant: Literal["pld", "rdp"] = "pld"
    sampling: Literal["poisson", "fixed"] = Field(
        "poisson", description="client sampling; the accountant models the one used"
    )
    adaptive_clipping: bool = False
    target_quantile: float = Field(0.5, gt=0, lt=1)
    clip_learning_rate: float = Field(0.2, gt=0)
    count_stddev: float | None = Field(None, gt=0, description="default: clients_per_round / 20")
    budget_epsilon: float | None = Field(None, gt=0)
    budget_policy: Literal["refuse", "stop"] = Field(
        "refuse", description="refuse a run planned beyond budget, or stop when it is reached"
    )
    secure_noise: bool = Field(False, description="noise from the OS CSPRNG (slower)")
    audit_canaries: int = Field(
        0, ge=0, description="central mode: canary clients for a one-run empirical audit"
    )

    @model_validator(mode="after")
    def _noise_source(self) -> PrivacyConfig:
        if self.mode == "local":
            if self.local_epsilon is None:
                raise ValueError("privacy.mode = 'local' needs privacy.local_epsilon")
            if self.noise_multiplier is not None or self.target_epsilon is not None:
                raise ValueError(
                    "privacy.mode = 'local' calibrates noise from privacy.local_epsilon; drop "
                    "privacy.noise_multiplier and privacy.target_epsilon"
                )
            if self.local_mechanism == "laplace" and self.accountant != "pld":
                raise ValueError(
                    "privacy.local_mechanism = 'laplace' needs privacy.accountant = 'pld' "
                    "(RDP has no bound for subsampled Laplace)"
                )
        if self.mode in ("central", "distributed"):
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ValueError(
                    f"privacy.mode = {self.mode!r} needs exactly one of privacy.noise_multiplier "
                    "and privacy.target_epsilon"
                )
            if self.noise_multiplier == 0:
                raise ValueError("privacy.noise_multiplier = 0 gives no privacy; use mode = 'off'")
        if self.mode == "distributed":
            if self.accountant != "rdp":
                raise ValueError(
                    "privacy.mode = 'distributed' needs privacy.accountant = 'rdp' (the sum of "
                    "discrete Gaussians is accounted in Renyi DP)"
                )
            if self.sampling != "poisson" or self.adaptive_clipping:
                raise ValueError(
                    "privacy.mode = 'distributed' needs privacy.sampling = 'poisson' and a "
                    "fixed clip norm (privacy.adaptive_clipping = false)"
                )
        if self.audit_canaries and (self.mode != "central" or self.adaptive_clipping):
            raise ValueError(
                "privacy.audit_canaries needs privacy.mode = 'central' with a fixed clip norm"
            )
        return self


class SecAggConfig(_Section):
    """Secure aggregation of every round's updates: SecAgg+ (see fedloom.secagg)."""

    enabled: bool = False
    neighbours: Annotated[int, Field(ge=1)] | Literal["all"] | None = Field(
        None, description="SecAgg+ degree; none: 4 ceil(log2 n); 'all': complete graph (SecAgg)"
    )
    threshold: float = Field(
        0.5, gt=0, le=1, description="more than this share of a client's share holders survive"
    )
    min_clients: int = Field(
        2, ge=2, description="fewest inputs a secure sum may have; smaller rounds are skipped"
    )
    clip: float | None = Field(
        None, gt=0, description="per-coordinate range of the encoded update (none: see README)"
    )
    bits: Literal[16, 32, 64] = Field(32, description="ring Z_(2^bits) of the masked sums")
    rounding: Literal["nearest", "stochastic"] = Field(
        "nearest", description="fixed-point rounding; stochastic is unbiased"
    )
    signed: bool = Field(
        False, description="clients sign their advertised keys (against a malicious server)"
    )

    @model_validator(mode="after")
    def _threshold_majority(self) -> SecAggConfig:
        # t = floor(threshold * h) + 1 of a client's h share holders: with threshold < 0.5
        # two disjoint groups of t holders exist, and a server that tells one group the
        # client dropped and the other that it survived (nothing cross-checks this: the
        # consistency round is not implemented, signed keys or not) gets both its mask
        # key and its self-mask, so its input
        if self.threshold < 0.5:
            raise ValueError(
                f"secagg.threshold = {self.threshold} is below 0.5: a dishonest server could "
                "then collect both secrets of one client from two disjoint groups of its "
                "share holders and unmask its input (no consistency round cross-checks "
                "them); use 0.5 or more"
            )
        return self


class RegistryConfig(_Section):
    reliability_decay: float = Field(0.95, gt=0, le=1)
    duration_smoothing: float = Field(0.3, gt=0, le=1)


class DevicesConfig(_Section):
    """The simulated devices: identical, tiered, lognormal, or from a trace file."""

    kind: Literal["uniform", "tiered", "lognormal", "trace"] = "uniform"
    trace: Path | None = None
    availability: Literal["always", "diurnal"] = "always"
    compute_ms_per_sample: float = Field(5.0, gt=0, description="uniform; lognormal median")
    up_kbps: float = Field(10_000.0, gt=0, description="uniform; lognormal median")
    down_kbps: float = Field(50_000.0, gt=0, description="uniform; lognormal median")
    latency_ms: float = Field(50.0, ge=0)
    failure_prob: float = Field(0.0, ge=0, lt=1, description="uniform and lognormal")
    compute_scale: float = Field(1.0, gt=0, description="multiplies every compute time")
    # lognormal: exp(sigma * N(0, 1)) around the medians; p95 / median = exp(1.645 sigma)
    compute_sigma: float = Field(0.8, ge=0, le=5, description="lognormal compute spread")
    network_sigma: float = Field(1.0, ge=0, le=5, description="lognormal bandwidth spread")

    @model_validator(mode="after")
    def _trace_path(self) -> DevicesConfig:
        if (self.kind == "trace") != (self.trace is not None):
            raise ValueError("devices.trace is required with devices.kind = 'trace', and only then")
        return self


class LinkChangeConfig(_Section):
    """A bandwidth drop (``kind = "drop"``) or a flapping link (``kind = "flap"``)."""

    kind: Literal["drop", "flap"]
    clients: Literal["all"] | list[Annotated[int, Field(ge=0)]] = "all"
    time: float = Field(0.0, ge=0, description="drop: start; flap: first outage")
    until: float | None = Field(None, gt=0, description="drop: end (none = for good)")
    factor: float = Field(0.1, ge=0, description="drop: bandwidth multiplier")
    direction: Literal["both", "up", "down"] = "both"
    period: float = Field(60.0, gt=0, description="flap: seconds between outages")
    down_for: float = Field(10.0, gt=0, description="flap: outage length")
    count: int = Field(1, ge=0, description="flap: number of outages")


class NetworkConfig(_Section):
    changes: tuple[LinkChangeConfig, ...] = ()


class EvaluationConfig(_Section):
    every: int = Field(1, ge=1, description="centralized test-set evaluation every N rounds")
    federated_every: int = Field(0, ge=0, description="client hold-out evaluation (0 = off)")
    batch_size: int = Field(1024, ge=1)


class StoppingConfig(_Section):
    metric: str | None = Field(
        None, description="loss or a metric of the task (default: its first metric)"
    )
    target: float | None = None
    patience: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0)
    smoothing: float = Field(0.0, ge=0, lt=1)
    plateau_window: int | None = Field(None, ge=2)
    plateau_tolerance: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _target_in_range(self) -> StoppingConfig:
        if self.metric == "accuracy" and self.target is not None and not 0 < self.target <= 1:
            raise ValueError(f"stopping.target = {self.target} is not an accuracy in (0, 1]")
        return self


class SimulationConfig(_Section):
    executor: Literal["auto", "sequential", "vectorized"] = Field(
        "auto", description="auto: vectorized when the model allows it, else sequential"
    )
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|auto)$")
    memory_budget_mb: float = Field(512.0, gt=0, description="vectorized executor chunk budget")
    memory_limit_mb: float | None = Field(
        None, gt=0, description="refuse a run estimated to need more (none: available memory)"
    )
    server_chain: Literal["auto", "device", "host"] = Field(
        "auto",
        description="where a round's updates are validated, clipped and reduced: auto keeps "
        "them on the device the vectorized executor trains on when it is an accelerator, "
        "device also on the CPU, host always copies them to the host",
    )


class DistributedConfig(_Section):
    mode: Literal["allreduce", "gather"] = Field(
        "allreduce", description="how torchrun processes combine updates"
    )


class CheckpointConfig(_Section):
    every: int = Field(5, ge=0, description="checkpoint every N rounds (0 = only at the end)")
    keep: int = Field(3, ge=1)


class TransformSpec(BaseModel):
    """One transform of a chain: ``name`` (a registered name such as ``"clip_l2"``, or
    ``"package.module:attribute"``) and its parameters as the other keys, e.g.
    ``{ name = "clip_l2", clip_norm = 1.0 }``. Built once when the config loads, so an
    unknown name or a bad parameter is refused before any work starts."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _builds(self) -> TransformSpec:
        from fedloom.transforms.base import build

        try:
            build(self.name, self.params)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self


class TransformsConfig(_Section):
    """Update transforms (see docs/transforms.md): ``client`` runs on each client's update
    before upload (before local DP noise and secure encoding), ``server`` on the received
    rows before they are reduced (not under secure aggregation, which has no rows)."""

    client: tuple[TransformSpec, ...] = ()
    server: tuple[TransformSpec, ...] = ()

    def specs(self, side: Literal["client", "server"]) -> list[tuple[str, dict[str, Any]]]:
        """``(name, params)`` of one side's chain, as ``transforms.build_chain`` takes."""
        return [(t.name, t.params) for t in getattr(self, side)]

    def two_sided(self) -> list[str]:
        """The client transforms with a server half (decoded by the server on receipt)."""
        from fedloom.transforms.base import TwoSided, build

        return [t.name for t in self.client if isinstance(build(t.name, t.params), TwoSided)]

    @model_validator(mode="after")
    def _server_one_sided(self) -> TransformsConfig:
        from fedloom.transforms.base import TwoSided, build

        for t in self.server:
            if isinstance(build(t.name, t.params), TwoSided):
                raise ValueError(
                    f"transforms.server: {t.name!r} is two-sided; list it under "
                    "transforms.client (its server half runs on receipt)"
                )
        return self


class CompressionConfig(_Section):
    """Compressed communication (docs/compression.md): ``codec`` encodes every upload
    (``params`` are its constructor's: bits, fraction, levels, rank, bucket, rotate, ...),
    with per-client ``error_feedback`` residuals and DGC's sparsity warm-up over the first
    ``warmup_rounds``; ``adaptive`` picks each client's setting per round from its
    bandwidth and the deadline (the upload may take ``margin`` of the time left);
    ``download`` encodes the model each client downloads as the delta from the model
    it holds (``"none"``: the float32 model)."""

    codec: str = "none"
    params: dict[str, Any] = {}
    error_feedback: bool = False
    warmup_rounds: int = Field(0, ge=0)
    adaptive: bool = False
    margin: float = Field(0.8, gt=0, le=1)
    download: str = "none"
    download_params: dict[str, Any] = {}

    @property
    def enabled(self) -> bool:
        return self.codec != "none"

    @model_validator(mode="after")
    def _known(self) -> CompressionConfig:
        from fedloom.compression.codec import codec_names, make_codec

        for field, name, params in (
            ("codec", self.codec, self.params),
            ("download", self.download, self.download_params),
        ):
            if name == "none":
                if params:
                    raise ValueError(f"compression.{field} = 'none' takes no parameters")
                continue
            if name not in codec_names():
                raise ValueError(
                    f"compression.{field} = {name!r}: expected 'none' or one of {codec_names()}"
                )
            try:
                make_codec(name, params, shapes=[(1,)])
            except ConfigError as err:
                raise ValueError(f"compression.{field}: {err}") from None
        if not self.enabled and (self.error_feedback or self.adaptive or self.warmup_rounds):
            raise ValueError(
                "compression.error_feedback, adaptive and warmup_rounds need a "
                "compression.codec (it is 'none')"
            )
        return self


class AsyncConfig(_Section):
    """Asynchronous training (docs/async.md): ``mode`` ``"fedbuff"`` (clients train
    concurrently, the server steps once ``buffer_size`` updates arrived) or ``"fedasync"``
    (every update is mixed into the model on arrival with weight ``mixing * w(s)``);
    ``run.rounds`` then counts server steps. An update staler than ``max_staleness``
    versions is dropped. ``concurrency`` caps the clients training at once; the scheduler
    lowers it to keep the buffer filling at ``target_rate`` updates per second and within
    the server's uplink ``server_uplink_kbps`` (shared by concurrent downloads); a client
    that fails, or whose update came too stale, waits ``backoff_s`` (doubling up to
    ``max_backoff_s``) before it gets work again. ``max_contributions``: the most server
    steps one client's updates may enter (required under differential privacy: the
    per-client guarantee composes that many releases)."""

    mode: Literal["off", "fedbuff", "fedasync"] = "off"
    concurrency: int = Field(20, ge=1, description="most clients training at once")
    buffer_size: int = Field(10, ge=1, description="FedBuff's K (fedasync: 1)")
    staleness: Literal["constant", "polynomial", "hinge"] = "polynomial"
    staleness_a: float = Field(0.5, ge=0, description="polynomial and hinge decay")
    staleness_b: float = Field(4.0, ge=0, description="hinge: staleness with full weight")
    max_staleness: int = Field(20, ge=0, description="staler updates are dropped")
    mixing: float = Field(0.6, gt=0, le=1, description="fedasync: the mixing weight alpha")
    target_rate: float | None = Field(None, gt=0, description="buffer fill, updates / second")
    server_uplink_kbps: float | None = Field(None, gt=0, description="download budget")
    backoff_s: float = Field(30.0, ge=0, description="first back-off of a failing client")
    max_backoff_s: float = Field(600.0, ge=0)
    max_contributions: int | None = Field(None, ge=1, description="server steps per client")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def buffer(self) -> int:
        """Updates per server step (FedAsync steps on every one)."""
        return 1 if self.mode == "fedasync" else self.buffer_size


ROBUST_RULES = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clip",
    "norm_bound",
    "fltrust",
    "fednova",
)


class AggregationConfig(_Section):
    """The reduce step of the server chain (docs/robustness.md): ``rule`` turns the
    round's rows into one update. ``mean`` is FedAvg's example-weighted mean; the robust
    rules count each client once, so a claimed example count buys no influence.
    ``params`` are the rule's (e.g. ``beta`` for trimmed_mean, ``f`` for krum and bulyan,
    ``tau`` and ``iters`` for centered_clip, ``max_norm`` for norm_bound), checked when
    the config loads. ``bucketing`` (s >= 2) first averages random buckets of s rows
    (Karimireddy et al., ICLR 2022). ``root_examples``: FLTrust's clean root dataset,
    sampled from the training data in simulation. ``fednova`` is not a robust rule but
    FedNova's normalized averaging (Wang et al., NeurIPS 2020): each update divided by its
    client's count of local steps, so unequal local work does not bias the objective."""

    rule: Literal[ROBUST_RULES] = "mean"  # type: ignore[valid-type]
    params: dict[str, float | int] = {}
    bucketing: int = Field(0, ge=0, description="bucket size s (0 or 1: off)")
    root_examples: int = Field(100, ge=1, description="fltrust: the server's root dataset")

    @property
    def robust(self) -> bool:
        """Whether the rule needs the individual rows (everything but the mean)."""
        return self.rule != "mean" or self.bucketing >= 2


class AnomalyConfig(_Section):
    """Per-round outlier scores of each update (norm, cosine to the robust centre,
    distance from the client's own history) and a reputation per client across rounds
    (docs/robustness.md). An update whose score exceeds ``threshold`` (a robust z-score;
    3.5 is Iglewicz and Hoaglin's cut-off for modified z-scores) is flagged and, with
    ``exclude_flagged``, left out of the round's aggregate. Each flag lowers the client's
    reputation (an exponential average with ``reputation_decay`` of 1 for a clean round
    and 0 for a flagged or clamped one); below ``quarantine_below`` it is quarantined (not
    selected) for ``probation_rounds`` rounds, then admitted on probation."""

    enabled: bool = False
    threshold: float = Field(3.5, gt=0, description="robust z-score that flags an update")
    exclude_flagged: bool = True
    history_smoothing: float = Field(
        1.0,
        gt=0,
        le=1,
        description="weight of the newest update in a client's history "
        "(1: its last accepted update)",
    )
    reputation_decay: float = Field(0.7, gt=0, lt=1)
    quarantine_below: float = Field(0.4, ge=0, lt=1)
    probation_rounds: int = Field(5, ge=1)


ATTACKS = (
    "none",
    "sign_flip",
    "scaling",
    "gaussian",
    "label_flip",
    "alie",
    "ipm",
    "min_max",
    "min_sum",
    "backdoor",
)


class AttackConfig(_Section):
    """Simulated Byzantine clients (docs/robustness.md): ``clients`` is a fraction of
    the population (drawn with the run's seed) or a list of client ids; from
    ``start_round`` on they send what ``kind`` crafts instead of their honest update
    (``label_flip`` and ``backdoor`` poison their data). ``params`` are the attack's
    (e.g. ``factor`` for scaling, ``z`` for ALIE, ``epsilon`` for IPM)."""

    kind: Literal[ATTACKS] = "none"  # type: ignore[valid-type]
    clients: float | list[Annotated[int, Field(ge=0)]] = Field(
        0.2, description="fraction of clients in (0, 1), or client ids"
    )
    params: dict[str, float | int | str] = {}
    start_round: int = Field(1, ge=1)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @model_validator(mode="after")
    def _clients(self) -> AttackConfig:
        c = self.clients
        if isinstance(c, float) and not 0.0 < c < 1.0:
            raise ValueError(f"attack.clients = {c!r}: a fraction must be in (0, 1)")
        if isinstance(c, list) and len(set(c)) != len(c):
            raise ValueError(f"attack.clients = {c!r} lists a client twice")
        return self


class EdgeConfig(_Section):
    """Local work fitted to each device (docs/edge.md). ``local_work = "adaptive"``
    sizes each client's local steps from its speed (profiled in simulation, measured over
    gRPC) so that its update arrives before ``server.deadline_s``; ``memory_aware_batch``
    caps each client's batch at what its memory holds (a device that cannot hold the model
    at batch 1 is never selected); ``precision = "auto"`` trains in bf16 or fp16 where
    the device's profile has it; ``qat`` trains with int8 fake quantization.
    ``profile`` is the simulated devices' profile when they have no tier (uniform,
    lognormal, trace); tiered devices use their tier's."""

    local_work: Literal["fixed", "adaptive"] = "fixed"
    min_steps: int = Field(1, ge=1, description="adaptive: fewest local steps worth training")
    memory_aware_batch: bool = True
    precision: Literal["fp32", "auto"] = "fp32"
    qat: bool = False
    profile: str = Field("x86_server", description="built-in profile of untiered devices")
    loss_samples: int = Field(
        4, ge=0, le=64, description="progress monitoring: sampled batch losses per client"
    )

    @model_validator(mode="after")
    def _known_profile(self) -> EdgeConfig:
        from fedloom.edge.profiles import BUILTIN_PROFILES

        if self.profile not in BUILTIN_PROFILES:
            raise ValueError(
                f"edge.profile = {self.profile!r}: expected one of {', '.join(BUILTIN_PROFILES)}"
            )
        return self


class TrackingConfig(_Section):
    """Experiment tracking (``fedloom.tracking``, docs/tracking.md): every recorded round's
    metrics, the resolved config and the run's summary, sent to each backend as the run
    goes. ``backends = []`` (the default) tracks nothing. TensorBoard writes event files
    under ``<run>/tensorboard``; MLflow logs to ``mlflow_uri`` (default: an SQLite store in
    the run directory, ``sqlite:///<run>/mlflow.db``); W&B needs the ``wandb`` package."""

    backends: tuple[Literal["tensorboard", "mlflow", "wandb"], ...] = ()
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (default: sqlite:///<run>/mlflow.db)"
    )
    mlflow_experiment: str | None = Field(
        None, min_length=1, description="MLflow experiment (default: the run's name)"
    )
    wandb_project: str | None = Field(
        None, min_length=1, description="W&B project (default: the run's name)"
    )
    wandb_mode: Literal["online", "offline"] = Field(
        "offline", description="W&B: offline keeps the run on disk (wandb sync uploads it)"
    )

    @model_validator(mode="after")
    def _each_backend_once(self) -> TrackingConfig:
        twice = sorted({b for b in self.backends if self.backends.count(b) > 1})
        if twice:
            raise ValueError(f"tracking.backends lists {', '.join(twice)} more than once")
        if self.mlflow_uri is not None and not self.mlflow_uri.strip():
            raise ValueError("tracking.mlflow_uri is empty: leave it out for the run's own store")
        return self


class RunConfig(_Section):
    """The whole experiment."""

    name: str = Field("digits-fedavg", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    seed: int = Field(0, ge=0, le=2**63 - 1, description="a signed 64-bit integer")
    rounds: int = Field(50, ge=1)
    output_dir: Path = Path("runs")
    threads: int = Field(1, ge=0, description="torch threads (0 = torch's default)")
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    model: ModelConfig = ModelConfig()
    client: ClientConfig = ClientConfig()
    server: ServerConfig = ServerConfig()
    selection: SelectionConfig = SelectionConfig()
    registry: RegistryConfig = RegistryConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    secagg: SecAggConfig = SecAggConfig()
    devices: DevicesConfig = DevicesConfig()
    network: NetworkConfig = NetworkConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    stopping: StoppingConfig = StoppingConfig()
    simulation: SimulationConfig = SimulationConfig()
    distributed: DistributedConfig = DistributedConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    transforms: TransformsConfig = TransformsConfig()
    compression: CompressionConfig = CompressionConfig()
    asynchronous: AsyncConfig = AsyncConfig()
    aggregation: AggregationConfig = AggregationConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    attack: AttackConfig = AttackConfig()
    edge: EdgeConfig = EdgeConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _leaf_users_are_clients(cls, values: Any) -> Any:
        """A LEAF source's clients are its users unless the partition says otherwise:
        partition.method defaults to 'natural' and partition.num_clients to 0 (all)."""
        if not isinstance(values, dict):
            return values
        data, part = values.get("data"), values.get("partition", {})
        source = data.get("source") if isinstance(data, dict) else getattr(data, "source", None)
        if source not in LEAF_SOURCES or not isinstance(part, dict) or "method" in part:
            return values
        return {**values, "partition": {"method": "natural", "num_clients": 0, **part}}

    @model_validator(mode="after")
    def _cohort_fits(self) -> RunConfig:
        if self.partition.method == "natural" and not (
            self.data.source in ("synthetic", *LEAF_SOURCES) or self.data.group_column is not None
        ):
            raise ValueError(
                "partition.method = 'natural' needs per-sample client ids: data.source = "
                "'synthetic', 'femnist' or 'shakespeare', or data.group_column"
            )
        if self.secagg.enabled and self.secagg.min_clients > self.server.clients_per_round:
            raise ValueError(
                f"secagg.min_clients = {self.secagg.min_clients} exceeds "
                f"server.clients_per_round = {self.server.clients_per_round}: every round "
                "would be skipped"
            )
        if self.privacy.mode == "distributed":
            if not self.secagg.enabled:
                raise ValueError(
                    "privacy.mode = 'distributed' needs secagg.enabled = true: the clients' "
                    "noise shares only protect them inside a secure sum"
                )
            if self.secagg.bits == 64:
                raise ValueError(
                    "privacy.mode = 'distributed' needs secagg.bits = 16 or 32 (a 64-bit grid "
                    "is finer than float64 can represent)"
                )
        if self.privacy.mode != "off":
            if self.selection.strategy != "uniform":
                raise ValueError(
                    f"privacy.mode = {self.privacy.mode!r} needs selection.strategy = 'uniform': "
                    "the accountant assumes uniform client sampling, not "
                    f"{self.selection.strategy!r}"
                )
            if self.server.over_selection != 1.0:
                raise ValueError(
                    "differential privacy needs server.over_selection = 1: the sampling "
                    "rate the accountant uses is clients_per_round / num_clients"
                )
        if self.secagg.enabled and self.transforms.server:
            raise ValueError(
                "transforms.server needs the clients' rows; under secagg.enabled = true the "
                "server sees only their sum (use client transforms)"
            )
        if self.secagg.enabled and (two := self.transforms.two_sided()):
            raise ValueError(
                f"transforms.client {two} have a server half that decodes each update; under "
                "secagg.enabled = true the server sees only the sum"
            )
        self._compression_composes()
        self._asynchronous_composes()
        self._robustness_composes()
        self._edge_composes()
        n = self.partition.num_clients
        k = self.server.clients_per_round
        if n and k > n:
            raise ValueError(f"server.clients_per_round = {k} exceeds partition.num_clients = {n}")
        return self

    def _asynchronous_composes(self) -> None:
        """What asynchronous mode runs with (docs/async.md): compression, central and
        local DP (with a per-client contribution bound), server transforms and any
        selector; not secure aggregation (no cohort to mask within), distributed DP,
        round-based settings or DP's sampling-based features."""
        a = self.asynchronous
        if not a.enabled:
            return
        mode = f"asynchronous.mode = {a.mode!r}"
        refused = [
            (
                self.secagg.enabled,
                "secagg.enabled = true (secure aggregation over "
                "asynchronous buffers, as in LightSecAgg, is not implemented)",
            ),
            (self.server.quorum is not None, "server.quorum (every step has its buffer)"),
            (self.server.over_selection != 1.0, "server.over_selection (no cohorts)"),
            (self.server.accept_partial, "server.accept_partial"),
            (
                self.compression.download != "none",
                "compression.download (clients of different versions download different deltas)",
            ),
            (
                self.compression.adaptive,
                "compression.adaptive (it plans a round's length "
                "against its deadline; asynchronous tasks have no rounds)",
            ),
            (self.privacy.adaptive_clipping, "privacy.adaptive_clipping"),
            (self.privacy.audit_canaries > 0, "privacy.audit_canaries"),
            (self.transforms.two_sided() != [], "two-sided client transforms"),
        ]
        for bad, what in refused:
            if bad:
                raise ValueError(f"{mode} does not run with {what}")
        if self.privacy.mode != "off" and a.max_contributions is None:
            raise ValueError(
                f"{mode} with privacy.mode = {self.privacy.mode!r} needs "
                "asynchronous.max_contributions: without sampling, each client's guarantee "
                "composes the releases it contributed to, which must be bounded"
            )
        n = self.partition.num_clients
        if n and a.buffer > n:
            raise ValueError(
                f"asynchronous.buffer_size = {a.buffer} exceeds partition.num_clients = {n}"
            )

    def client_transform_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """The clients' transform chain: ``[transforms] client``, then, when secure
        aggregation hides the rows and ``aggregation.rule = 'norm_bound'``, the L2 clip
        each client applies before masking (the server can only average the sum)."""
        specs = self.transforms.specs("client")
        if self.secagg.enabled and self.aggregation.rule == "norm_bound":
            from fedloom.aggregation.robust import build_reducer

            bound = build_reducer("norm_bound", self.aggregation.params).max_norm
            specs = [*specs, ("clip_l2", {"clip_norm": bound})]
        return specs

    @property
    def shard_mode(self) -> Literal["allreduce", "gather"]:
        """How torchrun processes combine a round: ``distributed.mode``, or ``gather``
        when a robust rule or anomaly screening needs every row in each process."""
        rows = (self.aggregation.robust and not self.secagg.enabled) or self.anomaly.enabled
        return "gather" if rows else self.distributed.mode

    def _robustness_composes(self) -> None:
        """Robust rules and anomaly scores need each client's row: not under secure
        aggregation (except norm bounding, which each client applies before masking) nor
        central DP (its noise is sized for a clipped sum). Their parameters are checked
        against the rows a round or buffer holds."""
        agg = self.aggregation
        from fedloom.aggregation.robust import build_reducer

        if self.asynchronous.enabled:
            rows, field = self.asynchronous.buffer, "asynchronous.buffer_size"
        else:
            rows, field = self.server.clients_per_round, "server.clients_per_round"
        if not self.secagg.enabled:  # under secure aggregation the clients clip
            build_reducer(agg.rule, agg.params, agg.bucketing, rows=rows, rows_field=field)
        rowwise = agg.robust and agg.rule != "norm_bound"
        if self.secagg.enabled and (rowwise or self.anomaly.enabled):
            what = f"aggregation.rule = {agg.rule!r}" if rowwise else "anomaly.enabled = true"
            if rowwise and agg.bucketing >= 2:
                what += f" with aggregation.bucketing = {agg.bucketing}"
            raise ValueError(
                f"{what} needs each client's update; secagg.enabled = true gives the server "
                "only their sum (aggregation.rule = 'norm_bound' is applied by each client "
                "before masking)"
            )
        if self.anomaly.enabled and rows < 3:
            raise ValueError(
                f"anomaly.enabled = true scores an update against the others of its round; "
                f"{field} = {rows} leaves fewer than 3 to compare"
            )
        if self.privacy.mode == "central" and (agg.robust or self.anomaly.enabled):
            what = f"aggregation.rule = {agg.rule!r}" if agg.robust else "anomaly.enabled"
            raise ValueError(
                f"{what} with privacy.mode = 'central': the noise is sized for the sum of "
                "clipped updates, not for a robust statistic or a screened cohort"
            )
        if self.attack.enabled:  # its params are checked when the run is built
            ids = self.attack.clients
            n = self.partition.num_clients
            if isinstance(ids, list) and n and max(ids, default=-1) >= n:
                raise ValueError(
                    f"attack.clients = {ids!r} names a client >= partition.num_clients = {n}"
                )

    def _edge_composes(self) -> None:
        """Adaptive local work plans against a round deadline; FedNova's normalization
        is defined for SGD (with heavy-ball momentum or a proximal term, not both)."""
        e = self.edge
        if e.local_work == "adaptive":
            if self.asynchronous.enabled:
                raise ValueError(
                    "edge.local_work = 'adaptive' sizes work to a round's deadline; "
                    f"asynchronous.mode = {self.asynchronous.mode!r} has no rounds"
                )
            if self.server.deadline_s is None:
                raise ValueError("edge.local_work = 'adaptive' needs server.deadline_s")
        if self.aggregation.rule == "fednova":
            c = self.client
            if c.optimizer != "sgd" or c.nesterov:
                what = f"client.optimizer = {c.optimizer!r}"
                if c.nesterov:
                    what = "client.nesterov = true"
                raise ValueError(
                    f"aggregation.rule = 'fednova' with {what}: its normalization is "
                    "derived for SGD with heavy-ball momentum or a proximal term"
                )
            if c.momentum and c.prox_mu:
                raise ValueError(
                    "aggregation.rule = 'fednova' with both client.momentum and "
                    "client.prox_mu: the normalization covers one of them at a time"
                )

    def _compression_composes(self) -> None:
        """Compression composes with central DP (the server decodes, clips and noises) and
        local DP (clip, noise, then compress); with secure aggregation the server holds
        only the sum, which no per-client codec can decode."""
        c = self.compression
        shared = c.codec == "randomk" and c.params.get("shared_seed") is not None
        if c.enabled and self.secagg.enabled and not shared:
            raise ValueError(
                f"compression.codec = {c.codec!r} with secagg.enabled = true: the server "
                "sees only the masked sum, which only a linear codec survives: "
                "compression.codec = 'randomk' with params.shared_seed (secure "
                "aggregation's own fixed-point ring is its shared-scale quantizer: "
                "secagg.bits = 16 halves a float32 upload)"
            )
        if shared and not self.secagg.enabled:
            raise ValueError(
                "compression.params.shared_seed is for secagg.enabled = true (every client "
                "sends the same coordinates); without secure aggregation leave it out"
            )
        if shared and (self.privacy.mode != "off" or c.error_feedback or c.adaptive):
            raise ValueError(
                "compression.codec = 'randomk' under secure aggregation runs without "
                f"privacy.mode (got {self.privacy.mode!r}), error_feedback and adaptive: "
                "the kept sums are scaled by d / k, which the DP noise is not sized for"
            )
        if c.adaptive and self.server.deadline_s is None:
            raise ValueError(
                "compression.adaptive = true needs server.deadline_s: the setting is chosen "
                "so that the upload fits before the deadline"
            )


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown setting"
        value = e.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        lines.append(f"  {loc or '<root>'}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a config dictionary; raise ``ConfigError`` naming each bad field."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as TOML, else strings)."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ConfigError(
                f"--set {item!r}: expected key=value, e.g. server.clients_per_round=20"
            )
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[leaf] = _parse_value(raw.strip())
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_toml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as err:
        # RecursionError: arrays nested deeper than the parser can follow
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None


# settings that name input files: relative paths in a config file are relative to that file
_INPUT_PATHS = (("data", "path"), ("devices", "trace"))


def _anchor_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = _deep_copy(data)
    for section, key in _INPUT_PATHS:
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            out[section][key] = str((base / value).resolve())
    return out


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The built-in default, or a TOML file, with ``--set`` overrides applied.

    Input file paths (``data.path``, ``devices.trace``) become absolute: relative to the
    config file's folder when written in it, to the working directory when given with
    ``--set``. The resolved config, saved in the run directory, then works from anywhere.
    """
    data = _anchor_paths(read_toml(path), Path(path).parent) if path is not None else {}
    source = str(path) if path is not None else "built-in default"
    data = _anchor_paths(apply_overrides(data, overrides or []), Path.cwd())
    return parse_config(data, source)


def to_toml(config: RunConfig) -> str:
    """Serialize a resolved config to TOML (round-trips through ``load_config``: tomli-w
    quotes keys with spaces and escapes any string, which a run's resume depends on)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
