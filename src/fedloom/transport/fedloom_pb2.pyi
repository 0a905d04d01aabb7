from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("num_examples", "device", "holdout_examples", "label_counts", "profile")
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    num_examples: int
    device: str
    holdout_examples: int
    label_counts: _containers.RepeatedScalarFieldContainer[int]
    profile: DeviceProfile
    def __init__(self, num_examples: _Optional[int] = ..., device: _Optional[str] = ..., holdout_examples: _Optional[int] = ..., label_counts: _Optional[_Iterable[int]] = ..., profile: _Optional[_Union[DeviceProfile, _Mapping]] = ...) -> None: ...

class DeviceProfile(_message.Message):
    __slots__ = ("name", "memory_mb", "int8", "fp16", "bf16", "threads", "arch", "ms_per_sample")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    INT8_FIELD_NUMBER: _ClassVar[int]
    FP16_FIELD_NUMBER: _ClassVar[int]
    BF16_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    MS_PER_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    memory_mb: float
    int8: bool
    fp16: bool
    bf16: bool
    threads: int
    arch: str
    ms_per_sample: float
    def __init__(self, name: _Optional[str] = ..., memory_mb: _Optional[float] = ..., int8: _Optional[bool] = ..., fp16: _Optional[bool] = ..., bf16: _Optional[bool] = ..., threads: _Optional[int] = ..., arch: _Optional[str] = ..., ms_per_sample: _Optional[float] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("client_id", "dim", "run", "heartbeat_s", "chunk_bytes", "version", "model", "client_transforms", "compression")
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
    def __init__(self, client_id: _Optional[int] = ..., dim: _Optional[int] = ..., run: _Optional[str] = ..., heartbeat_s: _Optional[float] = ..., chunk_bytes: _Optional[int] = ..., version: _Optional[int] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., client_transforms: _Optional[_Iterable[_Union[TransformSpec, _Mapping]]] = ..., compression: _Optional[_Union[CompressionSpec, _Mapping]] = ...) -> None: ...

class CompressionSpec(_message.Message):
    __slots__ = ("codec", "params_json", "error_feedback", "warmup_rounds", "download", "download_params_json")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    WARMUP_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    codec: str
    params_json: str
    error_feedback: bool
    warmup_rounds: int
    download: str
    download_params_json: str
    def __init__(self, codec: _Optional[str] = ..., params_json: _Optional[str] = ..., error_feedback: _Optional[bool] = ..., warmup_rounds: _Optional[int] = ..., download: _Optional[str] = ..., download_params_json: _Optional[str] = ...) -> None: ...

class TransformSpec(_message.Message):
    __slots__ = ("name", "params_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    params_json: str
    def __init__(self, name: _Optional[str] = ..., params_json: _Optional[str] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("kind", "hidden", "num_features", "num_classes", "seed", "input_shape", "targets", "norm", "options_json", "width")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    NUM_FEATURES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    kind: str
    hidden: _containers.RepeatedScalarFieldContainer[int]
    num_features: int
    num_classes: int
    seed: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    targets: str
    norm: str
    options_json: str
    width: float
    def __init__(self, kind: _Optional[str] = ..., hidden: _Optional[_Iterable[int]] = ..., num_features: _Optional[int] = ..., num_classes: _Optional[int] = ..., seed: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., targets: _Optional[str] = ..., norm: _Optional[str] = ..., options_json: _Optional[str] = ..., width: _Optional[float] = ...) -> None: ...

class TrainPlan(_message.Message):
    __slots__ = ("local_epochs", "local_steps", "batch_size", "optimizer", "lr", "momentum", "nesterov", "beta1", "beta2", "eps", "weight_decay", "prox_mu", "dp_sgd_clip", "dp_sgd_noise", "precision", "qat")
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
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    QAT_FIELD_NUMBER: _ClassVar[int]
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
    precision: str
    qat: bool
    def __init__(self, local_epochs: _Optional[int] = ..., local_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., optimizer: _Optional[str] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., nesterov: _Optional[bool] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., eps: _Optional[float] = ..., weight_decay: _Optional[float] = ..., prox_mu: _Optional[float] = ..., dp_sgd_clip: _Optional[float] = ..., dp_sgd_noise: _Optional[float] = ..., precision: _Optional[str] = ..., qat: _Optional[bool] = ...) -> None: ...

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
    def __init__(self, mechanism: _Optional[str] = ..., clip: _Optional[float] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class SecureEncoding(_message.Message):
    __slots__ = ("dim", "max_examples", "clip", "bits", "rounding", "seed", "keep_fraction", "keep_seed")
    DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    KEEP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    KEEP_SEED_FIELD_NUMBER: _ClassVar[int]
    dim: int
    max_examples: int
    clip: float
    bits: int
    rounding: str
    seed: int
    keep_fraction: float
    keep_seed: int
    def __init__(self, dim: _Optional[int] = ..., max_examples: _Optional[int] = ..., clip: _Optional[float] = ..., bits: _Optional[int] = ..., rounding: _Optional[str] = ..., seed: _Optional[int] = ..., keep_fraction: _Optional[float] = ..., keep_seed: _Optional[int] = ...) -> None: ...

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
    def __init__(self, clip_norm: _Optional[float] = ..., dim: _Optional[int] = ..., shares: _Optional[int] = ..., noise_multiplier: _Optional[float] = ..., bits: _Optional[int] = ..., beta: _Optional[float] = ..., headroom: _Optional[float] = ...) -> None: ...

class SecureTaskSpec(_message.Message):
    __slots__ = ("index", "num_clients", "threshold", "attempt", "encoding", "dp_clip", "distributed", "signed")
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
    def __init__(self, index: _Optional[int] = ..., num_clients: _Optional[int] = ..., threshold: _Optional[int] = ..., attempt: _Optional[int] = ..., encoding: _Optional[_Union[SecureEncoding, _Mapping]] = ..., dp_clip: _Optional[float] = ..., distributed: _Optional[_Union[DistributedDG, _Mapping]] = ..., signed: _Optional[bool] = ...) -> None: ...

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
    def __init__(self, wait_s: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "task_id", "round", "version", "seed", "plan", "deadline_unix", "max_steps", "retry_after_s", "local_dp", "secagg", "compression")
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
    def __init__(self, kind: _Optional[_Union[Task.Kind, str]] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., version: _Optional[int] = ..., seed: _Optional[int] = ..., plan: _Optional[_Union[TrainPlan, _Mapping]] = ..., deadline_unix: _Optional[float] = ..., max_steps: _Optional[int] = ..., retry_after_s: _Optional[float] = ..., local_dp: _Optional[_Union[LocalDP, _Mapping]] = ..., secagg: _Optional[_Union[SecureTaskSpec, _Mapping]] = ..., compression: _Optional[float] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("version", "base_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    base_version: int
    def __init__(self, version: _Optional[int] = ..., base_version: _Optional[int] = ...) -> None: ...

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
    def __init__(self, version: _Optional[int] = ..., base_version: _Optional[int] = ..., encoding: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., dim: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: DownloadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[DownloadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("task_id", "round", "version", "num_examples", "dim", "dtype", "payload_bytes", "sha256", "train_loss", "train_loss_sq", "steps", "epochs", "train_s", "eval_loss", "eval_accuracy", "eval_examples", "loss_samples")
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
    LOSS_SAMPLES_FIELD_NUMBER: _ClassVar[int]
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
    loss_samples: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., version: _Optional[int] = ..., num_examples: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ..., train_loss: _Optional[float] = ..., train_loss_sq: _Optional[float] = ..., steps: _Optional[int] = ..., epochs: _Optional[float] = ..., train_s: _Optional[float] = ..., eval_loss: _Optional[float] = ..., eval_accuracy: _Optional[float] = ..., eval_examples: _Optional[int] = ..., loss_samples: _Optional[_Iterable[float]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("accepted", "duplicate", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SecAggFetchRequest(_message.Message):
    __slots__ = ("task_id", "stage", "wait_s")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    stage: str
    wait_s: float
    def __init__(self, task_id: _Optional[str] = ..., stage: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class PublicKeys(_message.Message):
    __slots__ = ("c_public", "s_public")
    C_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    S_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    c_public: bytes
    s_public: bytes
    def __init__(self, c_public: _Optional[bytes] = ..., s_public: _Optional[bytes] = ...) -> None: ...

class Shares(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

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
    def __init__(self, c_public: _Optional[bytes] = ..., s_public: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggNeighbourKeys(_message.Message):
    __slots__ = ("keys", "signatures", "certificates")
    class KeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: PublicKeys
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[PublicKeys, _Mapping]] = ...) -> None: ...
    class SignaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    class CertificatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.MessageMap[int, PublicKeys]
    signatures: _containers.ScalarMap[int, bytes]
    certificates: _containers.ScalarMap[int, bytes]
    def __init__(self, keys: _Optional[_Mapping[int, PublicKeys]] = ..., signatures: _Optional[_Mapping[int, bytes]] = ..., certificates: _Optional[_Mapping[int, bytes]] = ...) -> None: ...

class SecAggCiphertexts(_message.Message):
    __slots__ = ("ciphertexts",)
    class CiphertextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    ciphertexts: _containers.ScalarMap[int, bytes]
    def __init__(self, ciphertexts: _Optional[_Mapping[int, bytes]] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("dropped", "survived")
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SURVIVED_FIELD_NUMBER: _ClassVar[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    survived: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dropped: _Optional[_Iterable[int]] = ..., survived: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggUnmaskShares(_message.Message):
    __slots__ = ("seed_shares", "key_shares")
    class SeedSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Shares
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Shares, _Mapping]] = ...) -> None: ...
    class KeySharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Shares
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Shares, _Mapping]] = ...) -> None: ...
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    seed_shares: _containers.MessageMap[int, Shares]
    key_shares: _containers.MessageMap[int, Shares]
    def __init__(self, seed_shares: _Optional[_Mapping[int, Shares]] = ..., key_shares: _Optional[_Mapping[int, Shares]] = ...) -> None: ...

class SecAggMessage(_message.Message):
    __slots__ = ("task_id", "round_id", "sender", "recipient", "advertise_request", "keys_advert", "neighbour_keys", "encrypted_shares", "routed_shares", "unmask_request", "unmask_shares", "wait_s", "abort")
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
    def __init__(self, task_id: _Optional[str] = ..., round_id: _Optional[bytes] = ..., sender: _Optional[int] = ..., recipient: _Optional[int] = ..., advertise_request: _Optional[_Union[SecAggEmpty, _Mapping]] = ..., keys_advert: _Optional[_Union[SecAggKeys, _Mapping]] = ..., neighbour_keys: _Optional[_Union[SecAggNeighbourKeys, _Mapping]] = ..., encrypted_shares: _Optional[_Union[SecAggCiphertexts, _Mapping]] = ..., routed_shares: _Optional[_Union[SecAggCiphertexts, _Mapping]] = ..., unmask_request: _Optional[_Union[SecAggUnmaskRequest, _Mapping]] = ..., unmask_shares: _Optional[_Union[SecAggUnmaskShares, _Mapping]] = ..., wait_s: _Optional[float] = ..., abort: _Optional[str] = ...) -> None: ...

class SecAggAck(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...
