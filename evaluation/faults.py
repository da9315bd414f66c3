"""Fault injection for the fault campaign (``tests/test_faults.py``, ``benchmarks/faults.py``):
damage a protected file in one named way, restore it as ``medrae restore`` does, and say what
happened.

Outcomes (:func:`restore_outcome`):

* ``refused``: a typed refusal, ``NotProtectedError`` / ``KeyMismatchError`` / ``PayloadError``
  (the payload, its key check, its SHA-256) or ``ImageError`` (the file itself is unreadable);
* ``intact``: the restore gave the original pixels, bit for bit, and (DICOM) the header the
  payload authenticates (the damage hit bytes that carry neither: a PNG ancillary chunk, a DICOM
  file's preamble);
* ``wrong``: the restore gave other pixels (must never happen);
* ``crash``: any other exception (must never happen).

Damages (:data:`DAMAGES`) are applied to the file's bytes or, re-encoded as a valid file, to its
decoded pixels (a flipped pixel bit in a well-formed file is what tampering looks like); header
edits (:data:`HEADER_EDITS`, DICOM only) change one element of a class, saved as a valid file.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from medrae import kernels

from medrae.toolkit.filework import restore_image
from medrae.toolkit.imageio import Image, ImageError, encode_image, read_image

OUTCOMES = ("refused", "intact", "wrong", "crash")
# where a single flipped bit lands: file bytes by region, or decoded pixels by their role
BIT_CLASSES = ("file-head", "file-body", "file-tail", "pixel-side-info", "pixel-border", "pixel-roi", "pixel-other")
DAMAGES = BIT_CLASSES + ("bytes-overwrite", "bytes-truncate", "bytes-insert", "bytes-zero-run")
# a DICOM header edited as a tamperer would, one element class each (the file stays valid DICOM)
HEADER_EDITS = ("header-patient", "header-geometry", "header-photometric", "header-windowing", "header-private", "header-meta",
                "header-removed")


@dataclass
class Case:
    """One damaged file: what was done (``damage``, ``detail``) and its bytes."""

    damage: str
    detail: str
    data: bytes


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


def damage_file(data: bytes, image: Image, roi: np.ndarray, damage: str, rng: np.random.Generator) -> Case:
    """Apply ``damage`` (one of :data:`DAMAGES`) to a protected file's bytes ``data`` (decoded:
    ``image``; ``roi``: the mask its hiding kept out of, for the ``pixel-roi`` class)."""
    n = len(data)
    if damage in ("file-head", "file-body", "file-tail"):
        lo, hi = {"file-head": (0, min(n, 64)), "file-body": (min(n, 64), max(min(n, 64) + 1, n - 16)), "file-tail": (max(0, n - 16), n)}[damage]
        pos, bit = int(rng.integers(lo, hi)), int(rng.integers(0, 8))
        return Case(damage, f"byte {pos} bit {bit}", _flip(data, pos, bit))
    if damage.startswith("pixel-"):
        px = image.pixels.copy()
        h, w = px.shape
        side = kernels.rdh.reserved_indices((h, w), kernels.rdh.border_length((h, w)))
        if damage == "pixel-side-info":
            idx = int(side[rng.integers(0, kernels.SIDE_BITS)])
        elif damage == "pixel-border":
            idx = int(side[rng.integers(0, side.size)])
        else:
            inner = np.zeros((h, w), bool)
            inner[1:-1, 1:-1] = True
            pool = np.flatnonzero((roi if damage == "pixel-roi" else ~roi) & inner)
            pool = pool if pool.size else np.flatnonzero(inner)
            idx = int(pool[rng.integers(0, pool.size)])
        bits = 8 if px.dtype == np.uint8 else (image.ceiling.bit_length())
        bit = int(rng.integers(0, bits))
        flat = px.reshape(-1)
        flat[idx] ^= np.array(1 << bit, dtype=px.dtype)
        return Case(damage, f"pixel {divmod(idx, w)} bit {bit}", encode_image(image, px))
    if damage == "bytes-overwrite":
        k = int(rng.integers(2, 33))
        b = bytearray(data)
        for pos in rng.integers(0, n, k):
            b[int(pos)] = int(rng.integers(0, 256))
        return Case(damage, f"{k} random bytes", bytes(b))
    if damage == "bytes-truncate":
        cut = int(rng.integers(0, n))
        return Case(damage, f"cut at {cut} of {n}", data[:cut])
    if damage == "bytes-insert":
        pos, k = int(rng.integers(0, n)), int(rng.integers(1, 17))
        return Case(damage, f"{k} bytes at {pos}", data[:pos] + rng.integers(0, 256, k, dtype=np.uint8).tobytes() + data[pos:])
    if damage == "bytes-zero-run":
        pos, k = int(rng.integers(0, n)), int(rng.integers(4, 257))
        return Case(damage, f"{k} zeros at {pos}", data[:pos] + bytes(min(k, n - pos)) + data[pos + k :])
    raise ValueError(f"unknown damage {damage!r}; one of {', '.join(DAMAGES)}")


def edit_header(data: bytes, edit: str, rng: np.random.Generator) -> Case:
    """Apply ``edit`` (one of :data:`HEADER_EDITS`) to a protected DICOM file's bytes: one element
    of that class changed (or added, or removed), saved again as a valid DICOM file."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    token = f"{int(rng.integers(0, 10**6)):06d}"
    if edit == "header-patient":
        ds.PatientID, detail = f"EVIL{token}", "PatientID"
    elif edit == "header-geometry":
        ds.PixelSpacing, detail = [f"0.{token[:3]}", f"0.{token[3:]}"], "PixelSpacing"
    elif edit == "header-photometric":
        ds.PhotometricInterpretation = "MONOCHROME1" if ds.get("PhotometricInterpretation") != "MONOCHROME1" else "MONOCHROME2"
        detail = "PhotometricInterpretation"
    elif edit == "header-windowing":
        ds.WindowCenter, ds.WindowWidth, detail = int(token[:3]) + 1, int(token[3:]) + 2, "WindowCenter/WindowWidth"
    elif edit == "header-private":
        ds.add_new(0x00091010 + int(rng.integers(0, 16)), "LO", token)
        detail = "a private element"
    elif edit == "header-meta":
        ds.file_meta.ImplementationVersionName, detail = f"EVIL{token}", "ImplementationVersionName (file meta)"
    elif edit == "header-removed":
        names = [e.keyword for e in ds if e.keyword and e.keyword not in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored",
                                                                             "HighBit", "PixelRepresentation", "SamplesPerPixel")]
        detail = names[int(rng.integers(0, len(names)))]
        delattr(ds, detail)
    else:
        raise ValueError(f"unknown header edit {edit!r}; one of {', '.join(HEADER_EDITS)}")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return Case(edit, detail, buf.getvalue())


def restore_outcome(data: bytes, suffix: str, key: Optional[bytes], original: np.ndarray,
                    workdir: Optional[Path] = None) -> tuple[str, str]:
    """Write ``data`` to a file named ``*suffix``, read and restore it as ``medrae restore`` does;
    returns ``(outcome, what was raised or '')`` (:data:`OUTCOMES`)."""
    fd, name = tempfile.mkstemp(suffix=suffix, dir=workdir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            image = read_image(name)
            pixels, _ = restore_image(image, key)  # a DICOM's header is checked against its record too
        except (ImageError, kernels.NotProtectedError, kernels.KeyMismatchError, kernels.PayloadError) as exc:
            return "refused", type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - the campaign counts these; there must be none
            return "crash", f"{type(exc).__name__}: {exc}"
        if pixels.shape == original.shape and pixels.dtype == original.dtype and np.array_equal(pixels, original):
            return "intact", ""
        return "wrong", "restored pixels differ from the original"
    finally:
        os.unlink(name)
