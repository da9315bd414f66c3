"""The payload container: what protect hides in the image (docs/FORMAT.md, "Container").

Header (plaintext, authenticated as AES-GCM associated data) → encrypted body with the SHA-256 of
the original pixels and the coded perturbation. A key check value in the header tells a wrong key
(``KeyMismatchError``) apart from a tampered payload (``PayloadError``).
"""
from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import KeylessError, KeyMismatchError, NotProtectedError, PayloadError

MAGIC = b"MRAE"
VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KCV_BYTES = 8
SHA_BYTES = 32
FLAG_ENCRYPTED = 0x01
FLAG_METADATA = 0x02  # the body carries a metadata record (e.g. a DICOM header's digests), authenticated with it
FLAG_LEVEL = 0x04  # one more header byte: the strength level protect ran at (public, authenticated; toolkit.settings.STRENGTHS)
DTYPES = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16)}
# magic, version, flags, codec id, rdh id, dtype code, height, width, eps
_FIXED = struct.Struct(">4sBBBBBIIH")


@dataclass(frozen=True)
class Header:
    """Plaintext header of a payload; readable without the key (``medrae info``)."""

    version: int
    encrypted: bool
    codec_id: int
    rdh_id: int
    dtype: np.dtype
    shape: tuple[int, int]
    eps: int
    size: int  # header bytes, including nonce and key check value when encrypted
    has_metadata: bool = False  # the body carries a metadata record (FLAG_METADATA)
    level: int = 0  # the strength level's id (FLAG_LEVEL; 0: not recorded)


def key_check_value(key: bytes) -> bytes:
    """8-byte fingerprint of a key (HMAC-SHA256 of a constant): identifies, reveals nothing."""
    return hmac.new(key, b"medrae key check v1", hashlib.sha256).digest()[:KCV_BYTES]


def pixel_digest(image: np.ndarray) -> bytes:
    """SHA-256 over dtype code, shape and the little-endian pixel bytes of ``image``."""
    code = {v: k for k, v in DTYPES.items()}[image.dtype]
    meta = struct.pack(">BII", code, *image.shape)
    return hashlib.sha256(meta + np.ascontiguousarray(image).astype(image.dtype.newbyteorder("<")).tobytes()).digest()


def _check_key(key: Optional[bytes]) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes, got {type(key).__name__} of length {len(key) if key else 0}")
    return bytes(key)


def seal(
    coded: bytes,
    digest: bytes,
    *,
    shape: tuple[int, int],
    dtype: np.dtype,
    eps: int,
    codec_id: int,
    rdh_id: int,
    key: Optional[bytes],
    metadata: bytes = b"",
    level: int = 0,
) -> bytes:
    """Build a payload. ``key=None`` gives the paper's keyless mode (plaintext, CRC-32 checked).
    ``metadata``: a record authenticated with the pixels (encrypted with them when there is a key),
    e.g. the digests of a DICOM header; empty: none (the flag stays off, the layout as before)."""
    dtype = np.dtype(dtype)
    code = {v: k for k, v in DTYPES.items()}.get(dtype)
    if code is None:
        raise TypeError(f"dtype must be uint8 or uint16, got {dtype}")
    if len(digest) != SHA_BYTES:
        raise ValueError("digest must be a SHA-256 (32 bytes)")
    if not 0 <= eps <= 0xFFFF:
        raise ValueError(f"eps must fit 16 bits, got {eps}")
    if not 0 <= level <= 255:
        raise ValueError(f"level must fit a byte, got {level}")
    flags = (FLAG_ENCRYPTED if key is not None else 0) | (FLAG_METADATA if metadata else 0) | (FLAG_LEVEL if level else 0)
    fixed = _FIXED.pack(MAGIC, VERSION, flags, codec_id, rdh_id, code, shape[0], shape[1], eps) + (bytes([level]) if level else b"")
    body = digest + (struct.pack(">I", len(metadata)) + metadata if metadata else b"") + coded
    if key is None:
        return fixed + body + struct.pack(">I", binascii.crc32(fixed + body))
    key = _check_key(key)
    nonce = os.urandom(NONCE_BYTES)
    header = fixed + nonce + key_check_value(key)
    return header + AESGCM(key).encrypt(nonce, body, header)


def read_header(payload: bytes) -> Header:
    """Parse the plaintext header; ``NotProtectedError`` if this is not a medrae payload."""
    if len(payload) < _FIXED.size or payload[:4] != MAGIC:
        raise NotProtectedError("payload does not start with the medrae magic")
    magic, version, flags, codec_id, rdh_id, code, h, w, eps = _FIXED.unpack_from(payload)
    if version != VERSION:
        raise PayloadError(f"unsupported payload version {version} (this medrae reads {VERSION})")
    if flags & ~(FLAG_ENCRYPTED | FLAG_METADATA | FLAG_LEVEL) or code not in DTYPES:
        raise PayloadError("payload header has unknown flags or dtype")
    encrypted = bool(flags & FLAG_ENCRYPTED)
    fixed = _FIXED.size + (1 if flags & FLAG_LEVEL else 0)
    size = fixed + (NONCE_BYTES + KCV_BYTES if encrypted else 0)
    if len(payload) < size + SHA_BYTES + (TAG_BYTES if encrypted else 4):
        raise PayloadError("payload is truncated")
    level = payload[_FIXED.size] if flags & FLAG_LEVEL else 0
    if flags & FLAG_LEVEL and not level:
        raise PayloadError("payload header records level 0 (the flag says one is there)")
    return Header(version, encrypted, codec_id, rdh_id, DTYPES[code], (h, w), eps, size, bool(flags & FLAG_METADATA), level)


KEYLESS_REASON = ("the payload carries no key (made with --no-encrypt): anyone with medrae could have made it, "
                  "so it authenticates nothing; restore it only if you trust its source (--allow-keyless)")


def unseal(payload: bytes, key: Optional[bytes], allow_keyless: bool = False) -> tuple[Header, bytes, bytes]:
    """Check and open a payload: ``(header, pixel SHA-256, coded perturbation)``; :func:`open_payload`
    also gives the metadata record."""
    opened = open_payload(payload, key, allow_keyless)
    return opened.header, opened.digest, opened.coded


@dataclass(frozen=True)
class Opened:
    """An authenticated payload's contents."""

    header: Header
    digest: bytes  # SHA-256 of the original pixels
    metadata: bytes  # the metadata record (b"": none)
    coded: bytes  # the coded perturbation


def _split_body(hdr: Header, body: bytes) -> Opened:
    digest, rest = body[:SHA_BYTES], body[SHA_BYTES:]
    metadata = b""
    if hdr.has_metadata:
        if len(rest) < 4 or struct.unpack(">I", rest[:4])[0] > len(rest) - 4:
            raise PayloadError("payload's metadata record is truncated")
        n = struct.unpack(">I", rest[:4])[0]
        metadata, rest = rest[4 : 4 + n], rest[4 + n :]
    return Opened(hdr, digest, metadata, rest)


def open_payload(payload: bytes, key: Optional[bytes], allow_keyless: bool = False) -> Opened:
    """Check and open a payload: its header, pixel SHA-256, metadata record and coded perturbation.

    ``allow_keyless``: open a plaintext payload although a ``key`` was given (without a key, a
    plaintext payload is what was asked for and always opens).

    Raises
    ------
    NotProtectedError
        Not a medrae payload.
    KeylessError
        A key was given, the payload is plaintext, and not ``allow_keyless``.
    KeyMismatchError
        Encrypted and ``key`` is missing or is not the key it was sealed with.
    PayloadError
        Corrupt, truncated or tampered with (also when only the key check value was damaged).
    """
    hdr = read_header(payload)
    if not hdr.encrypted and key is not None and not allow_keyless:
        raise KeylessError(KEYLESS_REASON)
    if not hdr.encrypted:
        body, crc = payload[: -4], struct.unpack(">I", payload[-4:])[0]
        if binascii.crc32(body) != crc:
            raise PayloadError("plaintext payload fails its CRC-32 (corrupt or modified)")
        return _split_body(hdr, body[hdr.size :])
    if key is None:
        raise KeyMismatchError("payload is encrypted and no key was given")
    key = _check_key(key)
    header = payload[: hdr.size]
    nonce = header[-KCV_BYTES - NONCE_BYTES : -KCV_BYTES]
    kcv = key_check_value(key)
    if not hmac.compare_digest(header[-KCV_BYTES:], kcv):
        # a wrong key, or the right key and damaged check-value bits: with the right key the rest
        # authenticates under the check value this key gives (it is part of the associated data)
        try:
            AESGCM(key).decrypt(nonce, payload[hdr.size :], header[:-KCV_BYTES] + kcv)
        except InvalidTag:
            raise KeyMismatchError("payload was encrypted under a different key") from None
        raise PayloadError("payload is damaged (its key check value was altered; the key is right)")
    try:
        body = AESGCM(key).decrypt(nonce, payload[hdr.size :], header)
    except InvalidTag:
        raise PayloadError("payload fails authentication (corrupt or tampered with)") from None
    return _split_body(hdr, body)
