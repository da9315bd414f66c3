"""Bit-array helpers and fixed-width field packing (MSB first)."""
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


def int_to_bits(value: int, width: int) -> np.ndarray:
    """Unsigned ``value`` → ``width`` bits, MSB first."""
    if value < 0 or value >= (1 << width):
        raise ValueError(f"{value} does not fit in {width} bits")
    return ((value >> _SHIFTS[64 - width :]) & 1).astype(np.uint8)


def bits_to_int(bits: np.ndarray) -> int:
    """MSB-first bits (at most 64) → unsigned int."""
    return int(np.dot(bits.astype(np.uint64), _WEIGHTS[64 - bits.size :]))


_SHIFTS = np.arange(63, -1, -1, dtype=np.uint64)
_WEIGHTS = np.uint64(1) << _SHIFTS
