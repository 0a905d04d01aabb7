"""The schema of ``metrics.jsonl``: one model per event kind, the same for every runtime.

Each line of a run's ``metrics.jsonl`` is one record whose ``event`` names its kind
(``start``, ``resume``, ``round``, ``interrupt``, ``stop``, ``audit``). The simulator and
the gRPC deployment write them through the same round engine, and :func:`validate`
holds both to these models: a field a runtime adds must be declared here (unknown keys
are refused), and fields only one runtime can measure are optional and say so. A round
record's ``secagg`` part has the same keys in both runtimes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from fedloom.errors import FedloomError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Record(_Strict):
    round: int = Field(ge=0)


class _Evaluated(BaseModel):
    """The global model's metrics, when it was evaluated (``evaluation.every``): ``loss``
    and every metric the task reports, by the task's names (a classifier's ``accuracy``,
    a regression's ``mse`` and ``mae``); on the clients' hold-outs the same with a
    ``fed_`` prefix, the 10th (maximized) or 90th (minimized) percentile client's first
    metric and ``fed_clients``. The task's metric names are extra fields here, checked
    against the names the start record's ``task`` lists (:func:`validate`)."""

    model_config = ConfigDict(extra="allow")

    loss: float | None = None
    fed_loss: float | None = None
    fed_clients: int | None = None

    @model_validator(mode="after")
    def _metric_values(self) -> _Evaluated:
        for name, value in (self.model_extra or {}).items():
            if not _METRIC.fullmatch(name):
                raise ValueError(f"unknown field {name!r}")
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"metric {name!r} = {value!r} is not a number")
        return self


_METRIC = re.compile(r"(fed_)?[A-Za-z_]\w*")


class TaskRecord(_Strict):
    """What the run learns: the task, its loss and metrics (those higher-is-better in
    ``maximize``) and the size of its model."""

    name: str
    reference: str | None
    targets: Literal["classes", "tokens", "values"]
    loss: str
    metrics: list[str]
    maximize: list[str]
    input_shape: list[int]
    num_classes: int | None
    outputs: int
    parameters: int
    flops: int
    activation_bytes: int


Source = Literal["os", "seed", "none"]


class Randomness(_Strict):
    runtime: Literal["simulation", "deployment"]
    selection: Literal["os", "seed"]
    dp_noise: Source
    dp_sgd_noise: Source


class StartRecord(_Evaluated, _Record):
    model_config = ConfigDict(extra="allow")  # the task's metrics (_Evaluated)
    event: Literal["start"]
    clients: int
    params: int
    executor: str
    executor_note: str
    processes: int
    randomness: Randomness
    task: TaskRecord | None = None
    dp_sgd_epsilon: float | None
    evaluation: str | None = None  # a deployment: what its rounds are evaluated on


class ResumeRecord(_Record):
    event: Literal["resume"]
    checkpoint: str
    randomness: Randomness
    config_changes: dict[str, list[Any]] | None = None
    damaged_checkpoints: list[str] | None = None
    registry: str | None = None
    damaged_records: str | None = None


class SecAggRecord(_Strict):
    """A round's secure aggregation. Both runtimes: who is in the sum, the graph, who
    dropped at which stage, the server's seconds and the bytes of one masked input against
    a plain float32 upload. Only the simulator, which plays every client, measures the
    clients' seconds and all their protocol bytes (``client_s``, ``upload_bytes``,
    ``download_bytes``). A round skipped before the protocol has only ``included``,
    ``cohort`` and ``aborted``."""

    included: int
    cohort: int
    neighbours: int | None = None
    threshold: int | None = None
    dropped: dict[str, int] | None = None
    server_s: float | None = None
    masked_input_bytes: int | None = None
    plain_upload_bytes: int | None = None
    client_s: float | None = None
    upload_bytes: int | None = None
    download_bytes: int | None = None
    aborted: str | None = None


class CompressionRecord(_Strict):
    """A round's compressed uploads (both runtimes): the codec, the bytes of the accepted
    payloads against float32 rows (``ratio`` = float32 bytes / payload bytes), the setting
    each client encoded with (client id -> bits, kept fraction, levels or rank), and the
    model download's mode and bytes against a float32 model."""

    codec: str
    payloads: int
    payload_bytes: int
    raw_bytes: int
    ratio: float
    settings: dict[str, float]
    download: str | None = None
    download_ratio: float | None = None


class FlaggedUpdate(_Strict):
    client: int
    reason: str
    score: float | None
    z: dict[str, float | None]


class AnomalyRecord(_Strict):
    """A round's anomaly screening (``[anomaly]``): the rows scored, the threshold, the
    flagged clients with their robust z-scores, the round's median raw scores."""

    round: int
    screened: int
    threshold: float
    flagged: list[FlaggedUpdate]
    median: dict[str, float | None]
    max_score: float | None


class ReputationDecision(_Strict):
    """A reputation decision: ``flag``, ``quarantine``, ``requarantine`` or ``release``."""

    round: int
    client: int
    action: Literal["flag", "quarantine", "requarantine", "release"]
    reason: str
    reputation: float | None
    until: int
    z: dict[str, float | None] | None = None


class Exclusion(_Strict):
    client: int
    outcome: Literal["rejected", "failed"]
    kind: str
    detail: str


class RoundRecord(_Evaluated, _Record):
    """One round attempt (retries included). ``round``: the model version it produced or
    would have produced; ``attempt``: the registry's round counter."""

    model_config = ConfigDict(extra="allow")  # the task's metrics (_Evaluated)

    event: Literal["round"]
    status: Literal["aggregated", "empty", "skipped", "retry"]
    selected: int
    completed: int
    failed: int
    rejected: int
    excluded: list[Exclusion] = []
    num_examples: int
    train_loss: float | None
    update_norm: float | None
    wall_s: float
    skip_reason: str | None = None
    clamped_examples: dict[str, list[int]] | None = None
    # the privacy ledger (DP runs)
    epsilon: float | None = None
    model_epsilon: float | None = None
    replayed: str | None = None
    clip_norm: float | None = None
    quorum_count: float | None = None
    # what the runtime saw
    attempt: int
    dispatched: int
    withheld: str | None = None
    secagg: SecAggRecord | None = None
    dropped: dict[str, int] | None = None  # failure reason -> clients (surplus excluded)
    surplus: int | None = None
    rejections: dict[str, int] | None = None  # refused updates by kind
    # simulator only: the virtual timeline
    virtual_time: float | None = None
    round_virtual_s: float | None = None
    events: int | None = None
    partial: int | None = None
    # where the server chain reduced the round's updates: the device they stayed on, or
    # "host: <reason>" (simulation.server_chain; absent when they went to the host as set)
    server_chain: str | None = None
    # progress monitoring: the delivering clients' sampled batch losses, averaged at
    # each evenly spaced point of their local training (first to last step)
    local_loss: list[float] | None = None
    compression: CompressionRecord | None = None
    # Byzantine robustness: the round's screening and reputation decisions
    anomaly: AnomalyRecord | None = None
    reputation: list[ReputationDecision] | None = None
    # asynchronous steps (both runtimes): contributors per staleness value, updates
    # dropped as too stale since the last step, whose updates the step holds, work out
    staleness: dict[str, int] | None = None
    dropped_stale: int | None = None
    contributors: list[int] | None = None
    in_flight: int | None = None
    concurrency: int | None = None
    # the bytes the clients uploaded and downloaded this round (both runtimes; in a
    # deployment as the transport counted them, in the simulator the encoded payloads)
    bytes_up: int | None = None
    bytes_down: int | None = None
    # deployment only: the network
    refused_messages: dict[str, int] | None = None
    refused_in_round: dict[str, int] | None = None


class InterruptRecord(_Record):
    event: Literal["interrupt"]
    signal: str


class StopRecord(_Record):
    event: Literal["stop"]
    reason: str
    detail: str
    stop_round: int


class AuditRecord(_Record):
    event: Literal["audit"]
    epsilon_lower: float
    delta: float
    accountant_epsilon: float
    confidence: float
    canaries: int
    guesses: int
    correct: int


Record = Annotated[
    StartRecord | ResumeRecord | RoundRecord | InterruptRecord | StopRecord | AuditRecord,
    Field(discriminator="event"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Record)


class RecordError(FedloomError):
    """A ``metrics.jsonl`` record that does not fit the schema."""


def parse(record: dict[str, Any]) -> BaseModel:
    """``record`` as its typed model; ``RecordError`` names the event, round and field."""
    try:
        return _ADAPTER.validate_python(record)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecordError(
            f"metrics record {record.get('event')!r} of round {record.get('round')!r}: "
            f"{where}: {first['msg']}"
        ) from None


def validate(records: list[dict[str, Any]]) -> list[BaseModel]:
    """Every record of a run, typed (raises on the first that does not fit); the metrics
    of evaluated records must be the ones the start record's task names."""
    typed = [parse(r) for r in records]
    start = next((t for t in typed if isinstance(t, StartRecord)), None)
    names = ["accuracy"] if start is None or start.task is None else start.task.metrics
    primary = names[0] if names else "loss"
    allowed = {*names, *(f"fed_{n}" for n in names), f"fed_{primary}_p10", f"fed_{primary}_p90"}
    for record, t in zip(records, typed, strict=True):
        for name in (t.model_extra or {}) if isinstance(t, _Evaluated) else ():
            if name not in allowed:
                raise RecordError(
                    f"metrics record {record.get('event')!r} of round {record.get('round')!r}: "
                    f"{name!r} is not a metric of the run's task ({', '.join(names)})"
                )
    return typed
