"""Payload container: AES-256-GCM, keyless mode, and detection of every single-bit flip."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from medrae import kernels
from medrae.kernels import container

KEY = bytes(range(32))
SHA = hashlib.sha256(b"pixels").digest()


def sealed(key=KEY, coded=b"\x01\x10\x10coded-perturbation"):
    return container.seal(coded, SHA, shape=(16, 16), dtype=np.uint8, eps=8, codec_id=1, rdh_id=2, key=key)


@pytest.mark.parametrize("key", [KEY, None])
def test_round_trip(key):
    hdr, digest, coded = container.unseal(sealed(key), key)
    assert (digest, coded) == (SHA, b"\x01\x10\x10coded-perturbation")
    assert hdr.encrypted == (key is not None) and hdr.shape == (16, 16) and hdr.eps == 8
    assert hdr.codec_id == 1 and hdr.rdh_id == 2 and hdr.dtype == np.uint8


def test_body_is_encrypted_and_nonce_is_fresh():
    a, b = sealed(), sealed()
    assert a != b  # fresh 96-bit nonce per seal
    assert b"coded-perturbation" not in a and SHA not in a


@pytest.mark.parametrize("key", [KEY, None])
def test_every_single_bit_flip_is_detected(key):
    payload = sealed(key)
    for bit in range(8 * len(payload)):
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(kernels.MedraeError):
            container.unseal(bytes(flipped), key)


def test_flip_classes():
    payload = sealed()
    with pytest.raises(kernels.NotProtectedError):
        container.unseal(b"X" + payload[1:], KEY)  # magic
    kcv_at = container._FIXED.size + container.NONCE_BYTES
    damaged_kcv = payload[:kcv_at] + bytes([payload[kcv_at] ^ 1]) + payload[kcv_at + 1 :]
    # a damaged key check value is damage, not a wrong key, when the key is right ...
    with pytest.raises(kernels.PayloadError, match="key check value was altered; the key is right"):
        container.unseal(damaged_kcv, KEY)
    # ... and still a wrong key when it is not
    with pytest.raises(kernels.KeyMismatchError, match="different key"):
        container.unseal(damaged_kcv, os.urandom(32))
    with pytest.raises(kernels.PayloadError):
        container.unseal(payload[:-1] + bytes([payload[-1] ^ 1]), KEY)  # tag
    with pytest.raises(kernels.PayloadError):
        container.unseal(payload[:10] + bytes([payload[10] ^ 1]) + payload[11:], KEY)  # header (AAD)


def test_wrong_or_missing_key():
    with pytest.raises(kernels.KeyMismatchError, match="different key"):
        container.unseal(sealed(), os.urandom(32))
    with pytest.raises(kernels.KeyMismatchError, match="no key"):
        container.unseal(sealed(), None)


def test_truncation_and_garbage():
    payload = sealed()
    for cut in (0, 3, 20, len(payload) - 1):
        with pytest.raises(kernels.MedraeError):
            container.unseal(payload[:cut], KEY)
    with pytest.raises(kernels.NotProtectedError):
        container.read_header(os.urandom(64))


def test_bad_key_length():
    with pytest.raises(ValueError, match="32 bytes"):
        sealed(key=b"short")


def test_pixel_digest_depends_on_shape_and_dtype():
    a = np.zeros((4, 8), np.uint8)
    assert container.pixel_digest(a) != container.pixel_digest(a.reshape(8, 4))
    assert container.pixel_digest(a) != container.pixel_digest(np.zeros((4, 8), np.uint16))
    # pinned against hashlib over the documented layout (docs/FORMAT.md)
    expected = hashlib.sha256(bytes([1]) + (4).to_bytes(4, "big") + (8).to_bytes(4, "big") + bytes(32)).digest()
    assert container.pixel_digest(a) == expected


def test_a_keyless_payload_is_refused_when_a_key_is_given():
    plain = container.seal(b"\x01abc", bytes(32), shape=(40, 40), dtype=np.uint8, eps=8, codec_id=1, rdh_id=2, key=None)
    with pytest.raises(kernels.KeylessError, match="anyone with medrae could have made it"):
        container.unseal(plain, KEY)
    assert issubclass(kernels.KeylessError, kernels.KeyMismatchError)
    assert container.unseal(plain, KEY, allow_keyless=True)[2] == b"\x01abc"
    assert container.unseal(plain, None)[2] == b"\x01abc"  # no key given: keyless is what was asked for
