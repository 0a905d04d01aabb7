"""Signed keys: a malicious server cannot substitute, replay or strip the advertised keys."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fedloom.secagg import (
    FixedPoint,
    SecAggClient,
    SecAggError,
    SecAggServer,
    advert_payload,
    agree,
    field_to_bytes,
    generate_keypair,
    generate_signing_key,
    prg,
    reconstruct,
    simulate,
    simulate_encoded,
    verify,
)
from fedloom.secagg.protocol import (
    SERVER,
    STAGES,
    AdvertiseRequest,
    KeysAdvert,
    NeighbourKeys,
)

MASK_INFO = b"fedloom/secagg/mask/"  # protocol._MASK_INFO: the attacker knows the protocol


def _signers(n: int, ecdsa: bool = False) -> list:
    if ecdsa:
        return [ec.generate_private_key(ec.SECP256R1()) for _ in range(n)]
    return [generate_signing_key() for _ in range(n)]


def _round(
    n: int = 4, t: int = 3, d: int = 8, signers: list | None = None, seed: int = 0
) -> tuple[SecAggServer, list[SecAggClient]]:
    """A complete-graph round; with ``signers`` every client signs and verifies all."""
    fixed_point = FixedPoint(1.0, n)
    rng = np.random.default_rng(seed)
    verify_keys = {i: key.public_key() for i, key in enumerate(signers)} if signers else None
    clients = [
        SecAggClient(
            i,
            fixed_point.encode(rng.uniform(-1, 1, d)),
            t,
            signing_key=signers[i] if signers else None,
            verify_keys=verify_keys,
        )
        for i in range(n)
    ]
    return SecAggServer(n, t, None, d, fixed_point, seed=0), clients


def _step(clients: list[SecAggClient], requests: dict, stage: str) -> list:
    return [getattr(clients[i], stage)(request) for i, request in requests.items()]


def _run(server: SecAggServer, clients: list[SecAggClient]) -> np.ndarray:
    requests = server.advertise_keys()
    steps = (server.share_keys, server.masked_input, server.unmasking, server.aggregate)
    for stage, step in zip(STAGES, steps, strict=True):
        requests = step(_step(clients, requests, stage))
    return requests


def _request(server: SecAggServer, i: int) -> AdvertiseRequest:
    return AdvertiseRequest(server.round_id, "advertise_keys", SERVER, i)


def _keys_for(server: SecAggServer, clients: list[SecAggClient]) -> dict[int, NeighbourKeys]:
    return server.share_keys(_step(clients, server.advertise_keys(), "advertise_keys"))


# --- honest rounds ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [None, 4])
def test_signed_round_sums_exactly_with_dropouts(k: int | None) -> None:
    n, d = 12, 6
    fixed_point = FixedPoint(2.0, n)
    rng = np.random.default_rng(7)
    encoded = np.stack([fixed_point.encode(row) for row in rng.normal(size=(n, d))])
    dropouts = {"share_keys": [0], "masked_input": [5], "unmasking": [6]}
    total, report = simulate_encoded(encoded, fixed_point, 3, k, dropouts, seed=1, signed=True)
    assert report.included == [i for i in range(n) if i not in (0, 5)]
    expected = encoded[report.included].sum(axis=0, dtype=fixed_point.dtype)
    np.testing.assert_array_equal(total, expected)


def test_simulate_signed_reports_the_signature_bytes() -> None:
    vectors = np.random.default_rng(0).uniform(-1, 1, size=(6, 4))
    _, plain = simulate(vectors, threshold=3, seed=2)
    total, signed = simulate(vectors, threshold=3, seed=2, signed=True)
    assert signed.included == plain.included == list(range(6))
    assert np.allclose(total, vectors.sum(axis=0), atol=6 * FixedPoint(1.0, 6).error_bound)
    assert signed.upload_bytes_per_client == plain.upload_bytes_per_client + 64  # one Ed25519
    assert signed.download_bytes_per_client == plain.download_bytes_per_client + 5 * 64


def test_ecdsa_p256_and_ed25519_signers_mix_in_one_round() -> None:
    signers = _signers(2, ecdsa=True) + _signers(3)
    server, clients = _round(n=5, signers=signers)
    total = _run(server, clients)
    expected = np.stack([c._x for c in clients]).sum(axis=0, dtype=np.uint32)
    np.testing.assert_array_equal(total, expected)


def test_adverts_carry_a_signature_of_the_bound_payload_and_wire_size_counts_it() -> None:
    signers = _signers(4)
    server, clients = _round(signers=signers)
    adverts = _step(clients, server.advertise_keys(), "advertise_keys")
    for advert in adverts:
        payload = advert_payload(server.round_id, advert.sender, advert.c_public, advert.s_public)
        verify(signers[advert.sender].public_key(), advert.signature, payload)
        unsigned = dataclasses.replace(advert, signature=b"")
        assert advert.wire_size == unsigned.wire_size + 64
    keys = server.share_keys(adverts)
    assert set(keys[0].signatures) == {1, 2, 3}
    assert keys[0].wire_size == dataclasses.replace(keys[0], signatures={}).wire_size + 3 * 64
    _, unsigned_clients = _round()
    plain = _keys_for(SecAggServer(4, 3, None, 8, FixedPoint(1.0, 4), 0), unsigned_clients)
    assert plain[0].signatures == {}  # unsigned rounds forward no signatures


def test_advert_payload_is_unambiguous_and_checked() -> None:
    c, s = bytes(range(32)), bytes(range(32, 64))
    payload = advert_payload(b"round", 7, c, s)
    length, index = (5).to_bytes(4, "big"), (7).to_bytes(4, "big")
    assert payload == b"fedloom/secagg/keys/" + length + b"round" + index + c + s
    variants = {
        advert_payload(r, i, *keys)
        for r in (b"r", b"r\x00", b"\x00r", b"r\x00\x00\x00\x00")
        for i in (0, 7, 2**24)
        for keys in ((c, s), (s, c))
    }
    assert len(variants) == 4 * 3 * 2  # distinct inputs, distinct signed bytes
    with pytest.raises(SecAggError, match="c_public must be 32 bytes"):
        advert_payload(b"round", 7, c[:31], s)
    with pytest.raises(SecAggError, match="index must be an int"):
        advert_payload(b"round", -1, c, s)
    with pytest.raises(SecAggError, match="round id must be non-empty"):
        advert_payload(b"", 7, c, s)


# --- a malicious server --------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1])  # 0: c_public (share encryption), 1: s_public (masks)
def test_swapped_neighbour_key_is_refused_when_signed(which: int) -> None:
    server, clients = _round(signers=_signers(4))
    keys = _keys_for(server, clients)
    swapped = dict(keys[0].keys)
    pair = list(swapped[2])
    pair[which] = generate_keypair()[1]  # the server's own key in place of client 2's
    swapped[2] = (pair[0], pair[1])
    with pytest.raises(SecAggError, match="client 0 refuses neighbour 2's keys"):
        clients[0].share_keys(dataclasses.replace(keys[0], keys=swapped))


def test_swapped_s_key_goes_undetected_unsigned_and_reveals_the_input() -> None:
    """The attack signatures stop: without them the server learns client 0's input."""
    server, clients = _round()
    adverts = _step(clients, server.advertise_keys(), "advertise_keys")
    keys = server.share_keys(adverts)
    evil_private, evil_public = generate_keypair()
    forged = {j: (c, evil_public) for j, (c, _) in keys[0].keys.items()}
    keys[0] = dataclasses.replace(keys[0], keys=forged)  # every neighbour's s key is the server's
    requests = server.masked_input(_step(clients, keys, "share_keys"))  # accepted
    inputs = _step(clients, requests, "masked_input")
    requests = server.unmasking(inputs)
    replies = _step(clients, requests, "unmasking")  # honest clients reveal b_0's shares
    holders = server._holders[0]
    xs = [position + 1 for position, h in enumerate(holders)][:3]
    rows = np.array([replies[h].seed_shares[0] for h in holders[:3]], dtype=np.int64)
    b_0 = field_to_bytes(reconstruct(xs, rows))
    s_0_public = next(a.s_public for a in adverts if a.sender == 0)
    mask = prg(agree(evil_private, s_0_public, MASK_INFO + server.round_id), 8, 32)
    y_0 = next(m.y for m in inputs if m.sender == 0)
    x_0 = y_0 - prg(b_0, 8, 32) + np.uint32(3) * mask  # client 0 subtracted the 3 masks
    np.testing.assert_array_equal(x_0, clients[0]._x)


def test_signature_from_another_round_is_refused() -> None:
    signers = _signers(4)
    old_server, old_clients = _round(signers=signers)
    old = _keys_for(old_server, old_clients)  # adverts and signatures of an earlier round
    server, clients = _round(signers=signers)
    keys = _keys_for(server, clients)
    replayed = dataclasses.replace(
        keys[0],
        keys={**keys[0].keys, 1: old[0].keys[1]},
        signatures={**keys[0].signatures, 1: old[0].signatures[1]},
    )
    with pytest.raises(SecAggError, match="refuses neighbour 1's keys: signature verification"):
        clients[0].share_keys(replayed)


def test_signature_of_another_index_is_refused() -> None:
    signers = _signers(4)
    signers[2] = signers[1]  # one key certifies two indices: only the signed index differs
    server, clients = _round(signers=signers)
    keys = _keys_for(server, clients)
    relabelled = dataclasses.replace(
        keys[0],
        keys={**keys[0].keys, 1: keys[0].keys[2]},
        signatures={**keys[0].signatures, 1: keys[0].signatures[2]},
    )
    with pytest.raises(SecAggError, match="refuses neighbour 1's keys"):
        clients[0].share_keys(relabelled)


def test_missing_tampered_or_foreign_signature_is_refused() -> None:
    signers = _signers(4)
    for change, match in (
        (lambda sigs: {j: s for j, s in sigs.items() if j != 3}, "keys of client 3 are unsigned"),
        (lambda sigs: {**sigs, 3: b""}, "keys of client 3 are unsigned"),
        (lambda sigs: {**sigs, 3: sigs[3][:-1] + bytes([sigs[3][-1] ^ 1])}, "verification"),
        (lambda sigs: {**sigs, 3: sigs[1]}, "verification"),
    ):
        server, clients = _round(signers=signers)
        keys = _keys_for(server, clients)
        message = dataclasses.replace(keys[0], signatures=change(keys[0].signatures))
        with pytest.raises(SecAggError, match=f"client 0 refuses neighbour 3's keys: .*{match}"):
            clients[0].share_keys(message)
        # the same message passes a client that verifies nothing (the old behaviour)
        unsigned = SecAggClient(0, clients[0]._x, 3)
        unsigned.advertise_keys(_request(server, 0))
        unsigned.share_keys(message)


def test_client_without_a_verify_key_for_a_neighbour_refuses() -> None:
    signers = _signers(4)
    server, clients = _round(signers=signers)
    partial = {i: signers[i].public_key() for i in (0, 1, 2)}
    clients[0] = SecAggClient(0, clients[0]._x, 3, signing_key=signers[0], verify_keys=partial)
    keys = _keys_for(server, clients)
    with pytest.raises(SecAggError, match="refuses neighbour 3's keys: no verify key for client 3"):
        clients[0].share_keys(keys[0])


def test_client_with_a_wrong_type_of_verify_key_refuses() -> None:
    signers = _signers(4)
    server, clients = _round(signers=signers)
    odd = {**{i: k.public_key() for i, k in enumerate(signers)}, 2: signers[2]}  # a private key
    clients[0] = SecAggClient(0, clients[0]._x, 3, signing_key=signers[0], verify_keys=odd)
    keys = _keys_for(server, clients)
    with pytest.raises(SecAggError, match="refuses neighbour 2's keys: verify key must be"):
        clients[0].share_keys(keys[0])


def test_unsupported_signing_key_fails_at_advertise() -> None:
    raw = generate_keypair()[0]  # X25519 bytes, not a signing key object
    client = SecAggClient(0, np.zeros(3, np.uint32), 2, signing_key=raw)  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="signing key must be"):
        client.advertise_keys(_request(SecAggServer(3, 2, None, 3, FixedPoint(1.0, 3), 0), 0))


# --- the server's optional check ---------------------------------------------------------


def test_server_with_verify_keys_refuses_only_the_bad_advert_and_stays_usable() -> None:
    signers = _signers(5)
    _, clients = _round(n=5, signers=signers)
    verify_keys = {i: k.public_key() for i, k in enumerate(signers)}
    server = SecAggServer(5, 3, None, 8, FixedPoint(1.0, 5), 0, verify_keys=verify_keys)
    adverts = _step(clients, server.advertise_keys(), "advertise_keys")
    forged: KeysAdvert = dataclasses.replace(adverts[4], s_public=generate_keypair()[1])
    with pytest.raises(SecAggError, match="advert of client 4 refused: signature verification"):
        server.share_keys([*adverts[:4], forged])
    unsigned = dataclasses.replace(adverts[4], signature=b"")
    with pytest.raises(SecAggError, match="advert of client 4 refused: .* unsigned"):
        server.share_keys([*adverts[:4], unsigned])
    keys = server.share_keys(adverts[:4])  # client 4 left out: the round goes on without it
    requests = server.masked_input(_step(clients, keys, "share_keys"))
    requests = server.unmasking(_step(clients, requests, "masked_input"))
    total = server.aggregate(_step(clients, requests, "unmasking"))
    expected = np.stack([c._x for c in clients[:4]]).sum(axis=0, dtype=np.uint32)
    np.testing.assert_array_equal(total, expected)
