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
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import PayloadError

PATTERN_DIR = Path(__file__).resolve().parent / "patterns"

# id -> (name, SHA-256 of the array's C-order bytes); never reuse or change an id once released
PATTERNS: dict[int, tuple[str, str]] = {
    # cxr3_v1.json: trained on cxr3/train against the 4 shipped classifiers + the zoo's 4 surrogates
    1: ("cxr3_v1", "f179fe6a39dfc19cd6e3fe42d222d44be63508f3186b484876ad3c1b87472655"),
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


def on_grid(pattern_id: int, cls: int, shape: tuple[int, int]) -> np.ndarray:
    """Class ``cls`` of the pattern mapped onto a grid of ``shape`` cells by nearest index
    (``(i * G) // rows``: integer-exact, the rule protect's plan uses for its grids)."""
    p = load(pattern_id)
    if not 0 <= cls < p.shape[0]:
        raise PayloadError(f"transfer pattern {pattern_id}: class {cls} out of range (it has {p.shape[0]})")
    g = p.shape[1]
    rows = (np.arange(shape[0], dtype=np.int64) * g) // shape[0]
    cols = (np.arange(shape[1], dtype=np.int64) * g) // shape[1]
    return p[cls][rows][:, cols]


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
