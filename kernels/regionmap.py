"""Frozen region of the RDH layer: the pixels (the lungs) that the hiding must leave bit-exact.

The decoder has to know which pixels no pass touched before it can undo a single pass, and it has
only the marked image. So the region travels, as a coarse block map, in the LSBs of reserved border
pixels right after the side information (docs/FORMAT.md, "Frozen region"): a block of ``B x B``
pixels is frozen when the caller's mask touches it. Coding: each row of blocks XOR the row above
(lungs are vertically coherent), read in raster order as alternating runs of 0s and 1s (starting
with 0s), each run length + 1 written as an Elias-gamma code. A two-lung mask on a 28x28 block grid
codes to ~150-300 bits.
"""
from __future__ import annotations

import numpy as np

BASE_BLOCK = 8  # block side for images up to ~224 px; grows with the image (block_size)
LENGTH_BITS = 16  # the block side and the code length are stored in 16 bits each


def block_size(shape: tuple[int, int]) -> int:
    """Default block side: 8 px per 224 px of the shorter side (about a 28-block grid)."""
    return BASE_BLOCK * max(1, round(min(shape) / 224))


def grid_of(shape: tuple[int, int], block: int) -> tuple[int, int]:
    return -(-shape[0] // block), -(-shape[1] // block)


def blocks_touching(mask: np.ndarray, block: int) -> np.ndarray:
    """(gh, gw) bool: blocks of side ``block`` holding at least one True pixel of ``mask``."""
    gh, gw = grid_of(mask.shape, block)
    padded = np.zeros((gh * block, gw * block), bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded.reshape(gh, block, gw, block).any(axis=(1, 3))


def pixel_mask(blocks: np.ndarray, block: int, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of the frozen blocks, at ``shape``."""
    return np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[: shape[0], : shape[1]]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation of a bool (H, W) mask by a (2r+1)-square, as r rounds of a 3x3 max (exact and cheap
    for small r). Grows a block map into the band around a frozen region (``kernels.rdh``, the same
    in embed and extract) and pixel masks (``toolkit.masks``)."""
    if radius < 0:
        raise ValueError(f"dilation radius must be >= 0, got {radius}")
    out = mask.copy()
    for _ in range(radius):  # a 3x3 max is separable: along rows, then along columns
        p = np.pad(out, ((0, 0), (1, 1)))
        out = p[:, :-2] | p[:, 1:-1] | p[:, 2:]
        p = np.pad(out, ((1, 1), (0, 0)))
        out = p[:-2] | p[1:-1] | p[2:]
    return out


def _gamma(n: int) -> str:
    b = bin(n)[2:]
    return "0" * (len(b) - 1) + b


def encode_blocks(blocks: np.ndarray) -> np.ndarray:
    """Block map → code bits (uint8 0/1)."""
    rows = blocks.astype(np.uint8)
    diff = rows.copy()
    diff[1:] ^= rows[:-1]
    flat = diff.ravel()
    edges = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], edges])
    runs = np.diff(np.concatenate([starts, [flat.size]]))
    if flat.size and flat[0] == 1:
        runs = np.concatenate([[0], runs])  # the first run counts 0s, possibly none
    code = "".join(_gamma(int(r) + 1) for r in runs)
    return np.frombuffer(code.encode(), np.uint8) - ord("0")


def decode_blocks(bits: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Code bits → (gh, gw) block map; ``ValueError`` if the bits are not a valid code for ``grid``."""
    total = grid[0] * grid[1]
    flat = np.zeros(total, np.uint8)
    pos, filled, value = 0, 0, 0
    while filled < total:
        zeros = 0
        while pos < bits.size and bits[pos] == 0:
            zeros += 1
            pos += 1
        if pos + zeros + 1 > bits.size:
            raise ValueError("block map code ends early")
        run = int("".join(map(str, bits[pos : pos + zeros + 1])), 2) - 1
        pos += zeros + 1
        if run > total - filled:
            raise ValueError("block map code overruns the grid")
        flat[filled : filled + run] = value
        filled += run
        value ^= 1
    if pos != bits.size:
        raise ValueError("block map code has trailing bits")
    rows = flat.reshape(grid)
    for i in range(1, grid[0]):
        rows[i] ^= rows[i - 1]
    return rows.astype(bool)
