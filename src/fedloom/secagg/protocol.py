"""SecAgg+ as two sans-IO state machines: :class:`SecAggClient` and :class:`SecAggServer`.

Four stages, each a request from the server and a reply from every live client:

1. ``advertise_keys``: each client sends two X25519 public keys, ``c`` (share encryption)
   and ``s`` (mask agreement).
2. ``share_keys``: the server forwards each client its neighbours' keys; the client draws a
   32-byte self-mask seed ``b_i``, Shamir-shares ``b_i`` and its ``s`` private key among
   its share holders (itself and its neighbours) with threshold ``t``, and returns one
   AES-GCM ciphertext per neighbour for the server to route.
3. ``masked_input``: the server routes the ciphertexts; the client replies
   ``y_i = x_i + PRG(b_i) + sum_{j<i} PRG(s_ij) - sum_{j>i} PRG(s_ij)`` (mod 2^bits) over the
   neighbours whose shares it received.
4. ``unmasking``: the server names each survivor's neighbours that dropped before
   ``masked_input`` and those that survived; the client reveals the share of ``b_j`` for a
   survivor or of ``s_j`` for a dropped peer, never both for one peer. The server
   reconstructs the secrets from ``t`` shares each, strips self masks and the pairwise
   masks the dropped clients left behind, and obtains ``sum x_i`` over the survivors.

Neighbourhoods come from a random ring (Harary-style) graph of degree about ``k`` drawn
from ``seed``; ``neighbours=None`` (or ``>= n - 1``) is the complete graph, i.e. the
original SecAgg. Nothing here does I/O: methods take message dataclasses and return them,
and every malformed, replayed, wrong-stage or tampered message raises
:class:`~fedloom.secagg.crypto.SecAggError`.

Signed keys (the key authentication of Bonawitz et al.'s active-adversary variant): a
client given a long-term ``signing_key`` (certified by a PKI, e.g. its mTLS key) signs
:func:`advert_payload` (round id, its index, both public keys) in ``advertise_keys``; the
server forwards each signature with the keys; a client given ``verify_keys`` (index ->
public key) refuses, before using any key, a neighbour whose signature is missing or
wrong. A server that substitutes keys (man in the middle, to learn pairwise masks or to
decrypt shares) is thereby detected. The server picks the round id, so a signed advert
replayed from an earlier round is refused only if round ids never repeat: the caller
must refuse a round id its client has signed before.

Not implemented: the consistency-check round of the malicious model (clients signing the
survivor set ``U3`` so that the server cannot ask different clients about different
survivor sets), and any check of the neighbour graph, which the server chooses. So a
malicious server is only partly covered: the keys are authenticated, the unmasking
requests are not cross-checked between clients.

References:
    Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
    CCS 2020 (SecAgg+: sparse neighbourhood graph).
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017 (the four rounds; the complete-graph case; section 6 and
    Figure 4: signed keys against an active adversary).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.secagg.crypto import (
    SecAggError,
    SigningKey,
    VerifyKey,
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    prg,
    sign,
    verify,
)
from fedloom.secagg.encoding import FixedPoint
from fedloom.secagg.shamir import bytes_to_field, field_to_bytes, reconstruct, share

STAGES = ("advertise_keys", "share_keys", "masked_input", "unmasking")
SERVER = -1  # the sender id of server messages
SECRET_ELEMENTS = 5  # field elements per 32-byte secret (bytes_to_field)
SHARE_PLAINTEXT_BYTES = 2 * SECRET_ELEMENTS * 8
_MASK_INFO = b"fedloom/secagg/mask/"
_ENCRYPT_INFO = b"fedloom/secagg/encrypt/"
_KEYS_DOMAIN = b"fedloom/secagg/keys/"


# --- messages -------------------------------------------------------------------------------
# Every message carries (round_id, stage, sender); server messages also name the recipient.
# ``wire_size`` is the length of a plain serialization: header, keys, ciphertexts, vectors.


def _header_size(round_id: bytes) -> int:
    return len(round_id) + 1 + 4 + 4  # round id, stage code, sender, recipient


@dataclass(frozen=True)
class AdvertiseRequest:
    """Server -> client: start the round by advertising keys."""

    round_id: bytes
    stage: str
    sender: int
    recipient: int

    @property
    def wire_size(self) -> int:
        return _header_size(self.round_id)


def advert_payload(round_id: bytes, index: int, c_public: bytes, s_public: bytes) -> bytes:
    """The bytes a client signs in ``advertise_keys``: its keys bound to round and index.

    ``b"fedloom/secagg/keys/" || len(round_id) (4 bytes) || round_id || index (4 bytes) ||
    c_public || s_public``, big-endian, keys 32 bytes each. The domain prefix keeps the
    long-term key's signature from meaning anything in another protocol; the length
    prefix and fixed-size fields make the encoding unambiguous; the round id and index
    stop the server replaying a signed advert in another round or as another client's.

    References: Bonawitz et al. 2017, Figure 4 (round 0, ``SIG.sign(d_u, c_u || s_u)``).
    """
    if not isinstance(round_id, bytes | bytearray) or not round_id:
        raise SecAggError("round id must be non-empty bytes")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**32:
        raise SecAggError(f"index must be an int in [0, 2^32), got {index!r}")
    for name, key in (("c_public", c_public), ("s_public", s_public)):
        if not isinstance(key, bytes | bytearray) or len(key) != 32:
            raise SecAggError(f"{name} must be 32 bytes")
    return b"".join(
        (
            _KEYS_DOMAIN,
            len(round_id).to_bytes(4, "big"),
            bytes(round_id),
            index.to_bytes(4, "big"),
            bytes(c_public),
            bytes(s_public),
        )
    )


@dataclass(frozen=True)
class KeysAdvert:
    """Client -> server: the client's two public keys ``c`` and ``s``.

    ``signature`` signs :func:`advert_payload` with the client's long-term key; empty
    when the round is unsigned.
    """

    round_id: bytes
    stage: str
    sender: int
    c_public: bytes
    s_public: bytes
    signature: bytes = b""

    @property
    def wire_size(self) -> int:
        keys = len(self.c_public) + len(self.s_public)
        return _header_size(self.round_id) + keys + len(self.signature)


@dataclass(frozen=True)
class NeighbourKeys:
    """Server -> client: ``keys[j] = (c_public, s_public)`` of each live neighbour ``j``.

    ``signatures[j]`` is ``j``'s signature of its advert, forwarded as received; empty
    when the round is unsigned.
    """

    round_id: bytes
    stage: str
    sender: int
    recipient: int
    keys: dict[int, tuple[bytes, bytes]]
    signatures: dict[int, bytes] = field(default_factory=dict)

    @property
    def wire_size(self) -> int:
        body = sum(4 + len(c) + len(s) for c, s in self.keys.values())
        body += sum(len(signature) for signature in self.signatures.values())
        return _header_size(self.round_id) + body


@dataclass(frozen=True)
class EncryptedShares:
    """Client -> server: ``ciphertexts[j]`` holds the sender's shares for neighbour ``j``."""

    round_id: bytes
    stage: str
    sender: int
    ciphertexts: dict[int, bytes]

    @property
    def wire_size(self) -> int:
        return _header_size(self.round_id) + sum(4 + len(c) for c in self.ciphertexts.values())


@dataclass(frozen=True)
class RoutedShares:
    """Server -> client: ``ciphertexts[j]`` is what neighbour ``j`` encrypted for the recipient."""

    round_id: bytes
    stage: str
    sender: int
    recipient: int
    ciphertexts: dict[int, bytes]

    @property
    def wire_size(self) -> int:
        return _header_size(self.round_id) + sum(4 + len(c) for c in self.ciphertexts.values())


@dataclass(frozen=True)
class MaskedInput:
    """Client -> server: the masked encoded vector ``y_i``."""

    round_id: bytes
    stage: str
    sender: int
    y: np.ndarray

    @property
    def wire_size(self) -> int:
        return _header_size(self.round_id) + int(self.y.nbytes)


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> client: which of the recipient's neighbours dropped and which survived."""

    round_id: bytes
    stage: str
    sender: int
    recipient: int
    dropped: tuple[int, ...]
    survived: tuple[int, ...]

    @property
    def wire_size(self) -> int:
        return _header_size(self.round_id) + 4 * (len(self.dropped) + len(self.survived))


@dataclass(frozen=True)
class UnmaskShares:
    """Client -> server: shares of ``b_j`` (survivors) and of ``s_j`` (dropped peers)."""

    round_id: bytes
    stage: str
    sender: int
    seed_shares: dict[int, tuple[int, ...]]
    key_shares: dict[int, tuple[int, ...]]

    @property
    def wire_size(self) -> int:
        shares = [*self.seed_shares.values(), *self.key_shares.values()]
        return _header_size(self.round_id) + sum(4 + 8 * len(s) for s in shares)


def _check_header(message: Any, kind: type, round_id: bytes | None, stage: str) -> None:
    if not isinstance(message, kind):
        raise SecAggError(
            f"stage {stage!r} expects a {kind.__name__}, got {type(message).__name__}"
        )
    if message.stage != stage:
        raise SecAggError(
            f"message from {message.sender} is for stage {message.stage!r}, expected {stage!r}"
        )
    if round_id is not None and message.round_id != round_id:
        raise SecAggError(f"message from {message.sender} belongs to another round")


def _associated(round_id: bytes, sender: int, recipient: int) -> bytes:
    """AES-GCM associated data: binds a share ciphertext to its round, sender and receiver."""
    return round_id + sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")


def check_advert(
    verify_keys: Mapping[int, VerifyKey],
    round_id: bytes,
    index: int,
    keys: tuple[bytes, bytes],
    signature: bytes,
) -> None:
    """Raise unless ``signature`` is client ``index``'s signature of ``keys`` in this round."""
    if index not in verify_keys:
        raise SecAggError(f"no verify key for client {index}")
    if not signature:
        raise SecAggError(f"the keys of client {index} are unsigned")
    verify(verify_keys[index], signature, advert_payload(round_id, index, *keys))


def _signed_mask(mask: np.ndarray, add: bool) -> np.ndarray:
    return mask if add else (np.zeros_like(mask) - mask)  # unsigned wrap = negation mod 2^bits


def _bits(dtype: np.dtype) -> int:
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64)):
        raise SecAggError(f"encoded vectors must be uint16, uint32 or uint64, got dtype {dtype}")
    return dtype.itemsize * 8


# --- client ---------------------------------------------------------------------------------


class SecAggClient:
    """One client's side of SecAgg+: call the four stage methods in order.

    ``vector_encoded`` is the client's update already encoded into Z_(2^bits) (``uint16``,
    ``uint32`` or ``uint64``, e.g. by :class:`~fedloom.secagg.encoding.FixedPoint`);
    ``threshold`` is the Shamir threshold ``t``. Keys, seeds and shares come from the OS
    (``cryptography``, ``secrets``). Each stage may run once, in order; anything else raises
    :class:`SecAggError`, and a stage that raised is spent (the client has aborted).

    ``signing_key`` (Ed25519 or ECDSA P-256, see :func:`~fedloom.secagg.crypto.sign`)
    makes ``advertise_keys`` sign the advert. ``verify_keys`` (client index -> that
    client's certified public key) makes ``share_keys`` refuse any neighbour whose
    signature is missing or does not verify, or whose verify key is unknown: without it a
    malicious server could hand out its own keys as a neighbour's and learn the masks.
    ``majority`` makes ``share_keys`` refuse a threshold ``t`` with ``2t <= holders``: the
    server picks ``t``, and without a consistency round a minority threshold would let it
    ask one group of holders for the self-mask seed and a disjoint group for the mask key
    (an honest server's ``t = floor(threshold * h) + 1`` with ``threshold >= 0.5`` always
    passes, also after dropouts shrink the holders).

    References: Bell et al. 2020, section 3; Bonawitz et al. 2017, sections 4 and 6.
    """

    def __init__(
        self,
        index: int,
        vector_encoded: np.ndarray,
        threshold: int,
        *,
        signing_key: SigningKey | None = None,
        verify_keys: Mapping[int, VerifyKey] | None = None,
        majority: bool = False,
    ) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise SecAggError(f"index must be an int >= 0, got {index!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise SecAggError(f"threshold must be an int >= 1, got {threshold!r}")
        x = np.asarray(vector_encoded)
        self._bits = _bits(x.dtype)
        if x.ndim != 1:
            raise SecAggError(f"vector_encoded must be one-dimensional, got shape {x.shape}")
        self.index = index
        self.threshold = threshold
        self._signing_key = signing_key
        self._verify_keys = verify_keys  # read in share_keys; unknown types raise there
        self._majority = majority
        self._x = x.copy()
        self._next = 0  # index into STAGES of the next stage to run
        self._round_id = b""
        self._c_private = self._s_private = b""
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._holders: list[int] = []
        self._own_share: np.ndarray = np.zeros(0, dtype=np.int64)
        self._held: dict[int, np.ndarray] = {}  # peer -> its 10 share elements for me
        self._seed = b""

    def _enter(self, message: Any, kind: type, stage: str) -> None:
        expected = STAGES[self._next] if self._next < len(STAGES) else "done"
        if stage != expected:
            raise SecAggError(f"client {self.index} is at stage {expected!r}, cannot run {stage!r}")
        _check_header(message, kind, self._round_id or None, stage)
        if message.recipient != self.index:
            raise SecAggError(
                f"message for client {message.recipient} delivered to client {self.index}"
            )
        self._next += 1

    def advertise_keys(self, request: AdvertiseRequest) -> KeysAdvert:
        """Stage 1: fresh key pairs ``c`` (encryption) and ``s`` (masks); send the publics."""
        self._enter(request, AdvertiseRequest, "advertise_keys")
        if not request.round_id:
            raise SecAggError("round id must be non-empty")
        self._round_id = request.round_id
        self._c_private, c_public = generate_keypair()
        self._s_private, s_public = generate_keypair()
        signature = b""
        if self._signing_key is not None:
            payload = advert_payload(self._round_id, self.index, c_public, s_public)
            signature = sign(self._signing_key, payload)
        return KeysAdvert(
            self._round_id, "advertise_keys", self.index, c_public, s_public, signature
        )

    def _check_signatures(self, message: NeighbourKeys) -> None:
        """Refuse any neighbour whose keys this client cannot attribute to it."""
        if self._verify_keys is None:
            return
        for j in sorted(message.keys):
            signature = message.signatures.get(j, b"")
            try:
                check_advert(self._verify_keys, self._round_id, j, message.keys[j], signature)
            except SecAggError as exc:
                raise SecAggError(
                    f"client {self.index} refuses neighbour {j}'s keys: {exc}"
                ) from exc

    def share_keys(self, message: NeighbourKeys) -> EncryptedShares:
        """Stage 2: share ``b_i`` and ``s_i`` among self and neighbours; encrypt each pair."""
        self._enter(message, NeighbourKeys, "share_keys")
        if self.index in message.keys:
            raise SecAggError(f"client {self.index} was sent its own keys as a neighbour's")
        self._check_signatures(message)
        if len(message.keys) + 1 < self.threshold:
            raise SecAggError(
                f"client {self.index} has {len(message.keys)} live neighbours; "
                f"threshold {self.threshold} needs at least {self.threshold - 1}"
            )
        holders = len(message.keys) + 1
        if self._majority and 2 * self.threshold <= holders:
            raise SecAggError(
                f"client {self.index} refuses threshold {self.threshold} for {holders} share "
                "holders: not a majority, so two disjoint groups of holders could give the "
                "server both of its secrets"
            )
        self._keys = dict(message.keys)
        self._holders = sorted([self.index, *self._keys])
        self._seed = secrets.token_bytes(32)
        secret_values = bytes_to_field(self._seed) + bytes_to_field(self._s_private)
        shares = share(secret_values, len(self._holders), self.threshold)
        ciphertexts = {}
        for position, holder in enumerate(self._holders):
            if holder == self.index:
                self._own_share = shares[position]
                continue
            key = agree(self._c_private, self._keys[holder][0], _ENCRYPT_INFO + self._round_id)
            plaintext = shares[position].astype(">u8").tobytes()
            associated = _associated(self._round_id, self.index, holder)
            ciphertexts[holder] = encrypt(key, plaintext, associated)
        return EncryptedShares(self._round_id, "share_keys", self.index, ciphertexts)

    def masked_input(self, message: RoutedShares) -> MaskedInput:
        """Stage 3: decrypt the neighbours' shares; send ``y_i`` masked by them and ``b_i``."""
        self._enter(message, RoutedShares, "masked_input")
        for peer, ciphertext in message.ciphertexts.items():
            if peer not in self._keys:
                raise SecAggError(f"client {self.index} got shares from non-neighbour {peer}")
            key = agree(self._c_private, self._keys[peer][0], _ENCRYPT_INFO + self._round_id)
            plaintext = decrypt(key, ciphertext, _associated(self._round_id, peer, self.index))
            if len(plaintext) != SHARE_PLAINTEXT_BYTES:
                raise SecAggError(f"share from client {peer} has {len(plaintext)} bytes")
            self._held[peer] = np.frombuffer(plaintext, dtype=">u8").astype(np.int64)
        n = self._x.size
        y = self._x + prg(self._seed, n, self._bits)
        for peer in self._held:  # pairwise masks only with peers whose shares we hold
            s_key = agree(self._s_private, self._keys[peer][1], _MASK_INFO + self._round_id)
            y = y + _signed_mask(prg(s_key, n, self._bits), add=peer < self.index)
        return MaskedInput(self._round_id, "masked_input", self.index, y)

    def unmasking(self, request: UnmaskRequest) -> UnmaskShares:
        """Stage 4: reveal ``b_j`` shares of survivors, ``s_j`` shares of dropped peers.

        Refuses (SecAggError) a peer named as both dropped and survived, a peer whose
        shares it does not hold, or fewer than ``t`` survivors: answering such a request
        would let the server learn an individual input.
        """
        self._enter(request, UnmaskRequest, "unmasking")
        dropped, survived = set(request.dropped), set(request.survived)
        both = dropped & survived
        if both:
            raise SecAggError(
                f"client {self.index} asked for both the self-mask and the mask-key share "
                f"of client(s) {sorted(both)}"
            )
        if len(dropped) != len(request.dropped) or len(survived) != len(request.survived):
            raise SecAggError(f"unmask request for client {self.index} repeats a peer")
        if self.index not in survived:
            raise SecAggError(f"unmask request does not list client {self.index} as survived")
        unknown = (dropped | survived) - set(self._held) - {self.index}
        if unknown:
            raise SecAggError(f"client {self.index} holds no shares of client(s) {sorted(unknown)}")
        if len(survived) < self.threshold:
            raise SecAggError(
                f"only {len(survived)} survivors in client {self.index}'s neighbourhood, "
                f"below the threshold {self.threshold}"
            )
        held = {**self._held, self.index: self._own_share}
        seed_shares = {
            j: tuple(int(v) for v in held[j][:SECRET_ELEMENTS]) for j in sorted(survived)
        }
        key_shares = {j: tuple(int(v) for v in held[j][SECRET_ELEMENTS:]) for j in sorted(dropped)}
        return UnmaskShares(self._round_id, "unmasking", self.index, seed_shares, key_shares)


# --- server ---------------------------------------------------------------------------------


def default_neighbours(num_clients: int) -> int:
    """SecAgg+'s neighbourhood size for ``n`` clients: ``min(n - 1, 4 * ceil(log2 n))``.

    Bell et al. show that a degree logarithmic in ``n`` keeps the sum secure and correct
    against a constant fraction of dropped and corrupt clients; the factor 4 is the one
    ``benchmarks/secagg.py`` measures. Cohorts of up to 21 get the complete graph.

    References: Bell et al. 2020, section 3 and Table 1.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise SecAggError(f"num_clients must be an int >= 1, got {num_clients!r}")
    return max(1, min(num_clients - 1, 4 * math.ceil(math.log2(num_clients))))


def share_holders(num_clients: int, neighbours: int | None) -> int:
    """How many clients hold shares of one client's secrets: itself and its neighbours."""
    return num_clients if neighbours is None else min(neighbours, num_clients - 1) + 1


def neighbour_graph(num_clients: int, neighbours: int | None, seed: int | None) -> list[frozenset]:
    """Symmetric neighbour sets: a ring over a seeded random permutation, degree about ``k``.

    Each client is joined to the ``k // 2`` nearest clients on either side of the ring,
    plus the opposite client when ``k`` is odd (two clients when ``n`` is odd). ``None``
    or ``k >= n - 1`` gives the complete graph. The seed drives only this graph.

    References: Bell et al. 2020, section 3 (Harary graph over a random permutation).
    """
    n = num_clients
    if neighbours is None or neighbours >= n - 1:
        return [frozenset(range(n)) - {i} for i in range(n)]
    order = np.random.default_rng(seed).permutation(n)
    offsets = list(range(1, neighbours // 2 + 1))
    if neighbours % 2:
        offsets.append(n // 2)
    sets: list[set[int]] = [set() for _ in range(n)]
    for position, client in enumerate(order):
        for offset in offsets:
            for other in (order[(position + offset) % n], order[(position - offset) % n]):
                if other != client:
                    sets[int(client)].add(int(other))
    return [frozenset(s) for s in sets]


class SecAggServer:
    """The server's side of SecAgg+: routes keys and shares, then unmasks only the sum.

    Call :meth:`advertise_keys`, :meth:`share_keys`, :meth:`masked_input`,
    :meth:`unmasking` and :meth:`aggregate` in order; each takes the replies collected in
    the previous stage (any subset of clients: the missing ones dropped) and returns the
    next stage's requests. Fewer than ``threshold`` clients at any stage, or too few share
    holders for a secret it needs, aborts the round (SecAggError) before anything is
    unmasked. So does a sum that would hold fewer than ``min_inputs`` masked inputs (the
    deployment's ``secagg.min_clients``): a sum of one input is that input. ``fixed_point``
    fixes the encoding width; :meth:`decode` turns the sum back into floats.

    The server forwards each advert's signature with its keys; the clients verify them.
    With ``verify_keys`` (client index -> public key) it also refuses a badly signed advert
    itself, like any malformed message: the batch raises and the server stays usable, so
    the caller can drop that client instead of letting its neighbours abort later.

    References: Bell et al. 2020, section 3; Bonawitz et al. 2017, sections 4 and 6.
    """

    def __init__(
        self,
        num_clients: int,
        threshold: int,
        neighbours: int | None,
        dim: int,
        fixed_point: FixedPoint,
        seed: int | None,
        *,
        verify_keys: Mapping[int, VerifyKey] | None = None,
        min_inputs: int = 1,
    ) -> None:
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise SecAggError(f"num_clients must be an int >= 1, got {num_clients!r}")
        if neighbours is not None and (
            isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1
        ):
            raise SecAggError(f"neighbours must be None or an int >= 1, got {neighbours!r}")
        holders = share_holders(num_clients, neighbours)
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise SecAggError(f"threshold must be an int, got {threshold!r}")
        if not 1 <= threshold <= holders:
            raise SecAggError(
                f"threshold must be in [1, {holders}] (a client and its neighbours hold "
                f"the shares), got {threshold}"
            )
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise SecAggError(f"dim must be an int >= 1, got {dim!r}")
        if isinstance(min_inputs, bool) or not isinstance(min_inputs, int) or min_inputs < 1:
            raise SecAggError(f"min_inputs must be an int >= 1, got {min_inputs!r}")
        self.num_clients = num_clients
        self.min_inputs = min_inputs
        self.threshold = threshold
        self.dim = dim
        self.fixed_point = fixed_point
        self.dtype = fixed_point.dtype
        self.bits = _bits(self.dtype)
        self.neighbours = neighbour_graph(num_clients, neighbours, seed)
        self.round_id = secrets.token_bytes(16)
        self.included: list[int] = []
        self._verify_keys = verify_keys
        self._next = 0
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._signatures: dict[int, bytes] = {}
        self._holders: dict[int, list[int]] = {}
        self._shared: set[int] = set()  # U2: sent their encrypted shares
        self._inputs: dict[int, np.ndarray] = {}  # U3: masked inputs
        self._requests: dict[int, UnmaskRequest] = {}

    # helpers

    def _enter(self, method: str) -> None:
        """Refuse a stage out of order; each stage advances only once it has succeeded."""
        order = ("advertise_keys", "share_keys", "masked_input", "unmasking", "aggregate")
        expected = order[self._next] if self._next < len(order) else "aborted or done"
        if method != expected:
            raise SecAggError(f"server is at {expected!r}, cannot run {method!r}")

    def _collect(
        self, messages: Iterable[object], kind: type, stage: str, allowed: Iterable[int]
    ) -> dict[int, Any]:
        """Validate one stage's replies: right type, stage and round; known senders, no replay."""
        allowed = set(allowed)
        received: dict[int, Any] = {}
        for message in messages:
            _check_header(message, kind, self.round_id, stage)
            sender = message.sender
            if sender in received:
                raise SecAggError(f"replayed {stage!r} message from client {sender}")
            if sender not in allowed:
                raise SecAggError(f"client {sender} may not send a {stage!r} message")
            received[sender] = message
        return received

    def _quorum(self, clients: Sequence[int] | set[int], stage: str) -> None:
        if len(clients) < self.threshold:
            self._next = 99  # aborted: every later call fails
            raise SecAggError(
                f"only {len(clients)} clients left at stage {stage!r}, below the "
                f"threshold {self.threshold}: aborting without unmasking"
            )

    def _enough_inputs(self, clients: Sequence[int] | set[int], stage: str) -> None:
        """Abort before a sum of fewer than ``min_inputs`` inputs could be unmasked: a sum
        of one input is that input. Checked while inputs can still be lost (up to the
        masked inputs); a dropout at unmasking no longer changes who is in the sum."""
        if len(clients) < self.min_inputs:
            self._next = 99
            raise SecAggError(
                f"only {len(clients)} clients left at stage {stage!r}, below the minimum of "
                f"{self.min_inputs} inputs a secure sum may have: aborting without unmasking"
            )

    # stages

    def advertise_keys(self) -> dict[int, AdvertiseRequest]:
        """Open the round: one key request per client."""
        self._enter("advertise_keys")
        self._next += 1
        return {
            i: AdvertiseRequest(self.round_id, "advertise_keys", SERVER, i)
            for i in range(self.num_clients)
        }

    def share_keys(self, adverts: Iterable[KeysAdvert]) -> dict[int, NeighbourKeys]:
        """Forward each advertiser its live neighbours' public keys."""
        self._enter("share_keys")
        received = self._collect(adverts, KeysAdvert, "advertise_keys", range(self.num_clients))
        if self._verify_keys is not None:
            for i, m in received.items():
                try:
                    keys = (m.c_public, m.s_public)
                    check_advert(self._verify_keys, self.round_id, i, keys, m.signature)
                except SecAggError as exc:
                    raise SecAggError(f"advert of client {i} refused: {exc}") from exc
        self._quorum(received.keys(), "advertise_keys")
        self._enough_inputs(received.keys(), "advertise_keys")
        self._keys = {i: (m.c_public, m.s_public) for i, m in received.items()}
        self._signatures = {i: m.signature for i, m in received.items() if m.signature}
        out = {}
        for i in sorted(self._keys):
            live = sorted(j for j in self.neighbours[i] if j in self._keys)
            self._holders[i] = sorted([i, *live])
            if len(self._holders[i]) < self.threshold:
                self._next = 99
                raise SecAggError(
                    f"client {i} has {len(live)} live neighbours: its secrets could not be "
                    f"recovered with threshold {self.threshold}; aborting"
                )
            keys = {j: self._keys[j] for j in live}
            signatures = {j: self._signatures[j] for j in live if j in self._signatures}
            out[i] = NeighbourKeys(self.round_id, "share_keys", SERVER, i, keys, signatures)
        self._next += 1
        return out

    def masked_input(self, shares: Iterable[EncryptedShares]) -> dict[int, RoutedShares]:
        """Route each ciphertext to its recipient."""
        self._enter("masked_input")
        received = self._collect(shares, EncryptedShares, "share_keys", self._keys)
        for i, message in received.items():
            expected = set(self._holders[i]) - {i}
            if set(message.ciphertexts) != expected:
                raise SecAggError(
                    f"client {i} sent shares for {sorted(message.ciphertexts)}, "
                    f"expected its live neighbours {sorted(expected)}"
                )
        self._quorum(received.keys(), "share_keys")
        self._enough_inputs(received.keys(), "share_keys")
        self._shared = set(received)
        self._next += 1
        return {
            i: RoutedShares(
                self.round_id,
                "masked_input",
                SERVER,
                i,
                {
                    j: received[j].ciphertexts[i]
                    for j in self._holders[i]
                    if j in received and j != i
                },
            )
            for i in sorted(received)
        }

    def unmasking(self, inputs: Iterable[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Record the masked inputs; ask each survivor for the shares that unmask the sum."""
        self._enter("unmasking")
        received = self._collect(inputs, MaskedInput, "masked_input", self._shared)
        for i, message in received.items():
            y = message.y
            if not isinstance(y, np.ndarray) or y.dtype != self.dtype or y.shape != (self.dim,):
                raise SecAggError(
                    f"masked input from client {i} must be a {self.dtype} vector of length "
                    f"{self.dim}"
                )
        self._quorum(received.keys(), "masked_input")
        self._enough_inputs(received.keys(), "masked_input")
        survivors = set(received)
        dropped = self._shared - survivors
        for j in sorted(survivors | dropped):  # check every needed secret is recoverable
            needed = j in survivors or bool(self.neighbours[j] & survivors)
            holders = survivors.intersection(self._holders[j])
            if needed and len(holders) < self.threshold:
                self._next = 99
                raise SecAggError(
                    f"only {len(holders)} surviving holders of client {j}'s shares, below "
                    f"the threshold {self.threshold}: aborting without unmasking"
                )
        self._inputs = {i: received[i].y for i in sorted(received)}
        self.included = sorted(survivors)
        for i in self.included:
            self._requests[i] = UnmaskRequest(
                self.round_id,
                "unmasking",
                SERVER,
                i,
                tuple(sorted(self.neighbours[i] & dropped)),
                tuple(sorted((self.neighbours[i] & survivors) | {i})),
            )
        self._next += 1
        return dict(self._requests)

    def aggregate(self, responses: Iterable[UnmaskShares]) -> np.ndarray:
        """Reconstruct the secrets and return ``sum x_i`` over :attr:`included`, mod 2^bits."""
        self._enter("aggregate")
        received = self._collect(responses, UnmaskShares, "unmasking", self._requests)
        for i, message in received.items():
            request = self._requests[i]
            if set(message.seed_shares) != set(request.survived) or set(message.key_shares) != set(
                request.dropped
            ):
                raise SecAggError(f"client {i} answered a different unmask request")
        self._quorum(received.keys(), "unmasking")
        survivors = set(self.included)
        dropped = sorted(j for j in self._shared - survivors if self.neighbours[j] & survivors)
        # Gather all shares and check every count before reconstructing anything.
        gathered: dict[tuple[str, int], tuple[list[int], list[tuple[int, ...]]]] = {}
        for kind, owners in (("seed", self.included), ("key", dropped)):
            for j in owners:
                xs, rows = [], []
                for position, holder in enumerate(self._holders[j]):
                    if holder in received:
                        table = (
                            received[holder].seed_shares
                            if kind == "seed"
                            else received[holder].key_shares
                        )
                        rows.append(table[j])
                        xs.append(position + 1)
                if len(xs) < self.threshold:
                    self._next = 99
                    raise SecAggError(
                        f"only {len(xs)} shares of client {j}'s {kind} arrived, below the "
                        f"threshold {self.threshold}: aborting without unmasking"
                    )
                gathered[(kind, j)] = (xs, rows)

        def recover(kind: str, j: int) -> bytes:
            xs, rows = gathered[(kind, j)]
            matrix = np.array(rows[: self.threshold], dtype=np.int64)
            return field_to_bytes(reconstruct(xs[: self.threshold], matrix))

        total = np.zeros(self.dim, dtype=self.dtype)
        for i in self.included:
            total = total + self._inputs[i]
            total = total - prg(recover("seed", i), self.dim, self.bits)
        for j in dropped:
            s_private = recover("key", j)
            for i in sorted(self.neighbours[j] & survivors):
                s_key = agree(s_private, self._keys[i][1], _MASK_INFO + self.round_id)
                # y_i added PRG(s_ij) if j < i and subtracted it otherwise: undo that.
                total = total + _signed_mask(prg(s_key, self.dim, self.bits), add=j > i)
        self._next += 1
        return total

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The float sum of the included clients' inputs from :meth:`aggregate`'s result."""
        return self.fixed_point.decode_sum(total, len(self.included))
