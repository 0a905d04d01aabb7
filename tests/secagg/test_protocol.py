"""SecAgg+ protocol: exact sums under dropouts, aborts below threshold, hostile messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.secagg import (
    FixedPoint,
    SecAggClient,
    SecAggError,
    SecAggServer,
    simulate,
    simulate_encoded,
)
from fedloom.secagg.protocol import STAGES


def _expect_success(
    server: SecAggServer, n: int, t: int, dropouts: dict[str, list[int]]
) -> tuple[bool, list[int]]:
    """Oracle: does the round have t clients and t live share holders for every secret?"""
    gone: set[int] = set()
    alive = []
    for stage in STAGES:
        gone |= set(dropouts.get(stage, []))
        alive.append(set(range(n)) - gone)
    u1, u2, u3, u4 = alive
    if min(len(u) for u in alive) < t:
        return False, []
    holders = {i: (server.neighbours[i] & u1) | {i} for i in u1}
    if any(len(h) < t for h in holders.values()):
        return False, []
    for j in u2:
        needed = j in u3 or bool(server.neighbours[j] & u3)
        if needed and (len(holders[j] & u3) < t or len(holders[j] & u4) < t):
            return False, []
    return True, sorted(u3)


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_sum_is_exact_under_dropouts_at_every_stage(data: st.DataObject) -> None:
    n = data.draw(st.integers(5, 20), label="n")
    d = data.draw(st.integers(1, 12), label="d")
    k = data.draw(st.one_of(st.none(), st.integers(2, n - 1)), label="k")
    holders = n if k is None else k + 1
    t = data.draw(st.integers(2, min(holders, n - 1)), label="t")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    drop_count = data.draw(st.integers(0, n - t), label="drops")
    dropped = rng.choice(n, size=drop_count, replace=False).tolist()
    cuts = sorted(data.draw(st.lists(st.integers(0, drop_count), min_size=3, max_size=3)))
    bounds = [0, *cuts, drop_count]
    dropouts = {stage: dropped[bounds[s] : bounds[s + 1]] for s, stage in enumerate(STAGES)}

    vectors = rng.normal(size=(n, d))
    bits = data.draw(st.sampled_from([16, 32, 64]), label="bits")
    fixed_point = FixedPoint(4.0, n, bits)
    encoded = np.stack([fixed_point.encode(row) for row in vectors])
    oracle = SecAggServer(n, t, k, d, fixed_point, seed)
    ok, included = _expect_success(oracle, n, t, dropouts)
    if k is None:
        assert ok  # the complete graph tolerates any n - t dropouts
    if not ok:
        with pytest.raises(SecAggError):
            simulate_encoded(encoded, fixed_point, t, k, dropouts, seed)
        return
    total, report = simulate_encoded(encoded, fixed_point, t, k, dropouts, seed)
    assert report.included == included
    expected = encoded[included].sum(axis=0, dtype=fixed_point.dtype)  # wraps mod 2^bits
    np.testing.assert_array_equal(total, expected)
    decoded = fixed_point.decode_sum(total, len(included))
    clipped = np.clip(vectors[included], -4.0, 4.0).sum(axis=0)
    assert np.all(np.abs(decoded - clipped) <= len(included) * fixed_point.error_bound + 1e-9)


def test_complete_graph_simulate_and_report() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.uniform(-1, 1, size=(8, 5))
    dropouts = {"share_keys": [0], "masked_input": [5], "unmasking": [6, 7]}
    total, report = simulate(vectors, threshold=4, dropouts=dropouts, seed=3, clip=1.0)
    assert report.included == [1, 2, 3, 4, 6, 7]  # reached masked_input, did not drop there
    bound = len(report.included) * FixedPoint(1.0, 8).error_bound + 1e-12
    assert np.all(np.abs(total - vectors[report.included].sum(axis=0)) <= bound)
    assert report.client_time_s > 0 and report.server_time_s > 0
    assert report.upload_bytes_per_client > 5 * 8  # at least two keys and a vector
    assert report.download_bytes_per_client > 0


def test_sparse_graph_is_symmetric_with_about_k_neighbours() -> None:
    server = SecAggServer(11, 3, 4, 2, FixedPoint(1.0, 11), seed=5)
    for i, peers in enumerate(server.neighbours):
        assert i not in peers and len(peers) == 4
        assert all(i in server.neighbours[j] for j in peers)
    complete = SecAggServer(6, 3, None, 2, FixedPoint(1.0, 6), seed=5)
    assert all(len(p) == 5 for p in complete.neighbours)


@pytest.mark.parametrize("stage", STAGES)
def test_fewer_than_threshold_survivors_aborts(stage: str) -> None:
    vectors = np.ones((6, 3))
    with pytest.raises(SecAggError, match="below the threshold"):
        simulate(vectors, threshold=4, dropouts={stage: [0, 1, 2]}, seed=0)


def _round(n: int = 5, t: int = 3, d: int = 4) -> tuple[SecAggServer, list[SecAggClient]]:
    fixed_point = FixedPoint(1.0, n)
    rng = np.random.default_rng(0)
    clients = [SecAggClient(i, fixed_point.encode(rng.uniform(-1, 1, d)), t) for i in range(n)]
    return SecAggServer(n, t, None, d, fixed_point, seed=0), clients


def _step(clients: list[SecAggClient], requests: dict, stage: str) -> list:
    return [getattr(clients[i], stage)(request) for i, request in requests.items()]


def test_client_refuses_both_shares_of_one_peer() -> None:
    server, clients = _round()
    requests = server.advertise_keys()
    steps = (server.share_keys, server.masked_input, server.unmasking)
    for stage, step in zip(STAGES[:3], steps, strict=True):
        requests = step(_step(clients, requests, stage))
    request = requests[0]
    both = dataclasses.replace(request, dropped=(1,), survived=tuple(request.survived))
    with pytest.raises(SecAggError, match="both the self-mask and the mask-key share"):
        clients[0].unmasking(both)


def test_replayed_wrong_stage_and_tampered_messages_are_rejected() -> None:
    server, clients = _round()
    requests = server.advertise_keys()
    adverts = _step(clients, requests, "advertise_keys")
    with pytest.raises(SecAggError, match="cannot run 'advertise_keys'"):
        clients[0].advertise_keys(requests[0])  # replay to a client
    with pytest.raises(SecAggError, match="replayed 'advertise_keys' message from client 0"):
        server.share_keys([adverts[0], *adverts])
    with pytest.raises(SecAggError, match="server is at 'share_keys', cannot run 'masked_input'"):
        server.masked_input([])
    keys = server.share_keys(adverts)  # the rejected batch left the server usable
    shares = _step(clients, keys, "share_keys")
    with pytest.raises(SecAggError, match="for stage 'masked_input', expected 'share_keys'"):
        server.masked_input([dataclasses.replace(shares[0], stage="masked_input")])
    with pytest.raises(SecAggError, match="expects a EncryptedShares, got KeysAdvert"):
        server.masked_input(adverts)
    server, clients = _round()
    requests = server.advertise_keys()
    requests = server.share_keys(_step(clients, requests, "advertise_keys"))
    wrong = dataclasses.replace(requests[1], stage="masked_input")
    with pytest.raises(SecAggError, match="expected 'share_keys'"):
        clients[1].share_keys(wrong)
    with pytest.raises(SecAggError, match="is at stage 'share_keys', cannot run 'masked_input'"):
        clients[1].masked_input(wrong)  # type: ignore[arg-type]
    routed = server.masked_input(_step(clients, requests, "share_keys"))
    ciphertexts = dict(routed[2].ciphertexts)
    flipped = bytearray(ciphertexts[0])
    flipped[20] ^= 1
    ciphertexts[0] = bytes(flipped)
    with pytest.raises(SecAggError, match="tampered"):
        clients[2].masked_input(dataclasses.replace(routed[2], ciphertexts=ciphertexts))
    swapped = dict(routed[3].ciphertexts)
    swapped[0], swapped[1] = swapped[1], swapped[0]  # re-addressed: associated data differs
    with pytest.raises(SecAggError, match="tampered"):
        clients[3].masked_input(dataclasses.replace(routed[3], ciphertexts=swapped))


def test_server_never_sees_an_unmasked_vector() -> None:
    server, clients = _round(n=6, t=3, d=16)
    requests = server.advertise_keys()
    requests = server.share_keys(_step(clients, requests, "advertise_keys"))
    requests = server.masked_input(_step(clients, requests, "share_keys"))
    inputs = _step(clients, requests, "masked_input")
    for message, client in zip(inputs, clients, strict=True):
        x = client._x
        assert message.y.dtype == np.uint32
        assert np.any(message.y != x)
        assert np.count_nonzero(message.y - x) > 12  # a mask, not a few coincidences
    requests = server.unmasking(inputs)
    total = server.aggregate(_step(clients, requests, "unmasking"))
    expected = np.stack([c._x for c in clients]).sum(axis=0, dtype=np.uint32)
    np.testing.assert_array_equal(total, expected)


@pytest.mark.parametrize(("threshold", "refused"), [(2, True), (3, False)])
def test_a_majority_client_refuses_a_minority_threshold(threshold: int, refused: bool) -> None:
    """Four clients, complete graph (4 share holders each): with t = 2 a server could ask
    two holders for a client's self-mask seed and the other two for its mask key, so a
    client that insists on a majority refuses before sharing anything; t = 3 is fine."""
    fixed = FixedPoint(1.0, 4, 32)
    server = SecAggServer(4, threshold, None, 3, fixed, seed=0)
    clients = [SecAggClient(i, np.zeros(3, np.uint32), threshold, majority=True) for i in range(4)]
    requests = server.advertise_keys()
    adverts = [c.advertise_keys(requests[c.index]) for c in clients]
    keys = server.share_keys(adverts)
    if refused:
        with pytest.raises(SecAggError, match="not a majority"):
            clients[0].share_keys(keys[0])
    else:
        assert set(clients[0].share_keys(keys[0]).ciphertexts) == {1, 2, 3}
