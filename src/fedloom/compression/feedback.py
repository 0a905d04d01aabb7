"""Error feedback around a lossy codec, and DGC's warm-up of the kept fraction.

A biased codec (top-k, PowerSGD) drops part of every update; error feedback keeps what
was dropped in a per-client residual and adds it to the client's next update, so nothing
is lost for good: after ``T`` rounds the server has received
``sum_t x_t - residual_T``, the true sum up to one round's compression error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedloom.compression.codec import Codec, State


def _passthrough(attr: str) -> Any:
    """A read-only property giving the wrapped codec's ``attr``."""
    return property(lambda self: getattr(self.codec, attr), doc=f"The wrapped codec's {attr}.")


class ErrorFeedback:
    """A codec with per-client error feedback (memory of what compression dropped).

    Each client keeps ``residual`` (``[d]`` float32, zeros at first). For an update ``x``
    it encodes ``v = x + residual`` with the wrapped codec and keeps
    ``residual' = v - reconstruction``. The sum of what the server reconstructs over
    rounds plus the final residual equals the sum of the updates (telescoping), which is
    what makes biased codecs converge like their uncompressed counterparts.

    The payloads are the wrapped codec's; decoding, sizes and settings pass through.
    With ``enabled=False`` the wrapper adds nothing (no residual is kept).

    References: Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018;
    Karimireddy et al., "Error Feedback Fixes SignSGD and other Gradient Compression
    Schemes", ICML 2019.
    """

    def __init__(self, codec: Codec, enabled: bool = True) -> None:
        self.codec = codec
        self.enabled = bool(enabled)

    # -- what passes through to the wrapped codec

    name: str = _passthrough("name")
    code: int = _passthrough("code")
    linear: bool = _passthrough("linear")
    unbiased: bool = _passthrough("unbiased")
    ladder: tuple[float, ...] = _passthrough("ladder")
    default: float = _passthrough("default")

    def decode(self, payload: bytes, dim: int) -> np.ndarray:
        return self.codec.decode(payload, dim)

    def size_bound(self, dim: int, setting: float) -> int:
        return self.codec.size_bound(dim, setting)

    # -- the client side

    def init(self, dim: int) -> State:
        """One client's state: its residual (when enabled) and the codec's own state."""
        state: State = {"codec": self.codec.init(dim)}
        if self.enabled:
            state["residual"] = np.zeros(int(dim), dtype=np.float32)
        return state

    def encode(
        self,
        rows: np.ndarray,
        settings: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: State,
    ) -> tuple[list[bytes], np.ndarray, State]:
        """``rows`` ``[K, d]`` plus each client's residual, encoded by the codec ->
        (payloads, the server's reconstruction, the new stacked state)."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2:
            raise ValueError(f"rows must be [K, d], got shape {rows.shape}")
        codec_state = state.get("codec", {})  # an empty codec state does not survive stacking
        if not self.enabled:
            payloads, recon, new_codec = self.codec.encode(rows, settings, rngs, codec_state)
            return payloads, recon, {"codec": new_codec}
        residual = state.get("residual")
        if residual is None:
            raise ValueError("error feedback state has no 'residual'; build it with init(dim)")
        residual = np.asarray(residual, dtype=np.float32)
        if residual.shape != rows.shape:
            raise ValueError(f"residual has shape {residual.shape}, rows have {rows.shape}")
        v = rows + residual
        payloads, recon, new_codec = self.codec.encode(v, settings, rngs, codec_state)
        recon = np.asarray(recon, dtype=np.float32)
        return payloads, recon, {"residual": v - recon, "codec": new_codec}


def dgc_warmup(setting: float | np.ndarray, round: int, warmup_rounds: int) -> float | np.ndarray:
    """The kept fraction to use in ``round`` (counted from 1) under DGC's warm-up.

    During the first ``warmup_rounds`` rounds the kept fraction decays exponentially,
    ``max(setting, 0.25 ** round)`` (75%, 93.75%, 98.4%, ... of the values dropped), so
    that early updates, which change the model most, are not sparsified at the final
    rate before the residuals have settled; afterwards it is ``setting``. For
    fraction-type codecs (top-k, random-k). ``setting`` may be one value or an array of
    per-client settings (the result has the same form).

    References: Lin et al., "Deep Gradient Compression: Reducing the Communication
    Bandwidth for Distributed Training", ICLR 2018.
    """
    if round < 1:
        raise ValueError(f"round = {round}: rounds are counted from 1")
    if warmup_rounds < 0:
        raise ValueError(f"warmup_rounds = {warmup_rounds}: expected >= 0")
    if np.ndim(setting) == 0:
        s = float(setting)
        return max(s, 0.25**round) if round <= warmup_rounds else s
    arr = np.asarray(setting, dtype=np.float64)
    return np.maximum(arr, 0.25**round) if round <= warmup_rounds else arr.copy()
