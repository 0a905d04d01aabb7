"""Payload encoding, exact model deltas, transfer scheduling and the upload rate cap."""

from __future__ import annotations

import threading
import time
import zlib

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.transport import wire
from fedloom.transport.client import (
    ClientStats,
    RateLimiter,
    RetryPolicy,
    ServerGone,
    with_retries,
)
from fedloom.transport.server import TransferScheduler


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-6, 1.0))
def test_xor_delta_rebuilds_the_new_model_bit_for_bit(dim: int, seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=dim).astype(np.float32)
    new = (base + scale * rng.normal(size=dim)).astype(np.float32)
    new[rng.random(dim) < 0.1] = np.nan  # any bit pattern survives
    rebuilt = wire.apply_xor_delta(wire.xor_delta(new, base), base)
    assert rebuilt.tobytes() == new.tobytes()


def test_a_small_change_compresses_well() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=100_000).astype(np.float32)
    new = (base + 1e-3 * rng.normal(size=base.size)).astype(np.float32)
    assert len(wire.xor_delta(new, base)) < 0.8 * 4 * base.size


def test_bad_deltas_and_payloads_are_refused() -> None:
    base = np.zeros(10, dtype=np.float32)
    with pytest.raises(wire.WireError, match="does not decompress"):
        wire.apply_xor_delta(b"not zlib", base)
    with pytest.raises(wire.WireError, match="wrong size"):
        wire.apply_xor_delta(zlib.compress(b"\0" * 44), base)  # one value too many
    bomb = zlib.compress(b"\0" * (1 << 24))  # inflates far past the model size
    with pytest.raises(wire.WireError, match="wrong size"):
        wire.apply_xor_delta(bomb, base)
    with pytest.raises(wire.WireError, match="expected 40"):
        wire.as_float32(b"\0" * 36, 10, "update")


def test_chunks_cover_the_payload_in_order() -> None:
    data = bytes(range(256)) * 41
    pieces = list(wire.chunks(data, 1000))
    assert b"".join(pieces) == data and max(map(len, pieces)) == 1000
    assert list(wire.chunks(b"", 10)) == [b""]


def test_transfer_scheduler_bounds_concurrency_and_serves_earliest_deadline_first() -> None:
    scheduler = TransferScheduler(slots=1)
    order: list[float] = []
    gate = threading.Event()

    def hold() -> None:
        with scheduler.slot(None):
            gate.wait(10)

    def transfer(deadline: float) -> None:
        with scheduler.slot(deadline):
            order.append(deadline)

    holder = threading.Thread(target=hold)
    holder.start()
    while scheduler._free:  # the holder has the only slot
        time.sleep(0.01)
    waiters = [threading.Thread(target=transfer, args=(d,)) for d in (30.0, 10.0, 20.0)]
    for w in waiters:
        w.start()
    while len(scheduler._waiting) < 3:
        time.sleep(0.01)
    gate.set()
    for t in (holder, *waiters):
        t.join(10)
    assert order == [10.0, 20.0, 30.0]


def test_rate_limiter_spaces_chunks_by_their_size() -> None:
    limiter = RateLimiter(kbps=800)  # 100 kB/s
    start = time.monotonic()
    for _ in range(4):
        limiter.take(10_000)
    assert time.monotonic() - start >= 0.3 * 0.95  # the first chunk goes at once
    RateLimiter(None).take(10**9)  # no cap: returns at once


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    import random

    policy = RetryPolicy(base_s=0.1, cap_s=1.0)
    delays = policy.delays(random.Random(0))
    values = [next(delays) for _ in range(50)]
    assert all(0 <= v <= 1.0 for v in values)
    assert max(values[:2]) <= 0.2 and max(values[10:]) > 0.5


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


class _Denied(_Unavailable):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED


def test_transient_failures_and_damaged_transfers_are_retried_then_given_up() -> None:
    import random

    policy = RetryPolicy(base_s=0.001, cap_s=0.002, patience_s=0.5)
    stats = ClientStats()
    failures = iter([_Unavailable(), wire.WireError("bad sha256"), _Unavailable()])

    def flaky() -> str:
        err = next(failures, None)
        if err is not None:
            raise err
        return "ok"

    assert with_retries("download", flaky, policy, random.Random(0), stats) == "ok"
    assert stats.retries == 3

    def down() -> str:
        raise _Unavailable()

    with pytest.raises(ServerGone, match="UNAVAILABLE"):
        with_retries("join", down, policy, random.Random(0), stats)

    def denied() -> str:
        raise _Denied()

    with pytest.raises(grpc.RpcError):  # a refusal is final: no retry
        with_retries("upload", denied, policy, random.Random(0), ClientStats())


def test_background_hash_equals_sha256_of_the_chunks_in_order() -> None:
    import hashlib

    from fedloom.transport.client import _BackgroundHash

    pieces = [bytes([i]) * (5000 + 37 * i) for i in range(50)]
    with _BackgroundHash() as hasher:
        for piece in pieces:
            hasher.update(piece)
        assert hasher.digest() == hashlib.sha256(b"".join(pieces)).digest()
