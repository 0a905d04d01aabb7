"""The codec contract: a cohort's update rows to self-describing byte payloads and back.

A codec's client half (:meth:`Codec.encode`) turns a ``[K, d]`` float32 matrix into one
``bytes`` payload per row and also returns what the server will decode from each (the
reconstruction), so error feedback needs no second decoding pass. Its server half
(:meth:`Codec.decode`) turns one payload back into a ``[d]`` float32 row, refusing any
payload that is not exactly what this codec writes (:class:`PayloadError`).

Every payload starts with one :class:`Header` (12 bytes): format version, codec id, flags,
the row length and the setting it was encoded with (bits, kept fraction, levels or rank).
Byte counts in records, virtual time and transport counters are ``len(payload)``.

A codec's *setting* is its one compression knob; ``ladder`` lists the settings from the
densest to the sparsest, which the adaptive policy chooses among
(:mod:`fedloom.compression.adaptive`); :meth:`Codec.size_bound` is the largest payload a
setting can produce for ``d`` values (exact for fixed-size codecs).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from fedloom.errors import ConfigError, FedloomError

State = dict[str, Any]

FORMAT_VERSION = 1
FLAG_ROTATED = 1  # rows were multiplied by a random Hadamard rotation before encoding
_HEADER = struct.Struct("<BBHIf")
HEADER_BYTES = _HEADER.size  # 12


class PayloadError(FedloomError):
    """A payload that does not decode: wrong codec, wrong length, truncated, trailing
    bytes, out-of-range values or non-finite numbers. The message names what is wrong."""


class NonFinitePayload(PayloadError):
    """A payload that decodes to NaN or infinite values (refused as ``nonfinite``)."""


@dataclass(frozen=True)
class Header:
    """What every payload starts with."""

    codec: int  # Codec.code
    dim: int  # row length d
    setting: float  # the codec's knob for this payload
    flags: int = 0

    def pack(self) -> bytes:
        return _HEADER.pack(FORMAT_VERSION, self.codec, self.flags, self.dim, self.setting)

    @classmethod
    def unpack(cls, payload: bytes | memoryview) -> tuple[Header, memoryview]:
        """The header and the body after it; a short payload or an unknown format version
        is a :class:`PayloadError`."""
        view = memoryview(payload)
        if len(view) < HEADER_BYTES:
            raise PayloadError(f"payload of {len(view)} bytes is shorter than its header")
        version, codec, flags, dim, setting = _HEADER.unpack(view[:HEADER_BYTES])
        if version != FORMAT_VERSION:
            raise PayloadError(f"payload format version {version}, expected {FORMAT_VERSION}")
        if not np.isfinite(setting):
            raise PayloadError(f"payload setting {setting!r} is not finite")
        return cls(codec, dim, float(setting), flags), view[HEADER_BYTES:]

    def expect(self, codec: int, dim: int) -> None:
        """Refuse a header written by another codec or for another row length."""
        if self.codec != codec:
            raise PayloadError(f"payload codec id {self.codec}, expected {codec}")
        if self.dim != dim:
            raise PayloadError(f"payload row length {self.dim}, expected {dim}")


@runtime_checkable
class Codec(Protocol):
    """A lossy (or exact) encoding of update rows; see the module docstring."""

    name: ClassVar[str]  # the config's compression.codec
    code: ClassVar[int]  # the header's codec id, unique per codec
    linear: ClassVar[bool]  # sums of decoded payloads = decoding of summed encodings (SecAgg)
    unbiased: ClassVar[bool]  # E[decode(encode(x))] = x

    @property
    def ladder(self) -> tuple[float, ...]:
        """The settings the adaptive policy may choose, densest first."""
        ...

    @property
    def default(self) -> float:
        """The setting used when compression is not adaptive."""
        ...

    def init(self, dim: int) -> State:
        """One client's codec state (PowerSGD's warm-start factors; ``{}`` for most)."""
        ...

    def encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        """``rows`` ``[K, d]`` float32, one setting and one generator per row, ``state``
        stacked over the K clients -> (K payloads, the ``[K, d]`` float32 rows the server
        will decode, the new stacked state)."""
        ...

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        """One payload -> ``[d]`` float32; raises :class:`PayloadError` for anything this
        codec would not have written (including non-finite results)."""
        ...

    def size_bound(self, dim: int, setting: float) -> int:
        """The most bytes (header included) one payload of ``dim`` values can take."""
        ...


_CODECS: dict[str, Callable[..., Codec]] = {}


def register_codec(factory: Callable[..., Codec]) -> Callable[..., Codec]:
    """Make a codec class known to configs by its ``name``."""
    name = factory.name  # type: ignore[attr-defined]
    if name in _CODECS and _CODECS[name] is not factory:
        raise ConfigError(f"a codec named {name!r} is registered already")
    _CODECS[name] = factory
    return factory


def codec_names() -> list[str]:
    _load_builtins()
    return sorted(_CODECS)


def make_codec(
    name: str, params: dict[str, Any] | None = None, shapes: Sequence[tuple[int, ...]] = ()
) -> Codec:
    """The codec ``name`` built with ``params``; ``shapes`` (the model's parameter shapes,
    in layout order) is given to codecs that take it (PowerSGD). Unknown names and bad
    parameters are a ``ConfigError`` naming them."""
    _load_builtins()
    if name not in _CODECS:
        raise ConfigError(f"compression.codec = {name!r}: expected one of {sorted(_CODECS)}")
    factory = _CODECS[name]
    kwargs = dict(params or {})
    if getattr(factory, "takes_shapes", False):
        kwargs["shapes"] = tuple(tuple(int(n) for n in s) for s in shapes)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, FedloomError) as err:
        raise ConfigError(
            f"compression codec {name!r} with {dict(params or {})!r}: {err}"
        ) from None


def check_finite(values: np.ndarray, what: str = "payload") -> np.ndarray:
    """``values`` unchanged, or a :class:`PayloadError` when any is NaN or infinite."""
    if not np.all(np.isfinite(values)):
        raise NonFinitePayload(f"{what} decodes to non-finite values")
    return values


def _load_builtins() -> None:
    import fedloom.compression.quantize  # noqa: F401  (registers the built-in codecs)
    import fedloom.compression.sparse  # noqa: F401
