"""Reversible image transformation (RIT) RAE: the Yin et al. baseline, embedded and extracted for real.

Yin et al. make a reversible adversarial example by transforming the original image O into a
target image T (an FGSM adversarial example of O) with reversible image transformation (Hou et
al. 2018): both images are cut into ``block x block`` blocks, each image's blocks are ranked by
standard deviation and split into ``classes`` equal classes, and the i-th original block of class
k (raster order) moves to the position of the i-th target block of class k, shifted to the target
block's mean and rotated (0/90/180/270) to best match it. The auxiliary information (both class
index tables, every block's mean shift and rotation) is compressed and hidden in the transformed
image with reversible data hiding (the kernels' PEE), so the original comes back bit for bit.
The published code only costed the auxiliary information; here it is really embedded and
extracted, and an image whose auxiliary information does not fit is reported as such. Blocks are
8x8 with 8 classes by default: with 4x4 blocks the auxiliary information of a 224x224 X-ray is
55-70 kbit and never fits; with 8x8 it is about 15 kbit.
"""
from __future__ import annotations

import lzma
import struct

import numpy as np

from medrae import kernels

MAGIC = b"RIT1"


def _blocks(x: np.ndarray, b: int) -> np.ndarray:
    h, w = x.shape
    return x.reshape(h // b, b, w // b, b).swapaxes(1, 2).reshape(-1, b, b)


def _unblocks(blocks: np.ndarray, shape: tuple[int, int], b: int) -> np.ndarray:
    h, w = shape
    return blocks.reshape(h // b, w // b, b, b).swapaxes(1, 2).reshape(h, w)


def _classes(blocks: np.ndarray, k: int) -> np.ndarray:
    """Class of each block: rank by standard deviation (stable), ``k`` equal-size classes."""
    sd = blocks.reshape(len(blocks), -1).astype(np.float64).std(axis=1)
    order = np.argsort(sd, kind="stable")
    cls = np.empty(len(blocks), np.uint8)
    cls[order] = (np.arange(len(blocks)) * k // len(blocks)).astype(np.uint8)
    return cls


def _pairing(cit_o: np.ndarray, cit_t: np.ndarray, k: int) -> np.ndarray:
    """``src[p]``: the original block that goes to target position ``p``."""
    src = np.empty(len(cit_t), np.int64)
    for c in range(k):
        src[np.flatnonzero(cit_t == c)] = np.flatnonzero(cit_o == c)
    return src


def transform(original: np.ndarray, target: np.ndarray, block: int = 8, classes: int = 8) -> tuple[np.ndarray, bytes]:
    """Transform ``original`` to look like ``target``; returns (transformed, auxiliary bytes)."""
    if original.shape != target.shape or original.dtype != np.uint8 or target.dtype != np.uint8:
        raise ValueError(f"need two uint8 images of one shape, got {original.shape} {original.dtype} and {target.shape} {target.dtype}")
    h, w = original.shape
    if h % block or w % block:
        raise ValueError(f"image {original.shape} is not a whole number of {block}x{block} blocks")
    bo, bt = _blocks(original.astype(np.int64), block), _blocks(target.astype(np.int64), block)
    cit_o, cit_t = _classes(bo, classes), _classes(bt, classes)
    src = _pairing(cit_o, cit_t, classes)
    moved = bo[src]
    # mean shift, truncated so the shifted block stays in 0..255 (the stored shift is exact)
    shift = np.round(bt.mean(axis=(1, 2)) - moved.mean(axis=(1, 2))).astype(np.int64)
    shift = np.clip(shift, -moved.min(axis=(1, 2)), 255 - moved.max(axis=(1, 2)))
    shifted = moved + shift[:, None, None]
    rots = np.stack([np.rot90(shifted, r, axes=(1, 2)) for r in range(4)])
    err = ((rots - bt[None]) ** 2).sum(axis=(2, 3))
    rot = err.argmin(axis=0).astype(np.uint8)
    out = rots[rot, np.arange(len(rot))]
    aux = struct.pack(">4sHHBB", MAGIC, h, w, block, classes) + lzma.compress(
        cit_o.tobytes() + cit_t.tobytes() + rot.tobytes() + shift.astype(np.int16).tobytes(), preset=9 | lzma.PRESET_EXTREME)
    return _unblocks(out, (h, w), block).astype(np.uint8), aux


def inverse(transformed: np.ndarray, aux: bytes) -> np.ndarray:
    """The original image from a transformed one and its auxiliary bytes."""
    magic, h, w, block, classes = struct.unpack(">4sHHBB", aux[:10])
    if magic != MAGIC or transformed.shape != (h, w):
        raise kernels.PayloadError("not RIT auxiliary information for this image")
    n = (h // block) * (w // block)
    raw = lzma.decompress(aux[10:])
    cit_o = np.frombuffer(raw[:n], np.uint8)
    cit_t = np.frombuffer(raw[n : 2 * n], np.uint8)
    rot = np.frombuffer(raw[2 * n : 3 * n], np.uint8)
    shift = np.frombuffer(raw[3 * n : 5 * n], np.int16).astype(np.int64)
    src = _pairing(cit_o, cit_t, classes)
    bt = _blocks(transformed.astype(np.int64), block)
    unrot = np.stack([np.rot90(b, -int(r)) for b, r in zip(bt, rot)]) - shift[:, None, None]
    orig = np.empty_like(unrot)
    orig[src] = unrot
    return _unblocks(orig, (h, w), block).astype(np.uint8)


def protect(original: np.ndarray, target: np.ndarray, block: int = 8, classes: int = 8) -> tuple[np.ndarray, int]:
    """RIT-RAE: transformed image with its auxiliary information embedded (PEE); (marked, aux bits).
    Raises ``kernels.CapacityError`` when the auxiliary information does not fit."""
    transformed, aux = transform(original, target, block, classes)
    return kernels.embed(transformed, aux), 8 * len(aux)


def restore(marked: np.ndarray) -> np.ndarray:
    transformed, aux = kernels.extract(marked)
    return inverse(transformed, aux)
