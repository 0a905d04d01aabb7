"""Compressed model downloads: every client holds the same broadcast model, advanced each
version by one encoded delta.

The server keeps ``held``, the model an up-to-date client reconstructs. When the global
model moves to version ``v`` it encodes ``params - held`` with the download codec,
decodes it exactly as a client will and adds the result to ``held``: the payload of
version ``v``. What the codec dropped stays in ``params - held`` and is sent with the
next version (error feedback on the server's side, as in DoubleSqueeze). A client that
holds version ``b`` downloads the payloads ``b+1 .. v`` (or the whole float32 ``held``
when that is smaller, or when it holds nothing or a version no longer kept: the exact
fallback), reconstructs ``held`` and checks it against the server's sha256 of it. Every
up-to-date client therefore trains from the same model, so the simulator still trains a
cohort from one vector, and an update is the client's change to ``held``.

References: Tang et al., "DoubleSqueeze: Parallel Stochastic Gradient Descent with
Double-pass Error-Compensated Compression", ICML 2019; Philippenko & Dieuleveut,
"Bidirectional compression in heterogeneous settings for distributed or federated
learning with partial participation", 2020.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from fedloom.compression.codec import Codec, PayloadError, State
from fedloom.transforms.base import flatten_state, stack_states, unflatten_state, unstack_states

_STREAM = 16  # the download codec's generator stream next to the run seed
_LEN = struct.Struct("<I")
KEEP = 32  # versions whose payloads the server keeps for clients that fell behind


class ModelBroadcast:
    """The server's side of compressed downloads (see the module docstring)."""

    def __init__(self, codec: Codec, params: np.ndarray, seed: int, version: int = 0) -> None:
        self.codec = codec
        self.seed = int(seed)
        self.dim = int(params.shape[0])
        self.held = np.array(params, dtype=np.float32)
        self.version = int(version)
        self.payloads: dict[int, bytes] = {}  # version -> payload from version - 1
        self.state: State = codec.init(self.dim)
        self.held_by: dict[int, int] = {}  # simulation: client -> version it downloaded

    @property
    def full_bytes(self) -> int:
        """One whole float32 model (the exact fallback)."""
        return 4 * self.dim

    def advance(self, params: np.ndarray, version: int) -> bytes:
        """Move ``held`` toward the global model of ``version`` by one encoded delta."""
        rng = np.random.default_rng([self.seed & (2**64 - 1), _STREAM, int(version)])
        delta = (np.asarray(params, np.float32) - self.held)[None]
        setting = np.array([self.codec.default])
        payloads, recon, state = self.codec.encode(
            delta, setting, [rng], stack_states([self.state])
        )
        self.state = unstack_states(state, 1)[0]
        self.held = (self.held + recon[0]).astype(np.float32)
        self.version = int(version)
        self.payloads[self.version] = payloads[0]
        for old in [v for v in self.payloads if v <= self.version - KEEP]:
            del self.payloads[old]
        return payloads[0]

    def _parts(self, base: int) -> list[bytes] | None:
        """The payloads from ``base`` to the current version; None when a full download
        is smaller or ``base`` is not kept."""
        if not (0 <= base < self.version) or any(
            v not in self.payloads for v in range(base + 1, self.version + 1)
        ):
            return None
        parts = [self.payloads[v] for v in range(base + 1, self.version + 1)]
        if sum(len(p) + _LEN.size for p in parts) >= self.full_bytes:
            return None
        return parts

    def chain(self, base: int) -> bytes | None:
        """The payloads that take a client from ``base`` to the current version, each
        length-prefixed; None when a full download is smaller or ``base`` is not kept."""
        parts = self._parts(base)
        return None if parts is None else b"".join(_LEN.pack(len(p)) + p for p in parts)

    def download_size(self, client: int) -> int:
        """Simulation: the bytes ``client`` downloads now (its chain, or the whole model;
        0 when it holds the current version), counted without building the chain."""
        base = self.held_by.get(int(client), -1)
        if base == self.version:
            return 0
        parts = self._parts(base)
        return self.full_bytes if parts is None else sum(len(p) + _LEN.size for p in parts)

    def downloaded(self, clients: list[int]) -> None:
        """Simulation: ``clients`` now hold the current version."""
        for c in clients:
            self.held_by[int(c)] = self.version

    def digest(self) -> bytes:
        return model_digest(self.held)

    # checkpoints -------------------------------------------------------------
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {
            f"{prefix}held": self.held,
            f"{prefix}version": np.array(self.version),
            f"{prefix}held_by": np.array(sorted(self.held_by.items()), np.int64).reshape(-1, 2),
        }
        out |= {f"{prefix}state.{k}": v for k, v in flatten_state(self.state).items()}
        for v, p in self.payloads.items():
            out[f"{prefix}payload.{v}"] = np.frombuffer(p, np.uint8)
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        self.held = np.array(arrays[f"{prefix}held"], dtype=np.float32)
        self.version = int(arrays[f"{prefix}version"])
        self.held_by = {int(c): int(v) for c, v in arrays[f"{prefix}held_by"]}
        state = {
            k.removeprefix(f"{prefix}state."): v
            for k, v in arrays.items()
            if k.startswith(f"{prefix}state.")
        }
        self.state = unflatten_state(state) if state else self.codec.init(self.dim)
        self.payloads = {
            int(k.removeprefix(f"{prefix}payload.")): np.asarray(v, np.uint8).tobytes()
            for k, v in arrays.items()
            if k.startswith(f"{prefix}payload.")
        }


def apply_chain(codec: Codec, held: np.ndarray, chain: bytes | memoryview) -> np.ndarray:
    """A client's side: its ``held`` model advanced by a chain of length-prefixed payloads
    (:meth:`ModelBroadcast.chain`); :class:`PayloadError` for a malformed chain."""
    view = memoryview(chain)
    model = np.array(held, dtype=np.float32)
    at = 0
    while at < len(view):
        if at + _LEN.size > len(view):
            raise PayloadError("model delta chain is truncated in a length prefix")
        (n,) = _LEN.unpack(view[at : at + _LEN.size])
        at += _LEN.size
        if at + n > len(view):
            raise PayloadError(f"model delta of {n} bytes runs past the chain's end")
        model = (model + codec.decode(bytes(view[at : at + n]), model.shape[0])).astype(np.float32)
        at += n
    return model


def model_digest(model: np.ndarray) -> bytes:
    """sha256 of a model's little-endian float32 bytes (the server's view a client checks)."""
    return hashlib.sha256(np.ascontiguousarray(model, dtype="<f4").tobytes()).digest()
