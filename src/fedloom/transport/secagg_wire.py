"""SecAgg+ messages on the wire: :mod:`fedloom.secagg.protocol`'s dataclasses as protobuf.

Every message a peer sends is checked here before the state machine sees it: the body
must be the kind the stage expects, keys 32 bytes, ciphertexts of the one size a share
encryption has, indices inside the cohort, share vectors of the right length and inside
the field. The sender is never taken from the message: the server passes the index of
the authenticated client (its certificate), and a message claiming another is refused.
The masked input (a long vector) travels by the chunked ``Upload`` stream instead.

References: Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020; Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedloom.secagg.crypto import KEY_BYTES, NONCE_BYTES, TAG_BYTES, SecAggError
from fedloom.secagg.protocol import (
    SECRET_ELEMENTS,
    SERVER,
    SHARE_PLAINTEXT_BYTES,
    AdvertiseRequest,
    EncryptedShares,
    KeysAdvert,
    NeighbourKeys,
    RoutedShares,
    UnmaskRequest,
    UnmaskShares,
)
from fedloom.secagg.shamir import PRIME
from fedloom.transport import fedloom_pb2 as pb

CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES
MAX_SIGNATURE_BYTES = 80  # Ed25519: 64; ECDSA P-256 (DER): at most 72
ROUND_ID_BYTES = 16

ServerMessage = AdvertiseRequest | NeighbourKeys | RoutedShares | UnmaskRequest
ClientMessage = KeysAdvert | EncryptedShares | UnmaskShares

# which body each stage's messages carry, from the server and from the client
SERVER_BODY = {
    "advertise_keys": "advertise_request",
    "share_keys": "neighbour_keys",
    "masked_input": "routed_shares",
    "unmasking": "unmask_request",
}
CLIENT_BODY = {
    "advertise_keys": "keys_advert",
    "share_keys": "encrypted_shares",
    "unmasking": "unmask_shares",
}
CLIENT_STAGE = {body: stage for stage, body in CLIENT_BODY.items()}  # body -> its stage


def server_to_pb(
    task_id: str, message: ServerMessage, certificates: Mapping[int, bytes] | None = None
) -> pb.SecAggMessage:
    """The protobuf form of a server -> client stage message; ``certificates`` (signed
    keys) are the neighbours' certificates that ``NeighbourKeys`` carries along."""
    out = pb.SecAggMessage(
        task_id=task_id, round_id=message.round_id, sender=SERVER, recipient=message.recipient
    )
    if isinstance(message, AdvertiseRequest):
        out.advertise_request.SetInParent()
    elif isinstance(message, NeighbourKeys):
        out.neighbour_keys.SetInParent()
        for j, (c, s) in message.keys.items():
            out.neighbour_keys.keys[j].CopyFrom(pb.PublicKeys(c_public=c, s_public=s))
        out.neighbour_keys.signatures.update(message.signatures)
        if certificates is not None:
            for j in message.keys:
                out.neighbour_keys.certificates[j] = certificates[j]
    elif isinstance(message, RoutedShares):
        out.routed_shares.SetInParent()
        out.routed_shares.ciphertexts.update(message.ciphertexts)
    else:
        out.unmask_request.dropped.extend(message.dropped)
        out.unmask_request.survived.extend(message.survived)
    return out


def client_to_pb(task_id: str, message: ClientMessage) -> pb.SecAggMessage:
    """The protobuf form of a client -> server stage message."""
    out = pb.SecAggMessage(
        task_id=task_id, round_id=message.round_id, sender=message.sender, recipient=SERVER
    )
    if isinstance(message, KeysAdvert):
        out.keys_advert.c_public = message.c_public
        out.keys_advert.s_public = message.s_public
        out.keys_advert.signature = message.signature
    elif isinstance(message, EncryptedShares):
        out.encrypted_shares.SetInParent()
        out.encrypted_shares.ciphertexts.update(message.ciphertexts)
    else:
        out.unmask_shares.SetInParent()
        for table, shares in (
            (out.unmask_shares.seed_shares, message.seed_shares),
            (out.unmask_shares.key_shares, message.key_shares),
        ):
            for j, values in shares.items():
                table[j].values.extend(values)
    return out


def _body(message: pb.SecAggMessage, expected: str, stage: str) -> None:
    got = message.WhichOneof("body")
    if got != expected:
        raise SecAggError(f"stage {stage!r} expects a {expected!r} message, got {got!r}")


def _index(value: int, size: int, what: str) -> int:
    if not 0 <= value < size:
        raise SecAggError(f"{what} {value} is not a client index in [0, {size})")
    return int(value)


def _ciphertexts(table: Mapping[int, bytes], size: int, what: str) -> dict[int, bytes]:
    out = {}
    for j, ciphertext in table.items():
        _index(j, size, what)
        if len(ciphertext) != CIPHERTEXT_BYTES:
            raise SecAggError(
                f"{what} {j}: ciphertext of {len(ciphertext)} bytes, expected {CIPHERTEXT_BYTES}"
            )
        out[int(j)] = bytes(ciphertext)
    return out


def _signature(value: bytes, what: str) -> bytes:
    if len(value) > MAX_SIGNATURE_BYTES:
        raise SecAggError(f"{what} has {len(value)} bytes, at most {MAX_SIGNATURE_BYTES}")
    return bytes(value)


def _key(value: bytes, what: str) -> bytes:
    if len(value) != KEY_BYTES:
        raise SecAggError(f"{what} has {len(value)} bytes, expected {KEY_BYTES}")
    return bytes(value)


def client_from_pb(
    message: pb.SecAggMessage, stage: str, sender: int, num_clients: int
) -> ClientMessage:
    """A client's stage reply, checked; ``sender`` is the authenticated client's index."""
    if stage not in CLIENT_BODY:
        raise SecAggError(f"no client message is sent at stage {stage!r} by SecAggSend")
    _body(message, CLIENT_BODY[stage], stage)
    if message.sender != sender:
        raise SecAggError(f"message claims sender {message.sender}, but comes from {sender}")
    if len(message.round_id) != ROUND_ID_BYTES:
        raise SecAggError(f"round id has {len(message.round_id)} bytes, expected {ROUND_ID_BYTES}")
    round_id = bytes(message.round_id)
    if stage == "advertise_keys":
        keys = message.keys_advert
        return KeysAdvert(
            round_id,
            stage,
            sender,
            _key(keys.c_public, "c public key"),
            _key(keys.s_public, "s public key"),
            _signature(keys.signature, "the advert's signature"),
        )
    if stage == "share_keys":
        table = message.encrypted_shares.ciphertexts
        return EncryptedShares(round_id, stage, sender, _ciphertexts(table, num_clients, "peer"))
    shares: list[dict[int, tuple[int, ...]]] = []
    for name, table in (
        ("seed share", message.unmask_shares.seed_shares),
        ("key share", message.unmask_shares.key_shares),
    ):
        checked = {}
        for j, vector in table.items():
            _index(j, num_clients, f"{name} of client")
            values = tuple(int(v) for v in vector.values)
            if len(values) != SECRET_ELEMENTS or any(v >= PRIME for v in values):
                raise SecAggError(
                    f"{name} of client {j} must be {SECRET_ELEMENTS} field elements below 2^61 - 1"
                )
            checked[int(j)] = values
        shares.append(checked)
    return UnmaskShares(round_id, stage, sender, shares[0], shares[1])


def server_from_pb(
    message: pb.SecAggMessage, stage: str, recipient: int, num_clients: int
) -> ServerMessage:
    """The server's message for this client at ``stage``, checked (a client trusts the
    server's routing no more than the protocol needs: the state machine checks the rest)."""
    _body(message, SERVER_BODY[stage], stage)
    if message.recipient != recipient or message.sender != SERVER:
        raise SecAggError(
            f"message from {message.sender} to {message.recipient} delivered to {recipient}"
        )
    if len(message.round_id) != ROUND_ID_BYTES:
        raise SecAggError(f"round id has {len(message.round_id)} bytes, expected {ROUND_ID_BYTES}")
    round_id = bytes(message.round_id)
    if stage == "advertise_keys":
        return AdvertiseRequest(round_id, stage, SERVER, recipient)
    if stage == "share_keys":
        keys = {
            _index(j, num_clients, "neighbour"): (
                _key(k.c_public, f"neighbour {j}'s c key"),
                _key(k.s_public, f"neighbour {j}'s s key"),
            )
            for j, k in message.neighbour_keys.keys.items()
        }
        signatures = {
            _index(j, num_clients, "signing neighbour"): _signature(
                sig, f"neighbour {j}'s signature"
            )
            for j, sig in message.neighbour_keys.signatures.items()
        }
        return NeighbourKeys(round_id, stage, SERVER, recipient, keys, signatures)
    if stage == "masked_input":
        table = _ciphertexts(message.routed_shares.ciphertexts, num_clients, "neighbour")
        return RoutedShares(round_id, stage, SERVER, recipient, table)
    request = message.unmask_request
    return UnmaskRequest(
        round_id,
        stage,
        SERVER,
        recipient,
        tuple(_index(j, num_clients, "dropped peer") for j in request.dropped),
        tuple(_index(j, num_clients, "survived peer") for j in request.survived),
    )
