"""X25519 + HKDF agreement, AES-GCM encryption and the AES-CTR PRG."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedloom.errors import FedloomError
from fedloom.secagg import SecAggError, agree, decrypt, encrypt, generate_keypair, prg


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
