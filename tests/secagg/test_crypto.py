"""X25519 + HKDF agreement, AES-GCM encryption, the AES-CTR PRG and key signatures."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedloom.errors import FedloomError
from fedloom.secagg import (
    SecAggError,
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    generate_signing_key,
    prg,
    sign,
    verify,
)
from fedloom.secagg.crypto import SigningKey


def test_keypair_is_raw_32_bytes_and_fresh() -> None:
    private, public = generate_keypair()
    assert len(private) == len(public) == 32
    assert generate_keypair()[0] != private


def test_agree_is_symmetric_and_separated_by_info() -> None:
    a, a_pub = generate_keypair()
    b, b_pub = generate_keypair()
    key = agree(a, b_pub, b"mask")
    assert len(key) == 32
    assert key == agree(b, a_pub, b"mask")
    assert key != agree(a, b_pub, b"encrypt")
    c, c_pub = generate_keypair()
    assert key != agree(a, c_pub, b"mask")


def test_agree_errors() -> None:
    a, _ = generate_keypair()
    with pytest.raises(SecAggError, match="peer public key must be 32 bytes, got 31"):
        agree(a, bytes(31), b"x")
    with pytest.raises(SecAggError, match="private key must be 32 bytes, got str"):
        agree("a", bytes(32), b"x")  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="info must be bytes"):
        agree(a, generate_keypair()[1], "x")  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="key agreement failed"):
        agree(a, bytes(32), b"x")  # low-order point: all-zero shared secret
    assert issubclass(SecAggError, FedloomError)


def test_encrypt_round_trip_with_fresh_nonce() -> None:
    key = os.urandom(32)
    message = b"share of client 3 for client 7"
    first = encrypt(key, message, b"3->7")
    assert decrypt(key, first, b"3->7") == message
    assert encrypt(key, message, b"3->7") != first
    assert len(first) == 12 + len(message) + 16
    assert decrypt(key, encrypt(key, b"", b""), b"") == b""


def test_decrypt_detects_tampering_wrong_key_and_wrong_associated_data() -> None:
    key = os.urandom(32)
    ciphertext = encrypt(key, b"secret share", b"3->7")
    for i in (0, 12, len(ciphertext) - 1):  # nonce, body, tag
        tampered = bytearray(ciphertext)
        tampered[i] ^= 1
        with pytest.raises(SecAggError, match="tampered or wrong key"):
            decrypt(key, bytes(tampered), b"3->7")
    with pytest.raises(SecAggError, match="tampered or wrong key"):
        decrypt(key, ciphertext, b"3->8")
    with pytest.raises(SecAggError, match="tampered or wrong key"):
        decrypt(os.urandom(32), ciphertext, b"3->7")
    with pytest.raises(SecAggError, match="shorter than nonce"):
        decrypt(key, ciphertext[:27], b"3->7")
    with pytest.raises(SecAggError, match="key must be 32 bytes, got 16"):
        encrypt(bytes(16), b"m", b"")


@pytest.mark.parametrize(("bits", "dtype"), [(16, np.uint16), (32, np.uint32), (64, np.uint64)])
def test_prg_is_deterministic_with_length_and_dtype(bits: int, dtype: type) -> None:
    seed = os.urandom(32)
    words = prg(seed, 1000, bits)
    assert words.dtype == dtype and words.shape == (1000,)
    np.testing.assert_array_equal(words, prg(seed, 1000, bits))
    np.testing.assert_array_equal(words[:10], prg(seed, 10, bits))  # a prefix of the stream
    assert not np.array_equal(words, prg(os.urandom(32), 1000, bits))
    assert prg(seed, 0, bits).shape == (0,)
    words[0] = 0  # the result is an ordinary writable array


def test_prg_known_answer() -> None:
    # AES-256-CTR keystream of the all-zero key and counter: AES_0(0) = dc95c078...
    assert prg(bytes(32), 1, 64)[0] == int.from_bytes(bytes.fromhex("dc95c078a2408989"), "little")


def test_prg_is_roughly_uniform() -> None:
    words = prg(os.urandom(32), 100_000)
    assert abs(words.mean() / 2**32 - 0.5) < 0.01
    bits = np.unpackbits(words.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01


def test_prg_errors() -> None:
    with pytest.raises(SecAggError, match="seed must be 32 bytes"):
        prg(bytes(16), 4)
    with pytest.raises(SecAggError, match="bits must be 16, 32 or 64"):
        prg(bytes(32), 4, 8)
    with pytest.raises(SecAggError, match="non-negative int"):
        prg(bytes(32), -1)


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize("make", [generate_signing_key, _p256], ids=["ed25519", "p256"])
def test_sign_verify_round_trip_and_tampering(make: Callable[[], SigningKey]) -> None:
    key = make()
    message = b"fedloom/secagg/keys/ round 7 keys"
    signature = sign(key, message)
    assert len(signature) == 64 if make is generate_signing_key else len(signature) <= 72  # DER
    verify(key.public_key(), signature, message)
    verify(key.public_key(), signature, bytearray(message))
    with pytest.raises(SecAggError, match="verification failed"):
        verify(key.public_key(), signature, message[:-1] + b"X")  # tampered message
    for i in (0, len(signature) // 2, len(signature) - 1):
        tampered = bytearray(signature)
        tampered[i] ^= 1
        with pytest.raises(SecAggError, match="verification failed"):
            verify(key.public_key(), bytes(tampered), message)
    for short in (b"", signature[:-1]):
        with pytest.raises(SecAggError, match="verification failed"):
            verify(key.public_key(), short, message)
    with pytest.raises(SecAggError, match="verification failed"):
        verify(make().public_key(), signature, message)  # another signer's key


def test_ed25519_signature_is_deterministic_and_schemes_do_not_cross() -> None:
    ed, p256 = generate_signing_key(), _p256()
    assert sign(ed, b"m") == sign(ed, b"m")
    with pytest.raises(SecAggError, match="verification failed"):
        verify(p256.public_key(), sign(ed, b"m"), b"m")
    with pytest.raises(SecAggError, match="verification failed"):
        verify(ed.public_key(), sign(p256, b"m"), b"m")


def test_sign_verify_refuse_unsupported_keys() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(SecAggError, match="must be on P-256 .*got secp384r1"):
        sign(p384, b"m")
    with pytest.raises(SecAggError, match="must be on P-256"):
        verify(p384.public_key(), bytes(96), b"m")
    x25519 = X25519PrivateKey.generate()
    for wrong in (x25519, generate_keypair()[0], None):
        with pytest.raises(SecAggError, match="signing key must be an Ed25519PrivateKey"):
            sign(wrong, b"m")  # type: ignore[arg-type]
    ed = generate_signing_key()
    with pytest.raises(SecAggError, match="verify key must be an Ed25519PublicKey"):
        verify(ed, sign(ed, b"m"), b"m")  # type: ignore[arg-type]  # a private key
    with pytest.raises(SecAggError, match="verify key must be"):
        verify(x25519.public_key(), bytes(64), b"m")  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="signing key must be"):
        sign(ed.public_key(), b"m")  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="must be bytes"):
        sign(ed, "m")  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="must be bytes"):
        verify(ed.public_key(), "sig", b"m")  # type: ignore[arg-type]
