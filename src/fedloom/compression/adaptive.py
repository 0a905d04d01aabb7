"""Adaptive compression: each client's codec setting chosen from its link and the round's
planned length.

A synchronous round lasts at least as long as its slowest client takes to download and
train, and no longer than the deadline. Every round the server plans its length
(:func:`planned_length`): the cohort's slowest download plus training, plus the typical
(median) client's upload at the codec's default setting (over the margin, so that it
still fits), capped by the deadline. A cohort of alike clients thus keeps the default. Each
client may then upload until that planned end: its time left (:func:`time_left`) is the
planned length less its own download and training, scaled by a safety ``margin`` and
less the link's latency. That time at the client's upload rate is its byte budget, and
the client encodes with the densest setting of the codec's ``ladder`` whose
:meth:`Codec.size_bound` fits the budget. When no setting fits, the sparsest is used and
the client is marked as not fitting.

So compression takes the network off the round's critical path: a client on a slow link
sends less instead of holding the round, and a client that would otherwise wait for the
slowest one (a fast link, little data) fills that time with a denser update. Aiming every
upload at the deadline instead would make every round last until the deadline.

Why the margin: the compute time is an estimate from earlier rounds and the upload rate
a smoothed measurement; either can be wrong this round, and a link's rate changes while
the upload is in flight. Planning to use only ``margin`` of the time left leaves room
for that error instead of aiming the payload exactly at the deadline.

The choice is made again every round from the latest rate estimates, so a client whose
bandwidth drops during a run gets a sparser setting from the next round on (and a
denser one once the link recovers); nothing is fixed at selection or at the start.

Clients without a usable estimate (rate unknown, i.e. NaN or <= 0, or time left
unknown) and runs without a deadline use the codec's ``default`` setting.

References: the deadline-based estimate of each client's time left resembles FedCS
(Nishio & Yonetani, "Client Selection for Federated Learning with Heterogeneous
Resources in Mobile Edge", ICC 2019); choosing a per-device compression level from
that device's resources resembles AQFL (Abdelmoniem & Canini, "Towards Mitigating
Device Heterogeneity in Federated Learning via Adaptive Model Quantization", EuroMLSys
2021). Accordion (Agarwal et al., "Adaptive Gradient Communication via Critical
Learning Regime Identification", MLSys 2021) and DAdaQuant (Hönig et al., ICML 2022)
also adapt the compression level during training, but from the training state rather
than from each client's bandwidth as here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedloom.compression.codec import Codec


@dataclass(frozen=True)
class Choice:
    """The policy's answer for K clients.

    ``settings`` ``[K]`` float64: the setting each client encodes with; ``fits`` ``[K]``
    bool: the setting's size bound is known to fit the client's budget (True also when
    there is no deadline; False when nothing fits or the budget is unknown);
    ``budget_bytes`` ``[K]`` float64: the bytes each client may upload (inf without a
    deadline, NaN when its rate or time left is unknown, <= 0 when no time is left).
    """

    settings: np.ndarray
    fits: np.ndarray
    budget_bytes: np.ndarray


@dataclass(frozen=True)
class AdaptivePolicy:
    """Per-client setting from upload rate, latency and time left (see the module
    docstring); ``margin`` in (0, 1] is the share of the time left the upload may use."""

    margin: float = 0.8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and 0.0 < self.margin <= 1.0):
            raise ValueError(f"margin = {self.margin!r}: expected a number in (0, 1]")

    def choose(
        self,
        codec: Codec,
        dim: int,
        up_bytes_per_s: np.ndarray,
        latency_s: np.ndarray,
        time_left_s: np.ndarray,
    ) -> Choice:
        """The setting for each of K clients: the densest of ``codec.ladder`` whose size
        bound for ``dim`` values fits ``(margin * time_left_s - latency_s) *
        up_bytes_per_s`` bytes; the sparsest (``fits`` False) when none does;
        ``codec.default`` for clients with an unknown rate or time left and when
        ``time_left_s`` is inf. A NaN latency counts as zero."""
        if isinstance(dim, bool) or int(dim) != dim or dim <= 0:
            raise ValueError(f"dim = {dim!r}: expected a positive integer")
        ladder = np.asarray(codec.ladder, dtype=np.float64)
        if ladder.ndim != 1 or ladder.size == 0:
            raise ValueError(f"codec.ladder = {codec.ladder!r}: expected at least one setting")
        rate = np.asarray(up_bytes_per_s, dtype=np.float64)
        latency = np.asarray(latency_s, dtype=np.float64)
        left = np.asarray(time_left_s, dtype=np.float64)
        if rate.ndim != 1 or latency.shape != rate.shape or left.shape != rate.shape:
            raise ValueError(
                f"up_bytes_per_s, latency_s, time_left_s have shapes {rate.shape}, "
                f"{latency.shape}, {left.shape}: expected the same [K]"
            )
        # one size bound per ladder rung, compared with every client's budget at once
        bounds = np.array([codec.size_bound(int(dim), float(s)) for s in ladder], np.float64)

        no_deadline = np.isposinf(left)
        unknown = ~(rate > 0) | np.isnan(left)  # NaN compares False
        seconds = self.margin * left - np.nan_to_num(latency, nan=0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            budget = seconds * rate
        budget = np.where(np.isnan(budget) & ~unknown, 0.0, budget)  # 0 s * inf B/s
        budget = np.where(unknown, np.nan, budget)
        budget = np.where(no_deadline, np.inf, budget)

        # [K, L]; NaN budgets fit nothing; a budget planned for exactly a setting's bound
        # (the typical client's default, planned_length) fits despite float rounding
        ok = bounds[None, :] <= budget[:, None] * (1 + 1e-9)
        any_fits = ok.any(axis=1)
        rung = np.where(any_fits, ok.argmax(axis=1), ladder.size - 1)
        settings = ladder[rung]
        adaptive = ~(no_deadline | unknown)
        settings = np.where(adaptive, settings, float(codec.default))
        fits = np.where(adaptive, any_fits, no_deadline)
        return Choice(settings=settings, fits=fits.astype(bool), budget_bytes=budget)

    def plan(
        self,
        codec: Codec,
        dim: int,
        default: float,
        deadline_s: float | None,
        up_bytes_per_s: np.ndarray,
        latency_s: np.ndarray,
        download_s: np.ndarray,
        compute_s: np.ndarray,
    ) -> np.ndarray:
        """Each of K clients' setting for a round (the module docstring's policy):
        the round's :func:`planned_length` from the ``default`` setting's upload, each
        client's :func:`time_left` within it, then :meth:`choose`. A compute time not
        known yet (NaN) is left out of the round's length and counts as 0 in the client's
        own time left."""
        latency = np.asarray(latency_s, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            upload = latency + codec.size_bound(int(dim), default) / np.asarray(up_bytes_per_s)
        length = planned_length(deadline_s, download_s, compute_s, upload, self.margin)
        left = time_left(length, download_s, np.nan_to_num(compute_s, nan=0.0))
        return self.choose(codec, dim, up_bytes_per_s, latency, left).settings


def planned_length(
    deadline_s: float | None,
    download_s: np.ndarray,
    compute_s: np.ndarray,
    default_upload_s: np.ndarray,
    margin: float,
) -> float | None:
    """The round's planned length in seconds: the cohort's slowest download plus training
    and the median upload (latency included) at the codec's default setting over
    ``margin``, at most ``deadline_s``. Unknown (NaN) estimates are left out; with none
    known, the deadline (None: none)."""
    busy = np.asarray(download_s, dtype=np.float64) + np.asarray(compute_s, dtype=np.float64)
    upload = np.asarray(default_upload_s, dtype=np.float64)
    if not (np.isfinite(busy).any() and np.isfinite(upload).any()):
        return deadline_s
    length = float(np.nanmax(np.where(np.isfinite(busy), busy, np.nan)))
    # / margin: the typical client's default upload still fits once the margin is taken
    length += float(np.nanmedian(np.where(np.isfinite(upload), upload, np.nan))) / margin
    return length if deadline_s is None else min(length, float(deadline_s))


def time_left(
    deadline_s: float | None, download_s: np.ndarray, compute_s: np.ndarray
) -> np.ndarray:
    """Seconds each client has left for its upload: ``deadline_s`` (the round's planned
    length, :func:`planned_length`) less its download and compute time (``[K]``
    float64). All inf without one; negative when it is already past (then no setting
    fits); NaN where an estimate is NaN (unknown)."""
    download = np.asarray(download_s, dtype=np.float64)
    compute = np.asarray(compute_s, dtype=np.float64)
    download, compute = np.broadcast_arrays(download, compute)
    if deadline_s is None:
        return np.full(download.shape, np.inf)
    if math.isnan(deadline_s):
        raise ValueError(f"deadline_s = {deadline_s!r}: expected a number of seconds or None")
    return float(deadline_s) - download - compute
