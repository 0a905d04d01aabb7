"""Hypothesis strategies for any protobuf message of ``fedloom.proto``: every field drawn
from hostile values (extreme and negative ints, NaN, infinities, huge floats, empty and
long strings, long repeated fields), plus words the decoders know, so that examples also
reach the checks behind the first one."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
# words the decoders accept somewhere, so that a draw gets past the first check
WORDS = [
    "",
    "mlp",
    "logistic",
    "cnn",
    "char",
    "mobilenet",
    "module:x.y:z",
    "classes",
    "tokens",
    "values",
    "none",
    "group",
    "batch",
    "sgd",
    "adam",
    "fp32",
    "fp16",
    "bf16",
    "x86",
    "arm",
    "gaussian",
    "laplace",
    "topk",
    "randomk",
    "qsgd",
    "uniform",
    "sign",
    "terngrad",
    "powersgd",
    "fp16",
    "stochastic",
    "nearest",
    "{}",
    "[]",
    '{"k": 2}',
    '{"bits": 4}',
    "null",
    "NaN",
    "{",
    "[" * 64,
    "client-000001",
    "\x00",
]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def _int(kind: int) -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[kind]
    edges = [v for v in (lo, hi, 0, 1, -1, 2, 3, 16, 2**24, 2**31 - 1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(0, 40), st.integers(lo, hi))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        return _int(kind)
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        width = 32 if kind == F.TYPE_FLOAT else 64
        return st.one_of(
            st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-9, 1e38, -1e38]),
            st.floats(width=width, allow_nan=True, allow_infinity=True),
        )
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_STRING:
        return st.one_of(st.sampled_from(WORDS), _TEXT)
    if kind == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=80), st.binary(min_size=16, max_size=16))
    if kind == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    raise TypeError(f"no strategy for field {field.full_name}")


@st.composite
def message(draw: st.DrawFn, cls: type, depth: int = 2) -> Any:
    """One ``cls`` message with a random subset of its fields set to hostile values."""
    out = cls()
    _fill(draw, out, out.DESCRIPTOR, depth)
    return out


def _fill(draw: st.DrawFn, out: Any, desc: Descriptor, depth: int) -> None:
    oneofs_set: set[str] = set()
    for field in desc.fields:
        if field.containing_oneof is not None:
            if field.containing_oneof.name in oneofs_set or not draw(st.booleans()):
                continue
            oneofs_set.add(field.containing_oneof.name)
        elif not draw(st.booleans()):
            continue
        _set(draw, out, field, depth)


def _set(draw: st.DrawFn, out: Any, field: FieldDescriptor, depth: int) -> None:
    name = field.name
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_f, value_f = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        table = getattr(out, name)
        for key in draw(st.lists(_scalar(key_f), max_size=6)):
            if value_f.message_type is None:
                table[key] = draw(_scalar(value_f))
            elif depth > 0:
                _fill(draw, table[key], value_f.message_type, depth - 1)
        return
    if field.is_repeated:
        if field.message_type is None:
            getattr(out, name).extend(draw(st.lists(_scalar(field), max_size=8)))
        elif depth > 0:
            for _ in range(draw(st.integers(0, 3))):
                _fill(draw, getattr(out, name).add(), field.message_type, depth - 1)
        return
    if field.message_type is not None:
        if depth > 0:
            getattr(out, name).SetInParent()
            _fill(draw, getattr(out, name), field.message_type, depth - 1)
        return
    setattr(out, name, draw(_scalar(field)))
