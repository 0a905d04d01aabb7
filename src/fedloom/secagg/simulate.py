"""Run one SecAgg+ round in a single process, with scripted dropouts, and measure its cost.

The driver delivers the sans-IO messages of :mod:`fedloom.secagg.protocol` directly (no
network), times each role's work with ``time.perf_counter`` and counts the bytes of every
message (``wire_size``: headers, keys, signatures, ciphertexts, shares and vectors).

References: Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020; Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS 2017.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.secagg.crypto import SecAggError, generate_signing_key
from fedloom.secagg.encoding import FixedPoint
from fedloom.secagg.protocol import STAGES, SecAggClient, SecAggServer


@dataclass
class SecAggReport:
    """What one simulated round cost.

    ``included``: clients whose masked input is in the sum. ``client_time_s``: mean over
    all ``n`` clients of the seconds each spent in its stage methods. ``server_time_s``:
    the server's seconds. ``upload_bytes_per_client`` / ``download_bytes_per_client``:
    mean over all ``n`` clients of the bytes each sent / received, all stages.
    """

    included: list[int]
    client_time_s: float
    server_time_s: float
    upload_bytes_per_client: float
    download_bytes_per_client: float


def _dropouts(dropouts: Mapping[str, Sequence[int]] | None, n: int) -> dict[str, set[int]]:
    """For each stage, the clients gone by then (dropped at it or earlier)."""
    given = dict(dropouts or {})
    unknown = set(given) - set(STAGES)
    if unknown:
        raise SecAggError(f"unknown dropout stage(s) {sorted(unknown)}; stages are {STAGES}")
    gone: set[int] = set()
    out = {}
    for stage in STAGES:
        for i in given.get(stage, ()):
            if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < n:
                raise SecAggError(f"dropout client {i!r} at {stage!r} is not in [0, {n})")
            gone.add(int(i))
        out[stage] = set(gone)
    return out


def simulate(
    vectors: np.ndarray,
    threshold: int,
    neighbours: int | None = None,
    dropouts: Mapping[str, Sequence[int]] | None = None,
    seed: int | None = None,
    clip: float | None = None,
    signed: bool = False,
) -> tuple[np.ndarray, SecAggReport]:
    """Securely sum the rows of ``vectors`` ``[n, d]``; return the float sum and a report.

    ``dropouts[stage]`` lists the clients that drop at that stage (they send nothing from
    it on). ``clip`` bounds the values (default: the largest absolute value, or 1.0);
    ``seed`` drives only the neighbour graph. The sum is over ``report.included``. Raises
    :class:`SecAggError` when the round aborts (too few clients or share holders).
    ``signed`` gives each client an Ed25519 signing key and every client all verify keys
    (a stand-in for a PKI, set up untimed): adverts are signed and checked, and the report
    counts that time and the signature bytes.

    References: see the module docstring.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise SecAggError(f"vectors must be a non-empty [n, d] array, got shape {x.shape}")
    if clip is None:
        peak = float(np.max(np.abs(x))) if np.all(np.isfinite(x)) else 1.0
        clip = peak if peak > 0 else 1.0
    fixed_point = FixedPoint(clip, x.shape[0])
    encoded = np.stack([fixed_point.encode(row) for row in x])
    total, report = simulate_encoded(
        encoded, fixed_point, threshold, neighbours, dropouts, seed, signed=signed
    )
    return fixed_point.decode_sum(total, len(report.included)), report


def simulate_encoded(
    encoded: np.ndarray,
    fixed_point: FixedPoint,
    threshold: int,
    neighbours: int | None = None,
    dropouts: Mapping[str, Sequence[int]] | None = None,
    seed: int | None = None,
    signed: bool = False,
    min_inputs: int = 1,
) -> tuple[np.ndarray, SecAggReport]:
    """:func:`simulate` on already encoded rows; returns the sum mod 2^bits, not decoded.

    The exact integer result lets tests compare with the plain sum of the encodings.
    ``min_inputs``: the server aborts rather than unmask a sum of fewer inputs.
    """
    encoded = np.asarray(encoded)
    if encoded.ndim != 2 or encoded.dtype != fixed_point.dtype:
        raise SecAggError(
            f"encoded must be an [n, d] {fixed_point.dtype} array, got "
            f"{encoded.dtype} of shape {encoded.shape}"
        )
    n, d = encoded.shape
    gone = _dropouts(dropouts, n)
    server = SecAggServer(n, threshold, neighbours, d, fixed_point, seed, min_inputs=min_inputs)
    signers = [generate_signing_key() for _ in range(n)] if signed else []
    verify_keys = {i: key.public_key() for i, key in enumerate(signers)} if signed else None
    clients = [
        SecAggClient(
            i,
            encoded[i],
            threshold,
            signing_key=signers[i] if signed else None,
            verify_keys=verify_keys,
        )
        for i in range(n)
    ]
    client_time = np.zeros(n)
    upload = np.zeros(n)
    download = np.zeros(n)
    server_time = 0.0

    def serve(step: Callable, *args: object) -> object:
        nonlocal server_time
        start = time.perf_counter()
        result = step(*args)
        server_time += time.perf_counter() - start
        return result

    def clients_reply(requests: dict, stage: str) -> list:
        replies = []
        for i, request in requests.items():
            if i in gone[stage]:
                continue
            download[i] += request.wire_size
            start = time.perf_counter()
            reply = getattr(clients[i], stage)(request)
            client_time[i] += time.perf_counter() - start
            upload[i] += reply.wire_size
            replies.append(reply)
        return replies

    requests = serve(server.advertise_keys)
    for stage, next_step in zip(
        STAGES,
        (server.share_keys, server.masked_input, server.unmasking, server.aggregate),
        strict=True,
    ):
        requests = serve(next_step, clients_reply(requests, stage))
    total = requests
    report = SecAggReport(
        included=list(server.included),
        client_time_s=float(client_time.mean()),
        server_time_s=server_time,
        upload_bytes_per_client=float(upload.mean()),
        download_bytes_per_client=float(download.mean()),
    )
    return total, report
