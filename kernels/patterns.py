"""Shipped transfer patterns: universal perturbations that protect adds outside the ROI and the
``pattern`` codec references instead of coding them (docs/FORMAT.md, codec 7).

A pattern is an ``int8`` array ``(classes, G, G)`` of levels on a grid of ``G x G`` cells over the
image (56 x 56: 4-pixel cells on the 224x224 view the networks see), trained by
``python -m medrae.models.train_pattern``. Each published pattern keeps its id forever: a file protected
with it names the id, and restore rebuilds the same values from the same bytes (checked against the
SHA-256 recorded here, so a changed file is refused rather than restoring a wrong image). Restore
reads the pattern as data; no network runs.
"""
from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from .errors import PayloadError

PATTERN_DIR = Path(__file__).resolve().parent / "patterns"

# id -> (name, SHA-256 of the array's C-order bytes); never reuse or change an id once released
PATTERNS: dict[int, tuple[str, str]] = {
    # cxr3_v1.json: trained on cxr3/train against the 4 shipped classifiers + the zoo's 4 surrogates
    1: ("cxr3_v1", "f179fe6a39dfc19cd6e3fe42d222d44be63508f3186b484876ad3c1b87472655"),
    # cxr3_v2.json: ±16, trained for every key-drawn placement and random unknown pipelines (docs/STRENGTH.md)
    2: ("cxr3_v2", "8d143958e653b8371e2d8be9006e6e77ee6f83717f1f19686a9e8a33a2b4f205"),
}
DEFAULT_PATTERN = 1  # what protect adds unless told otherwise (--pattern none: 0)


@lru_cache(maxsize=None)
def load(pattern_id: int) -> np.ndarray:
    """The pattern with ``pattern_id`` as a read-only int64 array ``(classes, G, G)``."""
    if pattern_id not in PATTERNS:
        raise PayloadError(f"unknown transfer pattern id {pattern_id} (this medrae knows {sorted(PATTERNS) or 'none'})")
    name, sha = PATTERNS[pattern_id]
    path = PATTERN_DIR / f"{name}.npy"
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PayloadError(f"transfer pattern {name} (id {pattern_id}) is missing or unreadable: {path}: {exc}") from None
    if arr.dtype != np.int8 or arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise PayloadError(f"transfer pattern {name}: expected int8 (classes, G, G), got {arr.dtype} {arr.shape}")
    if hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() != sha:
        raise PayloadError(f"transfer pattern {name} (id {pattern_id}) does not match its SHA-256: {path} was changed")
    out = arr.astype(np.int64)
    out.flags.writeable = False
    return out


class Placement(NamedTuple):
    """Where a pattern goes on the image. ``seed`` (16 bytes, drawn from the key and the image by
    :func:`draw_placement`; empty: where it was trained) picks, for the whole pattern (``block`` 0)
    or independently for each ``block x block`` square of its cells, a left-right mirror and a
    cyclic shift by whole cells (:func:`block_moves`). A party without the key cannot tell which
    placement a file carries; the seed travels only inside the encrypted payload."""

    seed: bytes = b""
    block: int = 0


IDENTITY = Placement()
SEED_BYTES = 16


def draw_placement(key: bytes, image_digest: bytes, block: int = 0) -> Placement:
    """The placement for one image: a seed = HMAC-SHA256 of the image's digest under ``key``
    (first 16 bytes), so the same key and image always give the same protected pixels and another
    image or key an unrelated placement."""
    mac = hmac.new(bytes(key), b"medrae pattern placement v1" + bytes(image_digest), hashlib.sha256).digest()
    return Placement(mac[:SEED_BYTES], int(block))


def block_moves(placement: Placement, side: int) -> np.ndarray:
    """(blocks_y, blocks_x, 3) int64: each block's (shift_y, shift_x, mirror) for a pattern of
    ``side x side`` cells: bytes 0-3 and 4-7 (big-endian) of SHA-256(seed | by | bx) mod ``side``,
    and the low bit of byte 8 (``by = bx = 0`` and a single block when ``block`` is 0)."""
    if len(placement.seed) != SEED_BYTES or not 0 <= placement.block <= side:
        raise PayloadError(f"bad pattern placement (seed of {len(placement.seed)} bytes, block {placement.block})")
    n = 1 if placement.block == 0 else -(-side // placement.block)
    out = np.empty((n, n, 3), np.int64)
    for by in range(n):
        for bx in range(n):
            h = hashlib.sha256(placement.seed + bytes([by, bx])).digest()
            out[by, bx] = (int.from_bytes(h[0:4], "big") % side, int.from_bytes(h[4:8], "big") % side, h[8] & 1)
    return out


def moved(p: np.ndarray, shift_y: int, shift_x: int, mirror: bool) -> np.ndarray:
    """``p`` mirrored left-right (if ``mirror``), then rolled cyclically by whole cells."""
    out = p[:, ::-1] if mirror else p
    return np.roll(out, (int(shift_y), int(shift_x)), axis=(0, 1)) if shift_y or shift_x else out


def placed(pattern_id: int, cls: int, placement: Placement = IDENTITY, clip: Optional[int] = None, gain: int = 1) -> np.ndarray:
    """Class ``cls`` of the pattern on its own ``G x G`` cells, placed (:class:`Placement`),
    multiplied by ``gain`` and clipped to ``-clip..clip`` levels (``None`` or 0: no clip)."""
    p = load(pattern_id)
    if not 0 <= cls < p.shape[0]:
        raise PayloadError(f"transfer pattern {pattern_id}: class {cls} out of range (it has {p.shape[0]})")
    g = p.shape[1]
    out = p[cls]
    if placement.seed:
        moves = block_moves(placement, g)
        b = placement.block or g
        out = np.empty_like(p[cls])
        for by in range(moves.shape[0]):
            for bx in range(moves.shape[1]):
                sy, sx, mirror = moves[by, bx]
                out[by * b : (by + 1) * b, bx * b : (bx + 1) * b] = moved(p[cls], sy, sx, bool(mirror))[by * b : (by + 1) * b, bx * b : (bx + 1) * b]
    if gain != 1:
        out = out * int(gain)
    return np.clip(out, -clip, clip) if clip else out


def on_grid(pattern_id: int, cls: int, shape: tuple[int, int], placement: Placement = IDENTITY,
            clip: Optional[int] = None, gain: int = 1) -> np.ndarray:
    """Class ``cls`` of the pattern (:func:`placed`) mapped onto a grid of ``shape`` cells by
    nearest index (``(i * G) // rows``: integer-exact, the rule protect's plan uses for its grids)."""
    p = placed(pattern_id, cls, placement, clip, gain)
    g = p.shape[0]
    rows = (np.arange(shape[0], dtype=np.int64) * g) // shape[0]
    cols = (np.arange(shape[1], dtype=np.int64) * g) // shape[1]
    return p[rows][:, cols]


def pattern_id(name: str) -> int:
    """The id of a published pattern by name; ``none`` is 0 (no pattern)."""
    if name == "none":
        return 0
    for ident, (known, _) in PATTERNS.items():
        if known == name:
            return ident
    raise ValueError(f"unknown transfer pattern {name!r}; choose one of {[n for n, _ in PATTERNS.values()] + ['none']}")


def register_pattern(pattern_id: int, name: str, sha256: str) -> None:
    """Add a published pattern (its file ``patterns/<name>.npy``); ids are never reused."""
    if not 1 <= pattern_id <= 255:
        raise ValueError(f"pattern id must be 1..255, got {pattern_id}")
    if pattern_id in PATTERNS and PATTERNS[pattern_id] != (name, sha256):
        raise ValueError(f"pattern id {pattern_id} is taken by {PATTERNS[pattern_id][0]}")
    PATTERNS[pattern_id] = (name, sha256)
