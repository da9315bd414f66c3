"""Bit-array helpers (MSB first)."""
from __future__ import annotations

import numpy as np


def bytes_to_bits(data: bytes) -> np.ndarray:
    """``bytes`` → uint8 array of 0/1, MSB first."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def bits_to_bytes(bits: np.ndarray) -> bytes:
    """uint8 array of 0/1 (length a multiple of 8) → ``bytes``."""
    if bits.size % 8:
        raise ValueError(f"bit count {bits.size} is not a multiple of 8")
    return np.packbits(bits.astype(np.uint8)).tobytes()
