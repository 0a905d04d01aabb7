from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("num_examples", "device", "holdout_examples", "label_counts")
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    num_examples: int
    device: str
    holdout_examples: int
    label_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(
        self,
        num_examples: int | None = ...,
        device: str | None = ...,
        holdout_examples: int | None = ...,
        label_counts: _Iterable[int] | None = ...,
    ) -> None: ...

class JoinReply(_message.Message):
    __slots__ = (
        "client_id",
        "dim",
        "run",
        "heartbeat_s",
        "chunk_bytes",
        "version",
        "model",
        "client_transforms",
        "compression",
    )
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    dim: int
    run: str
    heartbeat_s: float
    chunk_bytes: int
    version: int
    model: ModelSpec
    client_transforms: _containers.RepeatedCompositeFieldContainer[TransformSpec]
    compression: CompressionSpec
    def __init__(
        self,
        client_id: int | None = ...,
        dim: int | None = ...,
        run: str | None = ...,
        heartbeat_s: float | None = ...,
        chunk_bytes: int | None = ...,
        version: int | None = ...,
        model: ModelSpec | _Mapping | None = ...,
        client_transforms: _Iterable[TransformSpec | _Mapping] | None = ...,
        compression: CompressionSpec | _Mapping | None = ...,
    ) -> None: ...

class CompressionSpec(_message.Message):
    __slots__ = ("codec", "params_json", "error_feedback", "warmup_rounds")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    WARMUP_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    codec: str
    params_json: str
    error_feedback: bool
    warmup_rounds: int
    def __init__(
        self,
        codec: str | None = ...,
        params_json: str | None = ...,
        error_feedback: bool | None = ...,
        warmup_rounds: int | None = ...,
    ) -> None: ...

class TransformSpec(_message.Message):
    __slots__ = ("name", "params_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    params_json: str
    def __init__(self, name: str | None = ..., params_json: str | None = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = (
        "kind",
        "hidden",
        "num_features",
        "num_classes",
        "seed",
        "input_shape",
        "targets",
        "norm",
        "options_json",
    )
    KIND_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    NUM_FEATURES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    hidden: _containers.RepeatedScalarFieldContainer[int]
    num_features: int
    num_classes: int
    seed: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    targets: str
    norm: str
    options_json: str
    def __init__(
        self,
        kind: str | None = ...,
        hidden: _Iterable[int] | None = ...,
        num_features: int | None = ...,
        num_classes: int | None = ...,
        seed: int | None = ...,
        input_shape: _Iterable[int] | None = ...,
        targets: str | None = ...,
        norm: str | None = ...,
        options_json: str | None = ...,
    ) -> None: ...

class TrainPlan(_message.Message):
    __slots__ = (
        "local_epochs",
        "local_steps",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "prox_mu",
        "dp_sgd_clip",
        "dp_sgd_noise",
    )
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    PROX_MU_FIELD_NUMBER: _ClassVar[int]
    DP_SGD_CLIP_FIELD_NUMBER: _ClassVar[int]
    DP_SGD_NOISE_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    local_steps: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    prox_mu: float
    dp_sgd_clip: float
    dp_sgd_noise: float
    def __init__(
        self,
        local_epochs: int | None = ...,
        local_steps: int | None = ...,
        batch_size: int | None = ...,
        optimizer: str | None = ...,
        lr: float | None = ...,
        momentum: float | None = ...,
        nesterov: bool | None = ...,
        beta1: float | None = ...,
        beta2: float | None = ...,
        eps: float | None = ...,
        weight_decay: float | None = ...,
        prox_mu: float | None = ...,
        dp_sgd_clip: float | None = ...,
        dp_sgd_noise: float | None = ...,
    ) -> None: ...

class LocalDP(_message.Message):
    __slots__ = ("mechanism", "clip", "epsilon", "delta")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    mechanism: str
    clip: float
    epsilon: float
    delta: float
    def __init__(
        self,
        mechanism: str | None = ...,
        clip: float | None = ...,
        epsilon: float | None = ...,
        delta: float | None = ...,
    ) -> None: ...

class SecureEncoding(_message.Message):
    __slots__ = ("dim", "max_examples", "clip", "bits", "rounding", "seed")
    DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    dim: int
    max_examples: int
    clip: float
    bits: int
    rounding: str
    seed: int
    def __init__(
        self,
        dim: int | None = ...,
        max_examples: int | None = ...,
        clip: float | None = ...,
        bits: int | None = ...,
        rounding: str | None = ...,
        seed: int | None = ...,
    ) -> None: ...

class DistributedDG(_message.Message):
    __slots__ = ("clip_norm", "dim", "shares", "noise_multiplier", "bits", "beta", "headroom")
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_FIELD_NUMBER: _ClassVar[int]
    clip_norm: float
    dim: int
    shares: int
    noise_multiplier: float
    bits: int
    beta: float
    headroom: float
    def __init__(
        self,
        clip_norm: float | None = ...,
        dim: int | None = ...,
        shares: int | None = ...,
        noise_multiplier: float | None = ...,
        bits: int | None = ...,
        beta: float | None = ...,
        headroom: float | None = ...,
    ) -> None: ...

class SecureTaskSpec(_message.Message):
    __slots__ = (
        "index",
        "num_clients",
        "threshold",
        "attempt",
        "encoding",
        "dp_clip",
        "distributed",
        "signed",
    )
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DP_CLIP_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    index: int
    num_clients: int
    threshold: int
    attempt: int
    encoding: SecureEncoding
    dp_clip: float
    distributed: DistributedDG
    signed: bool
    def __init__(
        self,
        index: int | None = ...,
        num_clients: int | None = ...,
        threshold: int | None = ...,
        attempt: int | None = ...,
        encoding: SecureEncoding | _Mapping | None = ...,
        dp_clip: float | None = ...,
        distributed: DistributedDG | _Mapping | None = ...,
        signed: bool | None = ...,
    ) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("wait_s",)
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    wait_s: float
    def __init__(self, wait_s: float | None = ...) -> None: ...

class Task(_message.Message):
    __slots__ = (
        "kind",
        "task_id",
        "round",
        "version",
        "seed",
        "plan",
        "deadline_unix",
        "max_steps",
        "retry_after_s",
        "local_dp",
        "secagg",
        "compression",
    )
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WAIT: _ClassVar[Task.Kind]
        TRAIN: _ClassVar[Task.Kind]
        DONE: _ClassVar[Task.Kind]

    WAIT: Task.Kind
    TRAIN: Task.Kind
    DONE: Task.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DP_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    kind: Task.Kind
    task_id: str
    round: int
    version: int
    seed: int
    plan: TrainPlan
    deadline_unix: float
    max_steps: int
    retry_after_s: float
    local_dp: LocalDP
    secagg: SecureTaskSpec
    compression: float
    def __init__(
        self,
        kind: Task.Kind | str | None = ...,
        task_id: str | None = ...,
        round: int | None = ...,
        version: int | None = ...,
        seed: int | None = ...,
        plan: TrainPlan | _Mapping | None = ...,
        deadline_unix: float | None = ...,
        max_steps: int | None = ...,
        retry_after_s: float | None = ...,
        local_dp: LocalDP | _Mapping | None = ...,
        secagg: SecureTaskSpec | _Mapping | None = ...,
        compression: float | None = ...,
    ) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("version", "base_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    base_version: int
    def __init__(self, version: int | None = ..., base_version: int | None = ...) -> None: ...

class DownloadHeader(_message.Message):
    __slots__ = ("version", "base_version", "encoding", "payload_bytes", "dim", "sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    base_version: int
    encoding: str
    payload_bytes: int
    dim: int
    sha256: bytes
    def __init__(
        self,
        version: int | None = ...,
        base_version: int | None = ...,
        encoding: str | None = ...,
        payload_bytes: int | None = ...,
        dim: int | None = ...,
        sha256: bytes | None = ...,
    ) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: DownloadHeader
    data: bytes
    def __init__(
        self, header: DownloadHeader | _Mapping | None = ..., data: bytes | None = ...
    ) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = (
        "task_id",
        "round",
        "version",
        "num_examples",
        "dim",
        "dtype",
        "payload_bytes",
        "sha256",
        "train_loss",
        "train_loss_sq",
        "steps",
        "epochs",
        "train_s",
        "eval_loss",
        "eval_accuracy",
        "eval_examples",
    )
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_SQ_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_S_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    version: int
    num_examples: int
    dim: int
    dtype: str
    payload_bytes: int
    sha256: bytes
    train_loss: float
    train_loss_sq: float
    steps: int
    epochs: float
    train_s: float
    eval_loss: float
    eval_accuracy: float
    eval_examples: int
    def __init__(
        self,
        task_id: str | None = ...,
        round: int | None = ...,
        version: int | None = ...,
        num_examples: int | None = ...,
        dim: int | None = ...,
        dtype: str | None = ...,
        payload_bytes: int | None = ...,
        sha256: bytes | None = ...,
        train_loss: float | None = ...,
        train_loss_sq: float | None = ...,
        steps: int | None = ...,
        epochs: float | None = ...,
        train_s: float | None = ...,
        eval_loss: float | None = ...,
        eval_accuracy: float | None = ...,
        eval_examples: int | None = ...,
    ) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(
        self, header: UploadHeader | _Mapping | None = ..., data: bytes | None = ...
    ) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("accepted", "duplicate", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    reason: str
    def __init__(
        self, accepted: bool | None = ..., duplicate: bool | None = ..., reason: str | None = ...
    ) -> None: ...

class SecAggFetchRequest(_message.Message):
    __slots__ = ("task_id", "stage", "wait_s")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    stage: str
    wait_s: float
    def __init__(
        self, task_id: str | None = ..., stage: str | None = ..., wait_s: float | None = ...
    ) -> None: ...

class PublicKeys(_message.Message):
    __slots__ = ("c_public", "s_public")
    C_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    S_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    c_public: bytes
    s_public: bytes
    def __init__(self, c_public: bytes | None = ..., s_public: bytes | None = ...) -> None: ...

class Shares(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Iterable[int] | None = ...) -> None: ...

class SecAggEmpty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SecAggKeys(_message.Message):
    __slots__ = ("c_public", "s_public", "signature")
    C_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    S_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    c_public: bytes
    s_public: bytes
    signature: bytes
    def __init__(
        self,
        c_public: bytes | None = ...,
        s_public: bytes | None = ...,
        signature: bytes | None = ...,
    ) -> None: ...

class SecAggNeighbourKeys(_message.Message):
    __slots__ = ("keys", "signatures", "certificates")
    class KeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: PublicKeys
        def __init__(
            self, key: int | None = ..., value: PublicKeys | _Mapping | None = ...
        ) -> None: ...

    class SignaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: int | None = ..., value: bytes | None = ...) -> None: ...

    class CertificatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: int | None = ..., value: bytes | None = ...) -> None: ...

    KEYS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.MessageMap[int, PublicKeys]
    signatures: _containers.ScalarMap[int, bytes]
    certificates: _containers.ScalarMap[int, bytes]
    def __init__(
        self,
        keys: _Mapping[int, PublicKeys] | None = ...,
        signatures: _Mapping[int, bytes] | None = ...,
        certificates: _Mapping[int, bytes] | None = ...,
    ) -> None: ...

class SecAggCiphertexts(_message.Message):
    __slots__ = ("ciphertexts",)
    class CiphertextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: int | None = ..., value: bytes | None = ...) -> None: ...

    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    ciphertexts: _containers.ScalarMap[int, bytes]
    def __init__(self, ciphertexts: _Mapping[int, bytes] | None = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("dropped", "survived")
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SURVIVED_FIELD_NUMBER: _ClassVar[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    survived: _containers.RepeatedScalarFieldContainer[int]
    def __init__(
        self, dropped: _Iterable[int] | None = ..., survived: _Iterable[int] | None = ...
    ) -> None: ...

class SecAggUnmaskShares(_message.Message):
    __slots__ = ("seed_shares", "key_shares")
    class SeedSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Shares
        def __init__(
            self, key: int | None = ..., value: Shares | _Mapping | None = ...
        ) -> None: ...

    class KeySharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Shares
        def __init__(
            self, key: int | None = ..., value: Shares | _Mapping | None = ...
        ) -> None: ...

    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    seed_shares: _containers.MessageMap[int, Shares]
    key_shares: _containers.MessageMap[int, Shares]
    def __init__(
        self,
        seed_shares: _Mapping[int, Shares] | None = ...,
        key_shares: _Mapping[int, Shares] | None = ...,
    ) -> None: ...

class SecAggMessage(_message.Message):
    __slots__ = (
        "task_id",
        "round_id",
        "sender",
        "recipient",
        "advertise_request",
        "keys_advert",
        "neighbour_keys",
        "encrypted_shares",
        "routed_shares",
        "unmask_request",
        "unmask_shares",
        "wait_s",
        "abort",
    )
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    KEYS_ADVERT_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOUR_KEYS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_SHARES_FIELD_NUMBER: _ClassVar[int]
    ROUTED_SHARES_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UNMASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round_id: bytes
    sender: int
    recipient: int
    advertise_request: SecAggEmpty
    keys_advert: SecAggKeys
    neighbour_keys: SecAggNeighbourKeys
    encrypted_shares: SecAggCiphertexts
    routed_shares: SecAggCiphertexts
    unmask_request: SecAggUnmaskRequest
    unmask_shares: SecAggUnmaskShares
    wait_s: float
    abort: str
    def __init__(
        self,
        task_id: str | None = ...,
        round_id: bytes | None = ...,
        sender: int | None = ...,
        recipient: int | None = ...,
        advertise_request: SecAggEmpty | _Mapping | None = ...,
        keys_advert: SecAggKeys | _Mapping | None = ...,
        neighbour_keys: SecAggNeighbourKeys | _Mapping | None = ...,
        encrypted_shares: SecAggCiphertexts | _Mapping | None = ...,
        routed_shares: SecAggCiphertexts | _Mapping | None = ...,
        unmask_request: SecAggUnmaskRequest | _Mapping | None = ...,
        unmask_shares: SecAggUnmaskShares | _Mapping | None = ...,
        wait_s: float | None = ...,
        abort: str | None = ...,
    ) -> None: ...

class SecAggAck(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: bool | None = ...) -> None: ...
