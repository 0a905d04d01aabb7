"""Every decoder of a join, a task or a SecAgg task spec, fed hostile protobuf messages:
random field values (extreme ints, NaN, infinities, odd strings, long repeated fields)
and random bytes parsed by protobuf. A decoder either returns a checked value or refuses
with its typed error (``MessageError``; ``FedloomError`` for ``SecureTaskSpec``); protobuf
refuses undecodable bytes with ``DecodeError``, which gRPC turns into a failed call before
any servicer runs. Nothing else may escape."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from budget import fuzz
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from pb_strategies import message

from fedloom.errors import FedloomError
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport.messages import (
    MAX_INPUT_SIZE,
    CompressionSpec,
    LocalDP,
    MessageError,
    ModelSpec,
    plan_from_pb,
    profile_from_pb,
)
from fedloom.transport.secure_round import SecureTaskSpec
from fedloom.transport.server import reported_evaluation_error

# (protobuf class, decoder, the typed refusal it may raise)
DECODERS: dict[str, tuple[type, Callable[[Any], Any], type[Exception]]] = {
    "plan": (pb.TrainPlan, plan_from_pb, MessageError),
    "profile": (pb.DeviceProfile, profile_from_pb, MessageError),
    "local_dp": (pb.LocalDP, LocalDP.from_pb, MessageError),
    "model": (pb.ModelSpec, ModelSpec.from_pb, MessageError),
    "compression": (pb.CompressionSpec, CompressionSpec.from_pb, MessageError),
    "secure_task": (pb.SecureTaskSpec, SecureTaskSpec.from_pb, FedloomError),
}


def decode_or_refuse(name: str, msg: Any) -> Any:
    """The decoded value, or None after the decoder's typed refusal."""
    _, decoder, refusal = DECODERS[name]
    try:
        return decoder(msg)
    except refusal:
        return None


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_hostile_field_values_are_decoded_or_refused(name: str) -> None:
    cls = DECODERS[name][0]

    @fuzz()
    @given(message(cls))
    def check(msg: Any) -> None:
        decode_or_refuse(name, msg)

    check()


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_random_bytes_are_refused_by_protobuf_or_the_decoder(name: str) -> None:
    cls = DECODERS[name][0]

    @fuzz()
    @given(st.binary(max_size=200))
    def check(data: bytes) -> None:
        try:
            msg = cls.FromString(data)
        except DecodeError:
            return
        decode_or_refuse(name, msg)

    check()


@fuzz()
@given(message(pb.ModelSpec))
def test_an_accepted_model_spec_is_small_and_finite(msg: pb.ModelSpec) -> None:
    spec = decode_or_refuse("model", msg)
    if spec is not None:
        assert math.prod(spec.input_shape) <= MAX_INPUT_SIZE
        assert 0 < spec.width <= 4 and isinstance(spec.options(), dict)


@fuzz()
@given(message(pb.TrainPlan))
def test_an_accepted_plan_has_finite_positive_steps(msg: pb.TrainPlan) -> None:
    plan = decode_or_refuse("plan", msg)
    if plan is not None:
        assert math.isfinite(plan.lr) and plan.lr > 0 and plan.batch_size >= 1


@fuzz()
@given(message(pb.UploadHeader))
def test_a_reported_evaluation_is_taken_or_refused_with_a_kind(header: pb.UploadHeader) -> None:
    verdict = reported_evaluation_error(header, 100)
    if verdict is None:
        assert math.isfinite(header.eval_loss) and 0 <= header.eval_accuracy <= 1
        assert 0 <= header.eval_examples <= 100


@pytest.mark.parametrize(
    "shape",
    [[1 << 16] * 4, [1 << 24] * 4, [1 << 22, 1 << 22, 1 << 20]],
    ids=["2^64", "2^96", "2^64-three"],
)
def test_an_input_shape_whose_size_overflows_int64_is_refused(shape: list[int]) -> None:
    # np.prod(..., dtype=int64) wrapped 2^64 to 0 and let the spec through
    with pytest.raises(MessageError, match="too large"):
        ModelSpec.from_pb(pb.ModelSpec(kind="cnn", input_shape=shape, num_classes=2))


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"a": ' + "1" * 5000 + "}", '{"a": ' + "{" * 50_000],
    ids=["deep-array", "long-int", "deep-object"],
)
@pytest.mark.parametrize("field", ["params_json", "download_params_json", "options_json"])
def test_json_options_that_break_the_json_reader_are_refused(field: str, text: str) -> None:
    # json.loads raised RecursionError (deep nesting) and ValueError (ints over 4300 digits)
    with pytest.raises(MessageError, match=field):
        if field == "options_json":
            ModelSpec.from_pb(
                pb.ModelSpec(kind="mlp", input_shape=[3], num_classes=2, options_json=text)
            )
        else:
            CompressionSpec.from_pb(pb.CompressionSpec(**{field: text}))
