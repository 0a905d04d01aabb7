"""Key agreement, authenticated encryption and the mask PRG of secure aggregation.

Thin, typed wrappers over ``cryptography`` (OpenSSL) with the exact constructions of the
SecAgg protocol: X25519 Diffie-Hellman followed by HKDF-SHA256 to derive pairwise keys,
AES-256-GCM to carry secret shares between clients through the server, AES-256-CTR as
the pseudorandom generator that expands a 32-byte seed into a mask vector, and Ed25519 or
ECDSA P-256 signatures that authenticate each client's advertised keys against a
malicious server. Nothing is hand-rolled here; every failure surfaces as
:class:`SecAggError`.

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017 (the protocol these primitives serve).
    RFC 7748 (X25519), RFC 5869 (HKDF), NIST SP 800-38D (GCM), NIST SP 800-38A (CTR),
    RFC 8032 (Ed25519), FIPS 186-5 (ECDSA over P-256).
"""

from __future__ import annotations

import os
from typing import TypeAlias

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedloom.errors import FedloomError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

SigningKey: TypeAlias = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
VerifyKey: TypeAlias = Ed25519PublicKey | ec.EllipticCurvePublicKey


class SecAggError(FedloomError):
    """A secure-aggregation primitive was misused or its input failed authentication."""


def _check_bytes(value: object, name: str, length: int) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise SecAggError(f"{name} must be {length} bytes, got {type(value).__name__}")
    if len(value) != length:
        got = f"{len(value)} bytes"
        raise SecAggError(f"{name} must be {length} bytes, got {got}")
    return bytes(value)


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes ``(private, public)``, 32 bytes each.

    Raw encodings are what travel in the protocol and what :mod:`fedloom.secagg.shamir`
    shares (via ``bytes_to_field``) so that dropped clients' masks can be recovered.

    References: RFC 7748, section 5.
    """
    private = X25519PrivateKey.generate()
    private_raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public_raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private_raw, public_raw


def agree(private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """The 32-byte key two parties share: HKDF-SHA256(X25519(private, peer_public), info).

    Symmetric: ``agree(a, B, info) == agree(b, A, info)``. ``info`` separates keys derived
    from the same pair for different purposes (the mask seed vs. the share-encryption key),
    so one X25519 exchange never yields the same key twice. The raw X25519 output is not
    uniform, hence the KDF. Low-order peer keys (all-zero shared secret) are rejected.

    References: RFC 7748, section 6.1; RFC 5869; Bonawitz et al. 2017, section 4.
    """
    private = _check_bytes(private, "private key", KEY_BYTES)
    peer_public = _check_bytes(peer_public, "peer public key", KEY_BYTES)
    if not isinstance(info, bytes | bytearray):
        raise SecAggError(f"info must be bytes, got {type(info).__name__}")
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:
        raise SecAggError(f"X25519 key agreement failed: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=bytes(info)).derive(
        shared
    )


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM encryption; returns ``nonce (12 bytes) || ciphertext || tag (16 bytes)``.

    A fresh random nonce per message (``os.urandom``) keeps the (key, nonce) pair unique
    without state; ``associated`` (e.g. sender and recipient ids) is authenticated but not
    encrypted, so a share cannot be replayed to another recipient.

    References: NIST SP 800-38D; Bonawitz et al. 2017, section 4 (round 2).
    """
    key = _check_bytes(key, "key", KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, bytes(plaintext), bytes(associated))


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises :class:`SecAggError` if anything was altered.

    A wrong key, a modified ciphertext or nonce, and different associated data are
    indistinguishable by design: all fail tag verification.

    References: NIST SP 800-38D.
    """
    key = _check_bytes(key, "key", KEY_BYTES)
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError(
            f"ciphertext is {len(ciphertext)} bytes, shorter than nonce + tag "
            f"({NONCE_BYTES + TAG_BYTES}): truncated, tampered or not from encrypt()"
        )
    nonce, body = bytes(ciphertext[:NONCE_BYTES]), bytes(ciphertext[NONCE_BYTES:])
    try:
        return AESGCM(key).decrypt(nonce, body, bytes(associated))
    except InvalidTag as exc:
        raise SecAggError(
            "decryption failed: ciphertext tampered or wrong key / associated data"
        ) from exc


def prg(seed: bytes, n: int, bits: int = 32) -> np.ndarray:
    """``n`` pseudorandom words of ``bits`` (16, 32 or 64) bits expanded from a 32-byte seed.

    The AES-256-CTR keystream under key ``seed`` with an all-zero nonce, read as
    little-endian ``uint16``/``uint32``/``uint64`` words. A fixed nonce is safe because each seed is
    used for exactly one mask; determinism in the seed is what lets the server recompute
    a dropped client's masks from reconstructed seeds. Uniform words mod 2^bits make the
    masked values in Z_(2^bits) uniform, which is the hiding property SecAgg needs.

    References: NIST SP 800-38A (CTR); Bonawitz et al. 2017, section 3 (PRG).
    """
    seed = _check_bytes(seed, "seed", KEY_BYTES)
    if bits not in (16, 32, 64):
        raise SecAggError(f"bits must be 16, 32 or 64, got {bits!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise SecAggError(f"n must be a non-negative int, got {n!r}")
    width = bits // 8
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(int(n) * width)) + encryptor.finalize()
    dtype = np.dtype(f"<u{width}")
    return np.frombuffer(stream, dtype=dtype).astype(np.dtype(f"u{width}"))


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key, e.g. for a simulation or a test PKI.

    Ed25519 is deterministic (no per-signature randomness to get wrong), fast, and its
    64-byte signatures are the smallest of the supported schemes.

    References: RFC 8032, section 5.1.
    """
    return Ed25519PrivateKey.generate()


def _check_p256(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    """SHA-256 matches P-256's 128-bit security; other curves are not what mTLS uses here."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise SecAggError(f"ECDSA keys must be on P-256 (secp256r1), got {key.curve.name}")


def sign(private_key: SigningKey, data: bytes) -> bytes:
    """Sign ``data`` with an Ed25519 key, or with an ECDSA P-256 key over SHA-256.

    ECDSA P-256 is accepted because a deployment signs with the key of the client's mTLS
    certificate, which its PKI already vouches for; the signature is DER-encoded (about
    70 bytes). Ed25519 signatures are 64 bytes. Any other key raises :class:`SecAggError`.

    References: RFC 8032, section 5.1.6; FIPS 186-5, section 6.4.
    """
    if not isinstance(data, bytes | bytearray):
        raise SecAggError(f"data to sign must be bytes, got {type(data).__name__}")
    if isinstance(private_key, Ed25519PrivateKey):
        return private_key.sign(bytes(data))
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        _check_p256(private_key)
        return private_key.sign(bytes(data), ec.ECDSA(hashes.SHA256()))
    raise SecAggError(
        "signing key must be an Ed25519PrivateKey or a P-256 EllipticCurvePrivateKey, got "
        f"{type(private_key).__name__}"
    )


def verify(public_key: VerifyKey, signature: bytes, data: bytes) -> None:
    """Return if ``signature`` is ``public_key``'s signature of ``data``, else raise.

    The counterpart of :func:`sign` (Ed25519, or ECDSA P-256 with SHA-256). A forged,
    truncated or tampered signature, other data, another signer's key and an unsupported
    key type all raise :class:`SecAggError`.

    References: RFC 8032, section 5.1.7; FIPS 186-5, section 6.4.
    """
    if not isinstance(signature, bytes | bytearray) or not isinstance(data, bytes | bytearray):
        raise SecAggError("signature and signed data must be bytes")
    try:
        if isinstance(public_key, Ed25519PublicKey):
            public_key.verify(bytes(signature), bytes(data))
            return
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            _check_p256(public_key)
            public_key.verify(bytes(signature), bytes(data), ec.ECDSA(hashes.SHA256()))
            return
    except InvalidSignature as exc:
        raise SecAggError("signature verification failed: forged, tampered or wrong key") from exc
    raise SecAggError(
        "verify key must be an Ed25519PublicKey or a P-256 EllipticCurvePublicKey, got "
        f"{type(public_key).__name__}"
    )
