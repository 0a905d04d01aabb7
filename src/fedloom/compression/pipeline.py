"""The run's upload compression: codec, error feedback, warm-up and per-client settings.

Where it sits in a client's pipeline: local training -> ``[transforms] client`` -> local
DP (clip, noise) -> :meth:`Compression.encode` -> the payload bytes that travel. The
server decodes each payload on receipt (:meth:`Compression.decode`) before the update
checks, so a payload that does not decode, or decodes to the wrong length or to
non-finite values, is refused for its client and never reaches the aggregate; central DP
then clips and noises the decoded rows, so its sensitivity holds whatever a codec does.

A client's error-feedback residual (and a codec's own state, PowerSGD's factors) is that
client's state, kept where the client's transform state is kept: by the simulator for
every simulated client (checkpointed, restored on resume) and by a deployed client in
its own folder. A client keeps its new state only once the server holds its update.

Codec randomness (stochastic rounding, random-k's coordinates, rotations) is drawn from
a generator keyed by the dispatch's seed, so the simulator and a deployment encode the
same bits; it protects nobody (the payload is what the server learns), unlike DP noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedloom.compression.codec import Codec, Header, PayloadError, State, make_codec
from fedloom.compression.download import ModelBroadcast
from fedloom.compression.feedback import ErrorFeedback, dgc_warmup
from fedloom.records import Dispatch

SPARSIFIERS = ("topk", "randomk")  # codecs whose setting is a kept fraction (DGC warm-up)
_STREAM = 15  # the codec generator's stream id next to the dispatch seed


@dataclass(frozen=True)
class Compression:
    """A codec with optional error feedback and DGC warm-up (see the module docstring)."""

    codec: Codec
    error_feedback: bool = False
    warmup_rounds: int = 0

    @classmethod
    def build(
        cls,
        name: str,
        params: dict[str, Any],
        shapes: list[tuple[int, ...]],
        error_feedback: bool = False,
        warmup_rounds: int = 0,
    ) -> Compression:
        return cls(make_codec(name, params, shapes), error_feedback, warmup_rounds)

    @property
    def name(self) -> str:
        return self.codec.name

    @property
    def feedback(self) -> ErrorFeedback:
        return ErrorFeedback(self.codec, self.error_feedback)

    def init(self, dim: int) -> State:
        """One client's state: its residual (with error feedback) and the codec's."""
        return self.feedback.init(dim)

    def setting(self, round: int, chosen: float | None) -> float:
        """The setting a client encodes with in ``round``: the dispatched one (adaptive)
        or the codec's default, widened by DGC's warm-up for sparsifiers."""
        s = self.codec.default if chosen is None else float(chosen)
        if self.warmup_rounds and self.codec.name in SPARSIFIERS:
            s = dgc_warmup(s, round, self.warmup_rounds)
        return s

    def assign(
        self, dispatches: list[Dispatch], settings: np.ndarray | None = None
    ) -> list[Dispatch]:
        """The dispatches with each client's setting for its round: ``settings`` (one
        per dispatch, e.g. the adaptive policy's) or the default, after the warm-up."""
        chosen = [None] * len(dispatches) if settings is None else [float(s) for s in settings]
        return [
            replace(d, compression=self.setting(d.round, s))
            for d, s in zip(dispatches, chosen, strict=True)
        ]

    def encode(
        self, rows: np.ndarray, settings: np.ndarray, seeds: np.ndarray, state: State
    ) -> tuple[list[bytes], State]:
        """``rows`` ``[K, d]`` (one per client, ``state`` stacked in the same order), one
        setting and one dispatch seed each -> the K payloads and the new states."""
        rngs = [np.random.default_rng([int(s) & (2**64 - 1), _STREAM]) for s in seeds]
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        payloads, _, new = self.feedback.encode(rows, np.asarray(settings, float), rngs, state)
        return payloads, new

    def decode(self, payload: bytes, dim: int) -> tuple[np.ndarray, float]:
        """One payload -> (its ``[d]`` float32 row, the setting it was encoded with);
        :class:`PayloadError` when it is not exactly what this codec writes."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise PayloadError(f"payload is a {type(payload).__name__}, expected bytes")
        header, _ = Header.unpack(payload)
        row = self.codec.decode(bytes(payload), dim)
        if row.shape != (dim,) or row.dtype != np.float32:
            raise PayloadError(f"payload decodes to {row.dtype} {row.shape}, expected ({dim},)")
        return row, header.setting


def compression_record(
    upload: Compression | None,
    accepted: dict[int, tuple[int, float]],
    dim: int,
    broadcast: ModelBroadcast | None = None,
    downloads: np.ndarray | None = None,
) -> dict[str, Any]:
    """A round's ``compression`` record (``fedloom.metrics.CompressionRecord``): the
    accepted uploads (client id -> (payload bytes, setting)) and, under compressed
    downloads, the round's download bytes against float32 models."""
    payload = sum(n for n, _ in accepted.values())
    raw = 4 * dim * len(accepted)
    out: dict[str, Any] = {
        "codec": "none" if upload is None else upload.name,
        "payloads": len(accepted),
        "payload_bytes": payload,
        "raw_bytes": raw,
        "ratio": raw / payload if payload else 0.0,
        "settings": {str(c): round(s, 6) for c, (_, s) in sorted(accepted.items())},
    }
    if broadcast is not None and downloads is not None:
        got = int(np.sum(downloads))
        out["download"] = broadcast.codec.name
        out["download_ratio"] = 4 * dim * len(downloads) / got if got else None
    return out
